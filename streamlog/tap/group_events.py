"""C{streamlog-consumer --group G --events FILE}: what the member did, one JSON line per event.

For an audit of a group's work (and for C{streamlog chaos --group-consumers}, whose checker
judges these files): when the member was given a partition and from which offset, when it
gave one up or lost one, which offsets it wrote, which commits the coordinator acknowledged.
Every line holds C{event}, C{monotonic} (this machine's C{CLOCK_MONOTONIC}, seconds: the
same clock for every process of the machine, so several members' files can be merged in
order), C{time} (seconds since the epoch), C{member} (its member id, null before the first
join) and C{generation}; then, by event:

    assigned    partitions [[topic, partition], ...], offsets [[topic, partition, committed], ...]
                (a partition without a committed offset is read from --from)
    revoked     partitions (given up after committing what was written)
    lost        partitions (dropped without a commit), session_end (monotonic: the member owned
                nothing past it)
    processed   topic, partition, first, end: offsets first..end-1 were written to the output
    committed   offsets [[topic, partition, offset], ...], sent (monotonic)

Lines are written with one C{write} each, straight to the file descriptor (no buffer), each
after what it reports: a C{processed} line after the output took the messages, before any
commit of them can be sent.  The file is appended to.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from streamlog.client.group import GroupConsumer, TopicPartition


class MemberEvents:
    """Appends a member's events to C{path}; C{clock} is the member's (its times are converted)."""

    def __init__(self, path: str, clock: Any) -> None:
        self.path = path
        self.clock = clock
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def monotonic(self, at: float) -> float:
        """A time of the member's clock, as C{CLOCK_MONOTONIC}."""
        return time.monotonic() - (self.clock.seconds() - at)

    def write(self, member: GroupConsumer, event: str, **fields: Any) -> None:
        if self._fd is None:
            return
        line = {"event": event, "monotonic": time.monotonic(), "time": time.time(), "member": member.member_id,
                "generation": member.generation, **fields}
        os.write(self._fd, orjson.dumps(line) + b"\n")

    def moved(self, member: GroupConsumer, event: str, tps: list[TopicPartition]) -> None:
        fields: dict[str, Any] = {"partitions": [list(tp) for tp in tps]}
        if event == "assigned":
            fields["offsets"] = [[t, p, member.positions[(t, p)]] for t, p in tps if (t, p) in member.positions]
        elif event == "lost":
            fields["session_end"] = self.monotonic(member.session_end)
        self.write(member, event, **fields)

    def processed(self, member: GroupConsumer, messages: list[dict[str, Any]]) -> None:
        if messages:
            self.write(member, "processed", topic=messages[0]["topic"], partition=messages[0]["partition"],
                       first=messages[0]["offset"], end=messages[-1]["offset"] + 1)

    def committed(self, member: GroupConsumer, offsets: dict[TopicPartition, int], sent: float) -> None:
        self.write(member, "committed", offsets=[[t, p, o] for (t, p), o in sorted(offsets.items())],
                   sent=self.monotonic(sent))

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

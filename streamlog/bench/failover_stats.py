"""The numbers of C{streamlog bench failover}, apart from the processes that make them (pure).

One L{KillRecord} per SIGKILL of a partition leader: when the kill was sent,
when a surviving node's C{Metadata} first named a new leader, when the first
Send (of the watched partition, and of every partition the killed node led)
was acknowledged afterwards, and when the restarted node was back in the
in-sync replicas.  L{AckLedger} keeps what the producer had acknowledged, so
that the read-back at the end can count acknowledged messages that are lost,
changed or out of order.  L{summary} makes the figures the bench prints.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

import attrs


@attrs.define
class KillRecord:
    """One kill of the watched partition's leader; times in seconds after the kill (None: not seen)."""

    kill: int
    node: int
    #: The partitions the killed node led when it was killed (the watched one among them).
    led: tuple[int, ...]
    #: The watched partition's new leader (a surviving node), as Metadata first named it.
    new_leader: int | None = None
    leader_seen_s: float | None = None
    #: Every partition in C{led} has a new leader (a surviving node) in Metadata.
    all_led_s: float | None = None
    #: The watched partition's first acknowledged Send that was sent after the kill.
    first_ack_s: float | None = None
    #: Every partition in C{led} had an acknowledged Send after the kill (the slowest of them).
    all_acked_s: float | None = None
    #: The restarted node was back in the in-sync replicas of every partition it holds.
    back_in_isr_s: float | None = None
    #: Producer requests failed unsent between the previous fault's node being back in sync (the
    #: run's start for the first) and this fault (their node's connection backing off: leadership
    #: back at a restarted node the client has not dialled yet); None where the client does not
    #: count them.
    refused_unsent: int | None = None
    #: Whether leadership was balanced (see C{leadership_balanced}) when the fault struck, and
    #: how long the bench waited for that (False: C{--balance-timeout} ran out first).
    balanced: bool | None = None
    balance_wait_s: float | None = None
    #: Acknowledged partitions of C{led}, by partition: seconds after the kill.
    acked: dict[int, float] = attrs.field(factory=dict)

    def saw_ack(self, partition: int, sent_at: float, acked_at: float, killed_at: float) -> None:
        """An acknowledgement came: note it if it is the first of C{partition} for a Send sent after the kill."""
        if sent_at < killed_at or partition not in self.led or partition in self.acked:
            return
        self.acked[partition] = acked_at - killed_at
        if self.first_ack_s is None and partition == self.led[0]:
            self.first_ack_s = acked_at - killed_at
        if len(self.acked) == len(self.led):
            self.all_acked_s = max(self.acked.values())

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["acked_partitions"] = len(out.pop("acked"))  # of led: fewer if the kill timed out
        out["led_count"] = len(self.led)
        return out


def leadership_balanced(leaders: Mapping[int, int], preferred: Mapping[int, int], nodes: Iterable[int],
                        partitions: int) -> bool:
    """Whether leadership is settled enough to fault a node and compare runs: every one of the
    C{partitions} has a leader (C{leaders}: partition -> node), and either each is led by its
    preferred leader (C{preferred}: partition -> its first replica) or the nodes' counts of
    partitions led are within one of each other (every node leads the floor or the ceiling of
    an even share). Before, the bench faulted while the preferred leaders were still coming
    back: the faulted node led 142 to 724 of 1,000 partitions from run to run."""
    if len(leaders) < partitions:
        return False
    if all(leaders.get(p) == node for p, node in preferred.items()) and len(preferred) >= partitions:
        return True
    counts = {n: 0 for n in nodes}
    for node in leaders.values():
        counts[node] = counts.get(node, 0) + 1
    return max(counts.values()) - min(counts.values()) <= 1


def _stats(values: Iterable[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0, "median_s": None, "max_s": None, "min_s": None}
    return {"n": len(got), "median_s": statistics.median(got), "max_s": max(got), "min_s": min(got)}


def summary(records: list[KillRecord]) -> dict[str, Any]:
    """Median, max and min of each measured interval over the kills."""
    return {
        "kills": len(records),
        "first_ack": _stats(r.first_ack_s for r in records),
        "leader_seen": _stats(r.leader_seen_s for r in records),
        "all_led": _stats(r.all_led_s for r in records),
        "all_acked": _stats(r.all_acked_s for r in records),
        "back_in_isr": _stats(r.back_in_isr_s for r in records),
        "led": [len(r.led) for r in records],
        "balanced": [r.balanced for r in records],
    }


class AckLedger:
    """What the producer had acknowledged: per partition, offset -> value, in send order."""

    def __init__(self) -> None:
        self.by_partition: dict[int, list[tuple[int, str]]] = {}
        self.count = 0

    def add(self, partition: int, offset: int, value: str) -> None:
        self.by_partition.setdefault(partition, []).append((offset, value))
        self.count += 1

    def check(self, stored: Mapping[int, Mapping[int, Any]]) -> dict[str, Any]:
        """Compare with what was read back (partition -> offset -> value).

        C{lost}: acknowledged offsets missing from the read-back; C{changed}:
        held another value; C{out_of_order}: acknowledged offsets of a
        partition that do not grow in send order (the Producer keeps order
        per partition); C{duplicates}: acknowledged values stored at more
        than one offset (a resend after a lost connection may do that).
        """
        lost = changed = out_of_order = duplicates = 0
        examples: list[str] = []
        for partition, acked in self.by_partition.items():
            got = stored.get(partition, {})
            last = -1
            seen_values: dict[Any, int] = {}
            for value in got.values():
                seen_values[value] = seen_values.get(value, 0) + 1
            for offset, value in acked:
                if offset <= last:
                    out_of_order += 1
                last = max(last, offset)
                if offset not in got:
                    lost += 1
                    if len(examples) < 5:
                        examples.append(f"{partition}/{offset}: {value} missing")
                elif got[offset] != value:
                    changed += 1
                    if len(examples) < 5:
                        examples.append(f"{partition}/{offset}: {value} acknowledged, {got[offset]!r} stored")
                if seen_values.get(value, 0) > 1:
                    duplicates += 1
        return {"acknowledged": self.count, "lost": lost, "changed": changed, "out_of_order": out_of_order,
                "duplicates": duplicates, "examples": examples}


__all__ = ["AckLedger", "KillRecord", "leadership_balanced", "summary"]

"""Committed offsets: a state built by applying the records of the internal offsets topic.

A group's committed offset for a partition is the next offset its consumers
should read.  The coordinator never changes offsets in place: it appends a
record to the group's partition of the offsets topic, and applies the record
once it is committed there (replicated like any partition).  A replica that
becomes the coordinator replays the partition from its start to rebuild the
same state, so the apply rules below are the whole truth of what a group has
committed:

  - C{commit}: each listed offset becomes the committed one, unless it is
    lower than what is committed already (a commit never moves backwards),
    or the entry says C{"rewind": true}: the coordinator found the committed
    offset past the partition's high watermark (no position anyone can read
    from: a commit past the end, a topic deleted and made again, data lost
    with C{--fsync never}), so the owner's
    lower commit replaces it;
  - C{reset}: each listed offset becomes the committed one, whatever it was
    (ResetOffsets, the only way back);
  - C{delete}: the group's offsets are gone (DeleteGroup).

A record is the C{value} of an ordinary message, keyed by the group (so the
log stays readable with Poll); its JSON object is
C{{"type": "commit"|"reset"|"delete", "group": str, "offsets": [{topic,
partition, offset, metadata}]}} (no C{offsets} for C{delete}), see
docs/groups.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from streamlog import errors
from streamlog.groups.assignors import TopicPartition

RECORD_TYPES = ("commit", "reset", "delete")


@attrs.frozen
class OffsetCommit:
    """One partition's offset in a commit or reset."""

    topic: str
    partition: int
    offset: int
    metadata: str | None = None
    #: A commit allowed to move the offset back, because the committed one was past the
    #: partition's high watermark when the coordinator checked (stored as C{"rewind": true}).
    rewind: bool = False

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)

    def to_wire(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "metadata": self.metadata}

    def to_record(self) -> dict[str, Any]:
        """The entry as a record of the offsets topic stores it (C{to_wire}, and C{rewind} if set)."""
        return {**self.to_wire(), "rewind": True} if self.rewind else self.to_wire()


@attrs.frozen
class Committed:
    """What is committed for one partition, and when it was (ms, the record's timestamp)."""

    offset: int
    metadata: str | None
    timestamp: int


@attrs.frozen
class OffsetRecord:
    """One record of the offsets topic, decoded."""

    type: str
    group: str
    offsets: tuple[OffsetCommit, ...] = ()

    def to_value(self) -> dict[str, Any]:
        """The message value it is stored as."""
        value: dict[str, Any] = {"type": self.type, "group": self.group}
        if self.type != "delete":
            value["offsets"] = [o.to_record() for o in self.offsets]
        return value


class BadOffsetRecord(ValueError):
    """A record of the offsets topic that is not one of ours (skipped, and logged, on replay)."""


def decode_record(value: Any) -> OffsetRecord:
    """The record a stored message value holds; L{BadOffsetRecord} if it holds none."""
    if not isinstance(value, dict) or value.get("type") not in RECORD_TYPES or not isinstance(value.get("group"), str):
        raise BadOffsetRecord(f"not an offsets record: {str(value)[:200]}")
    kind = value["type"]
    if kind == "delete":
        return OffsetRecord("delete", value["group"])
    entries = value.get("offsets")
    if not isinstance(entries, list):
        raise BadOffsetRecord(f"offsets record without a list of offsets: {str(value)[:200]}")
    offsets = []
    for entry in entries:
        try:
            topic, partition, offset = entry["topic"], entry["partition"], entry["offset"]
            metadata = entry.get("metadata")
            rewind = entry.get("rewind", False)
        except (TypeError, KeyError) as e:
            raise BadOffsetRecord(f"bad offset entry {str(entry)[:200]}") from e
        if not (isinstance(topic, str) and _count(partition) and _count(offset)
                and (metadata is None or isinstance(metadata, str)) and isinstance(rewind, bool)):
            raise BadOffsetRecord(f"bad offset entry {str(entry)[:200]}")
        offsets.append(OffsetCommit(topic, partition, offset, metadata, rewind))
    return OffsetRecord(kind, value["group"], tuple(offsets))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class OffsetState:
    """Every group's committed offsets on one partition of the offsets topic."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[TopicPartition, Committed]] = {}

    def apply(self, record: OffsetRecord, timestamp: int) -> None:
        """Apply a committed record of the offsets topic (the rules in the module docstring)."""
        if record.type == "delete":
            self.groups.pop(record.group, None)
            return
        offsets = self.groups.setdefault(record.group, {})
        for entry in record.offsets:
            now = offsets.get(entry.tp)
            if record.type == "commit" and now is not None and entry.offset < now.offset and not entry.rewind:
                continue  # never backwards (a commit checked against a state that moved on meanwhile)
            offsets[entry.tp] = Committed(entry.offset, entry.metadata, timestamp)

    def check_commit(self, group: str, offsets: Iterable[OffsetCommit]) -> None:
        """Raise C{OFFSET_BEHIND_COMMITTED} if a commit would move an offset backwards."""
        behind = self.behind(group, offsets)
        if behind:
            raise behind_committed(group, *behind[0])

    def behind(self, group: str, offsets: Iterable[OffsetCommit]) -> list[tuple[OffsetCommit, int]]:
        """The entries of a commit (not marked C{rewind}) lower than what is committed, each with
        the committed offset."""
        committed = self.groups.get(group, {})
        out = []
        for entry in offsets:
            now = committed.get(entry.tp)
            if now is not None and entry.offset < now.offset and not entry.rewind:
                out.append((entry, now.offset))
        return out

    def fetch(self, group: str, topics: Iterable[str] | None = None) -> dict[TopicPartition, Committed]:
        """The group's committed offsets (of C{topics} only, if given)."""
        committed = self.groups.get(group, {})
        if topics is None:
            return dict(committed)
        wanted = set(topics)
        return {tp: c for tp, c in committed.items() if tp[0] in wanted}

    def has_group(self, group: str) -> bool:
        return group in self.groups


def behind_committed(group: str, entry: OffsetCommit, committed: int) -> errors.OffsetBehindCommitted:
    """The error refusing a commit of C{entry} behind C{committed}."""
    return errors.OffsetBehindCommitted(
        f"{entry.topic}/{entry.partition}: offset {entry.offset} is behind the committed {committed}; "
        "a commit moves a committed offset back only while that one is past the partition's high watermark, "
        "else only ResetOffsets does",
        group=group, topic=entry.topic, partition=entry.partition, committed=committed)


def fetch_to_wire(committed: Mapping[TopicPartition, Committed]) -> list[dict[str, Any]]:
    """FetchOffsets' C{offsets}: C{[{topic, partition, offset, metadata, timestamp}]}, sorted."""
    return [
        {"topic": t, "partition": p, "offset": c.offset, "metadata": c.metadata, "timestamp": c.timestamp}
        for (t, p), c in sorted(committed.items())
    ]


def reset_target(to: str | tuple[str, int], bounds: tuple[int, int, int | None], committed: int | None) -> int:
    """Where ResetOffsets moves a partition, within [log start, high watermark] (its leader's).

    C{to} is C{"earliest"}, C{"latest"} or C{(kind, n)} with kind C{"offset"}, C{"shift"}
    (from C{committed}, or the log start) or C{"timestamp"} (C{bounds[2]}, found by the caller).
    Shared by the coordinator and the console's dry run, so both name the same offset.
    """
    start, end, at = bounds
    if isinstance(to, str):
        return int(start) if to == "earliest" else int(end)  # "latest"
    kind, n = to
    if kind == "offset":
        target = n
    elif kind == "shift":
        target = (committed if committed is not None else start) + n
    else:
        target = end if at is None else at  # "timestamp": no record that late reads from the end
    return max(int(start), min(target, int(end)))

"""The membership records of the offsets topic: what a new coordinator needs to carry a group on.

A group's membership lives in its coordinator's memory, but every change a
member could act on is also written to the group's partition of the offsets
topic, next to its commits, as Kafka's KIP-848 writes its group metadata,
target assignment and current member assignment records.  A node that takes
over the partition (a failover, a leadership transfer) replays them and knows
every member, its generation, its target and what it holds: members go on
with their next heartbeat, with no new generation and no rejoin.

Three record types, each the C{value} of a message keyed by the group:

  - C{group}: C{{"type": "group", "group", "assignor", "generation",
    "counts": {topic: partitions}}} (the group's generation and what its
    targets were computed with);
  - C{member}: C{{"type": "member", "group", "member_id", "instance_id",
    "topics", "session_timeout_ms", "rebalance_timeout_ms", "generation",
    "held", "target"}} (C{held}/C{target}: C{[{topic, partitions}]}), the
    whole of one member as it is now;
  - C{member_gone}: C{{"type": "member_gone", "group", "member_id"}}.

Safety rests on one rule the coordinator keeps (L{GroupCoordinator.take_records}):
a grant is written, and committed, before the member is told of it.  So what
the log says a member holds is always at least what it may be consuming, and
a coordinator rebuilt from the log never grants a partition a live member of
the old one still reads.  Releases are written too, but a release that did
not make it to the log only delays a grant (the member releases it again at
its next heartbeat).  Session deadlines are not written (a heartbeat would
cost a write): the new coordinator gives every member a full session from the
moment it took over.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from streamlog.groups.assignors import TopicPartition

MEMBERSHIP_TYPES = ("group", "member", "member_gone")


class BadMembershipRecord(ValueError):
    """A membership record that does not hold what its type says."""


@attrs.frozen
class GroupMeta:
    """A C{group} record."""

    group: str
    assignor: str
    generation: int
    counts: dict[str, int]

    def to_value(self) -> dict[str, Any]:
        return {"type": "group", "group": self.group, "assignor": self.assignor, "generation": self.generation,
                "counts": dict(sorted(self.counts.items()))}


@attrs.frozen
class MemberMeta:
    """A C{member} record: one member, whole."""

    group: str
    member_id: str
    instance_id: str | None
    topics: frozenset[str]
    session_timeout: float
    rebalance_timeout: float
    generation: int
    held: frozenset[TopicPartition]
    target: frozenset[TopicPartition]

    def to_value(self) -> dict[str, Any]:
        return {
            "type": "member", "group": self.group, "member_id": self.member_id, "instance_id": self.instance_id,
            "topics": sorted(self.topics), "session_timeout_ms": round(self.session_timeout * 1000),
            "rebalance_timeout_ms": round(self.rebalance_timeout * 1000), "generation": self.generation,
            "held": _partitions_out(self.held), "target": _partitions_out(self.target),
        }


@attrs.frozen
class MemberGone:
    """A C{member_gone} record."""

    group: str
    member_id: str

    def to_value(self) -> dict[str, Any]:
        return {"type": "member_gone", "group": self.group, "member_id": self.member_id}


MembershipRecord = GroupMeta | MemberMeta | MemberGone


def _partitions_out(partitions: Iterable[TopicPartition]) -> list[dict[str, Any]]:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    return [{"topic": topic, "partitions": ps} for topic, ps in by_topic.items()]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise BadMembershipRecord(f"expected a string, not {str(value)[:100]}")
    return value


def _partitions_in(value: Any) -> frozenset[TopicPartition]:
    if not isinstance(value, list):
        raise BadMembershipRecord(f"expected [{{topic, partitions}}], not {str(value)[:100]}")
    out: set[TopicPartition] = set()
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("partitions"), list):
            raise BadMembershipRecord(f"bad partition entry {str(entry)[:100]}")
        topic = _string(entry.get("topic"))
        for p in entry["partitions"]:
            if not _count(p):
                raise BadMembershipRecord(f"bad partition {str(p)[:100]}")
            out.add((topic, p))
    return frozenset(out)


def decode_membership(value: dict[str, Any]) -> MembershipRecord:
    """The membership record a message value (a dict whose C{type} is one of
    L{MEMBERSHIP_TYPES}) holds; L{BadMembershipRecord} if it is malformed."""
    try:
        kind, group = value["type"], _string(value["group"])
        if kind == "group":
            counts = value["counts"]
            if not isinstance(counts, dict) or not all(isinstance(t, str) and _count(n) for t, n in counts.items()):
                raise BadMembershipRecord(f"bad counts {str(counts)[:100]}")
            if not _count(value["generation"]):
                raise BadMembershipRecord("bad generation")
            return GroupMeta(group, _string(value["assignor"]), value["generation"], dict(counts))
        if kind == "member":
            instance = value["instance_id"]
            topics = value["topics"]
            numbers = (value["session_timeout_ms"], value["rebalance_timeout_ms"], value["generation"])
            if (instance is not None and not isinstance(instance, str)) or not isinstance(topics, list) \
                    or not all(_count(n) for n in numbers):
                raise BadMembershipRecord(f"bad member record {str(value)[:200]}")
            return MemberMeta(group, _string(value["member_id"]), instance, frozenset(_string(t) for t in topics),
                              numbers[0] / 1000.0, numbers[1] / 1000.0, numbers[2],
                              _partitions_in(value["held"]), _partitions_in(value["target"]))
        if kind == "member_gone":
            return MemberGone(group, _string(value["member_id"]))
    except (KeyError, TypeError) as e:
        raise BadMembershipRecord(f"bad membership record {str(value)[:200]}: {e!r}") from None
    raise BadMembershipRecord(f"not a membership record: {str(value)[:200]}")

"""The params of the group RPCs, checked (sans-io, as streamlog.wire does for the others).

Every parser returns plain values or raises C{INVALID_PARAMS} (an unknown
field included) or C{INVALID_TOPIC}; docs/protocol.md, *Consumer groups*,
lists the fields.
"""

from __future__ import annotations

from typing import Any

import attrs

from streamlog import errors
from streamlog.groups.assignors import TopicPartition
from streamlog.groups.offsets import OffsetCommit
from streamlog.wire import _Params, check_topic_name

#: Group names and static instance ids: 1 to this many characters.
MAX_NAME_LENGTH = 249
#: Topics one JoinGroup may subscribe to, and partitions one request may list, at most.
MAX_TOPICS = 1000
MAX_PARTITIONS = 100_000
#: A committed offset's C{metadata}: at most this many characters.
MAX_METADATA_LENGTH = 4096
DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_REBALANCE_TIMEOUT_MS = 30_000
RESET_TO = ("earliest", "latest")
RESET_BY = ("offset", "shift", "timestamp")


def _name(p: _Params, field: str, required: bool = True) -> str | None:
    value = p.raw(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_LENGTH:
        raise errors.InvalidParams(f"'{field}' must be a string of 1 to {MAX_NAME_LENGTH} characters", field=field)
    return value


def _list(p: _Params, field: str, limit: int, required: bool = True) -> list[Any] | None:
    value = p.raw(field)
    if value is None and not required:
        return None
    if not isinstance(value, list) or len(value) > limit:
        raise errors.InvalidParams(f"'{field}' must be an array of at most {limit} entries", field=field)
    return value


def parse_group_only(params: dict[str, Any]) -> str:
    p = _Params(params)
    group = _name(p, "group")
    p.done()
    assert group is not None
    return group


@attrs.frozen
class JoinParams:
    group: str
    topics: tuple[str, ...]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    group_instance_id: str | None
    assignor: str | None


def parse_join(params: dict[str, Any]) -> JoinParams:
    p = _Params(params)
    group = _name(p, "group")
    topics = _list(p, "topics", MAX_TOPICS)
    assert group is not None and topics is not None
    if not topics:
        raise errors.InvalidParams("'topics' must name at least one topic", field="topics")
    names = tuple(sorted({check_topic_name(t) for t in topics}))
    session = p.integer("session_timeout_ms", default=DEFAULT_SESSION_TIMEOUT_MS, minimum=1)
    rebalance = p.integer("rebalance_timeout_ms", default=DEFAULT_REBALANCE_TIMEOUT_MS, minimum=1)
    instance = _name(p, "group_instance_id", required=False)
    assignor = p.raw("assignor")
    if assignor is not None and not isinstance(assignor, str):
        raise errors.InvalidParams("'assignor' must be a string", field="assignor")
    p.done()
    return JoinParams(group, names, session, rebalance, instance, assignor)


def parse_partition_list(value: Any, field: str) -> list[TopicPartition]:
    """C{[{topic, partitions: [int]}]} -> C{[(topic, partition)]}."""
    if not isinstance(value, list) or len(value) > MAX_TOPICS:
        raise errors.InvalidParams(f"'{field}' must be an array of at most {MAX_TOPICS} {{topic, partitions}}",
                                   field=field)
    out: list[TopicPartition] = []
    for i, entry in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(entry, dict):
            raise errors.InvalidParams(f"'{where}' must be an object", field=where)
        q = _Params(entry, where)
        topic = check_topic_name(q.raw("topic"))
        partitions = _list(q, "partitions", MAX_PARTITIONS)
        q.done()
        assert partitions is not None
        for partition in partitions:
            if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
                raise errors.InvalidParams(f"'{where}.partitions' must hold integers >= 0", field=where)
            out.append((topic, partition))
    return out


@attrs.frozen
class HeartbeatParams:
    group: str
    member_id: str
    owned: tuple[TopicPartition, ...]


def parse_heartbeat(params: dict[str, Any]) -> HeartbeatParams:
    p = _Params(params)
    group = _name(p, "group")
    member = _name(p, "member_id")
    owned = parse_partition_list(p.raw("owned") if p.has("owned") else [], "owned")
    p.done()
    assert group is not None and member is not None
    return HeartbeatParams(group, member, tuple(owned))


def parse_leave(params: dict[str, Any]) -> tuple[str, str]:
    p = _Params(params)
    group = _name(p, "group")
    member = _name(p, "member_id")
    p.done()
    assert group is not None and member is not None
    return group, member


@attrs.frozen
class CommitParams:
    group: str
    offsets: tuple[OffsetCommit, ...]
    member_id: str | None
    generation: int | None


def parse_commit(params: dict[str, Any]) -> CommitParams:
    p = _Params(params)
    group = _name(p, "group")
    entries = _list(p, "offsets", MAX_PARTITIONS)
    member = _name(p, "member_id", required=False)
    generation = p.integer("generation", maximum=None)
    p.done()
    assert group is not None and entries is not None
    if not entries:
        raise errors.InvalidParams("'offsets' must hold at least one offset", field="offsets")
    if (member is None) != (generation is None):
        raise errors.InvalidParams("'member_id' and 'generation' go together", field="generation")
    offsets: dict[TopicPartition, OffsetCommit] = {}
    for i, entry in enumerate(entries):
        where = f"offsets[{i}]"
        if not isinstance(entry, dict):
            raise errors.InvalidParams(f"'{where}' must be an object", field=where)
        q = _Params(entry, where)
        topic = check_topic_name(q.raw("topic"))
        partition = q.integer("partition", required=True, maximum=None)
        offset = q.integer("offset", required=True)
        metadata = q.raw("metadata")
        q.done()
        if metadata is not None and (not isinstance(metadata, str) or len(metadata) > MAX_METADATA_LENGTH):
            raise errors.InvalidParams(f"'{where}.metadata' must be a string of at most {MAX_METADATA_LENGTH} "
                                       "characters", field=f"{where}.metadata")
        if (topic, partition) in offsets:
            raise errors.InvalidParams(f"{topic}/{partition} is listed twice", field=where)
        offsets[(topic, partition)] = OffsetCommit(topic, partition, offset, metadata)
    return CommitParams(group, tuple(offsets.values()), member, generation)


def parse_fetch(params: dict[str, Any]) -> tuple[str, list[str] | None]:
    p = _Params(params)
    group = _name(p, "group")
    topics = _list(p, "topics", MAX_TOPICS, required=False)
    p.done()
    assert group is not None
    return group, None if topics is None else [check_topic_name(t) for t in topics]


@attrs.frozen
class ResetParams:
    group: str
    topic: str
    partitions: tuple[int, ...] | None
    #: "earliest", "latest", or ("offset" | "shift" | "timestamp", n)
    to: str | tuple[str, int]
    dry_run: bool


def parse_reset(params: dict[str, Any]) -> ResetParams:
    p = _Params(params)
    group = _name(p, "group")
    topic = check_topic_name(p.raw("topic"))
    partitions = _list(p, "partitions", MAX_PARTITIONS, required=False)
    to = p.raw("to")
    dry_run = p.raw("dry_run")
    p.done()
    assert group is not None
    if partitions is not None and any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in partitions):
        raise errors.InvalidParams("'partitions' must hold integers >= 0", field="partitions")
    if dry_run is not None and not isinstance(dry_run, bool):
        raise errors.InvalidParams("'dry_run' must be true or false", field="dry_run")
    target: str | tuple[str, int]
    if to in RESET_TO:
        target = str(to)
    elif isinstance(to, dict) and len(to) == 1 and next(iter(to)) in RESET_BY:
        kind, n = next(iter(to.items()))
        low = -(2**63) if kind == "shift" else 0
        if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= 2**63 - 1:
            raise errors.InvalidParams(f"'to.{kind}' must be an integer", field="to")
        target = (kind, n)
    else:
        raise errors.InvalidParams(
            "'to' must be \"earliest\", \"latest\", {\"offset\": n}, {\"shift\": n} or {\"timestamp\": ms}", field="to")
    return ResetParams(group, topic, None if partitions is None else tuple(sorted(set(partitions))), target,
                       bool(dry_run))

"""What the console shows, shaped from the node's RPC answers (pure: no I/O, no clock).

Every function here takes answers as the protocol gives them (docs/protocol.md:
C{Metadata}, C{DescribeTopic}, C{Poll}, C{ListGroups}, C{DescribeGroup},
C{ResetOffsets}) and returns the JSON the page reads, so the whole console can
be tested by feeding it answers.  Query strings and request bodies are checked
here too; a mistake is L{errors.InvalidParams} with the field, as the protocol
answers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from streamlog import errors

#: A message browser request reads from one of these; C{latest} means the last C{limit} messages.
BROWSE_FROM = ("earliest", "latest")


@attrs.frozen
class ConsoleConfig:
    """The console's settings (server options C{--console-*}, docs/console.md)."""

    #: Admin actions (create/delete topics, reset offsets) answer; off: 403 C{CONSOLE_READ_ONLY}.
    admin: bool = False
    #: Most messages one browser request returns (C{limit}).
    max_messages: int = 500
    #: Seconds between throughput and lag samples; 0 = no sampling (the charts stay empty).
    sample_interval: float = 5.0
    #: Samples kept (the charts' history is C{samples * sample_interval} seconds).
    samples: int = 120
    #: Groups whose lag each sample records (the first by name); the others are not charted.
    sample_max_groups: int = 20
    #: Largest request body (JSON) an admin action may send, in bytes.
    max_body_bytes: int = 65536

    def __attrs_post_init__(self) -> None:
        if self.max_messages < 1:
            raise ValueError("--console-max-messages must be at least 1")
        if self.sample_interval < 0:
            raise ValueError("--console-sample-interval must be 0 (off) or more")
        if self.samples < 2:
            raise ValueError("--console-samples must be at least 2 (a rate needs two)")
        if self.sample_max_groups < 0:
            raise ValueError("--console-sample-max-groups must be 0 or more")
        if self.max_body_bytes < 1024:
            raise ValueError("--console-max-body-bytes must be at least 1024")


# --- cluster and topics ----------------------------------------------------------------------


def overview(metadata: Mapping[str, Any], *, node_id: int, version: str, admin: bool) -> dict[str, Any]:
    """The cluster at a glance: its nodes (up or down), the controller, counts of topics and
    partitions, and the partitions whose in-sync replicas are fewer than their replicas."""
    topics = [t for t in metadata.get("topics", []) if "partitions" in t]
    partitions = [p for t in topics for p in t["partitions"]]
    nodes = [{"node_id": n["node_id"], "address": n.get("address"), "up": bool(n.get("up")),
              "controller": n["node_id"] == metadata.get("controller")} for n in metadata.get("nodes", [])]
    return {
        "node_id": node_id,
        "version": version,
        "admin": admin,
        "alone": bool(metadata.get("alone", False)),
        "cluster_id": metadata.get("cluster_id"),
        "controller": metadata.get("controller"),
        "controller_isr": list(metadata.get("controller_isr", [])),
        "nodes": sorted(nodes, key=lambda n: n["node_id"]),
        "nodes_up": sum(1 for n in nodes if n["up"]),
        "topics": sum(1 for t in topics if not t.get("internal")),
        "partitions": len(partitions),
        "offline_partitions": sum(1 for p in partitions if p.get("leader") is None),
        "under_replicated_partitions": sum(1 for p in partitions if _under_replicated(p)),
    }


def _under_replicated(partition: Mapping[str, Any]) -> bool:
    return len(partition.get("isr", [])) < len(partition.get("replicas", []))


def topic_view(metadata_topic: Mapping[str, Any], described: Mapping[str, Any] | None,
               sizes: Mapping[int, int], leader_offsets: Mapping[int, Mapping[str, Any]] | None = None,
               ) -> dict[str, Any]:
    """One topic: per partition its leader, replicas, in-sync replicas, offsets and size.

    C{metadata_topic} is the topic's entry of a C{Metadata} answer (leaders, replicas, ISR);
    C{described} the node's C{DescribeTopic} answer (offsets where this node holds a replica,
    and the config); C{sizes} the bytes of this node's replicas by partition;
    C{leader_offsets} offsets asked of the partitions' leaders (C{ListOffsets}), which win
    over a follower's.  An offset nobody gave is null, and so is the message count then.
    """
    local = {p["partition"]: p for p in (described or {}).get("partitions", [])}
    asked = leader_offsets or {}
    rows = []
    for p in metadata_topic.get("partitions", []):
        index = p["partition"]
        offsets = {**{k: local.get(index, {}).get(k) for k in ("log_start_offset", "high_watermark",
                                                                "log_end_offset")},
                   **{k: v for k, v in asked.get(index, {}).items() if v is not None}}
        start, high = offsets.get("log_start_offset"), offsets.get("high_watermark")
        rows.append({
            "partition": index,
            "leader": p.get("leader"),
            "leader_term": p.get("leader_term"),
            "replicas": list(p.get("replicas", [])),
            "isr": list(p.get("isr", [])),
            "under_replicated": _under_replicated(p),
            "log_start_offset": start,
            "high_watermark": high,
            "log_end_offset": offsets.get("log_end_offset"),
            "messages": high - start if start is not None and high is not None else None,
            "size_bytes": sizes.get(index),
        })
    rows.sort(key=lambda r: r["partition"])
    known = [r["messages"] for r in rows if r["messages"] is not None]
    size_known = [r["size_bytes"] for r in rows if r["size_bytes"] is not None]
    return {
        "topic": metadata_topic["topic"],
        "internal": bool(metadata_topic.get("internal", False)),
        "topic_id": metadata_topic.get("topic_id"),
        "replication_factor": (described or {}).get("replication_factor",
                                                    len(rows[0]["replicas"]) if rows else None),
        "config": (described or {}).get("config"),
        "partitions": rows,
        "messages": sum(known) if len(known) == len(rows) else None,
        "size_bytes": sum(size_known) if size_known else None,
    }


def topics_view(metadata: Mapping[str, Any], described: Mapping[str, Mapping[str, Any]],
                sizes: Mapping[str, Mapping[int, int]]) -> dict[str, Any]:
    """Every topic (internal ones last), as L{topic_view} gives each."""
    views = [topic_view(t, described.get(t["topic"]), sizes.get(t["topic"], {}))
             for t in metadata.get("topics", []) if "partitions" in t]
    views.sort(key=lambda v: (v["internal"], v["topic"]))
    return {"topics": views}


# --- the message browser ---------------------------------------------------------------------


@attrs.frozen
class Browse:
    """Where a message browser request starts: exactly one of an offset, a timestamp or a position."""

    offset: int | None = None
    timestamp: int | None = None
    position: str | None = None  # "earliest" | "latest"
    limit: int = 50


def parse_browse(query: Mapping[str, str], max_messages: int) -> Browse:
    """C{?offset=N}, C{?timestamp=MS} or C{?from=earliest|latest}, and C{&limit=K} (default 50,
    at most C{max_messages}); without any start: the latest messages."""
    unknown = sorted(set(query) - {"offset", "timestamp", "from", "limit"})
    if unknown:
        raise errors.InvalidParams(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    starts = [k for k in ("offset", "timestamp", "from") if k in query]
    if len(starts) > 1:
        raise errors.InvalidParams(f"give one of offset, timestamp or from, not {' and '.join(starts)}",
                                   field=starts[1])
    limit = _int(query, "limit", 50)
    if not 1 <= limit <= max_messages:
        raise errors.InvalidParams(f"'limit' must be between 1 and {max_messages} (--console-max-messages)",
                                   field="limit")
    if "offset" in query:
        return Browse(offset=_int(query, "offset", 0), limit=limit)
    if "timestamp" in query:
        return Browse(timestamp=_int(query, "timestamp", 0), limit=limit)
    position = query.get("from", "latest")
    if position not in BROWSE_FROM:
        raise errors.InvalidParams("'from' must be 'earliest' or 'latest'", field="from")
    return Browse(position=position, limit=limit)


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > 2**63 - 1:
        raise errors.InvalidParams(f"{name!r} must be an integer from 0 to 2^63-1, not {raw[:40]!r}", field=name)
    return int(raw)


def browse_start(browse: Browse, log_start: int, high_watermark: int) -> int:
    """The offset a C{from=} browse starts at: the log start, or C{limit} before the high watermark."""
    if browse.position == "earliest":
        return log_start
    return max(log_start, high_watermark - browse.limit)


def messages_view(topic: str, partition: int, poll: Mapping[str, Any]) -> dict[str, Any]:
    """A Poll answer for the browser, with where it was read (values stay as stored: the page
    pretty-prints them, as text it escapes)."""
    return {
        "topic": topic,
        "partition": partition,
        "messages": list(poll.get("messages", [])),
        "next_offset": poll.get("next_offset"),
        "high_watermark": poll.get("high_watermark"),
        "log_start_offset": poll.get("log_start_offset"),
    }


# --- groups ------------------------------------------------------------------------------------


def groups_view(listed: Mapping[str, Any]) -> dict[str, Any]:
    """ListGroups as it is, sorted, with C{unreachable} always present."""
    return {"groups": sorted(listed.get("groups", []), key=lambda g: g["group"]),
            "unreachable": list(listed.get("unreachable", []))}


def group_view(described: Mapping[str, Any]) -> dict[str, Any]:
    """DescribeGroup plus the group's total lag and, per partition, the member that holds it.

    The total is over the partitions that have a lag (a committed offset and a leader that
    answered); C{lag_unknown} counts the others (nothing committed yet, or no leader), and
    the total is null when no partition has a lag."""
    holders: dict[tuple[str, int], str] = {}
    for member in described.get("members", []):
        for entry in member.get("assignment", []):
            for p in entry.get("partitions", []):
                holders[(entry["topic"], p)] = member["member_id"]
    offsets = [{**o, "member_id": holders.get((o["topic"], o["partition"]))} for o in described.get("offsets", [])]
    lags = [o["lag"] for o in offsets if o.get("lag") is not None]
    return {
        **described,
        "offsets": offsets,
        "lag": sum(lags) if lags else None,
        "lag_unknown": len(offsets) - len(lags),
    }


def group_lag(described: Mapping[str, Any]) -> int | None:
    """The group's total lag (see L{group_view})."""
    return group_view(described)["lag"]  # type: ignore[no-any-return]


# --- admin bodies ------------------------------------------------------------------------------


def parse_create_topic(body: Any) -> dict[str, Any]:
    """The CreateTopic params of a console form: only the protocol's own fields (it checks them)."""
    if not isinstance(body, dict):
        raise errors.InvalidParams("the body must be a JSON object")
    allowed = {"topic", "partitions", "replication_factor", "config"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise errors.InvalidParams(f"unknown field {unknown[0]!r}", field=unknown[0])
    return {k: v for k, v in body.items() if v is not None or k == "config"}


def parse_reset(group: str, body: Any) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The ResetOffsets params of a console form, and (for a real reset) the plan it confirms.

    A reset that is not a dry run must carry C{confirm}: the C{offsets} its dry run answered
    (C{[{topic, partition, offset}]}).  The reset goes through only if a fresh dry run still
    gives exactly that, so what happens is what the operator saw.
    """
    if not isinstance(body, dict):
        raise errors.InvalidParams("the body must be a JSON object")
    allowed = {"topic", "partitions", "to", "dry_run", "confirm"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise errors.InvalidParams(f"unknown field {unknown[0]!r}", field=unknown[0])
    dry_run = body.get("dry_run", True)
    if not isinstance(dry_run, bool):
        raise errors.InvalidParams("'dry_run' must be true or false", field="dry_run")
    params = {"group": group, **{k: body[k] for k in ("topic", "partitions", "to") if k in body}}
    if dry_run:
        if "confirm" in body:
            raise errors.InvalidParams("'confirm' goes with a reset that is not a dry run", field="confirm")
        return {**params, "dry_run": True}, None
    confirm = body.get("confirm")
    if not isinstance(confirm, list) or not all(
            isinstance(c, dict) and set(c) >= {"topic", "partition", "offset"} for c in confirm):
        raise errors.InvalidParams("a reset that is not a dry run needs 'confirm': the offsets of its dry run "
                                   "([{topic, partition, offset}])", field="confirm")
    return {**params, "dry_run": True}, [{"topic": c["topic"], "partition": c["partition"], "offset": c["offset"]}
                                         for c in confirm]


def plan_of(reset_answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The C{[{topic, partition, offset}]} of a ResetOffsets answer, sorted (what C{confirm} holds)."""
    return sorted(({"topic": o["topic"], "partition": o["partition"], "offset": o["offset"]}
                   for o in reset_answer.get("offsets", [])), key=lambda o: (o["topic"], o["partition"]))


def same_plan(confirm: list[dict[str, Any]], dry_run_answer: Mapping[str, Any]) -> bool:
    """Whether C{confirm} is exactly the plan of C{dry_run_answer} (in any order)."""
    def key(o: Mapping[str, Any]) -> tuple[str, str]:
        return (repr(o["topic"]), repr(o["partition"]))
    return sorted(confirm, key=key) == sorted(plan_of(dry_run_answer), key=key)

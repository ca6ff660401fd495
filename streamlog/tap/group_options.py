"""The server's consumer-group options (docs/operations.md, "Consumer groups"), kept apart
from streamlog.tap.server's long list so each can be read (and changed) on its own."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from streamlog.groups.config import GroupConfig
from streamlog.groups.coordinator import GroupLimits

_DEFAULTS = GroupConfig()
_LIMITS = _DEFAULTS.limits

PARAMETERS: list[list[Any]] = [
    ["offsets-partitions", None, _DEFAULTS.offsets_partitions,
     "Partitions of the internal __consumer_offsets topic, when the first group request creates it.", int],
    ["offsets-replication-factor", None, None,
     "Replicas of each __consumer_offsets partition in a cluster (default: as --replication-factor).", int],
    ["group-max-members", None, _LIMITS.max_members, "Members one consumer group may have (GROUP_FULL past it).", int],
    ["group-min-session-timeout-ms", None, int(_LIMITS.min_session_timeout * 1000),
     "The shortest session timeout a JoinGroup may ask for (ms).", int],
    ["group-max-session-timeout-ms", None, int(_LIMITS.max_session_timeout * 1000),
     "The longest session timeout a JoinGroup may ask for (ms).", int],
    ["group-max-rebalance-timeout-ms", None, int(_LIMITS.max_rebalance_timeout * 1000),
     "The longest rebalance timeout a JoinGroup may ask for (ms).", int],
    ["group-heartbeat-interval-ms", None, int(_LIMITS.heartbeat_interval * 1000),
     "The heartbeat interval group members are told (at most a third of their session timeout; ms).", int],
    ["group-takeover-hold-ms", None, int(_LIMITS.takeover_hold * 1000),
     "A node taking over groups from an offsets log without membership records (written by an older "
     "version) grants no partition for this long (ms).", int],
    ["offsets-replay-slice-records", None, _DEFAULTS.replay_slice_records,
     "Records of an offsets partition a new coordinator replays per reactor turn.", int],
    ["offsets-snapshot-records", None, _DEFAULTS.snapshot_records,
     "Records appended to an offsets partition between two snapshots of its groups (0: no snapshots, "
     "no compaction).", int],
    ["group-offsets-retention", None, int(_DEFAULTS.offsets_retention),
     "Seconds a consumer group with no members and no offset commit is kept before its coordinator deletes "
     "it, offsets and all (default 7 days, as Kafka's offsets.retention.minutes; 0: kept for ever).", int],
    ["group-retention-deletes-per-turn", None, _DEFAULTS.retention_deletes_per_turn,
     "Idle groups a coordinator checks and deletes per offsets partition and reactor turn (the rest on the "
     "next turns).", int],
]


def check(options: Any) -> None:
    """Raise UsageError for group options a node cannot run with."""
    if not 1 <= options["offsets-partitions"] <= options["max-partitions"]:
        raise usage.UsageError(f"--offsets-partitions must be between 1 and --max-partitions ({options['max-partitions']})")
    factor = options["offsets-replication-factor"]
    if factor is not None and not 1 <= factor <= 7:
        raise usage.UsageError("--offsets-replication-factor must be between 1 and 7")
    for name in ("group-max-members", "group-min-session-timeout-ms", "group-max-session-timeout-ms",
                 "group-max-rebalance-timeout-ms", "group-heartbeat-interval-ms"):
        if options[name] < 1:
            raise usage.UsageError(f"--{name} must be at least 1")
    if options["offsets-replay-slice-records"] < 1:
        raise usage.UsageError("--offsets-replay-slice-records must be at least 1")
    if options["offsets-snapshot-records"] < 0:
        raise usage.UsageError("--offsets-snapshot-records must be 0 or more")
    if options["group-offsets-retention"] < 0:
        raise usage.UsageError("--group-offsets-retention must be 0 (keep for ever) or more seconds")
    if options["group-retention-deletes-per-turn"] < 1:
        raise usage.UsageError("--group-retention-deletes-per-turn must be at least 1")
    if options["group-takeover-hold-ms"] < 0:
        raise usage.UsageError("--group-takeover-hold-ms must be 0 or more")
    if options["group-min-session-timeout-ms"] > options["group-max-session-timeout-ms"]:
        raise usage.UsageError("--group-min-session-timeout-ms must not be above --group-max-session-timeout-ms")


def group_config(options: Any) -> GroupConfig:
    return GroupConfig(
        offsets_partitions=options["offsets-partitions"],
        offsets_replication_factor=options["offsets-replication-factor"],
        replay_slice_records=options["offsets-replay-slice-records"],
        snapshot_records=options["offsets-snapshot-records"],
        offsets_retention=float(options["group-offsets-retention"]),
        retention_deletes_per_turn=options["group-retention-deletes-per-turn"],
        limits=GroupLimits(
            max_members=options["group-max-members"],
            min_session_timeout=options["group-min-session-timeout-ms"] / 1000.0,
            max_session_timeout=options["group-max-session-timeout-ms"] / 1000.0,
            max_rebalance_timeout=options["group-max-rebalance-timeout-ms"] / 1000.0,
            heartbeat_interval=options["group-heartbeat-interval-ms"] / 1000.0,
            takeover_hold=options["group-takeover-hold-ms"] / 1000.0,
        ),
    )

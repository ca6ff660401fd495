"""The server's consumer-group options: defaults, values, and the ones refused."""

from __future__ import annotations

import pytest
from twisted.python import usage

from streamlog.groups.config import GroupConfig
from streamlog.tap.server import Options


def parse(*args):
    options = Options()
    options.parseOptions(["--storage", "memory", *args])
    return options.node_config()


def test_defaults_are_the_group_config_defaults():
    config = parse()
    assert config.groups == GroupConfig()
    assert config.broker_config().groups == GroupConfig()


def test_options_reach_the_group_config():
    groups = parse("--offsets-partitions", "7", "--offsets-replication-factor", "3", "--group-max-members", "5",
                   "--group-min-session-timeout-ms", "200", "--group-max-session-timeout-ms", "9000",
                   "--group-max-rebalance-timeout-ms", "4000", "--group-heartbeat-interval-ms", "250",
                   "--group-takeover-hold-ms", "0").groups
    assert groups.offsets_partitions == 7 and groups.offsets_replication_factor == 3
    limits = groups.limits
    assert (limits.max_members, limits.min_session_timeout, limits.max_session_timeout,
            limits.max_rebalance_timeout, limits.heartbeat_interval, limits.takeover_hold) == (5, 0.2, 9.0, 4.0, 0.25, 0)


@pytest.mark.parametrize("args", [
    ["--offsets-partitions", "0"], ["--offsets-partitions", "2000"], ["--offsets-replication-factor", "8"],
    ["--group-max-members", "0"], ["--group-heartbeat-interval-ms", "0"], ["--group-takeover-hold-ms", "-1"],
    ["--offsets-replay-slice-records", "0"], ["--offsets-snapshot-records", "-1"],
    ["--group-offsets-retention", "-1"], ["--group-retention-deletes-per-turn", "0"],
    ["--group-min-session-timeout-ms", "5000", "--group-max-session-timeout-ms", "4000"],
])
def test_bad_values_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_snapshot_and_replay_options_reach_the_group_config():
    groups = parse("--offsets-snapshot-records", "0", "--offsets-replay-slice-records", "500").groups
    assert (groups.snapshot_records, groups.replay_slice_records) == (0, 500)
    assert (GroupConfig().snapshot_records, GroupConfig().replay_slice_records) == (10_000, 10_000)


def test_offsets_retention_options_reach_the_group_config():
    assert (GroupConfig().offsets_retention, GroupConfig().retention_deletes_per_turn) == (7 * 24 * 3600, 100)
    groups = parse("--group-offsets-retention", "3600", "--group-retention-deletes-per-turn", "5").groups
    assert (groups.offsets_retention, groups.retention_deletes_per_turn) == (3600.0, 5)
    assert parse("--group-offsets-retention", "0").groups.offsets_retention == 0  # kept for ever

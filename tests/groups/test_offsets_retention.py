"""Offsets retention (--group-offsets-retention): a group with no members and no commit for that
long is deleted by its coordinator, with the record DeleteGroup writes; its idle time is derived
from the stored records, so a replay at a new coordinator agrees."""

from __future__ import annotations

import attrs
import orjson
import pytest
from coordinator_support import ok

from streamlog import errors
from streamlog.broker.broker import BrokerConfig
from streamlog.broker.groups import duration_text
from streamlog.groups.config import OFFSETS_TOPIC, GroupConfig
from streamlog.groups.coordinator import GroupLimits
from streamlog.groups.retention import GroupActivity
from streamlog.testing import BrokerHarness, ClusterHarness, stored_records

RETENTION = 100.0


def harness_with(clock, **config):
    return BrokerHarness(clock=clock, config=BrokerConfig(groups=GroupConfig(
        offsets_partitions=1, **{"limits": GroupLimits(min_session_timeout=1.0), "offsets_retention": RETENTION,
                                 **config})))


@pytest.fixture
def harness(clock):
    h = harness_with(clock)
    yield h
    h.broker.groups.stop()
    h.stop()


def at(clock, when):
    """Advance the clock to C{when} (simulated seconds)."""
    assert when >= clock.seconds()
    clock.advance(when - clock.seconds())


def commit(conn, group="g", offset=5, **member):
    return ok(conn.call("CommitOffsets", {"group": group, **member, "offsets": [
        {"topic": "t", "partition": 0, "offset": offset}]}))


def exists(conn, group="g"):
    """Whether the coordinator knows the group (ListGroups: with members, committed offsets, or
    membership records only; DescribeGroup does not show an empty group without offsets)."""
    return group in [g["group"] for g in ok(conn.call("ListGroups", {}))["groups"]]


def member_leaves_at(conn, clock, when, group="g"):
    """A member joins at once, commits, and leaves at C{when}: the group is empty from then."""
    member = ok(conn.call("JoinGroup", {"group": group, "topics": ["t"], "session_timeout_ms": 1_800_000}))
    commit(conn, group, member_id=member["member_id"], generation=member["generation"])
    at(clock, when)
    ok(conn.call("LeaveGroup", {"group": group, "member_id": member["member_id"]}))


def test_an_empty_group_is_deleted_once_idle_for_the_retention_with_a_delete_record(harness, conn, clock):
    member_leaves_at(conn, clock, 10.0)
    at(clock, 10.0 + RETENTION - 0.01)
    assert exists(conn) and ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"]
    at(clock, 10.0 + RETENTION)
    assert not exists(conn)
    assert ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"] == []
    assert ok(conn.call("ListGroups", {}))["groups"] == []
    last = stored_records(harness.broker, OFFSETS_TOPIC)[-1]
    assert (last["key"], last["value"]) == ("g", {"type": "delete", "group": "g"})  # as DeleteGroup writes
    assert harness.broker.groups._timer is None  # nothing left to check
    # A replay agrees: the group stays deleted.
    harness.broker.groups.shards.clear()
    assert not exists(conn)


def test_a_group_with_members_is_kept_however_long_and_counts_from_its_last_member_going(harness, conn, clock):
    member = ok(conn.call("JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 1_800_000}))
    at(clock, 3 * RETENTION)  # no heartbeat, no write: but it has a member
    assert exists(conn)
    ok(conn.call("LeaveGroup", {"group": "g", "member_id": member["member_id"]}))
    at(clock, 4 * RETENTION - 0.01)
    assert exists(conn)
    at(clock, 4 * RETENTION)
    assert not exists(conn)


def test_a_member_joining_meanwhile_keeps_the_group(harness, conn, clock):
    member_leaves_at(conn, clock, 10.0)
    at(clock, 60.0)
    member = ok(conn.call("JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 1_800_000}))
    at(clock, 200.0)
    assert exists(conn) and ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"]
    ok(conn.call("LeaveGroup", {"group": "g", "member_id": member["member_id"]}))
    at(clock, 200.0 + RETENTION - 0.01)
    assert exists(conn)
    at(clock, 200.0 + RETENTION)
    assert not exists(conn)


def test_a_commit_meanwhile_keeps_the_group_for_a_retention_from_it(harness, conn, clock):
    member_leaves_at(conn, clock, 10.0)
    at(clock, 60.0)
    commit(conn, offset=9)  # an outsider's commit (the group has no members)
    at(clock, 60.0 + RETENTION - 0.01)
    assert [o["offset"] for o in ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"]] == [9]
    at(clock, 60.0 + RETENTION)
    assert not exists(conn)


def test_a_reset_counts_as_a_commit(harness, conn, clock):
    member_leaves_at(conn, clock, 10.0)
    at(clock, 60.0)
    ok(conn.call("ResetOffsets", {"group": "g", "topic": "t", "to": "earliest"}))
    at(clock, 60.0 + RETENTION - 0.01)
    assert exists(conn)
    at(clock, 60.0 + RETENTION)
    assert not exists(conn)


def test_retention_zero_keeps_empty_groups_for_ever(clock):
    h = harness_with(clock, offsets_retention=0.0)
    try:
        conn = h.connect()
        ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
        member_leaves_at(conn, clock, 10.0)
        commit(conn, "other")
        assert h.broker.groups._timer is None  # no members, no retention: no timer at all
        at(clock, 365 * 24 * 3600.0)
        assert exists(conn) and exists(conn, "other")
    finally:
        h.broker.groups.stop()
        h.stop()


def test_the_idle_time_survives_a_replay_from_a_snapshot(clock):
    """The shard reloads from a snapshot written after the group became empty: the group is
    deleted a retention after it became empty, not after the snapshot or the reload."""
    h = harness_with(clock, snapshot_records=4)
    try:
        conn = h.connect()
        ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
        member_leaves_at(conn, clock, 10.0)  # group, member, commit, member_gone + group records
        at(clock, 50.0)
        for offset in range(1, 5):  # another group's commits: a snapshot of both at 50
            commit(conn, "busy", offset=offset)
        h.broker.apply_retention()  # compaction: the records before the snapshot are gone
        replica = h.broker.topics[OFFSETS_TOPIC].partitions[0]
        kept = h.broker.handle_poll({"topic": OFFSETS_TOPIC, "partition": 0, "offset": replica.start_offset})
        records = [r["value"] for r in orjson.loads(b"".join(kept.chunks))["messages"]]
        assert replica.start_offset > 0 and records[0]["type"] == "snapshot"
        assert [(r["type"], r.get("active_ms")) for r in records[1:] if r["group"] == "g"] == [
            ("group", 10_000), ("offsets_snapshot", 10_000)]  # the snapshot says when g became empty
        at(clock, 70.0)
        h.broker.groups.shards.clear()  # as a new leader would: replay the partition (from the snapshot)
        h.broker.groups.load_led()
        at(clock, 10.0 + RETENTION - 0.01)
        assert exists(conn)
        at(clock, 10.0 + RETENTION)
        assert not exists(conn) and exists(conn, "busy")
        at(clock, 50.0 + RETENTION)
        assert not exists(conn, "busy")
    finally:
        h.broker.groups.stop()
        h.stop()


def test_deletes_are_bounded_per_turn(clock):
    h = harness_with(clock, retention_deletes_per_turn=2)
    try:
        conn = h.connect()
        ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
        names = [f"g{i}" for i in range(5)]
        for name in names:
            commit(conn, name)
        service = h.broker.groups
        batches = []
        delete = service._delete
        service._delete = lambda shard, groups: (batches.append(list(groups)), delete(shard, groups))[1]
        at(clock, RETENTION)
        assert [len(b) for b in batches] == [2, 2, 1]  # one batch per turn (Clock.advance runs the next turns)
        assert sorted(g for b in batches for g in b) == names
        assert not any(exists(conn, name) for name in names)
    finally:
        h.broker.groups.stop()
        h.stop()


def test_a_shard_whose_write_failed_is_replayed_without_a_request_and_retention_goes_on(clock):
    """A write that fails while this node still leads leaves the shard stale (its memory may hold
    what the log does not): it is replayed on the next turn once its writes settled, not only at
    the next group request or /metrics scrape, so its idle groups are still deleted on time."""
    h = harness_with(clock)
    try:
        conn = h.connect()
        ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
        member_leaves_at(conn, clock, 0.0, group="old")  # membership records: no take-over hold
        at(clock, RETENTION / 2)
        real = h.broker.send

        def fail_once(p):
            h.broker.send = real
            raise errors.TooManyOpenFiles("out of descriptors", topic=p.topic, partition=0)

        h.broker.send = fail_once
        assert "error" in conn.call("CommitOffsets", {"group": "x", "offsets": [
            {"topic": "t", "partition": 0, "offset": 1}]})
        failed = h.broker.groups.shards[0]
        assert failed.stale
        clock.advance(0)
        shard = h.broker.groups.shards[0]
        assert shard is not failed and not shard.stale and shard.replay_at is None
        at(clock, RETENTION - 0.01)
        assert shard.offsets.has_group("old")
        at(clock, RETENTION)
        assert not shard.offsets.has_group("old")
    finally:
        h.broker.groups.stop()
        h.stop()


def test_a_stopping_node_deletes_no_group_so_a_refused_delete_does_not_replay_in_a_loop(clock):
    """While the node stops (Send refused, SHUTTING_DOWN) a retention delete would fail, the shard
    turn stale, be replayed on the next turn and find the group due again, at 0 delay: it waits."""
    h = harness_with(clock)
    try:
        conn = h.connect()
        ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
        commit(conn, "old")
        service = h.broker.groups
        loads = []
        real = service._load

        def load(replica):
            loads.append(clock.seconds())
            if len(loads) > 5:
                raise RuntimeError("replayed in a loop")  # stops it: load_led logs and drops the shard
            return real(replica)

        service._load = load
        h.broker.stopping = True
        at(clock, RETENTION + 1)
        assert loads == [] and service.shards[0].offsets.has_group("old")
    finally:
        h.broker.groups.stop()
        h.stop()


def test_a_restart_on_a_log_without_membership_records_keeps_idle_groups_for_the_longest_session(clock):
    """One node, restarted (replayed) on a log of commits only: its members are unknown to it as to
    a new coordinator in a cluster, and their groups look idle until they rejoin; no grant hold
    (no other coordinator may be serving them), but the same retention hold."""
    limits = GroupLimits(min_session_timeout=1.0, max_session_timeout=30.0, takeover_hold=10.0)
    h = harness_with(clock, offsets_retention=0.0, limits=limits)
    try:
        conn = h.connect()
        ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
        commit(conn)
        at(clock, 2 * RETENTION)
        service = h.broker.groups
        service.config = attrs.evolve(service.config, offsets_retention=RETENTION)
        service.shards.clear()
        service.load_led()
        shard = service.shards[0]
        assert shard.coordinator.hold_until == 0.0
        assert shard.retention_hold_until == 2 * RETENTION + limits.max_session_timeout
        at(clock, shard.retention_hold_until - 0.01)
        assert exists(conn)
        at(clock, shard.retention_hold_until)
        assert not exists(conn)
    finally:
        h.broker.groups.stop()
        h.stop()


def coordinator_of(cluster, group="g"):
    """The node FindCoordinator names for C{group} (None while electing)."""
    return cluster.call(1, "FindCoordinator", {"group": group}).get("result", {}).get("coordinator")


def at_coordinator(cluster, method, params, group="g"):
    """C{method} at the group's coordinator, retried while it is elected or moves; its result."""
    got = []

    def answered():
        node = coordinator_of(cluster, group)
        answer = cluster.call(node, method, params) if node is not None else {"error": {}}
        if "result" in answer:
            got.append(answer["result"])
            return True
        return False

    cluster.run_until(answered, timeout=20)
    return got[0]


def test_a_new_coordinator_deletes_at_the_time_the_group_became_empty_at_the_old_one():
    cluster = ClusterHarness(3, groups=GroupConfig(offsets_partitions=1, offsets_retention=RETENTION))
    try:
        cluster.run_until_formed()
        cluster.create_topics("t", partitions=2)

        member = at_coordinator(cluster, "JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 1_800_000})
        at_coordinator(cluster, "CommitOffsets", {"group": "g", "member_id": member["member_id"],
                                                  "generation": member["generation"],
                                                  "offsets": [{"topic": "t", "partition": 0, "offset": 3}]})
        at_coordinator(cluster, "LeaveGroup", {"group": "g", "member_id": member["member_id"]})
        coordinator_node = coordinator_of(cluster)
        empty_at = cluster.clock.seconds()
        cluster.run(20.0)
        cluster.kill(coordinator_node)
        cluster.run_until(lambda: cluster.leader_of(OFFSETS_TOPIC) not in (None, coordinator_node), timeout=20)
        cluster.run(5.0)  # settled (the planner may move it once more): loaded there, at no request
        new = cluster.leader_of(OFFSETS_TOPIC)
        shard = cluster.brokers[new].groups.shards[0]
        assert shard.offsets.has_group("g")
        assert shard.activity.last["g"] == pytest.approx(empty_at * 1000, abs=20)  # not the take-over time
        cluster.run_until(lambda: cluster.clock.seconds() >= empty_at + RETENTION - 0.1, timeout=RETENTION)
        assert shard.offsets.has_group("g")
        cluster.run(0.2)
        assert not shard.offsets.has_group("g") and shard.coordinator.group("g") is None
        last = stored_records(cluster.brokers[new], OFFSETS_TOPIC)[-1]
        assert last["value"] == {"type": "delete", "group": "g"}
    finally:
        for broker in cluster.brokers.values():
            broker.groups.stop()
        cluster.stop()


def test_a_take_over_of_a_log_without_membership_records_keeps_idle_groups_for_the_longest_session():
    """A log with commits and no membership record (as a version without membership records wrote
    it, and without retention: set only after the commit here) leaves the new coordinator knowing
    none of the members that may still be alive: a live member of an idle topic commits nothing,
    so its group looks idle. The coordinator deletes no group until the longest session a member
    may have (--group-max-session-timeout-ms) ran out from the take-over; the timer waits for
    that (it does not spin at 0 delay meanwhile), then the group goes."""
    limits = GroupLimits(max_session_timeout=30.0, takeover_hold=10.0)
    cluster = ClusterHarness(3, groups=GroupConfig(offsets_partitions=1, offsets_retention=0.0, limits=limits))
    try:
        cluster.run_until_formed()
        cluster.create_topics("t", partitions=2)
        at_coordinator(cluster, "CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 0, "offset": 3}]})
        old = coordinator_of(cluster)
        cluster.run(2 * RETENTION)  # idle for longer than the retention set now
        for broker in cluster.brokers.values():
            broker.groups.config = attrs.evolve(broker.groups.config, offsets_retention=RETENTION)
        cluster.kill(old)
        cluster.brokers[old].groups.stop()
        cluster.run_until(lambda: cluster.leader_of(OFFSETS_TOPIC) not in (None, old), timeout=20)
        new = cluster.leader_of(OFFSETS_TOPIC)
        service = cluster.brokers[new].groups
        cluster.run_until(lambda: 0 in service.shards and service.shards[0].replay_at is None, timeout=5)
        shard = service.shards[0]
        took_over = cluster.clock.seconds()
        assert shard.coordinator.hold_until == pytest.approx(took_over + limits.takeover_hold, abs=0.05)
        assert shard.retention_hold_until == pytest.approx(took_over + limits.max_session_timeout, abs=0.05)
        expires = []
        real = service._expire
        service._expire = lambda: (expires.append(cluster.clock.seconds()), real())[1]
        service._schedule()
        cluster.run_until(lambda: cluster.clock.seconds() >= shard.retention_hold_until - 0.1, timeout=60)
        assert cluster.leader_of(OFFSETS_TOPIC) == new
        assert shard.offsets.has_group("g")  # kept through the hold ...
        assert len(expires) < 10  # ... by a timer set for its end, not one at 0 delay every turn
        cluster.run(0.2)
        assert not shard.offsets.has_group("g")  # ... and deleted once it ended
        assert stored_records(cluster.brokers[new], OFFSETS_TOPIC)[-1]["value"] == {"type": "delete", "group": "g"}
    finally:
        for broker in cluster.brokers.values():
            broker.groups.stop()
        cluster.stop()


# --- the pure part -------------------------------------------------------------------


def test_group_activity_gives_idle_groups_once_and_requeues_active_ones():
    activity = GroupActivity()
    members: set[str] = set()
    activity.note("a", 0)
    activity.note("b", 10)
    activity.note("a", 50)  # active again: still one entry, found stale when it comes out
    assert activity.next_due(100) == 100
    assert activity.expired(109, 100, members.__contains__, limit=10) == []  # a requeued at 50
    assert activity.next_due(100) == 110
    assert activity.expired(110, 100, members.__contains__, limit=10) == ["b"]
    assert activity.expired(149, 100, members.__contains__, limit=10) == []  # b is not given twice
    activity.note("c", 40)
    members.add("c")
    assert activity.expired(150, 100, members.__contains__, limit=10) == ["a"]  # c has members: dropped
    assert activity.next_due(100) is None
    activity.forget("c")
    activity.note("d", 0)
    activity.note("e", 0)
    assert activity.expired(500, 100, members.__contains__, limit=1) == ["d"]  # at most one entry looked at
    assert activity.expired(500, 100, members.__contains__, limit=1) == ["e"]


def test_a_shard_derives_activity_from_record_timestamps_and_snapshot_active_ms():
    from streamlog.groups.coordinator import GroupCoordinator
    from streamlog.groups.state import ShardState

    def replayed(records):
        shard = ShardState(GroupCoordinator(lambda t: 2, lambda g: "m"))
        for value, timestamp in records:
            shard.apply_stored(value, timestamp)
        return shard

    group = {"type": "group", "group": "g", "assignor": "sticky", "generation": 2, "counts": {"t": 2}}
    commit = {"type": "commit", "group": "h", "offsets": [{"topic": "t", "partition": 0, "offset": 1}]}
    shard = replayed([(group, 1000), (commit, 2000), ({"type": "member_gone", "group": "g", "member_id": "m"}, 3000),
                      ({"type": "delete", "group": "x"}, 4000)])
    assert shard.activity.last == {"g": 3000, "h": 2000}
    snapshot = shard.snapshot()
    assert [v.get("active_ms") for _, v in snapshot[1:]] == [3000, 2000]
    again = replayed([(value, 9000) for _, value in snapshot])  # the snapshot's own time is not the activity
    assert again.activity.last == {"g": 3000, "h": 2000}
    # A snapshot of an older version (no active_ms): its time, conservatively.
    older = replayed([({k: v for k, v in value.items() if k != "active_ms"}, 9000) for _, value in snapshot])
    assert older.activity.last == {"g": 9000, "h": 9000}
    assert replayed([(commit, 2000), ({"type": "delete", "group": "h"}, 2500)]).activity.last == {}


def test_the_deletion_log_line_gives_the_retention_in_its_largest_whole_unit():
    assert [duration_text(s) for s in (604800.0, 7200.0, 5400.0, 100.0, 0.5, 90061.0)] == \
        ["7 d", "2 h", "90 min", "100 s", "0.5 s", "90061 s"]

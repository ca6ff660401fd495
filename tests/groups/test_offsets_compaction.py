"""Snapshots of an offsets partition's groups, the removal of the records before them (on every
replica), and the replay in slices that yield to the reactor (COORDINATOR_NOT_AVAILABLE, loading)."""

from __future__ import annotations

import orjson
import pytest
from coordinator_support import ok

from streamlog.broker.broker import BrokerConfig
from streamlog.groups.config import OFFSETS_TOPIC, GroupConfig
from streamlog.groups.coordinator import GroupLimits
from streamlog.partitioner import partition_for_key
from streamlog.testing import BrokerHarness, ClusterHarness

SHARD = partition_for_key("g", 2)


def harness_with(clock, **config):
    return BrokerHarness(clock=clock, config=BrokerConfig(groups=GroupConfig(
        offsets_partitions=2, limits=GroupLimits(min_session_timeout=1.0), **config)))


@pytest.fixture
def harness(clock):
    h = harness_with(clock, snapshot_records=20, replay_slice_records=7)
    yield h
    h.broker.groups.stop()
    h.stop()


def commit(conn, offset, partition=0, **member):
    return ok(conn.call("CommitOffsets", {"group": "g", **member, "offsets": [
        {"topic": "t", "partition": partition, "offset": offset, "metadata": f"m{offset}"}]}))


def types(harness):
    """The types of the shard's records, from its log start."""
    start = harness.broker.topics[OFFSETS_TOPIC].partitions[SHARD].start_offset
    result = harness.broker.handle_poll({"topic": OFFSETS_TOPIC, "partition": SHARD, "offset": start})
    return [r["value"]["type"] for r in orjson.loads(b"".join(result.chunks))["messages"]]


def test_a_snapshot_follows_every_n_records_and_compaction_removes_what_is_before_it(harness, clock):
    conn = harness.connect()
    ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
    for offset in range(1, 46):
        clock.advance(1)
        commit(conn, offset, partition=offset % 2)
    kinds = types(harness)
    assert kinds.count("snapshot") == 2  # after 20 records, and after 20 more
    replica = harness.broker.topics[OFFSETS_TOPIC].partitions[SHARD]
    last = len(kinds) - 1 - kinds[::-1].index("snapshot")
    harness.broker.apply_retention()
    assert replica.start_offset == last
    assert types(harness)[0] == "snapshot"
    fetched = ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"]
    harness.broker.groups.shards.clear()  # a new leader replays the snapshot and what follows it
    while "error" in (again := conn.call("FetchOffsets", {"group": "g"})):
        assert again["error"]["code"] == "COORDINATOR_NOT_AVAILABLE" and again["error"]["loading"] is True
        clock.advance(0)
    assert again["result"]["offsets"] == fetched  # offsets, metadata and commit timestamps
    assert [(o["partition"], o["offset"]) for o in fetched] == [(0, 44), (1, 45)]


def test_membership_survives_a_snapshot_and_compaction(harness, clock):
    conn = harness.connect()
    ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
    a = ok(conn.call("JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 5000}))
    member = {"member_id": a["member_id"], "generation": a["generation"]}
    for offset in range(1, 30):
        commit(conn, offset, **member)
    harness.broker.apply_retention()
    assert "member" not in types(harness)[:1] and types(harness).count("snapshot") == 1
    harness.broker.groups.shards.clear()
    while "error" in (beat := conn.call("Heartbeat", {"group": "g", "member_id": a["member_id"],
                                                      "owned": a["assignment"]})):
        clock.advance(0)
    assert (beat["result"]["generation"], beat["result"]["assignment"]) == (a["generation"], a["assignment"])
    commit(conn, 30, **member)


def test_the_replay_yields_to_the_reactor_between_slices(clock):
    h = harness_with(clock, snapshot_records=0, replay_slice_records=10)
    try:
        conn = h.connect()
        for offset in range(1, 101):
            commit(conn, offset)
        assert len(types(h)) == 100 and "snapshot" not in types(h)
        h.broker.apply_retention()  # no snapshots: nothing removed
        assert h.broker.topics[OFFSETS_TOPIC].partitions[SHARD].start_offset == 0
        service = h.broker.groups
        slices = []
        replay = service._replay
        # (The other offsets partition is loaded too, on the turn after its creation: not counted.)
        service._replay = lambda replica, shard: (
            slices.append(shard.replay_at) if shard.index == SHARD else None, replay(replica, shard))
        service.shards.clear()
        error = conn.call("FetchOffsets", {"group": "g"})["error"]
        assert (error["code"], error["loading"]) == ("COORDINATOR_NOT_AVAILABLE", True)
        assert "10 of 100 records" in error["message"]
        # The first slice ran at the request; the next one waits for the reactor's next turn.
        assert slices == [0] and [c.getTime() for c in clock.getDelayedCalls() if c.func == service._replay_step]
        assert ok(conn.call("Ping", {}))["pong"]  # the node serves others meanwhile
        assert conn.call("DescribeGroup", {"group": "g"})["error"]["code"] == "COORDINATOR_NOT_AVAILABLE"
        clock.advance(0)
        assert slices == list(range(0, 100, 10))  # one slice per turn
        assert ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"][0]["offset"] == 100
    finally:
        h.broker.groups.stop()
        h.stop()


def test_every_replica_removes_the_records_before_the_snapshot():
    cluster = ClusterHarness(3, groups=GroupConfig(snapshot_records=10, offsets_partitions=1))
    try:
        cluster.run_until(lambda: cluster.controller() is not None
                          and all(len(n.state.nodes) == 3 for n in cluster.nodes.values()))
        assert "result" in cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 1})

        def coordinator():
            answer = cluster.call(1, "FindCoordinator", {"group": "g"})
            return answer.get("result", {}).get("coordinator")

        cluster.run_until(lambda: coordinator() is not None, timeout=20)
        for offset in range(1, 26):
            while "error" in cluster.call(coordinator(), "CommitOffsets", {
                    "group": "g", "offsets": [{"topic": "t", "partition": 0, "offset": offset}]}):
                cluster.run(0.5)  # the coordinator moved (the planner's preferred leader): ask again
        cluster.run(1.0)  # followers learn the commit index
        starts = {}
        for i, broker in cluster.brokers.items():
            broker.apply_retention()
            starts[i] = broker.topics[OFFSETS_TOPIC].partitions[0].start_offset
        assert len(set(starts.values())) == 1 and starts[1] >= 20, starts
        answer = cluster.call(coordinator(), "FetchOffsets", {"group": "g"})["result"]["offsets"]
        assert answer[0]["offset"] == 25
    finally:
        for broker in cluster.brokers.values():
            broker.groups.stop()
        cluster.stop()


def test_a_session_check_during_the_replay_leaves_the_members_alone(clock):
    h = harness_with(clock, snapshot_records=0, replay_slice_records=5)
    try:
        conn = h.connect()
        ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
        a = ok(conn.call("JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 5000}))
        for offset in range(1, 30):
            commit(conn, offset, member_id=a["member_id"], generation=a["generation"])
        service = h.broker.groups
        service.shards.clear()
        assert conn.call("Heartbeat", {"group": "g", "member_id": a["member_id"], "owned": a["assignment"]}
                         )["error"]["loading"] is True
        # Time passes while it replays (past the restored members' deadlines: the log does not
        # say when they were last heard of), and another shard's session check comes.
        clock.rightNow += 100
        service._expire()
        assert service.shards[SHARD].coordinator.group("g").members  # not expired (not resumed yet either)
        clock.advance(0)
        beat = ok(conn.call("Heartbeat", {"group": "g", "member_id": a["member_id"], "owned": a["assignment"]}))
        assert beat["generation"] == a["generation"]
    finally:
        h.broker.groups.stop()
        h.stop()


def test_a_large_group_is_snapshotted_in_records_under_the_message_limit():
    from coordinator_support import make_coordinator

    from streamlog.groups.offsets import OffsetCommit, OffsetRecord
    from streamlog.groups.state import SNAPSHOT_RECORD_BYTES, ShardState

    state = ShardState(make_coordinator())
    offsets = tuple(OffsetCommit("t", p, p, "\u2603" * 4096) for p in range(300))
    state.offsets.apply(OffsetRecord("commit", "g", offsets), 7)
    snapshot = state.snapshot()
    chunks = [v for _, v in snapshot if v["type"] == "offsets_snapshot"]
    assert len(chunks) > 1 and snapshot[0][1] == {"type": "snapshot", "group": "", "records": len(snapshot) - 1}
    assert all(len(orjson.dumps(v)) < SNAPSHOT_RECORD_BYTES + 30_000 for v in chunks)
    again = ShardState(make_coordinator())
    for _, value in snapshot:
        again.apply_stored(value, 99)
    assert again.offsets.groups == state.offsets.groups and again.since_snapshot == 0

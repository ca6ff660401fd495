"""The group RPCs on one node (a cluster of one), over in-memory transports and a Clock."""

from __future__ import annotations

import pytest
from coordinator_support import err, ok
from twisted.internet.defer import Deferred

from streamlog import wire
from streamlog.broker.broker import BrokerConfig
from streamlog.groups.config import OFFSETS_TOPIC, GroupConfig
from streamlog.groups.coordinator import GroupLimits
from streamlog.partitioner import partition_for_key
from streamlog.testing import BrokerHarness, stored_records


@pytest.fixture
def harness(clock):
    h = BrokerHarness(clock=clock, config=BrokerConfig(groups=GroupConfig(
        offsets_partitions=3, limits=GroupLimits(min_session_timeout=1.0, heartbeat_interval=1.0))))
    yield h
    h.broker.groups.stop()
    h.stop()


def join(conn, group="g", **extra):
    return ok(conn.call("JoinGroup", {"group": group, "topics": ["t"], "session_timeout_ms": 5000, **extra}))


def parts(wire_list, topic="t"):
    return sorted(p for e in wire_list if e["topic"] == topic for p in e["partitions"])


def test_find_coordinator_creates_the_offsets_topic_and_names_the_partition(harness, conn):
    answer = ok(conn.call("FindCoordinator", {"group": "g"}))
    assert answer == {"group": "g", "partition": partition_for_key("g", 3), "coordinator": None,
                      "coordinator_address": None}
    assert len(harness.broker.topics[OFFSETS_TOPIC].partitions) == 3


def test_join_heartbeat_and_commit_then_fetch(harness, conn):
    a = join(conn)
    assert a["generation"] == 1 and parts(a["assignment"]) == [0, 1, 2, 3]
    assert a["heartbeat_interval_ms"] == 1000
    committed = ok(conn.call("CommitOffsets", {
        "group": "g", "member_id": a["member_id"], "generation": 1,
        "offsets": [{"topic": "t", "partition": 0, "offset": 5, "metadata": "m"}]}))
    assert committed["offsets"] == [{"topic": "t", "partition": 0, "offset": 5, "metadata": "m"}]
    fetched = ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"]
    assert fetched == [{"topic": "t", "partition": 0, "offset": 5, "metadata": "m", "timestamp": 0}]
    # The commit is a record of the group's offsets partition.
    records = stored_records(harness.broker, OFFSETS_TOPIC, partition_for_key("g", 3))
    # The join's membership records, then the commit: each a record of the group's offsets partition.
    assert [r["value"]["type"] for r in records] == ["group", "member", "commit"]
    assert {r["key"] for r in records} == {"g"}


def test_two_members_share_the_partitions_after_the_first_revokes(harness, conn):
    a = join(conn)
    b = join(conn)
    assert b["assignment"] == [] and len(parts(b["pending"])) == 2
    hb = ok(conn.call("Heartbeat", {"group": "g", "member_id": a["member_id"], "owned": a["assignment"]}))
    assert parts(hb["revoke"]) == parts(b["pending"])
    ok(conn.call("Heartbeat", {"group": "g", "member_id": a["member_id"], "owned": hb["assignment"]}))
    hb_b = ok(conn.call("Heartbeat", {"group": "g", "member_id": b["member_id"], "owned": []}))
    assert parts(hb_b["assignment"]) == parts(b["pending"])
    described = ok(conn.call("DescribeGroup", {"group": "g"}))
    assert described["state"] == "stable" and described["generation"] == 2
    assert [len(parts(m["assignment"])) for m in described["members"]] == [2, 2]


def test_session_expiry_on_the_node_clock_moves_partitions(harness, conn, clock):
    a = join(conn)
    b = join(conn)
    clock.advance(3)
    ok(conn.call("Heartbeat", {"group": "g", "member_id": b["member_id"], "owned": []}))
    clock.advance(2)  # a's 5 s session has passed: the node's timer removed it
    assert err(conn.call("Heartbeat", {"group": "g", "member_id": a["member_id"], "owned": a["assignment"]}))[
        "code"] == "UNKNOWN_MEMBER"
    hb = ok(conn.call("Heartbeat", {"group": "g", "member_id": b["member_id"], "owned": []}))
    assert parts(hb["assignment"]) == [0, 1, 2, 3]
    ok(conn.call("LeaveGroup", {"group": "g", "member_id": b["member_id"]}))
    # No members: no session deadline; the timer is the empty group's offsets retention (7 days).
    assert harness.broker.groups._timer.getTime() >= 7 * 24 * 3600


def test_commit_fencing(harness, conn):
    for i in range(5):  # offsets within the log: a commit below them is refused
        ok(conn.call("Send", {"topic": "t", "partition": 1, "value": i}))
    a = join(conn)
    commit = {"group": "g", "offsets": [{"topic": "t", "partition": 1, "offset": 3}]}
    assert err(conn.call("CommitOffsets", {**commit, "member_id": "zombie", "generation": 1}))["code"] == "UNKNOWN_MEMBER"
    assert err(conn.call("CommitOffsets", {**commit, "member_id": a["member_id"], "generation": 0}))[
        "code"] == "STALE_GENERATION"
    assert err(conn.call("CommitOffsets", commit))["code"] == "UNKNOWN_MEMBER"  # the group has members
    ok(conn.call("CommitOffsets", {**commit, "member_id": a["member_id"], "generation": 1}))
    back = {"group": "g", "member_id": a["member_id"], "generation": 1,
            "offsets": [{"topic": "t", "partition": 1, "offset": 2}]}
    e = err(conn.call("CommitOffsets", back))
    assert e["code"] == "OFFSET_BEHIND_COMMITTED" and e["committed"] == 3
    join(conn)  # generation 2; a revokes two partitions at its next heartbeat
    hb = ok(conn.call("Heartbeat", {"group": "g", "member_id": a["member_id"], "owned": a["assignment"]}))
    ok(conn.call("Heartbeat", {"group": "g", "member_id": a["member_id"], "owned": hb["assignment"]}))
    gone = [p for p in range(4) if p not in parts(hb["assignment"])][0]
    e = err(conn.call("CommitOffsets", {"group": "g", "member_id": a["member_id"], "generation": 2,
                                        "offsets": [{"topic": "t", "partition": gone, "offset": 9}]}))
    assert e["code"] == "PARTITION_NOT_ASSIGNED"


def test_static_member_restart_gets_its_partitions_back(harness, conn):
    a = join(conn, group_instance_id="host-1")
    again = join(conn, group_instance_id="host-1")
    assert again["member_id"] != a["member_id"] and again["generation"] == a["generation"]
    assert again["assignment"] == a["assignment"]


def test_reset_offsets_only_without_members_with_dry_run(harness, conn):
    for i in range(10):
        ok(conn.call("Send", {"topic": "t", "partition": 2, "value": i}))
    ok(conn.call("CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 2, "offset": 8}]}))
    a = join(conn)
    e = err(conn.call("ResetOffsets", {"group": "g", "topic": "t", "to": "earliest"}))
    assert e["code"] == "GROUP_NOT_EMPTY" and e["members"] == 1
    ok(conn.call("LeaveGroup", {"group": "g", "member_id": a["member_id"]}))
    dry = ok(conn.call("ResetOffsets", {"group": "g", "topic": "t", "partitions": [2], "to": {"shift": -3},
                                        "dry_run": True}))
    assert dry["offsets"] == [{"topic": "t", "partition": 2, "offset": 5, "previous": 8}] and dry["dry_run"]
    assert ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"][0]["offset"] == 8
    cases = [("earliest", 0), ("latest", 10), ({"offset": 99}, 10), ({"offset": 4}, 4), ({"shift": 2}, 6),
             ({"timestamp": 0}, 0)]
    for to, expected in cases:
        result = ok(conn.call("ResetOffsets", {"group": "g", "topic": "t", "partitions": [2], "to": to}))
        assert result["offsets"][0]["offset"] == expected, to
        assert ok(conn.call("FetchOffsets", {"group": "g", "topics": ["t"]}))["offsets"][0]["offset"] == expected


def test_describe_shows_lag_list_and_delete(harness, conn):
    for i in range(6):
        ok(conn.call("Send", {"topic": "t", "partition": 0, "value": i}))
    ok(conn.call("CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 0, "offset": 2}]}))
    described = ok(conn.call("DescribeGroup", {"group": "g"}))
    assert described["state"] == "empty" and described["members"] == []
    assert described["offsets"] == [{"topic": "t", "partition": 0, "offset": 2, "metadata": None,
                                     "high_watermark": 6, "lag": 4}]
    a = join(conn, group="h")
    listed = ok(conn.call("ListGroups", {}))["groups"]
    assert listed == [{"group": "g", "state": "empty", "members": 0}, {"group": "h", "state": "stable", "members": 1}]
    assert err(conn.call("DeleteGroup", {"group": "h"}))["code"] == "GROUP_NOT_EMPTY"
    ok(conn.call("LeaveGroup", {"group": "h", "member_id": a["member_id"]}))
    assert ok(conn.call("DeleteGroup", {"group": "g"})) == {"group": "g", "deleted": True}
    assert ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"] == []
    assert err(conn.call("DescribeGroup", {"group": "g"}))["code"] == "UNKNOWN_GROUP"
    assert err(conn.call("DeleteGroup", {"group": "nobody"}))["code"] == "UNKNOWN_GROUP"


@pytest.mark.parametrize("method,params", [
    ("JoinGroup", {"group": "g", "topics": []}),
    ("JoinGroup", {"group": "", "topics": ["t"]}),
    ("JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 10}),
    ("JoinGroup", {"group": "g", "topics": ["t"], "extra": 1}),
    ("JoinGroup", {"group": "g", "topics": ["t"], "assignor": "best"}),
    ("Heartbeat", {"group": "g", "member_id": "m", "owned": [{"topic": "t", "partitions": [-1]}]}),
    ("CommitOffsets", {"group": "g", "offsets": []}),
    ("CommitOffsets", {"group": "g", "member_id": "m", "offsets": [{"topic": "t", "partition": 0, "offset": 1}]}),
    ("CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 0, "offset": -1}]}),
    ("CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 0, "offset": 1, "metadata": "x" * 4097}]}),
    ("ResetOffsets", {"group": "g", "topic": "t", "to": "yesterday"}),
    ("ResetOffsets", {"group": "g", "topic": "t", "to": {"shift": 1.5}}),
    ("FetchOffsets", {"group": 5}),
])
def test_bad_params_are_invalid_params_and_the_node_keeps_serving(harness, conn, method, params):
    assert err(conn.call(method, params))["code"] == "INVALID_PARAMS"
    assert ok(conn.call("Ping", {}))["pong"]


def test_commits_are_rebuilt_from_the_offsets_topic_when_the_shard_reloads(harness, conn):
    ok(conn.call("CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 3, "offset": 7}]}))
    ok(conn.call("CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 3, "offset": 9}]}))
    # A garbage record in the offsets topic (clients cannot send there: INTERNAL_TOPIC) is skipped on replay.
    harness.broker.send(wire.SendParams(topic=OFFSETS_TOPIC, acks="all", messages=[
        {"value": "junk", "key": None, "partition": partition_for_key("g", 3)}]))
    harness.broker.groups.shards.clear()  # as a new leader would: replay the partition
    assert ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"][0]["offset"] == 9


def test_members_carry_on_when_the_shard_reloads(harness, conn, clock):
    a = join(conn)
    b = join(conn)
    owned = {a["member_id"]: a["assignment"], b["member_id"]: b["assignment"]}
    for _ in range(2):
        for m in owned:
            owned[m] = ok(conn.call("Heartbeat", {"group": "g", "member_id": m, "owned": owned[m]}))["assignment"]
    before = ok(conn.call("DescribeGroup", {"group": "g"}))
    clock.advance(4.0)
    harness.broker.groups.shards.clear()  # as a new leader would: replay the partition
    after = ok(conn.call("DescribeGroup", {"group": "g"}))
    assert [(m["member_id"], m["generation"], m["assignment"], m["target"]) for m in after["members"]] == \
        [(m["member_id"], m["generation"], m["assignment"], m["target"]) for m in before["members"]]
    assert after["generation"] == before["generation"] == 2 and after["state"] == "stable"
    # Re-armed: a full session from the reload, though 4 of their 5 s had passed.
    clock.advance(4.5)
    for m in owned:
        answer = ok(conn.call("Heartbeat", {"group": "g", "member_id": m, "owned": owned[m]}))
        assert (answer["generation"], answer["assignment"], answer["revoke"]) == (2, owned[m], [])


def test_a_committed_offset_past_the_log_end_gives_way_to_the_owners_lower_commit(harness, conn):
    for i in range(10):
        ok(conn.call("Send", {"topic": "t", "partition": 2, "value": i}))
    ok(conn.call("CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 2, "offset": 50}]}))
    a = join(conn)
    commit = {"group": "g", "member_id": a["member_id"], "generation": a["generation"]}
    # The member read from the end (its Poll at 50 was OFFSET_OUT_OF_RANGE) and commits there.
    answer = ok(conn.call("CommitOffsets", {**commit, "offsets": [{"topic": "t", "partition": 2, "offset": 10},
                                                                   {"topic": "t", "partition": 0, "offset": 0}]}))
    assert answer["offsets"][0] == {"topic": "t", "partition": 2, "offset": 10, "metadata": None}
    assert {o["partition"]: o["offset"] for o in ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"]} == {
        0: 0, 2: 10}
    last = stored_records(harness.broker, OFFSETS_TOPIC, partition_for_key("g", 3))[-1]["value"]
    assert last["type"] == "commit" and [o.get("rewind") for o in last["offsets"]] == [True, None]
    # Now within the log again: never backwards.
    e = err(conn.call("CommitOffsets", {**commit, "offsets": [{"topic": "t", "partition": 2, "offset": 9}]}))
    assert e["code"] == "OFFSET_BEHIND_COMMITTED" and e["committed"] == 10


def test_a_topic_made_again_does_not_block_the_commits_of_a_group_that_read_the_old_one(harness, conn):
    for i in range(10):
        ok(conn.call("Send", {"topic": "t", "partition": 0, "value": i}))
    ok(conn.call("CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 0, "offset": 10}]}))
    ok(conn.call("DeleteTopic", {"topic": "t"}))
    harness.settle()
    ok(conn.call("CreateTopic", {"topic": "t", "partitions": 4}))
    ok(conn.call("Send", {"topic": "t", "partition": 0, "value": "new"}))
    a = join(conn)
    ok(conn.call("CommitOffsets", {"group": "g", "member_id": a["member_id"], "generation": a["generation"],
                                   "offsets": [{"topic": "t", "partition": 0, "offset": 1}]}))
    assert ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"][0]["offset"] == 1


def test_group_reads_before_any_group_create_nothing(harness, conn):
    for i in range(3):
        ok(conn.call("Send", {"topic": "t", "partition": 1, "value": i}))
    assert ok(conn.call("FetchOffsets", {"group": "g"})) == {"group": "g", "offsets": []}
    assert err(conn.call("DescribeGroup", {"group": "g"}))["code"] == "UNKNOWN_GROUP"
    assert err(conn.call("DeleteGroup", {"group": "g"}))["code"] == "UNKNOWN_GROUP"
    assert ok(conn.call("ListGroups", {})) == {"groups": []}
    dry = ok(conn.call("ResetOffsets", {"group": "g", "topic": "t", "partitions": [0, 1], "to": "latest",
                                        "dry_run": True}))
    assert dry["offsets"] == [{"topic": "t", "partition": 0, "offset": 0, "previous": None},
                              {"topic": "t", "partition": 1, "offset": 3, "previous": None}]
    assert OFFSETS_TOPIC not in harness.broker.topics  # looking made nothing
    ok(conn.call("ResetOffsets", {"group": "g", "topic": "t", "partitions": [1], "to": "latest"}))
    assert OFFSETS_TOPIC in harness.broker.topics  # a reset that writes does
    assert ok(conn.call("FetchOffsets", {"group": "g"}))["offsets"][0]["offset"] == 3


def test_a_node_restarted_on_its_storage_loads_its_groups_at_once_and_a_silent_member_expires(clock):
    """A node alone leads its offsets partitions as it opens them: their groups load on the next
    turn, with no group request, and a member that never heartbeats again expires a session later."""
    from streamlog.storage.memory import MemoryStorage

    storage = MemoryStorage()
    config = BrokerConfig(groups=GroupConfig(offsets_partitions=3, limits=GroupLimits(min_session_timeout=1.0)))
    first = BrokerHarness(storage=storage, clock=clock, config=config)
    conn = first.connect()
    ok(conn.call("CreateTopic", {"topic": "t", "partitions": 2}))
    member = join(conn)
    first.broker.groups.stop()
    first.stop()
    clock.advance(60.0)

    restarted = BrokerHarness(storage=storage, clock=clock, config=config)  # settles: elections, then the load
    try:
        shard = restarted.broker.groups.shards.get(partition_for_key("g", 3))
        assert shard is not None and shard.replay_at is None
        assert shard.coordinator.group("g").members[member["member_id"]].last_seen == 60.0
        clock.advance(4.99)
        assert member["member_id"] in shard.coordinator.group("g").members
        clock.advance(0.01)
        assert shard.coordinator.group("g").members == {}
    finally:
        restarted.broker.groups.stop()
        restarted.stop()


def test_a_stopped_group_service_loads_nothing_and_sets_no_timer(harness, conn, clock):
    """After stop() (the node is closing) neither a /metrics scrape's load_led nor a group request
    starts a replay or a session timer again: the request is answered COORDINATOR_NOT_AVAILABLE."""
    join(conn)
    service = harness.broker.groups
    service.stop()
    service.load_led()
    assert service.shards == {} and service._timer is None
    assert err(conn.call("JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 5000}))["code"] == \
        "COORDINATOR_NOT_AVAILABLE"
    assert service.shards == {} and service._timer is None
    assert [c for c in clock.getDelayedCalls() if getattr(c.func, "__self__", None) is service] == []


def test_a_group_joined_and_left_while_its_delete_is_written_lives_on_in_memory_as_in_a_replay(harness, conn):
    """DeleteGroup of an empty group; before its record is committed a member joins and leaves (or
    its session ends): their records come after the delete, so a replay finds the group (empty,
    at its new generation, no offsets). Memory keeps it too, instead of forgetting it as empty."""
    member = join(conn)
    ok(conn.call("CommitOffsets", {"group": "g", "member_id": member["member_id"], "generation": member["generation"],
                                   "offsets": [{"topic": "t", "partition": 0, "offset": 5}]}))
    ok(conn.call("LeaveGroup", {"group": "g", "member_id": member["member_id"]}))
    real, held = harness.broker.send, []

    def send(p):
        """The delete is appended now, in order; its answer comes when released (a slow commit)."""
        d = real(p)
        if not any(m["value"].get("type") == "delete" for m in p.messages):
            return d
        answer = Deferred()
        d.addBoth(lambda result: held.append((answer, result)))
        return answer

    harness.broker.send = send
    rid = conn.request("DeleteGroup", {"group": "g"})
    harness.settle()
    harness.broker.send = real
    again = join(conn)
    ok(conn.call("LeaveGroup", {"group": "g", "member_id": again["member_id"]}))
    (answer, result), = held
    answer.callback(result)
    harness.settle()
    assert [a["result"] for a in conn.answers() if a["id"] == rid] == [{"group": "g", "deleted": True}]

    def seen():
        shard = harness.broker.groups.shards[partition_for_key("g", 3)]
        state = shard.coordinator.group("g")
        listed = ok(conn.call("ListGroups", {}))["groups"]
        return (state and state.generation, state and sorted(state.members), shard.offsets.has_group("g"), listed)

    in_memory = seen()
    harness.broker.groups.shards.clear()
    harness.broker.groups.load_led()
    assert seen() == in_memory
    assert in_memory[0] == again["generation"] + 1 and in_memory[1:3] == ([], False)

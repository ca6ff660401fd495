"""The group coordinator, rule by rule, with time passed in (no clock, no reactor)."""

from __future__ import annotations

import pytest
from coordinator_support import make_coordinator, settle, tps

from streamlog import errors
from streamlog.groups.coordinator import GroupLimits

SESSION = 10.0
REBALANCE = 30.0


def join(c, now=0.0, group="g", topics=("t",), **kw):
    return c.join(group, topics, now, kw.pop("session", SESSION), kw.pop("rebalance", REBALANCE), **kw)


def test_first_member_gets_every_partition_at_generation_one():
    c = make_coordinator()
    a = join(c)
    assert a.member_id == "m1" and a.generation == 1
    assert a.assignment == tps(0, 1, 2, 3, 4, 5)
    assert a.revoke == a.pending == frozenset()
    assert c.group("g").state == "stable"


def test_a_second_member_waits_until_the_first_releases():
    c = make_coordinator()
    a = join(c)
    b = join(c, now=1)
    assert b.generation == 2
    assert b.assignment == frozenset()  # everything is still held by m1
    assert len(b.pending) == 3
    hb = c.heartbeat("g", a.member_id, a.assignment, 2)
    assert hb.revoke == b.pending and hb.assignment == a.assignment - b.pending
    # Until m1 says it released them, m2 gets nothing.
    assert c.heartbeat("g", b.member_id, [], 3).assignment == frozenset()
    c.heartbeat("g", a.member_id, hb.assignment, 4)
    assert c.heartbeat("g", b.member_id, [], 5).assignment == b.pending
    assert c.group("g").state == "stable"


def test_partitions_not_granted_are_ignored_in_owned():
    c = make_coordinator()
    a = join(c)
    b = join(c, now=1)
    hb = c.heartbeat("g", b.member_id, a.assignment, 2)  # claims what m1 holds
    assert hb.assignment == frozenset()
    assert c.group("g").members[a.member_id].held == set(a.assignment)


def test_leave_releases_everything_at_once():
    c = make_coordinator()
    a = join(c)
    b = join(c, now=1)
    held = settle(c, "g", {a.member_id: a.assignment, b.member_id: b.assignment}, 2)
    c.leave("g", a.member_id, 3)
    assert c.group("g").generation == 3
    assert c.heartbeat("g", b.member_id, held[b.member_id], 4).assignment == tps(0, 1, 2, 3, 4, 5)
    with pytest.raises(errors.UnknownMember):
        c.heartbeat("g", a.member_id, [], 5)


def test_session_expiry_removes_the_member_and_moves_its_partitions():
    c = make_coordinator()
    a = join(c)
    b = join(c, now=1)
    held = settle(c, "g", {a.member_id: a.assignment, b.member_id: b.assignment}, 2)
    assert c.tick(2 + SESSION - 0.01) == []
    c.heartbeat("g", b.member_id, held[b.member_id], 5)
    removed = c.tick(2 + SESSION)
    assert [(r.member_id, r.reason) for r in removed] == [(a.member_id, "session")]
    assert c.heartbeat("g", b.member_id, held[b.member_id], 13).assignment == tps(0, 1, 2, 3, 4, 5)
    assert c.next_deadline() == 13 + SESSION


def test_member_that_does_not_revoke_in_time_is_removed():
    c = make_coordinator()
    a = join(c)
    b = join(c, now=1)
    hb = c.heartbeat("g", a.member_id, a.assignment, 2)
    assert hb.revoke
    # m1 keeps heartbeating but never lets go.
    for t in range(3, 32, 3):
        c.heartbeat("g", a.member_id, a.assignment, t)
        c.heartbeat("g", b.member_id, [], t)
    assert c.tick(2 + REBALANCE - 0.5) == []
    assert [(r.member_id, r.reason) for r in c.tick(2 + REBALANCE)] == [(a.member_id, "rebalance")]
    assert c.heartbeat("g", b.member_id, [], 33).assignment == tps(0, 1, 2, 3, 4, 5)


def test_a_rebalance_during_a_rebalance_converges():
    c = make_coordinator({"t": 12})
    members = {join(c).member_id: frozenset()}
    held = settle(c, "g", members, 1, rounds=1)
    for t in range(2, 6):
        held[join(c, now=t).member_id] = frozenset()
        # Only some members heartbeat before the next join.
        first = sorted(held)[0]
        held[first] = c.heartbeat("g", first, held[first], t).assignment
    held = settle(c, "g", held, 6)
    assert c.group("g").state == "stable"
    assert sorted(len(v) for v in held.values()) == [2, 2, 2, 3, 3]
    assert frozenset().union(*held.values()) == tps(*range(12))


def test_static_member_restarting_within_its_session_gets_its_partitions_back():
    c = make_coordinator()
    a = join(c, instance_id="host-a")
    b = join(c, now=1, instance_id="host-b")
    held = settle(c, "g", {a.member_id: a.assignment, b.member_id: b.assignment}, 2)
    generation = c.group("g").generation
    # host-a's process dies and comes back 5 s later, with a new member id.
    again = join(c, now=7, instance_id="host-a")
    assert again.member_id != a.member_id
    assert again.assignment == held[a.member_id]
    assert again.generation == generation  # no rebalance
    with pytest.raises(errors.UnknownMember):
        c.heartbeat("g", a.member_id, held[a.member_id], 8)
    assert c.heartbeat("g", b.member_id, held[b.member_id], 8).assignment == held[b.member_id]


def test_static_member_back_after_its_session_is_a_new_member():
    c = make_coordinator()
    a = join(c, instance_id="host-a")
    b = join(c, now=1, instance_id="host-b")
    settle(c, "g", {a.member_id: a.assignment, b.member_id: b.assignment}, 2)
    c.heartbeat("g", b.member_id, c.group("g").members[b.member_id].held, 11)
    assert [r.member_id for r in c.tick(12)] == [a.member_id]
    generation = c.group("g").generation
    again = join(c, now=13, instance_id="host-a")
    assert again.member_id not in (a.member_id, b.member_id)
    assert again.generation == generation + 1  # a rebalance, as for any new member


def test_static_member_with_new_topics_starts_a_rebalance():
    c = make_coordinator({"t": 2, "u": 2})
    a = join(c, instance_id="x")
    again = join(c, now=1, instance_id="x", topics=("t", "u"))
    assert again.generation == a.generation + 1
    assert again.assignment == tps(0, 1) | tps(0, 1, topic="u")


def test_new_partitions_of_a_subscribed_topic_are_assigned_at_the_next_heartbeat():
    counts = {"t": 2}
    c = make_coordinator(counts)
    a = join(c)
    counts["t"] = 4
    hb = c.heartbeat("g", a.member_id, a.assignment, 1)
    assert hb.generation == 2 and hb.assignment == tps(0, 1, 2, 3)


def test_commit_rules():
    c = make_coordinator()
    c.check_commit("g", None, None, [("t", 0)], 0)  # an outsider may commit while the group is empty
    a = join(c)
    with pytest.raises(errors.UnknownMember):
        c.check_commit("g", None, None, [("t", 0)], 1)
    with pytest.raises(errors.UnknownMember):
        c.check_commit("g", "nobody", 1, [("t", 0)], 1)
    c.check_commit("g", a.member_id, 1, [("t", 0)], 1)
    b = join(c, now=2)
    with pytest.raises(errors.StaleGeneration) as stale:
        c.check_commit("g", b.member_id, 1, [], 2)
    assert stale.value.details["generation"] == 2
    # m1 was told generation 1 and has not heartbeated since m2 joined: still fine at 1.
    c.check_commit("g", a.member_id, 1, [("t", 0)], 2)
    hb = c.heartbeat("g", a.member_id, a.assignment, 3)
    with pytest.raises(errors.StaleGeneration):
        c.check_commit("g", a.member_id, 1, [("t", 0)], 3)
    revoked = sorted(hb.revoke)[0]
    c.check_commit("g", a.member_id, 2, [revoked], 3)  # commit on revoke, before releasing
    c.heartbeat("g", a.member_id, hb.assignment, 4)
    with pytest.raises(errors.PartitionNotAssigned):
        c.check_commit("g", a.member_id, 2, [revoked], 4)


def test_join_checks_its_timeouts_and_the_group_limit():
    c = make_coordinator(limits=GroupLimits(max_members=2, min_session_timeout=1, max_session_timeout=60))
    with pytest.raises(errors.InvalidParams):
        join(c, session=0.5)
    with pytest.raises(errors.InvalidParams):
        join(c, session=61)
    with pytest.raises(errors.InvalidParams):
        join(c, rebalance=0)
    join(c, instance_id="a")
    join(c)
    with pytest.raises(errors.GroupFull):
        join(c)
    join(c, instance_id="a")  # a static member taking its own place is not one more


def test_assignor_choice():
    c = make_coordinator({"t": 4})
    with pytest.raises(errors.InvalidParams):
        join(c, assignor="nope")
    a = join(c, assignor="range")
    b = join(c, assignor="range")
    with pytest.raises(errors.InvalidParams):
        join(c, assignor="sticky")
    held = settle(c, "g", {a.member_id: a.assignment, b.member_id: b.assignment}, 1)
    assert held[a.member_id] == tps(0, 1) and held[b.member_id] == tps(2, 3)


def test_heartbeat_interval_is_at_most_a_third_of_the_session():
    c = make_coordinator(limits=GroupLimits(heartbeat_interval=3.0))
    assert join(c, session=6).heartbeat_interval == 2.0
    assert join(c, group="h", session=60).heartbeat_interval == 3.0


def test_forget_and_require_empty():
    c = make_coordinator()
    a = join(c)
    with pytest.raises(errors.GroupNotEmpty):
        c.forget("g")
    with pytest.raises(errors.GroupNotEmpty):
        c.require_empty("g")
    c.leave("g", a.member_id, 1)
    c.require_empty("g")
    c.forget("g")
    assert c.group("g") is None


def test_answer_to_wire():
    c = make_coordinator({"t": 2, "u": 1})
    wire = join(c, topics=("u", "t")).to_wire()
    assert wire["assignment"] == [{"topic": "t", "partitions": [0, 1]}, {"topic": "u", "partitions": [0]}]
    assert wire["revoke"] == [] and wire["heartbeat_interval_ms"] == 3000


def test_a_coordinator_taking_over_grants_nothing_until_its_hold_ends():
    c = make_coordinator()
    c.hold_until = 10.0
    a = join(c, now=1)
    assert a.assignment == frozenset() and a.pending == tps(0, 1, 2, 3, 4, 5)
    assert c.heartbeat("g", a.member_id, [], 9.9).assignment == frozenset()
    assert c.heartbeat("g", a.member_id, [], 10).assignment == tps(0, 1, 2, 3, 4, 5)

"""The membership records: what the coordinator hands out, and a coordinator rebuilt from them."""

from __future__ import annotations

import itertools

import pytest
from coordinator_support import make_coordinator, settle, tps

from streamlog.groups.coordinator import GroupCoordinator, GroupLimits
from streamlog.groups.membership import (
    BadMembershipRecord,
    GroupMeta,
    MemberGone,
    MemberMeta,
    decode_membership,
)
from streamlog.groups.state import ShardState

SESSION, REBALANCE = 10.0, 30.0


def values(coordinator):
    return [r.to_value() for r in coordinator.take_records()]


def rebuilt(log, now, counts=None):
    counts = {"t": 6} if counts is None else counts
    ids = itertools.count(100)
    shard = ShardState(GroupCoordinator(lambda t: counts.get(t, 0), lambda g: f"n{next(ids)}", GroupLimits()))
    for value in log:
        shard.apply_stored(value, 0)
    shard.coordinator.resume(now)
    return shard


def snapshot(coordinator, group="g"):
    state = coordinator.group(group)
    return (state.generation, state.assignor, {
        m.member_id: (m.instance_id, m.topics, m.generation, frozenset(m.held), m.target, m.session_timeout)
        for m in state.members.values()})


def test_a_join_hands_out_the_group_and_the_member():
    c = make_coordinator()
    a = c.join("g", ["t"], 0.0, SESSION, REBALANCE)
    records = c.take_records()
    assert records == [GroupMeta("g", "sticky", 1, {"t": 6}),
                       MemberMeta("g", a.member_id, None, frozenset({"t"}), SESSION, REBALANCE, 1,
                                  tps(0, 1, 2, 3, 4, 5), tps(0, 1, 2, 3, 4, 5))]
    assert c.take_records() == []  # drained


def test_a_heartbeat_that_changes_nothing_writes_nothing():
    c = make_coordinator()
    a = c.join("g", ["t"], 0.0, SESSION, REBALANCE)
    c.take_records()
    for now in (1.0, 2.0, 3.0):
        c.heartbeat("g", a.member_id, a.assignment, now)
        assert c.take_records() == []


def test_releases_and_grants_are_handed_out_in_the_order_they_happen():
    c = make_coordinator()
    a = c.join("g", ["t"], 0.0, SESSION, REBALANCE)
    b = c.join("g", ["t"], 1.0, SESSION, REBALANCE)
    c.take_records()
    hb = c.heartbeat("g", a.member_id, a.assignment, 2.0)
    # Told to revoke, at generation 2: what it holds has not changed yet, its generation has.
    assert [(r.generation, r.held) for r in c.take_records()] == [(2, a.assignment)]
    assert c.heartbeat("g", a.member_id, a.assignment, 2.5).revoke == hb.revoke
    assert c.take_records() == []
    c.heartbeat("g", a.member_id, hb.assignment, 3.0)
    released = c.take_records()
    assert [(type(r), r.held) for r in released] == [(MemberMeta, hb.assignment)]
    granted = c.heartbeat("g", b.member_id, [], 4.0)
    assert [r.held for r in c.take_records()] == [granted.assignment] and granted.assignment == b.pending


def test_a_member_gone_is_a_member_gone_record():
    c = make_coordinator()
    a = c.join("g", ["t"], 0.0, SESSION, REBALANCE)
    c.take_records()
    c.leave("g", a.member_id, 1.0)
    assert c.take_records() == [GroupMeta("g", "sticky", 2, {}), MemberGone("g", a.member_id)]


def test_a_coordinator_rebuilt_from_the_records_is_the_same_and_members_carry_on():
    c = make_coordinator()
    log = []
    a = c.join("g", ["t"], 0.0, SESSION, REBALANCE, instance_id="s1")
    log += values(c)
    b = c.join("g", ["t"], 1.0, SESSION, REBALANCE)
    log += values(c)
    held = settle(c, "g", {a.member_id: a.assignment, b.member_id: b.assignment}, 2.0)
    log += values(c)
    new = rebuilt(log, now=50.0)
    assert snapshot(new.coordinator) == snapshot(c)
    # No new generation, nothing to do, and commits with the generation they have go through.
    for member, owned in held.items():
        answer = new.coordinator.heartbeat("g", member, owned, 51.0)
        assert (answer.generation, answer.assignment, answer.revoke, answer.pending) == (2, owned, frozenset(),
                                                                                          frozenset())
        new.coordinator.check_commit("g", member, 2, owned, 51.0)
    # The static member's instance id is known: its restart takes its place and its partitions.
    again = new.coordinator.join("g", ["t"], 52.0, SESSION, REBALANCE, instance_id="s1")
    assert again.assignment == held[a.member_id] and again.generation == 2


def test_deadlines_are_rearmed_from_the_take_over_so_a_dead_member_still_expires():
    c = make_coordinator()
    a = c.join("g", ["t"], 0.0, SESSION, REBALANCE)
    b = c.join("g", ["t"], 0.0, SESSION, REBALANCE)
    settle(c, "g", {a.member_id: a.assignment, b.member_id: b.assignment}, 1.0)
    new = rebuilt(values(c), now=100.0).coordinator  # long after both were last heard of
    assert new.next_deadline() == 100.0 + SESSION
    assert new.tick(100.0 + SESSION - 0.1) == []
    new.heartbeat("g", a.member_id, frozenset(c.group("g").members[a.member_id].held), 105.0)
    gone = new.tick(100.0 + SESSION)
    assert [(r.member_id, r.reason) for r in gone] == [(b.member_id, "session")]
    assert new.heartbeat("g", a.member_id, frozenset(c.group("g").members[a.member_id].held),
                         111.0).assignment == tps(0, 1, 2, 3, 4, 5)


def test_a_member_mid_revoke_gets_its_rebalance_timeout_again():
    c = make_coordinator()
    a = c.join("g", ["t"], 0.0, SESSION, REBALANCE)
    c.join("g", ["t"], 0.0, SESSION, REBALANCE)
    c.heartbeat("g", a.member_id, a.assignment, 1.0)  # told to revoke three; it has not yet
    new = rebuilt(values(c), now=10.0).coordinator
    member = new.group("g").members[a.member_id]
    assert member.revoking_since == 10.0 and member.deadline() == 10.0 + SESSION


def test_delete_forgets_the_group_on_replay():
    c = make_coordinator()
    a = c.join("g", ["t"], 0.0, SESSION, REBALANCE)
    c.leave("g", a.member_id, 1.0)
    log = values(c) + [{"type": "delete", "group": "g"}]
    assert rebuilt(log, now=2.0).coordinator.group("g") is None


@pytest.mark.parametrize("value", [
    {"type": "member", "group": "g"},
    {"type": "member", "group": "g", "member_id": "m", "instance_id": 3, "topics": [], "session_timeout_ms": 1,
     "rebalance_timeout_ms": 1, "generation": 1, "held": [], "target": []},
    {"type": "member", "group": "g", "member_id": "m", "instance_id": None, "topics": ["t"],
     "session_timeout_ms": 1, "rebalance_timeout_ms": 1, "generation": 1, "held": [{"topic": "t", "partitions": [-1]}],
     "target": []},
    {"type": "group", "group": "g", "assignor": "sticky", "generation": True, "counts": {}},
    {"type": "group", "group": "g", "assignor": "sticky", "generation": 1, "counts": {"t": "x"}},
    {"type": "member_gone", "group": 5, "member_id": "m"},
])
def test_malformed_membership_records_are_refused_and_skipped_on_replay(value):
    with pytest.raises(BadMembershipRecord):
        decode_membership(value)
    shard = rebuilt([value, "not a record", {"type": "commit"}], now=0.0)
    assert shard.skipped == 3 and shard.coordinator.groups == {}

"""The assignors: who gets which partition, deterministically and balanced."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamlog.groups.assignors import range_assignor, round_robin_assignor, sticky_assignor

SUBS = {"b": {"t"}, "a": {"t"}, "c": {"t"}}


def owners(assignment):
    seen = {}
    for member, tps in assignment.items():
        for tp in tps:
            assert tp not in seen, f"{tp} given to {seen[tp]} and {member}"
            seen[tp] = member
    return seen


def test_range_gives_consecutive_ranges_extra_to_the_first_members():
    result = range_assignor(SUBS, {"t": 7})
    assert result == {
        "a": frozenset({("t", 0), ("t", 1), ("t", 2)}),
        "b": frozenset({("t", 3), ("t", 4)}),
        "c": frozenset({("t", 5), ("t", 6)}),
    }


def test_round_robin_deals_partitions_in_turn():
    result = round_robin_assignor(SUBS, {"t": 5})
    assert result["a"] == {("t", 0), ("t", 3)}
    assert result["b"] == {("t", 1), ("t", 4)}
    assert result["c"] == {("t", 2)}


def test_round_robin_skips_members_not_subscribed():
    result = round_robin_assignor({"a": {"x"}, "b": {"x", "y"}}, {"x": 2, "y": 2})
    assert result["a"] == {("x", 0)}
    assert result["b"] == {("x", 1), ("y", 0), ("y", 1)}


def test_sticky_keeps_what_members_hold_and_moves_only_for_balance():
    current = {"a": {("t", 0), ("t", 1), ("t", 2)}, "b": {("t", 3), ("t", 4), ("t", 5)}}
    result = sticky_assignor({"a": {"t"}, "b": {"t"}, "c": {"t"}}, {"t": 6}, current)
    assert len(result["c"]) == 2
    assert result["a"] <= current["a"] and result["b"] <= current["b"]
    assert len(result["a"]) == len(result["b"]) == 2


def test_sticky_drops_partitions_of_unsubscribed_or_vanished_topics():
    current = {"a": {("old", 0), ("t", 9)}}
    result = sticky_assignor({"a": {"t"}}, {"t": 2}, current)
    assert result == {"a": frozenset({("t", 0), ("t", 1)})}


def test_sticky_gives_a_partition_claimed_twice_to_one_member():
    result = sticky_assignor({"a": {"t"}, "b": {"t"}}, {"t": 2}, {"a": {("t", 0)}, "b": {("t", 0)}})
    assert owners(result) == {("t", 0): "a", ("t", 1): "b"}


def test_no_subscribed_topic_exists_yet():
    for assignor in (range_assignor, round_robin_assignor, sticky_assignor):
        assert assignor({"a": {"t"}}, {}, {}) == {"a": frozenset()}


members = st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True)


@given(members=members, count=st.integers(0, 30), data=st.data())
def test_every_assignor_covers_every_partition_once_balanced_and_deterministic(members, count, data):
    subs = {m: {"t"} for m in members}
    # Whatever the members hold now (possibly overlapping, possibly stale), the answer is balanced.
    current = {m: set(data.draw(st.lists(st.tuples(st.just("t"), st.integers(0, 35)), max_size=10))) for m in members}
    for assignor in (range_assignor, round_robin_assignor, sticky_assignor):
        result = assignor(subs, {"t": count}, current)
        assert set(result) == set(members)
        assert set(owners(result)) == {("t", p) for p in range(count)}
        sizes = [len(v) for v in result.values()]
        assert max(sizes) - min(sizes) <= 1
        shuffled = {m: subs[m] for m in reversed(members)}
        assert assignor(shuffled, {"t": count}, dict(reversed(current.items()))) == result


@given(members=members, count=st.integers(1, 20), data=st.data())
def test_sticky_moves_no_more_partitions_than_balance_needs(members, count, data):
    subs = {m: {"t"} for m in members}
    first = sticky_assignor(subs, {"t": count}, {})
    joined = data.draw(st.sampled_from("xyz"))
    subs[joined] = {"t"}
    second = sticky_assignor(subs, {"t": count}, first)
    moved = sum(1 for m in members for tp in first[m] if tp not in second[m])
    # Only what the newcomer takes moves.
    assert moved == len(second[joined])


@given(data=st.data())
def test_sticky_with_mixed_subscriptions_leaves_no_useful_move(data):
    names = data.draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=5, unique=True))
    subs = {m: set(data.draw(st.lists(st.sampled_from("xyz"), min_size=1, max_size=3, unique=True))) for m in names}
    counts = {"x": data.draw(st.integers(0, 8)), "y": data.draw(st.integers(0, 8)), "z": data.draw(st.integers(0, 8))}
    result = sticky_assignor(subs, counts, {})
    every = {(t, p) for m in names for t in subs[m] for p in range(counts[t])}
    assert set(owners(result)) == every
    for giver in names:
        for taker in names:
            if len(result[taker]) + 1 < len(result[giver]):
                assert not any(tp[0] in subs[taker] for tp in result[giver])

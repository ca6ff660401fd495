"""A coordinator with predictable member ids, and helpers for the group tests."""

from __future__ import annotations

import itertools

from streamlog.groups.coordinator import GroupCoordinator, GroupLimits


def make_coordinator(counts=None, limits=None):
    """A coordinator over topics of C{counts} (a dict the test may change) and ids m1, m2, ..."""
    counts = {"t": 6} if counts is None else counts
    ids = itertools.count(1)
    return GroupCoordinator(lambda topic: counts.get(topic, 0), lambda group: f"m{next(ids)}", limits or GroupLimits())


def tps(*partitions, topic="t"):
    return frozenset((topic, p) for p in partitions)


def settle(coordinator, group, members, now, rounds=5):
    """Heartbeat every member in turn, each acting on its answer at once (revoke, take);
    return {member: held}."""
    owned = dict(members)
    for _ in range(rounds):
        for member in sorted(owned):
            answer = coordinator.heartbeat(group, member, owned[member], now)
            owned[member] = answer.assignment
    return owned


def ok(answer):
    """The result of an RPC answer (asserts it is one)."""
    assert "result" in answer, answer
    return answer["result"]


def err(answer):
    """The error of an RPC answer (asserts it is one)."""
    assert "error" in answer, answer
    return answer["error"]

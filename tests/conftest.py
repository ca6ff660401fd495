"""Shared fixtures: a Clock that must be left clean, a broker on in-memory transports."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure


@pytest.fixture
def clock():
    """A task.Clock; the test fails if it leaves timers pending (stop what you start)."""
    c = Clock()
    yield c
    leftover = [call for call in c.getDelayedCalls() if call.active()]
    assert not leftover, f"timers left pending: {leftover}"


def result_of(d: Deferred) -> Any:
    """The result of an already-fired Deferred (like trial's successResultOf)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: Deferred) -> Failure:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    assert isinstance(results[0], Failure), f"{d!r} succeeded with {results[0]!r}"
    return results[0]

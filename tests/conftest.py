"""Shared fixtures (helpers such as result_of live in streamlog.testing)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock


@pytest.fixture
def clock():
    """A task.Clock; the test fails if it leaves timers pending (stop what you start)."""
    c = Clock()
    yield c
    leftover = [call for call in c.getDelayedCalls() if call.active()]
    assert not leftover, f"timers left pending: {leftover}"

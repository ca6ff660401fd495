"""Fixtures for the client tests: a Clock that must be left clean, a broker on in-memory transports."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from client_support import BrokerNetwork


@pytest.fixture
def clock():
    """A task.Clock; the test fails if it leaves timers pending (stop what you start)."""
    c = Clock()
    yield c
    leftover = [call for call in c.getDelayedCalls() if call.active()]
    assert not leftover, f"timers left pending on the Clock: {leftover}"


@pytest.fixture
def network(clock):
    """A real Broker (MemoryStorage) behind a fake endpoint on in-memory transports."""
    net = BrokerNetwork(clock)
    yield net
    net.stop()

"""Fixtures for the client tests: a broker on in-memory transports (the clean Clock is tests/conftest.py's)."""

from __future__ import annotations

import pytest
from client_support import BrokerNetwork


@pytest.fixture
def network(clock):
    """A real Broker (MemoryStorage) behind a fake endpoint on in-memory transports."""
    net = BrokerNetwork(clock)
    yield net
    net.stop()

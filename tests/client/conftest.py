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


@pytest.fixture
def cluster(clock):
    """A FakeCluster of 3 nodes (tests/client/fake_cluster.py); a module's own fixture may override it."""
    from fake_cluster import FakeCluster

    c = FakeCluster(clock, nodes=3)
    yield c
    c.stop()

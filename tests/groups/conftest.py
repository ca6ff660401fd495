"""Fixtures of the group tests (the clean Clock is tests/conftest.py's)."""

from __future__ import annotations

import pytest

from streamlog.testing import ClusterHarness


@pytest.fixture
def cluster():
    """Three ClusterNodes in one process (a Clock, in-memory peers), formed; their group
    coordinators stopped at the end."""
    c = ClusterHarness(3)
    c.run_until(lambda: c.controller() is not None and all(len(n.state.nodes) == 3 for n in c.nodes.values()))
    yield c
    for broker in c.brokers.values():
        broker.groups.stop()
    c.stop()


@pytest.fixture
def conn(harness):
    """A connection to the module's C{harness} (a BrokerHarness), with topic C{t} of 4 partitions."""
    c = harness.connect()
    assert "result" in c.call("CreateTopic", {"topic": "t", "partitions": 4})
    return c

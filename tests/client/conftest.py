"""Fixtures for the client tests: a broker on in-memory transports (the clean Clock is tests/conftest.py's)."""

from __future__ import annotations

import random

import pytest
from client_support import BrokerNetwork, result_of
from fake_cluster import FakeCluster

from streamlog.client import ClusterClient, StreamlogClient


@pytest.fixture
def network(clock):
    """A real Broker (MemoryStorage) behind a fake endpoint on in-memory transports."""
    net = BrokerNetwork(clock)
    yield net
    net.stop()


@pytest.fixture
def client_options():
    """Extra StreamlogClient options of the C{clients} fixture (a test module may override it)."""
    return {}


@pytest.fixture
def clients(network, clock, client_options):
    """Make StreamlogClients on C{network} (each with its own seeded rng, quick reconnects); the
    group coordinator and every client made are stopped at the end."""
    made = []

    def make():
        c = StreamlogClient(network, clock=clock, rng=random.Random(len(made)), reconnect_min=0.1,
                            reconnect_max=1.0, **client_options)
        made.append(c)
        network.pump()
        return c

    yield make
    network.broker.groups.stop()
    for c in made:
        d = c.close()
        network.pump()
        result_of(d)


@pytest.fixture
def cluster(clock):
    """A FakeCluster of three nodes (tests/client/fake_cluster.py)."""
    c = FakeCluster(clock, nodes=3)
    yield c
    c.stop()


@pytest.fixture
def cluster_client_options():
    """The C{client} fixture's rng seed and request timeout (a test module may override it)."""
    return {"seed": 5, "request_timeout": 2.0}


@pytest.fixture
def client(clock, cluster, cluster_client_options):
    """A ClusterClient of the fake C{cluster}, closed at the end."""
    options = dict(cluster_client_options)
    c = ClusterClient(cluster.bootstrap, clock=clock, endpoint_factory=cluster.endpoint,
                      rng=random.Random(options.pop("seed")), **options)
    yield c
    d = c.close()
    cluster.pump()
    result_of(d)

"""A call waiting for a connection that never comes (a connection attempt that never ends, as a
SYN into a black hole) fails at its timeout: StreamlogClient and ClusterClient, on a Clock."""

from __future__ import annotations

import pytest
from client_support import failure_of
from twisted.internet.defer import Deferred

from streamlog import errors
from streamlog.client.cluster import ClusterClient
from streamlog.client.connection import StreamlogClient


class NeverConnects:
    """An endpoint whose connection attempts never end (nor fail)."""

    def __init__(self):
        self.attempts = []

    def connect(self, factory):
        d = Deferred()
        self.attempts.append(d)
        return d


def advance_until(clock, d, seconds, step=0.1):
    """Advance in steps until C{d} fired; the virtual time it took."""
    start = clock.seconds()
    while not d.called and clock.seconds() - start < seconds:
        clock.advance(step)
    return clock.seconds() - start


@pytest.mark.parametrize("timeout", [None, 1.5])
def test_a_node_client_call_fails_at_its_timeout(clock, timeout):
    endpoint = NeverConnects()
    client = StreamlogClient(endpoint, clock=clock, request_timeout=3.0)
    d = client.call("Ping", {}, timeout=timeout)
    took = advance_until(clock, d, 60)
    error = failure_of(d).value
    assert isinstance(error, errors.Timeout) and error.details["sent"] is False
    assert took == pytest.approx(timeout or 3.0, abs=0.11)
    client.close()
    for attempt in endpoint.attempts:
        attempt.cancel()


@pytest.mark.parametrize("via", ["bootstrap", "over"])
def test_a_cluster_client_call_fails_at_its_timeout(clock, via):
    endpoint = NeverConnects()
    if via == "over":
        client = ClusterClient.over(StreamlogClient(endpoint, clock=clock, request_timeout=30.0))
    else:
        client = ClusterClient("127.0.0.1:1", clock=clock, endpoint_factory=lambda address: endpoint,
                               request_timeout=30.0)
    d = client.call("Ping", {}, timeout=2.0)
    took = advance_until(clock, d, 60)
    assert isinstance(failure_of(d).value, errors.Timeout)
    assert took == pytest.approx(2.0, abs=0.11)
    client.close()
    clock.advance(60)  # what the closed client still had scheduled runs out
    for attempt in endpoint.attempts:
        attempt.cancel()

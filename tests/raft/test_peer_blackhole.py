"""A real peer dial into a black hole (tests/conftest.py's C{black_hole}: SYNs dropped on
loopback, as to a host powered off) is given up at the transport's connect timeout and dialled
again after the backoff, with the endpoint a node dials its peers with."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from streamlog.broker.service import peer_endpoint
from streamlog.raft.core import RaftConfig
from streamlog.raft.driver import RaftHost
from streamlog.raft.transport import TransportLimits


def sleep(seconds: float) -> Deferred:
    d: Deferred = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@pytest_twisted.ensureDeferred
async def test_a_peer_dial_into_a_black_hole_is_given_up_at_the_connect_timeout_and_retried(black_hole):
    host = RaftHost("1", ["1", "2"], RaftConfig(election_timeout=0.5, heartbeat_interval=0.05), clock=reactor,
                    limits=TransportLimits(connect_timeout=0.5))
    host.dial_jitter = lambda: 0.0
    started = time.monotonic()
    try:
        host.dial("2", peer_endpoint(reactor, f"127.0.0.1:{black_hole}"))
        while host.stats["dial_timeouts"] < 2 and time.monotonic() - started < 10.0:  # bounded
            await sleep(0.05)
        took = time.monotonic() - started
        # Two attempts of 0.5 s and the backoff between them (0.075 s), not Twisted's 30 s.
        assert host.stats["dial_timeouts"] == 2 and 0.95 <= took < 5.0, f"{host.stats} after {took:.2f}s"
        assert "2" not in host.connections
    finally:
        host.stop()

"""A real peer dial into a black hole (tests/conftest.py's C{black_hole}: SYNs dropped on
loopback, as to a host powered off) is given up at the transport's connect timeout and dialled
again after the backoff, with the endpoint a node dials its peers with."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from streamlog.broker.service import peer_endpoint
from streamlog.raft.core import RaftConfig
from streamlog.raft.driver import RaftHost
from streamlog.raft.transport import TransportLimits


@pytest_twisted.ensureDeferred
async def test_a_peer_dial_into_a_black_hole_is_given_up_at_the_connect_timeout_and_retried(black_hole):
    host = RaftHost("1", ["1", "2"], RaftConfig(election_timeout=0.5, heartbeat_interval=0.05), clock=reactor,
                    limits=TransportLimits(connect_timeout=0.5))
    host.dial_jitter = lambda: 0.0
    started = time.monotonic()
    given_up: list[float] = []  # when each timed-out attempt was seen, from the start
    try:
        host.dial("2", peer_endpoint(reactor, f"127.0.0.1:{black_hole}"))
        while len(given_up) < 2 and time.monotonic() - started < 10.0:  # bounded
            await deferLater(reactor, 0.01, lambda: None)
            given_up += [time.monotonic() - started] * (host.stats["dial_timeouts"] - len(given_up))
        # Two attempts of 0.5 s each and the backoff between them (0.075 s), not Twisted's 30 s;
        # a busy machine may let a third land before the loop sees the second, so >= 2.
        assert host.stats["dial_timeouts"] >= 2 and len(given_up) >= 2, f"{host.stats} after {given_up}"
        first, second = given_up[:2]
        assert 0.5 <= first < 3.0, given_up
        # A whole timeout (and the backoff) after the first, less the poll's lag in seeing the first.
        assert 0.45 <= second - first < 3.0, given_up
        assert "2" not in host.connections
    finally:
        host.stop()

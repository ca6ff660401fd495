"""A peer given by host name is looked up at most once at a time (streamlog.broker.service.PeerEndpoint).

The reactor's resolver runs C{gethostbyname} on the reactor's thread pool, which also writes the
Raft hard state; a lookup the DNS never answers must hold one thread however often the peer is
dialled (every 4-5 s when dark), not one per dial.
"""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IResolverSimple
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from streamlog.broker.service import peer_endpoint
from streamlog.raft.core import RaftConfig
from streamlog.raft.driver import RaftHost
from streamlog.raft.transport import TransportLimits

CFG = RaftConfig(election_timeout=0.5, heartbeat_interval=0.05)


class SilentDNS(MemoryReactorClock):
    """A memory reactor whose name lookups are answered only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[str, Deferred]] = []
        self.started = 0

    def resolve(self, name: str, timeout: object = None) -> Deferred:
        d: Deferred = Deferred()
        self.started += 1
        self.pending.append((name, d))
        return d


def run(clock: MemoryReactorClock, seconds: float) -> None:
    for _ in range(int(seconds / 0.1)):
        clock.advance(0.1)


def test_a_peer_whose_name_never_resolves_has_one_lookup_in_flight_across_many_dials():
    dns = SilentDNS()
    host = RaftHost("1", ["1", "2"], CFG, clock=dns, limits=TransportLimits(connect_timeout=2.0))
    host.dial_jitter = lambda: 0.0
    endpoint = peer_endpoint(dns, "peer2.example:7070")
    try:
        host.dial("2", endpoint)
        run(dns, 60.0)
        assert host.stats["dial_timeouts"] >= 10  # dialled and given up again and again ...
        assert dns.started == 1 and endpoint.lookups == 1  # ... on the one lookup
        assert [name for name, _ in dns.pending] == ["peer2.example"] and dns.tcpClients == []
        # The lookup answers at last: a dial connects to the address (a lookup per dial again,
        # one at a time: each answered at once here).
        dns.pending.pop()[1].callback("10.0.0.2")
        for _ in range(60):
            while dns.pending:
                dns.pending.pop()[1].callback("10.0.0.2")
            if dns.tcpClients:
                break
            dns.advance(0.1)
        assert [(ip, port) for ip, port, *_ in dns.tcpClients] == [("10.0.0.2", 7070)]
    finally:
        host.stop()


def test_an_address_literal_is_not_looked_up():
    dns = SilentDNS()
    for address, ip in [("10.0.0.3:7070", "10.0.0.3"), ("[::1]:7070", "::1")]:
        peer_endpoint(dns, address).connect(object())
        assert dns.tcpClients[-1][:2] == (ip, 7070)
    assert dns.started == 0


@implementer(IResolverSimple)
class NeverAnswers:
    def __init__(self) -> None:
        self.lookups: list[str] = []

    def getHostByName(self, name: str, timeout: object = ()) -> Deferred:  # noqa: N802
        self.lookups.append(name)
        return Deferred()


@pytest_twisted.ensureDeferred
async def test_with_the_real_reactor_a_dark_peers_dials_share_one_lookup():
    resolver = NeverAnswers()
    previous = reactor.installResolver(resolver)
    host = RaftHost("1", ["1", "2"], CFG, clock=reactor, limits=TransportLimits(connect_timeout=0.2))
    host.dial_jitter = lambda: 0.0
    started = time.monotonic()
    try:
        host.dial("2", peer_endpoint(reactor, "peer2.example:7070"))
        while host.stats["dial_timeouts"] < 3 and time.monotonic() - started < 10.0:  # bounded
            await deferLater(reactor, 0.02, lambda: None)
        assert host.stats["dial_timeouts"] >= 3, host.stats
        assert resolver.lookups == ["peer2.example"]  # not one per dial
    finally:
        host.stop()
        reactor.installResolver(previous)

"""The HTTP site against slow clients, on a Clock with in-memory transports: a request must arrive
whole within --http-request-timeout of its first byte, however often bytes trickle in (each resets
the idle timeout); one address holds at most --http-max-connections-per-address connections."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.web.resource import Resource

from streamlog.http.site import (
    DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_HTTP_REQUEST_TIMEOUT,
    QuietSite,
)


class Fine(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"fine"


def make_site(clock, **kw):
    root = Resource()
    root.putChild(b"ok", Fine())
    return QuietSite(root, reactor=clock, timeout=10.0, **kw)


def connect(site, host="127.0.0.1", port=40000):
    channel = site.buildProtocol(IPv4Address("TCP", host, port))
    if channel is None:
        return None, None
    transport = StringTransportWithDisconnection()
    transport.protocol = channel
    channel.makeConnection(transport)
    return channel, transport


def test_the_defaults():
    assert DEFAULT_HTTP_REQUEST_TIMEOUT == 30.0 and DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS == 16


def test_a_request_trickling_in_is_cut_at_the_request_timeout_though_each_byte_resets_the_idle_one():
    clock = Clock()
    site = make_site(clock, request_timeout=3.0)
    channel, transport = connect(site)
    request = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    sent = 0
    while transport.connected and sent < len(request):  # a byte every 0.5 s: the idle timeout (10 s) never fires
        channel.dataReceived(request[sent:sent + 1])
        sent += 1
        clock.advance(0.5)
    assert not transport.connected and sent == 6  # 3 s of bytes
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b'"REQUEST_TIMEOUT"' in transport.value() and site.slow_requests == 1
    assert site.open_connections == 0 and site.by_address == {}
    assert clock.getDelayedCalls() == [] or all(not c.active() for c in clock.getDelayedCalls())


def test_a_connection_that_sends_nothing_is_cut_at_the_request_timeout_too():
    clock = Clock()
    site = make_site(clock, request_timeout=2.0)
    _, transport = connect(site)
    clock.advance(1.9)
    assert transport.connected
    clock.advance(0.2)
    assert not transport.connected and site.slow_requests == 1


def test_keep_alive_requests_each_get_the_whole_timeout_and_the_answer_time_is_not_counted():
    clock = Clock()
    site = make_site(clock, request_timeout=3.0)
    channel, transport = connect(site)
    for _ in range(3):  # each request arrives in 2 s (two halves), within its 3 s
        channel.dataReceived(b"GET /ok HTTP/1.1\r\nHo")
        clock.advance(2.0)
        channel.dataReceived(b"st: x\r\n\r\n")
        assert transport.value().endswith(b"fine")
        transport.clear()
        clock.advance(5.0)  # idle between requests, below the 10 s idle timeout: not the request's time
    assert transport.connected and site.slow_requests == 0
    clock.advance(10.0)
    assert not transport.connected  # then the idle timeout, as before
    assert site.slow_requests == 0


def test_one_address_holds_at_most_its_share_of_the_connections():
    clock = Clock()
    site = make_site(clock, max_connections=8, max_connections_per_address=3)
    held = [connect(site, "127.0.0.5", 1000 + i) for i in range(3)]
    assert all(channel is not None for channel, _ in held)
    assert connect(site, "127.0.0.5", 2000) == (None, None)  # a fourth from the same address: refused
    assert site.refused_per_address == 1
    others = [connect(site, "127.0.0.6", 3000 + i) for i in range(3)]
    assert all(channel is not None for channel, _ in others)  # another address has its own share
    held[0][1].loseConnection()
    assert site.by_address == {"127.0.0.5": 2, "127.0.0.6": 3}
    assert connect(site, "127.0.0.5", 2001)[0] is not None  # room again
    for _, t in others + held[1:]:
        t.loseConnection()

"""The HTTP site against slow clients, on a Clock with in-memory transports: a request must arrive
whole within --http-request-timeout of its first byte, however often bytes trickle in (each resets
the idle timeout); one address holds at most --http-max-connections-per-address connections."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

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


def connect(site, host="127.0.0.1", port=40000, transport_type=StringTransportWithDisconnection):
    """(channel, transport) of a new connection from C{host}:C{port}, or (None, None) if refused."""
    channel = site.buildProtocol(IPv4Address("TCP", host, port))
    if channel is None:
        return None, None
    transport = transport_type()
    transport.protocol = channel
    channel.makeConnection(transport)
    return channel, transport


def mount_slow(site):
    """Mount /slow, whose answers wait (NOT_DONE_YET); the list its requests are put in."""
    pending = []

    class Slow(Resource):
        isLeaf = True

        def render_GET(self, request):
            pending.append(request)
            return NOT_DONE_YET

    site.resource.putChild(b"slow", Slow())
    return pending


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
    fourth = connect(site, "127.0.0.5", 2000)  # a fourth from the same address: its own oldest idle one goes
    assert fourth[0] is not None and not held[0][1].connected and site.by_address == {"127.0.0.5": 3}
    others = [connect(site, "127.0.0.6", 3000 + i) for i in range(3)]
    assert all(channel is not None for channel, _ in others)  # another address has its own share
    held[1][1].loseConnection()
    assert site.by_address == {"127.0.0.5": 2, "127.0.0.6": 3} and site.open_connections == 5
    assert connect(site, "127.0.0.5", 2001)[0] is not None and site.closed_idle == 1  # room again: none closed
    assert all(t.connected for _, t in others + [held[2], fourth])
    for _, t in others + [held[2], fourth]:
        t.loseConnection()


def test_a_new_connection_at_the_cap_closes_the_oldest_idle_one_instead_of_being_refused():
    clock = Clock()
    site = make_site(clock, max_connections=4, max_connections_per_address=4)
    held = [connect(site, f"127.0.0.{2 + i}", 1000 + i) for i in range(4)]
    held[0][0].dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")  # the oldest was used since: not the oldest idle
    probe, transport = connect(site, "127.0.0.9", 5000)
    assert probe is not None and site.closed_idle == 1
    assert [t.connected for _, t in held] == [True, False, True, True]  # the second: idle longest
    assert site.open_connections == 4 and "127.0.0.3" not in site.by_address
    probe.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ") and transport.value().endswith(b"fine")
    held[1][0].connectionLost(None)  # its close arriving later counts nothing twice
    assert site.open_connections == 4 and site.refused_connections == 0


def test_at_an_addresss_share_a_new_connection_closes_that_addresss_oldest_idle_one_only():
    clock = Clock()
    site = make_site(clock, max_connections=8, max_connections_per_address=2)
    others = [connect(site, "127.0.0.6", 3000 + i) for i in range(2)]
    mine = [connect(site, "127.0.0.5", 1000 + i) for i in range(2)]
    channel, _ = connect(site, "127.0.0.5", 2000)
    assert channel is not None and site.closed_idle == 1 and site.by_address == {"127.0.0.5": 2, "127.0.0.6": 2}
    assert [t.connected for _, t in mine] == [False, True] and all(t.connected for _, t in others)


def test_the_oldest_connection_not_answering_is_closed_first_and_one_answering_never():
    clock = Clock()
    site = make_site(clock, max_connections=3, max_connections_per_address=3)
    pending = mount_slow(site)
    answering, t1 = connect(site, "127.0.0.2", 1)
    answering.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # its answer is being made
    halfway, t2 = connect(site, "127.0.0.3", 2)
    halfway.dataReceived(b"GET /ok HTTP/1.1\r\nHo")  # half a request arrived (a slowloris, say)
    _, t3 = connect(site, "127.0.0.4", 3)
    newest, t4 = connect(site, "127.0.0.9", 4)
    assert newest is not None and not t2.connected and t3.connected  # the oldest not answering
    assert connect(site, "127.0.0.9", 5)[0] is not None and not t3.connected
    assert connect(site, "127.0.0.9", 6)[0] is not None and not t4.connected
    assert t1.connected and site.closed_idle == 3
    pending[0].write(b"done")
    pending[0].finish()
    assert t1.value().endswith(b"\r\n\r\n4\r\ndone\r\n0\r\n\r\n") and t1.connected  # answered whole, kept alive


def test_a_connection_is_refused_only_when_every_one_is_answering():
    clock = Clock()
    site = make_site(clock, max_connections=2, max_connections_per_address=2)
    pending = mount_slow(site)
    for port in (1, 2):
        channel, _ = connect(site, "127.0.0.2", port)
        channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert connect(site, "127.0.0.3", 3) == (None, None) and site.refused_connections == 1
    assert connect(site, "127.0.0.2", 4) == (None, None) and site.refused_per_address == 1
    for request in pending:
        request.finish()
    assert connect(site, "127.0.0.3", 5)[0] is not None and site.closed_idle == 1

"""Connections the HTTP site closes itself (evicted to make room, answered 408 or 413, idle) whose
socket does not close at once: a real TCP socket whose last answer is still unflushed to a client
that stopped reading stays open after loseConnection() until the bytes are out.  Each such
connection is counted once, by what closed it (never again as an idle timeout when Twisted's idle
timer would have fired later), and is aborted after the site's abort grace, so its descriptor is
freed within a bound.  A site on a Clock with in-memory transports, its collector in a registry
(found by a read-only review of the ready-metrics merge)."""

from __future__ import annotations

from prometheus_client.registry import CollectorRegistry
from test_http_slow_clients import connect, make_site
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from streamlog.http.site import DEFAULT_HTTP_CLOSE_TIMEOUT
from streamlog.metrics.http_site import HttpSiteCollector

GET_OK = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"


class LingeringTransport(StringTransport):
    """A socket whose close waits for a client that does not read: loseConnection() only marks it
    disconnecting; abortConnection() closes it at once (the protocol's connectionLost)."""

    protocol = None
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            protocol.connectionLost(Failure(ConnectionError("aborted")))


def connect_lingering(site, host, port):
    return connect(site, host, port, transport_type=LingeringTransport)


def counts(site):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HttpSiteCollector(site))
    get = registry.get_sample_value
    return {"open": get("streamlog_http_connections_open"),
            "evicted": get("streamlog_http_connections_evicted_total"),
            "request_timeouts": get("streamlog_http_request_timeouts_total"),
            "idle_timeouts": get("streamlog_http_idle_timeouts_total")}


def bodies_refused(site):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HttpSiteCollector(site))
    return registry.get_sample_value("streamlog_http_requests_refused_total", {"reason": "body_too_large"})


def no_timers_left(clock):
    return all(not call.active() for call in clock.getDelayedCalls())


def test_the_close_timeout_defaults_to_twisteds_grace_after_an_idle_timeout():
    assert DEFAULT_HTTP_CLOSE_TIMEOUT == 15.0 == HTTPChannel.abortTimeout


def test_the_close_timeout_is_the_sites():
    clock = Clock()
    site = make_site(clock, request_timeout=5.0, close_timeout=2.5)
    _, transport = connect_lingering(site, "127.0.0.2", 1)
    clock.advance(5.0)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting
    clock.advance(2.4)
    assert not transport.aborted
    clock.advance(0.1)
    assert transport.aborted and counts(site)["open"] == 0 and no_timers_left(clock)


def test_an_evicted_connection_whose_close_lingers_is_counted_once_and_aborted_after_the_grace():
    clock = Clock()
    site = make_site(clock, max_connections=1)  # idle timeout 10 s
    first, t1 = connect_lingering(site, "127.0.0.2", 1)
    first.dataReceived(GET_OK)
    assert t1.value().startswith(b"HTTP/1.1 200 ")  # answered: idle now, so evictable
    second, t2 = connect_lingering(site, "127.0.0.3", 2)  # at the cap: the first is closed to make room
    assert second is not None and t1.disconnecting and not t1.aborted
    assert counts(site) == {"open": 1, "evicted": 1, "request_timeouts": 0, "idle_timeouts": 0}
    clock.advance(10.0)  # the second (open, idle) times out; the evicted first is not counted again
    assert counts(site) == {"open": 1, "evicted": 1, "request_timeouts": 0, "idle_timeouts": 1}
    assert not t1.aborted
    clock.advance(DEFAULT_HTTP_CLOSE_TIMEOUT - 10.0)  # the grace since it was closed to make room
    assert t1.aborted and not t2.aborted
    clock.advance(10.0)  # the second: the grace since its idle timeout
    assert t2.aborted
    assert counts(site) == {"open": 0, "evicted": 1, "request_timeouts": 0, "idle_timeouts": 1}
    clock.advance(60.0)
    assert no_timers_left(clock)


def test_a_408_whose_close_lingers_is_counted_once_and_aborted_after_the_grace():
    clock = Clock()
    site = make_site(clock, request_timeout=5.0)  # idle timeout 10 s
    slow, transport = connect_lingering(site, "127.0.0.2", 1)
    clock.advance(1.0)
    slow.dataReceived(b"GET /ok HTTP/1.1\r\n")
    clock.advance(4.0)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting
    clock.advance(7.0)  # 10 s after its last byte: its idle timer would fire now
    assert counts(site) == {"open": 1, "evicted": 0, "request_timeouts": 1, "idle_timeouts": 0}
    assert not transport.aborted
    clock.advance(DEFAULT_HTTP_CLOSE_TIMEOUT - 7.0)  # the grace since the 408
    assert transport.aborted
    assert counts(site) == {"open": 0, "evicted": 0, "request_timeouts": 1, "idle_timeouts": 0}
    assert no_timers_left(clock)


def test_a_413_whose_close_lingers_is_neither_a_408_nor_an_idle_timeout_and_is_aborted_after_the_grace():
    clock = Clock()
    site = make_site(clock, max_body_bytes=10, request_timeout=12.0)  # idle timeout 10 s
    channel, transport = connect_lingering(site, "127.0.0.2", 1)
    channel.dataReceived(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ") and transport.disconnecting
    assert counts(site) == {"open": 1, "evicted": 0, "request_timeouts": 0, "idle_timeouts": 0}
    clock.advance(DEFAULT_HTTP_CLOSE_TIMEOUT - 0.1)  # past the idle and the request timeouts
    assert not transport.aborted and transport.value().count(b"HTTP/1.1 ") == 1  # no 408 after the 413
    assert counts(site) == {"open": 1, "evicted": 0, "request_timeouts": 0, "idle_timeouts": 0}
    clock.advance(0.1)
    assert transport.aborted
    assert counts(site) == {"open": 0, "evicted": 0, "request_timeouts": 0, "idle_timeouts": 0}
    clock.advance(60.0)
    assert no_timers_left(clock)


def test_a_413_is_counted_in_metrics_whether_by_its_declared_length_or_where_a_chunked_body_passes_it():
    clock = Clock()
    site = make_site(clock, max_body_bytes=10)
    assert bodies_refused(site) == 0
    declared, t1 = connect_lingering(site, "127.0.0.2", 1)
    declared.dataReceived(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
    assert t1.value().startswith(b"HTTP/1.1 413 ") and bodies_refused(site) == 1
    chunked, t2 = connect_lingering(site, "127.0.0.2", 2)
    chunked.dataReceived(b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        chunked.dataReceived(b"8\r\n12345678\r\n")  # the second passes the limit; the third is ignored
    assert t2.value().startswith(b"HTTP/1.1 413 ") and t2.value().count(b"HTTP/1.1 ") == 1
    assert bodies_refused(site) == 2
    within, t3 = connect_lingering(site, "127.0.0.2", 3)
    within.dataReceived(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" + b"x" * 10)
    assert not t3.value().startswith(b"HTTP/1.1 413 ") and bodies_refused(site) == 2
    clock.advance(DEFAULT_HTTP_CLOSE_TIMEOUT)
    assert t1.aborted and t2.aborted


def test_a_connection_closing_at_the_cap_gives_its_slot_without_counting_an_eviction():
    """A connection answered 408 whose socket lingers is no longer waiting for anything: a new
    connection at the cap takes its slot (it is not counted evicted: it was counted as a 408)."""
    clock = Clock()
    site = make_site(clock, max_connections=2, request_timeout=5.0)
    _, closing = connect_lingering(site, "127.0.0.2", 1)
    clock.advance(1.0)
    idle, kept = connect_lingering(site, "127.0.0.3", 2)
    idle.dataReceived(GET_OK)  # answered: idle, and so evictable too
    clock.advance(4.0)
    assert closing.value().startswith(b"HTTP/1.1 408 ") and closing.disconnecting
    newest, _ = connect_lingering(site, "127.0.0.4", 3)
    assert newest is not None and not kept.disconnecting  # the closing one's slot, not the idle one's
    assert counts(site) == {"open": 2, "evicted": 0, "request_timeouts": 1, "idle_timeouts": 0}
    clock.advance(DEFAULT_HTTP_CLOSE_TIMEOUT)  # the other two have timed out idle meanwhile, and linger
    assert closing.aborted and counts(site)["open"] == 2  # its close, when it came, counted nothing twice
    clock.advance(60.0)
    assert counts(site)["open"] == 0 and no_timers_left(clock)

"""The HTTP listener's silent bounds are counted in /metrics: connections refused at the total and
per-address limits, connections evicted to make room, requests cut at --http-request-timeout, idle
connections closed.  A site on a Clock with in-memory transports, its collector in a registry."""

from __future__ import annotations

from prometheus_client.registry import CollectorRegistry
from test_http_slow_clients import connect, make_site, mount_slow
from twisted.internet.task import Clock

from streamlog.metrics.http_site import HttpSiteCollector

GET_SLOW = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"


def registry_of(site):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HttpSiteCollector(site))
    return registry


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_refusals_at_either_limit_and_evictions_are_counted():
    clock = Clock()
    site = make_site(clock, max_connections=2, max_connections_per_address=2)
    registry = registry_of(site)
    pending = mount_slow(site)
    for port in (1, 2):
        channel, _ = connect(site, "127.0.0.2", port)
        channel.dataReceived(GET_SLOW)  # being answered: never evicted
    assert value(registry, "streamlog_http_connections_open") == 2
    assert connect(site, "127.0.0.3", 3) == (None, None)
    assert connect(site, "127.0.0.2", 4) == (None, None)
    assert connect(site, "127.0.0.3", 5) == (None, None)
    assert value(registry, "streamlog_http_connections_refused_total", limit="total") == 2
    assert value(registry, "streamlog_http_connections_refused_total", limit="per_address") == 1
    assert value(registry, "streamlog_http_connections_evicted_total") == 0
    for request in pending:
        request.finish()  # answered: idle now, so a new connection evicts the oldest
    assert connect(site, "127.0.0.3", 6)[0] is not None
    assert value(registry, "streamlog_http_connections_evicted_total") == 1
    assert value(registry, "streamlog_http_connections_open") == 2


def test_request_timeouts_and_idle_timeouts_are_counted_apart():
    clock = Clock()
    site = make_site(clock, request_timeout=5.0)  # idle timeout 10 s
    registry = registry_of(site)
    slow, slow_transport = connect(site, "127.0.0.2", 1)
    slow.dataReceived(b"GET /ok HTTP/1.1\r\n")  # never finished
    clock.advance(5.0)
    assert not slow_transport.connected
    assert value(registry, "streamlog_http_request_timeouts_total") == 1
    assert value(registry, "streamlog_http_idle_timeouts_total") == 0
    idle, idle_transport = connect(site, "127.0.0.2", 2)
    idle.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then nothing more
    assert idle_transport.value().startswith(b"HTTP/1.1 200 ")
    clock.advance(10.0)
    assert not idle_transport.connected
    assert value(registry, "streamlog_http_idle_timeouts_total") == 1
    assert value(registry, "streamlog_http_request_timeouts_total") == 1
    clock.advance(60.0)  # the abort timer, if any, runs out


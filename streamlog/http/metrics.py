"""C{GET /metrics}: the node's registry in the Prometheus text format (or OpenMetrics, if asked).

The exposition is C{prometheus_client}'s own (no hand-written format); the
encoder follows the scraper's C{Accept} header.  Rendering runs the node's
collector (L{streamlog.metrics.collector}) on the reactor thread: a scrape
reads the node's state at one moment and costs the data path nothing until
it comes.

A rendering costs the reactor milliseconds at many partitions (16-23 ms at
1,313), and nothing else bounds how often scrapers ask, so each format's
body is kept for L{DEFAULT_METRICS_CACHE_SECONDS} (--metrics-cache-seconds)
and served again to every scrape within that: scraping faster than that
costs no more, and shows values at most that old.  0 renders every scrape.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from twisted.web.resource import Resource
from twisted.web.server import Request

#: Seconds one rendering of /metrics is served again (--metrics-cache-seconds).
DEFAULT_METRICS_CACHE_SECONDS = 1.0


class MetricsResource(Resource):
    """C{/metrics} of C{registry}; C{clock} (the reactor, or a C{Clock}) times the cache."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, cache_seconds: float = DEFAULT_METRICS_CACHE_SECONDS,
                 clock: Any = None) -> None:
        super().__init__()
        self.registry = registry
        self.cache_seconds = cache_seconds
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        #: content type -> (when rendered, body)
        self._cached: dict[str, tuple[float, bytes]] = {}

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if isinstance(accept, bytes) else accept)
        now = self.clock.seconds()
        cached = self._cached.get(content_type)
        if cached is not None and 0 <= now - cached[0] < self.cache_seconds:
            body = cached[1]
        else:
            body = encoder(self.registry)
            if self.cache_seconds > 0:
                self._cached[content_type] = (now, body)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body

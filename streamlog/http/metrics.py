"""C{GET /metrics}: the node's registry in the Prometheus text format (or OpenMetrics, if asked).

The exposition is C{prometheus_client}'s own (no hand-written format); the
encoder follows the scraper's C{Accept} header.  Rendering runs the node's
collector (L{streamlog.metrics.collector}) on the reactor thread: a scrape
reads the node's state at one moment and costs the data path nothing until
it comes.
"""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from twisted.web.resource import Resource
from twisted.web.server import Request


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if isinstance(accept, bytes) else accept)
        body: bytes = encoder(self.registry)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body

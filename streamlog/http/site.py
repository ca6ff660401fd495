"""Twisted Web on the node's reactor: the site for the root resource, quiet and bounded.

Twisted's C{Site} writes one access-log line per request into the node's log
by default; a Prometheus scrape every few seconds would drown the lines an
operator reads, so this one logs nothing per request.  Idle HTTP connections
are closed after L{DEFAULT_HTTP_TIMEOUT} seconds (Twisted's own default is
twelve hours): a scraper that vanishes does not keep a descriptor for that
long.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource
from twisted.web.server import Request, Site

#: The default of --http-listen: beside the data port, as Redpanda's admin port sits beside its Kafka port.
DEFAULT_HTTP_LISTEN = "tcp:9644:interface=127.0.0.1"
#: Seconds an HTTP connection may stay idle before the node closes it (--http-idle-timeout).
DEFAULT_HTTP_TIMEOUT = 60.0
#: The value of --http-listen that turns the listener off.
OFF = "none"
#: The environment variable that, when set, is the default of --http-listen (the test suite sets
#: it to "none", so that no node a test starts binds the fixed port 9644 of a shared machine).
HTTP_LISTEN_ENV = "STREAMLOG_HTTP_LISTEN"


class QuietSite(Site):
    """A C{Site} that writes no access log line per request."""

    noisy = False

    def __init__(self, resource: IResource, timeout: float = DEFAULT_HTTP_TIMEOUT, reactor: Any = None) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)

    def log(self, request: Request) -> None:
        pass

"""Twisted Web on the node's reactor: the site for the root resource, quiet and bounded.

Twisted's C{Site} writes one access-log line per request into the node's log
by default; a Prometheus scrape every few seconds would drown the lines an
operator reads, so this one logs nothing per request, nor per timed-out
connection.  Idle HTTP connections are closed after L{DEFAULT_HTTP_TIMEOUT}
seconds (Twisted's own default is twelve hours): a scraper that vanishes does
not keep a descriptor for that long.  Twisted reads a whole request body before
any resource sees it (spooling a large one to a temporary file), so the limit
on bodies is enforced here, while reading: a declared length over it is refused
before a byte of the body is read, and a chunked body is cut off where it
passes it.  At most L{DEFAULT_HTTP_MAX_CONNECTIONS} are open at once, so HTTP
sockets stay within the node's descriptor budget.

A new connection at that cap closes the oldest connection that is not being
answered (idle since its last answer, or still receiving a request) rather
than being refused: otherwise idle connections (held open by anyone for up to
the idle timeout, and reopened) would lock a supervisor's C{/health} probe out
and get a healthy node restarted.  A connection the node is answering is never
closed so; only when every one is being answered is a new one refused.  An
HTTP client sees its idle keep-alive connection closed and opens a new one.

A slow client (slowloris: one header byte now and then) resets the idle
timeout with every byte, so it alone would keep a connection for ever; two
more bounds stop a few clients from holding every slot: a whole request
(its request line, headers and body) must arrive within
L{DEFAULT_HTTP_REQUEST_TIMEOUT} seconds of its first byte (of the connection,
for the first request), else it is answered 408 and the connection closed;
and one client address may hold at most
L{DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS} connections: a new one past that
closes that address's own oldest connection not being answered (so one
address cannot close everybody's), or is refused if it has none.

A connection the site closes itself (evicted, answered 408 or 413, or idle)
may not close at once: a socket whose last answer is unflushed to a client
that stopped reading stays open until the bytes are out.  So each stops its
timers first (an evicted or refused connection would otherwise be counted
again as an idle timeout later) and is aborted if it is still open the
site's C{close_timeout} (L{DEFAULT_HTTP_CLOSE_TIMEOUT}) seconds later: its
descriptor is freed within a bound.  A new connection at the cap takes the
slot of one that is closing before it evicts one that is not (the closing
one was counted by what closed it).

None of this writes a log line; the site counts each (refusals, evictions,
request and idle timeouts, bodies refused) and L{streamlog.metrics.http_site}
shows them in C{/metrics}.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import orjson
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

#: The default of --http-listen: beside the data port, as Redpanda's admin port sits beside its Kafka port.
DEFAULT_HTTP_LISTEN = "tcp:9644:interface=127.0.0.1"
#: Seconds an HTTP connection may stay idle before the node closes it (--http-idle-timeout).
DEFAULT_HTTP_TIMEOUT = 60.0
#: Most HTTP connections open at once (--http-max-connections); more are closed on accept.
DEFAULT_HTTP_MAX_CONNECTIONS = 64
#: Seconds a whole request may take to arrive, from its first byte (--http-request-timeout).
DEFAULT_HTTP_REQUEST_TIMEOUT = 30.0
#: Most HTTP connections open at once from one client address (--http-max-connections-per-address).
DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS = 16
#: Largest request body on any path unless told otherwise (the console passes --console-max-body-bytes).
DEFAULT_HTTP_MAX_BODY_BYTES = 65536
#: Seconds a connection the site closed (idle, evicted, 408, 413) may take to send its last bytes
#: before it is aborted (--http-close-timeout): Twisted's own grace after an idle timeout
#: (C{HTTPChannel.abortTimeout}).
DEFAULT_HTTP_CLOSE_TIMEOUT = 15.0
#: The value of --http-listen that turns the listener off.
OFF = "none"
#: The environment variable that, when set, is the default of --http-listen (the test suite sets
#: it to "none", so that no node a test starts binds the fixed port 9644 of a shared machine).
HTTP_LISTEN_ENV = "STREAMLOG_HTTP_LISTEN"


class BoundedRequest(Request):
    """A request whose body is held in memory and refused (413, connection closed) past the
    site's C{max_body_bytes}: on its declared length before it is read, or where it passes it."""

    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()  # never a temporary file: the body is bounded
        if length is not None and length > self.channel.site.max_body_bytes:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body_bytes:
            self._refuse()
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        self.channel.site.bodies_refused += 1
        limit = self.channel.site.max_body_bytes
        body = orjson.dumps({"error": {"code": "BODY_TOO_LARGE", "limit": limit,
                                       "message": f"the request body is larger than {limit} bytes"}})
        self.channel.transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json; "
                                     b"charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(body), body))
        self.channel.close()


class QuietChannel(HTTPChannel):
    """An C{HTTPChannel} that closes an idle connection without a log line (Twisted logs one per
    connection at info level: thousands of idle sockets would rotate the node's log), counts
    itself in its site's open connections (per client address too), and gives each request
    the site's C{request_timeout} to arrive whole."""

    #: The client address it counts under in the site (set by L{QuietSite.buildProtocol}).
    peer_host: str | None = None
    _deadline: Any = None
    #: When it last began to wait for a request (the site's tick): the oldest is closed first at the cap.
    waiting_since = 0
    #: Closed by the site to make room (already uncounted).
    _made_room = False
    #: Being closed by the site (L{close}): its socket may linger until the abort.
    closing = False
    #: Seconds from L{close} to the abort (the site's C{close_timeout}, set by L{QuietSite.buildProtocol}).
    abortTimeout = DEFAULT_HTTP_CLOSE_TIMEOUT

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.opened(self)
        self._arm()  # the first request's clock starts with the connection

    def connectionLost(self, reason: Any) -> None:
        self._disarm()
        if not self._made_room:
            self.site.closed(self)
        super().connectionLost(reason)

    @property
    def answering(self) -> bool:
        """A request arrived whole and its answer is not finished: never closed to make room."""
        return bool(self._handlingRequest)

    def requestDone(self, request: Any) -> None:
        self.waiting_since = self.site.tick()
        super().requestDone(request)

    def make_room(self) -> None:
        """Close it for a new connection (the site has uncounted it already)."""
        self._made_room = True
        self.close()

    def close(self) -> None:
        """Close the connection after what it has written, and abort it if it is still open after
        C{abortTimeout} (a client that does not read the last answer).  Its timers stop first:
        its request deadline, and Twisted's idle timer, which would otherwise fire while the
        socket lingers and count an idle timeout for a connection already counted as closed."""
        if self.closing:
            return
        self.closing = True
        self._disarm()
        self.setTimeout(None)
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def forceAbortClient(self) -> None:
        """Abort it at the end of the grace, without Twisted's log line (see the module's docstring)."""
        self._abortingCall = None
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and not self._handlingRequest:
            self._arm()  # the first byte of the next request
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._disarm()  # whole: the answer may take its time (a long request is the resource's)
        super().allContentReceived()

    def _arm(self) -> None:
        self._deadline = self.callLater(self.site.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.site.slow_requests += 1
        limit = self.site.request_timeout
        body = orjson.dumps({"error": {"code": "REQUEST_TIMEOUT", "limit": limit,
                                       "message": f"the request did not arrive whole within {limit:g} s"}})
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.close()

    def timeoutConnection(self) -> None:
        self.site.idle_timeouts += 1
        self.close()


class QuietSite(Site):
    """A C{Site} that writes no access log line per request, bounds bodies and connections."""

    noisy = False
    requestFactory = BoundedRequest
    protocol = QuietChannel

    def __init__(self, resource: IResource, timeout: float = DEFAULT_HTTP_TIMEOUT, reactor: Any = None,
                 max_connections: int = DEFAULT_HTTP_MAX_CONNECTIONS,
                 max_body_bytes: int = DEFAULT_HTTP_MAX_BODY_BYTES,
                 request_timeout: float = DEFAULT_HTTP_REQUEST_TIMEOUT,
                 max_connections_per_address: int = DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS,
                 close_timeout: float = DEFAULT_HTTP_CLOSE_TIMEOUT) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)
        self.close_timeout = close_timeout
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.max_connections_per_address = max_connections_per_address
        #: HTTP connections open now, in all and per client address.
        self.open_connections = 0
        self.by_address: dict[str, int] = {}
        #: Connections closed on accept because L{max_connections} were open, or
        #: L{max_connections_per_address} from the same address, all of them being answered;
        #: connections closed to make room for a new one; requests cut at L{request_timeout};
        #: connections closed idle for the idle timeout; requests refused 413 for a body over
        #: L{max_body_bytes} (/metrics: streamlog.metrics.http_site).
        self.refused_connections = 0
        self.refused_per_address = 0
        self.closed_idle = 0
        self.slow_requests = 0
        self.idle_timeouts = 0
        self.bodies_refused = 0
        #: The open connections (in the order they opened).
        self.channels: dict[QuietChannel, None] = {}
        self._ticks = 0

    def tick(self) -> int:
        """A number larger than every earlier one: orders connections by when they began to wait."""
        self._ticks += 1
        return self._ticks

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", None)
        if host is not None and self.by_address.get(host, 0) >= self.max_connections_per_address:
            if not self._make_room(host):
                self.refused_per_address += 1
                return None  # Twisted closes the socket at once
        if self.open_connections >= self.max_connections and not self._make_room(None):
            self.refused_connections += 1
            return None
        channel = super().buildProtocol(addr)
        if channel is None:
            return None
        channel.abortTimeout = self.close_timeout
        if host is not None:
            channel.peer_host = host
        return channel

    def _make_room(self, host: str | None) -> bool:
        """Close the oldest connection (of C{host}, if given) that is not being answered; whether there was one."""
        waiting = [c for c in self.channels if not c.answering and (host is None or c.peer_host == host)]
        if not waiting:
            return False
        closing = [c for c in waiting if c.closing]
        if closing:  # already closed (and counted) by the site, its socket lingering: its slot, uncounted
            self.closed(closing[0])
            closing[0]._made_room = True
            return True
        oldest = min(waiting, key=lambda c: c.waiting_since)
        self.closed(oldest)
        self.closed_idle += 1
        oldest.make_room()
        return True

    def opened(self, channel: QuietChannel) -> None:
        """C{channel}'s connection is open: count it."""
        channel.waiting_since = self.tick()
        self.channels[channel] = None
        self.open_connections += 1
        if channel.peer_host is not None:
            self.by_address[channel.peer_host] = self.by_address.get(channel.peer_host, 0) + 1

    def closed(self, channel: QuietChannel) -> None:
        """C{channel}'s connection closed (or is being closed to make room): uncount it."""
        if channel not in self.channels:
            return
        del self.channels[channel]
        self.open_connections -= 1
        host = channel.peer_host
        if host is None:
            return
        left = self.by_address.get(host, 0) - 1
        if left > 0:
            self.by_address[host] = left
        else:
            self.by_address.pop(host, None)

    def log(self, request: Request) -> None:
        pass

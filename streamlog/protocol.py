"""JSON-lines RPC over TCP: the server's side of a connection.

L{BrokerProtocol} frames lines, decodes them with L{streamlog.wire}, hands
each request to the broker's handler table and writes the answer when it is
ready, so answers may come out of order and a long poll never holds up a Send
behind it.  It also enforces the limits of the connection edge: line length,
in-flight requests, the answers owed to a client that does not read, and
connections per node and per client address.  A client may half-close: it
still gets every answer, then the connection closes.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from streamlog import errors, wire
from streamlog.broker.broker import Broker
from streamlog.broker.partition import WaitQuota
from streamlog.framing import FastLineReceiver
from streamlog.metrics.histogram import Histogram
from streamlog.metrics.requests import INVALID, SENDS, UNKNOWN, RequestStats

#: Bytes handed to the kernel per write on a broker connection (Twisted's default is 128 KiB).
SEND_LIMIT = 4 * 1024 * 1024


@implementer(IHalfCloseableProtocol)
class BrokerProtocol(FastLineReceiver):
    """One client connection to the broker.

    Half-close is supported: a client that shuts down its sending side (as
    C{nc} does at the end of its input) still gets every answer it is owed,
    long polls included, and the connection closes after the last one.
    """

    _log = Logger()
    factory: BrokerFactory

    def __init__(self) -> None:
        self._pending: dict[int, Deferred] = {}
        self._next_token = 0
        self._write_paused = False
        #: Bytes of answers queued since the transport's buffer filled (reset once it drains).
        self._written_while_paused = 0
        #: Set once the connection is dropped for not reading: nothing more is read or written.
        self._dropped = False
        #: Set once the client shut down its sending side: close after the last answer.
        self._read_closed = False
        self.last_activity = 0.0
        self.partial_since: float | None = None
        #: When the server began to close this connection (None: it has not).
        self.closing_since: float | None = None
        #: The peer's address as per-address limits count it (L{address_key}; None: not an IP peer).
        self._address: str | None = None

    # --- connection life ---------------------------------------------------------

    def connectionMade(self) -> None:
        limits = self.factory.limits
        factory = self.factory
        transport = self.transport
        self.MAX_LENGTH = limits.max_line_bytes
        peer = transport.getPeer()
        self._address = address_key(peer)
        from_address = factory.count_address(self._address, +1)
        factory.connections.add(self)  # with the count above: connectionLost undoes both
        #: This connection's parked long polls (--max-waiting-polls-per-connection); they also
        #: count for its address (--max-waiting-polls-per-address) and the node.
        self.waiting_polls = WaitQuota(limits.max_waiting_polls_per_connection, "connection")
        address_polls = factory.address_polls(self._address)
        quotas = (self.waiting_polls,) if address_polls is None else (self.waiting_polls, address_polls)
        self._handlers = factory.broker.connection_handlers(*quotas)
        self.last_activity = factory.clock.seconds()
        if hasattr(transport, "setTcpNoDelay"):
            try:
                transport.setTcpNoDelay(True)
            except OSError:
                pass
        # Twisted hands the kernel at most SEND_LIMIT (128 KiB) per write: a 1 MiB
        # Poll answer would take eight trips through the reactor.  Let it go at once.
        if hasattr(transport, "SEND_LIMIT"):
            transport.SEND_LIMIT = SEND_LIMIT
        # Twisted calls pauseProducing when its write buffer passes the high-water mark.
        transport.registerProducer(self, True)
        if len(factory.connections) > limits.max_connections:
            self._log.warn("refusing connection from {peer}: {limit} connections open",
                           peer=peer, limit=limits.max_connections)
            self._fail(None, errors.TooManyConnections(
                f"the server has its maximum of {limits.max_connections} connections",
                limit=limits.max_connections, scope="node"))
        elif from_address > limits.max_connections_per_address:
            self._log.warn("refusing connection from {peer}: {limit} connections open from {host}",
                           peer=peer, limit=limits.max_connections_per_address, host=self._address)
            self._fail(None, errors.TooManyConnections(
                f"{self._address} has its maximum of {limits.max_connections_per_address} connections",
                limit=limits.max_connections_per_address, scope="address"))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self in self.factory.connections:
            self.factory.connections.discard(self)
            self.factory.count_address(self._address, -1)
        self.factory.connection_gone()
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.cancel()

    def readConnectionLost(self) -> None:
        """The client will send no more (it half-closed): answer it all, then close.

        A last line without its newline is taken as the last request.
        """
        self._read_closed = True
        self.partial_since = None
        self.end_input()
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        """Our sending side is closed (we never do that alone): close the rest."""
        self.close()

    def close(self) -> None:
        """Close once what is written is sent (the sweep aborts it if that takes --close-timeout).

        The producer is unregistered first: while registered and paused, a
        transport whose buffer drains calls C{resumeProducing} instead of
        closing, and since it is disconnecting it never reads again, so it
        would never notice the peer leave (CLOSE-WAIT for ever, holding a
        connection slot of its address).
        """
        if self.closing_since is None:
            self.closing_since = self.factory.clock.seconds()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def peer_gone(self) -> str | None:
        """Why the kernel says the peer is gone, on a connection the reactor is not reading; else None.

        A client that closed (not just half-closed) its side looks like a
        half-close until the server writes to it; the peer then answers with a
        reset, which the kernel records on the socket.  Nobody reads it (the
        input ended, or reading is paused), so its parked polls would wait out
        their time.  The sweep asks here, once a second.
        """
        if not (self._read_closed or self.paused):
            return None
        get_handle = getattr(self.transport, "getHandle", None)
        sock = get_handle() if get_handle is not None else None
        if not isinstance(sock, socket.socket):
            return None
        try:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:
            return str(e)
        return os.strerror(error) if error else None

    def _close_if_done(self) -> None:
        """After a half-close, close once every request is read and answered."""
        if (not self._read_closed or self._pending or self._dropped or self._busyReceiving
                or self.has_unread_input() or self.transport.disconnecting):
            return
        self.close()

    def dataReceived(self, data: bytes) -> Any:
        self.last_activity = self.factory.clock.seconds()
        why = super().dataReceived(data)
        if self.line_mode and self.has_partial_line():
            if self.partial_since is None:
                self.partial_since = self.last_activity
        else:
            self.partial_since = None
        if self._read_closed:
            self._close_if_done()
        return why

    # --- requests ------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._dropped:
            return
        limits = self.factory.limits
        stats = self.factory.stats
        try:
            request = wire.decode_request(line, limits)
        except errors.StreamlogError as e:
            stats.requests[INVALID] += 1
            stats.errors[INVALID, e.code] += 1
            self._send(wire.encode_error(getattr(e, "request_id", None), e))
            return
        method = request.method
        handler = self._handlers.get(method)
        if handler is None:
            stats.requests[UNKNOWN] += 1
            stats.errors[UNKNOWN, errors.MethodNotFound.code] += 1
            self._send(wire.encode_error(request.id, errors.MethodNotFound(
                f"unknown method {method[:100]!r}", method=method[:100])))
            return
        stats.requests[method] += 1
        # Send and Poll latency, from when the line's bytes arrived (dataReceived noted the time).
        # Inline, not a call per request: this runs for every request the node gets.
        latency = stats.poll_latency if method == "Poll" else (
            stats.latency_of(method, request.params) if method in SENDS else None)
        try:
            result = handler(request.params)
        except errors.StreamlogError as e:
            stats.errors[method, e.code] += 1
            self._send(wire.encode_error(request.id, e))
            self._took(latency, self.last_activity)
            return
        except Exception:
            self._log.failure("handler {method} failed", method=method)
            stats.errors[method, errors.Internal.code] += 1
            self._send(wire.encode_error(request.id, errors.Internal("internal server error")))
            self._took(latency, self.last_activity)
            return
        if isinstance(result, Deferred):
            token = self._next_token
            self._next_token += 1
            self._pending[token] = result
            result.addCallbacks(self._answered, self._failed,
                                callbackArgs=(request.id, token, latency, self.last_activity),
                                errbackArgs=(request.id, token, method, latency, self.last_activity))
            self._update_reading()
            return
        if result is not None:
            self._send(wire.encode_result(request.id, result))
        if latency is not None:
            latency.observe(self.factory.clock.seconds() - self.last_activity)

    def _took(self, latency: Histogram | None, since: float) -> None:
        if latency is not None:
            latency.observe(self.factory.clock.seconds() - since)

    def _answered(self, result: Any, rid: Any, token: int, latency: Histogram | None, since: float) -> None:
        if self._pending.pop(token, None) is None:
            return  # connection gone
        if result is not None:
            self._send(wire.encode_result(rid, result))
        self._took(latency, since)
        self._update_reading()
        self._close_if_done()

    def _failed(self, failure: Failure, rid: Any, token: int, method: str, latency: Histogram | None,
                since: float) -> None:
        if self._pending.pop(token, None) is None or failure.check(CancelledError):
            return
        error = failure.value
        if not isinstance(error, errors.StreamlogError):
            self._log.failure("request {id!r} failed", failure, id=rid)
            error = errors.Internal("internal server error")
        self.factory.stats.errors[method, error.code] += 1
        self._send(wire.encode_error(rid, error))
        self._took(latency, since)
        self._update_reading()
        self._close_if_done()

    def _send(self, chunks: list[bytes]) -> None:
        """Write one answer, unless the client owes too much already.

        While the transport's buffer is full (between C{pauseProducing} and
        C{resumeProducing}) every answer adds to what the client owes; past
        C{max_outbound_bytes} the connection is dropped.  So the server holds at
        most that, plus the buffer's own 64 KiB and the answer that filled it.
        """
        if self._dropped:
            return
        if self._write_paused:
            self._written_while_paused += sum(map(len, chunks))
            if self._written_while_paused > self.factory.limits.max_outbound_bytes:
                self._drop()
                return
        self.transport.writeSequence(chunks)

    def _drop(self) -> None:
        """Abort a connection whose client does not read its answers.

        It cannot be told why (it does not read); its pending requests are
        cancelled at once, so its parked polls do not wake to build answers
        that would only be thrown away.
        """
        self._dropped = True
        self._log.warn(
            "closing connection from {peer}: it does not read its answers ({n} bytes queued "
            "while its buffer was full, limit {limit})",
            peer=self.transport.getPeer(), n=self._written_while_paused,
            limit=self.factory.limits.max_outbound_bytes,
        )
        self.transport.abortConnection()
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.cancel()

    def _fail(self, rid: Any, error: errors.StreamlogError) -> None:
        """Answer a fatal error, then close the connection."""
        self.transport.writeSequence(wire.encode_error(rid, error))
        self.close()

    def lineLengthExceeded(self, line: bytes) -> None:
        limit = self.factory.limits.max_line_bytes
        self._fail(None, errors.LineTooLong(f"request line longer than {limit} bytes", limit=limit))

    # --- flow control -------------------------------------------------------------

    def _update_reading(self) -> None:
        """Read requests only while the client reads answers and is under the in-flight limit."""
        should_pause = self._write_paused or len(self._pending) >= self.factory.limits.max_in_flight
        if self._read_closed:
            # Nothing more comes from the socket: restarting the transport's reading would
            # only see the end of input again.  Lines held back are handled here instead.
            resume = self.paused and not should_pause
            self.paused = should_pause
            if resume:
                self.dataReceived(b"")
            self._close_if_done()
            return
        if should_pause and not self.paused:
            LineReceiver.pauseProducing(self)
        elif not should_pause and self.paused:
            LineReceiver.resumeProducing(self)

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: stop reading until it drains.

        Twisted calls this on every write while the buffer stays full, not once:
        only the first call starts the count of bytes owed.
        """
        if not self._write_paused:
            self._write_paused = True
            self._written_while_paused = 0
        self._update_reading()

    def resumeProducing(self) -> None:
        """The buffer drained (Twisted calls this only once it is empty)."""
        self._write_paused = False
        self._written_while_paused = 0
        self._update_reading()

    def stopProducing(self) -> None:
        self._write_paused = True
        self._update_reading()

    @property
    def in_flight(self) -> int:
        return len(self._pending)


class BrokerFactory(protocol.Factory):
    """Owns the broker shared by all connections, and the per-connection sweep."""

    protocol = BrokerProtocol
    #: Twisted's own "Starting factory <...object at 0x...>" lines say nothing a person needs;
    #: the node logs what it serves at start (streamlog.tap.server).
    noisy = False
    _log = Logger()

    def __init__(self, broker: Broker, limits: wire.Limits | None = None, clock: IReactorTime | None = None) -> None:
        self.broker = broker
        self.limits = limits or broker.limits
        self.clock = clock or broker.clock
        self.connections: set[BrokerProtocol] = set()
        #: Requests, errors and latency of every connection (read by /metrics).
        self.stats: RequestStats = getattr(broker, "requests", None) or RequestStats()
        #: Open connections per peer address (L{address_key}), for --max-connections-per-address.
        self.connections_by_address: dict[str, int] = {}
        #: Parked polls per peer address, for --max-waiting-polls-per-address; an entry lives
        #: while the address has a connection open.
        self._address_polls: dict[str, WaitQuota] = {}
        self._drained: list[Deferred] = []
        self._sweeper: LoopingCall | None = None

    def startFactory(self) -> None:
        if self.limits.idle_timeout or self.limits.partial_line_timeout or self.limits.close_timeout:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(1.0, now=False).addErrback(
                lambda f: self._log.failure("connection sweep stopped", f))

    def close_connections(self, timeout: float = 5.0) -> Deferred:
        """Close every connection once its answers are written; fires when all
        are gone, or after C{timeout} seconds (the rest are aborted)."""
        done: Deferred = Deferred()
        if not self.connections:
            done.callback(None)
            return done
        self._drained.append(done)

        def give_up() -> None:
            for conn in list(self.connections):
                conn.transport.abortConnection()

        timer = self.clock.callLater(timeout, give_up)
        done.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        for conn in list(self.connections):
            conn.close()
        return done

    def count_address(self, address: str | None, change: int) -> int:
        """Add C{change} to the connections open from C{address}; return the new count."""
        if address is None:
            return 0
        count = self.connections_by_address.get(address, 0) + change
        if count > 0:
            self.connections_by_address[address] = count
            if address not in self._address_polls:
                self._address_polls[address] = WaitQuota(self.limits.max_waiting_polls_per_address, "address")
        else:
            self.connections_by_address.pop(address, None)
            # Its last connection is gone, and with it every poll it had parked (connectionLost
            # cancels them; they decrement this quota object, no longer listed).
            self._address_polls.pop(address, None)
        return count

    def address_polls(self, address: str | None) -> WaitQuota | None:
        """The parked-poll quota shared by the connections of C{address} (None for a non-IP peer)."""
        return None if address is None else self._address_polls.get(address)

    def connection_gone(self) -> None:
        if not self.connections:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def stopFactory(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def sweep(self) -> None:
        """Close connections idle too long or stuck in the middle of a line; abort those
        whose peer is gone, or that take longer than --close-timeout to close."""
        now = self.clock.seconds()
        for conn in list(self.connections):
            try:
                self._sweep_one(conn, now)
            except Exception:
                self._log.failure("sweeping a connection failed")

    def _sweep_one(self, conn: BrokerProtocol, now: float) -> None:
        limits = self.limits
        transport = conn.transport
        if transport.disconnecting:
            # Closing: its last answers are being sent.  A client that never reads them
            # would hold the connection (and its address's slot) for ever.
            if conn.closing_since is None:
                conn.closing_since = now
            elif now - conn.closing_since > limits.close_timeout:
                self._log.info("aborting {peer}: still closing after {s:.0f}s (it does not read what it is sent)",
                               peer=_peer(conn), s=now - conn.closing_since)
                transport.abortConnection()
            return
        gone = conn.peer_gone()
        if gone is not None:
            self._log.info("closing {peer}: the client is gone ({why}); its {n} pending requests are dropped",
                           peer=_peer(conn), why=gone, n=conn.in_flight)
            transport.abortConnection()
        elif conn.partial_since is not None and limits.partial_line_timeout and \
                now - conn.partial_since > limits.partial_line_timeout:
            self._log.info("closing {peer}: partial line for {s:.0f}s",
                           peer=_peer(conn), s=now - conn.partial_since)
            transport.abortConnection()
        elif limits.idle_timeout and not conn.in_flight and now - conn.last_activity > limits.idle_timeout:
            self._log.info("closing {peer}: idle", peer=_peer(conn))
            conn.close()


def address_key(peer: IAddress) -> str | None:
    """The key under which per-address limits count a peer (None: not an IP peer, e.g. a UNIX socket).

    An IPv4 peer counts as its address.  An IPv6 peer counts as its /64: one
    host or site usually holds a whole /64 and may pick any address in it, so a
    limit per single IPv6 address would be no limit.  An IPv4-mapped IPv6
    address (C{::ffff:192.0.2.1}, a dual-stack listener) counts as its IPv4.
    """
    if isinstance(peer, IPv4Address):
        return peer.host
    if isinstance(peer, IPv6Address):
        try:
            ip = ipaddress.IPv6Address(peer.host.split("%", 1)[0])
        except ValueError:
            return peer.host
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return None


def _peer(conn: BrokerProtocol) -> IAddress | None:
    return conn.transport.getPeer() if conn.transport is not None else None

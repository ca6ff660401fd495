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
        #: The peer's IP address, for --max-connections-per-address (None: not an IP peer).
        self._address: str | None = None

    # --- connection life ---------------------------------------------------------

    def connectionMade(self) -> None:
        limits = self.factory.limits
        self.MAX_LENGTH = limits.max_line_bytes
        #: This connection's parked long polls (--max-waiting-polls-per-connection).
        self.waiting_polls = WaitQuota(limits.max_waiting_polls_per_connection, "connection")
        self._handlers = self.factory.broker.connection_handlers(self.waiting_polls)
        self.last_activity = self.factory.clock.seconds()
        transport = self.transport
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
        factory = self.factory
        factory.connections.add(self)
        peer = transport.getPeer()
        self._address = peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else None
        from_address = factory.count_address(self._address, +1)
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
        self.transport.loseConnection()

    def _close_if_done(self) -> None:
        """After a half-close, close once every request is read and answered."""
        if (not self._read_closed or self._pending or self._dropped or self._busyReceiving
                or self.has_unread_input() or self.transport.disconnecting):
            return
        # A registered, paused producer would be resumed once the buffer drains instead
        # of the connection closing (see BrokerFactory.close_connections).
        self.transport.unregisterProducer()
        self.transport.loseConnection()

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
        try:
            request = wire.decode_request(line, limits)
        except errors.StreamlogError as e:
            self._send(wire.encode_error(getattr(e, "request_id", None), e))
            return
        handler = self._handlers.get(request.method)
        if handler is None:
            self._send(wire.encode_error(request.id, errors.MethodNotFound(
                f"unknown method {request.method[:100]!r}", method=request.method[:100])))
            return
        try:
            result = handler(request.params)
        except errors.StreamlogError as e:
            self._send(wire.encode_error(request.id, e))
            return
        except Exception:
            self._log.failure("handler {method} failed", method=request.method)
            self._send(wire.encode_error(request.id, errors.Internal("internal server error")))
            return
        if isinstance(result, Deferred):
            token = self._next_token
            self._next_token += 1
            self._pending[token] = result
            result.addCallbacks(self._answered, self._failed,
                                callbackArgs=(request.id, token), errbackArgs=(request.id, token))
            self._update_reading()
        elif result is not None:
            self._send(wire.encode_result(request.id, result))

    def _answered(self, result: Any, rid: Any, token: int) -> None:
        if self._pending.pop(token, None) is None:
            return  # connection gone
        if result is not None:
            self._send(wire.encode_result(rid, result))
        self._update_reading()
        self._close_if_done()

    def _failed(self, failure: Failure, rid: Any, token: int) -> None:
        if self._pending.pop(token, None) is None or failure.check(CancelledError):
            return
        error = failure.value
        if not isinstance(error, errors.StreamlogError):
            self._log.failure("request {id!r} failed", failure, id=rid)
            error = errors.Internal("internal server error")
        self._send(wire.encode_error(rid, error))
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
        self.transport.loseConnection()

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
    _log = Logger()

    def __init__(self, broker: Broker, limits: wire.Limits | None = None, clock: IReactorTime | None = None) -> None:
        self.broker = broker
        self.limits = limits or broker.limits
        self.clock = clock or broker.clock
        self.connections: set[BrokerProtocol] = set()
        #: Open connections per peer IP address (for --max-connections-per-address).
        self.connections_by_address: dict[str, int] = {}
        self._drained: list[Deferred] = []
        self._sweeper: LoopingCall | None = None

    def startFactory(self) -> None:
        if self.limits.idle_timeout or self.limits.partial_line_timeout:
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
            # While registered as a streaming producer, a transport whose writes were
            # paused would resume us once drained instead of closing.
            conn.transport.unregisterProducer()
            conn.transport.loseConnection()
        return done

    def count_address(self, address: str | None, change: int) -> int:
        """Add C{change} to the connections open from C{address}; return the new count."""
        if address is None:
            return 0
        count = self.connections_by_address.get(address, 0) + change
        if count > 0:
            self.connections_by_address[address] = count
        else:
            self.connections_by_address.pop(address, None)
        return count

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
        """Close connections idle too long, or stuck in the middle of a line."""
        now = self.clock.seconds()
        limits = self.limits
        for conn in list(self.connections):
            try:
                if conn.partial_since is not None and limits.partial_line_timeout and \
                        now - conn.partial_since > limits.partial_line_timeout:
                    self._log.info("closing {peer}: partial line for {s:.0f}s",
                                   peer=_peer(conn), s=now - conn.partial_since)
                    conn.transport.abortConnection()
                elif limits.idle_timeout and not conn.in_flight and \
                        now - conn.last_activity > limits.idle_timeout:
                    self._log.info("closing {peer}: idle", peer=_peer(conn))
                    conn.transport.loseConnection()
            except Exception:
                self._log.failure("sweeping a connection failed")


def _peer(conn: BrokerProtocol) -> IAddress | None:
    return conn.transport.getPeer() if conn.transport is not None else None

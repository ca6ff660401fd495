"""The Twisted client: one JSON-lines RPC connection, and a reconnecting client over it.

L{ClientProtocol} is the client's edge: it numbers requests, writes them
(pipelined: many may be in flight), matches answers to requests by id (they
may come back out of order), fails a request that gets no answer within its
timeout, and fails every request in flight when the connection drops.  It
knows nothing about reconnecting.

L{StreamlogClient} owns a L{ClientService} that connects, and reconnects with
exponential backoff and jitter while the server is unreachable.  A request
made while there is no connection waits for one, bounded by its own timeout.
A request in flight when the connection drops fails with
L{errors.ConnectionLost}: the caller decides whether to retry (a retried Send
may be appended twice until idempotent producers land).  A C{Timeout} or
C{ConnectionLost} for a request that was never written carries C{sent=False}
in its details: resending that one cannot duplicate anything.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any

import orjson
from twisted.application.internet import ClientService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from streamlog import errors, wire
from streamlog.client import requests
from streamlog.client.addresses import (  # noqa: F401 (re-exported: they lived here)
    DEFAULT_ADDRESS,
    ENDPOINT_TYPES,
    connect_timeout_for,
    describe_address,
    parse_address,
    parse_target,
    parse_unix_path,
    with_connect_timeout,
)
from streamlog.client.requests import MAX_ANSWER_BYTES, PartitionBound, server_wait
from streamlog.client.retry import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_STALL_RECHECK_MAX,
    backoff_policy,  # noqa: F401 (re-exported: it lived here)
    check_connect_timeout,
)
from streamlog.dialing import ConnectTimedOut, connect_within  # noqa: F401 (ConnectTimedOut re-exported: it lived here)
from streamlog.framing import FastLineReceiver


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value]


class _Pending:
    __slots__ = ("deferred", "timer", "method", "due", "bound")

    def __init__(self, deferred: Deferred, timer: IDelayedCall | None, method: str, due: float,
                 bound: PartitionBound | None = None) -> None:
        self.deferred = deferred
        self.timer = timer
        self.method = method
        #: The partition (and its leader's term) the request is for, if it is partition-bound.
        self.bound = bound
        #: When a healthy server would have begun to answer: when it was written, plus the wait
        #: the request asks the server for (a long Poll's C{max_wait_ms}).
        self.due = due


class ClientProtocol(FastLineReceiver):
    """One client connection: request ids to Deferreds, timeouts, typed errors.

    @ivar on_lost: called with the failure reason once the connection is gone
        (after every pending request has been failed).
    @ivar on_stall: called as C{on_stall(silent_for, in_flight)} when requests
        are in flight and nothing at all has arrived on the connection for
        C{stall_timeout} seconds past the moment the oldest of them was due
        (see L{server_wait}), then again while that lasts: C{stall_recheck}
        seconds later, then twice as long after each report, up to
        C{stall_recheck_max} (each report may cost a Metadata request; a slow
        but healthy leader would otherwise cost one per recheck).  The next
        stall starts from C{stall_recheck} again.  A paused (SIGSTOP) or cut-off server looks like this: its
        TCP connection stays up and says nothing.  The protocol only reports
        it; what to do (ask another node where the leaders are) is the
        caller's.
    """

    _log = Logger()
    MAX_LENGTH = MAX_ANSWER_BYTES

    def __init__(self, clock: IReactorTime | None = None, request_timeout: float | None = 30.0,
                 stall_timeout: float | None = None, stall_recheck: float | None = None,
                 stall_recheck_max: float | None = None) -> None:
        self.clock = clock if clock is not None else _default_clock()
        self.request_timeout = request_timeout
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._fatal: errors.StreamlogError | None = None
        self.connected = False
        self.on_lost: Callable[[Failure], object] | None = None
        self.stall_timeout = stall_timeout
        self.stall_recheck = stall_recheck if stall_recheck is not None else (stall_timeout or 0.0) / 5
        self.stall_recheck_max = max(self.stall_recheck, stall_recheck_max if stall_recheck_max is not None
                                     else DEFAULT_STALL_RECHECK_MAX)
        self._report_gap = self.stall_recheck  # before the stall's next report
        self._next_report = 0.0  # not reported again before this (0: not stalled)
        self.on_stall: Callable[[float, int], object] | None = None
        #: When the last bytes arrived (or the connection was made).
        self.last_received = self.clock.seconds()
        self._stall_timer: IDelayedCall | None = None

    # --- connection life ---------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        self.last_received = self.clock.seconds()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:  # e.g. a UNIX socket
                pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None
        pending, self._pending = self._pending, {}
        for rid, p in pending.items():
            if p.timer is not None and p.timer.active():
                p.timer.cancel()
            if self._fatal is not None and self._fatal.code == "TOO_MANY_CONNECTIONS":
                error: errors.StreamlogError = errors.from_wire(self._fatal.to_wire())
            else:
                why = f": {self._fatal.message}" if self._fatal is not None else ""
                error = errors.ConnectionLost(
                    f"connection lost before the answer to {p.method} (id {rid}){why}",
                    method=p.method,
                )
            p.deferred.errback(error)
        if self.on_lost is not None:
            self.on_lost(reason)

    @property
    def in_flight(self) -> int:
        """Requests written and not yet answered."""
        return len(self._pending)

    def bound_in_flight(self) -> list[PartitionBound]:
        """The partitions of the partition-bound requests in flight (see L{request})."""
        return [p.bound for p in self._pending.values() if p.bound is not None]

    # --- requests ------------------------------------------------------------------

    def request(self, method: str, params: dict[str, Any] | None = None,
                timeout: float | None = None, expect_answer: bool = True,
                bound: PartitionBound | None = None) -> Deferred:
        """Write one request; the Deferred fires with its C{result} or fails with a L{errors.StreamlogError}.

        C{timeout} defaults to the protocol's C{request_timeout} (None: wait
        forever).  With C{expect_answer=False} (a Send with acks "none") the
        request is written and the Deferred fires with None at once.
        Cancelling the Deferred forgets the request (a late answer is ignored).
        C{bound}: the partition the request is for (kept while it is in
        flight, for whoever judges a stall: L{bound_in_flight}).
        """
        if not self.connected or self.transport is None:
            return fail(errors.ConnectionLost(f"not connected: {method} was not sent", method=method, sent=False))
        rid = self._next_id
        self._next_id += 1
        line = wire.encode_request(rid, method, params or {})
        if not expect_answer:
            self.transport.write(line)
            return succeed(None)
        d = Deferred(lambda _: self._forget(rid))
        if timeout is None:
            timeout = self.request_timeout
        timer = self.clock.callLater(timeout, self._timed_out, rid, timeout) if timeout is not None else None
        now = self.clock.seconds()
        self._pending[rid] = _Pending(d, timer, method, now + server_wait(method, params), bound)
        if self.stall_timeout is not None and self._stall_timer is None:
            self._stall_timer = self.clock.callLater(self.stall_timeout, self._check_stall)
        self.transport.write(line)
        return d

    def dataReceived(self, data: bytes) -> Any:
        self.last_received = self.clock.seconds()
        return super().dataReceived(data)

    def silent_for(self) -> float:
        """Seconds without a byte from the server past the moment the oldest request in flight
        was due (0 when none is in flight, or something arrived since)."""
        if not self._pending:
            return 0.0
        since = max(self.last_received, min(p.due for p in self._pending.values()))
        return max(0.0, self.clock.seconds() - since)

    def _check_stall(self) -> None:
        """One timer per connection, armed while requests are in flight (an answer costs a float
        store, not a timer reschedule)."""
        self._stall_timer = None
        if not self._pending or not self.connected or self.stall_timeout is None:
            return
        silent = self.silent_for()
        if silent < self.stall_timeout - 1e-6:
            self._stall_over()
            # Not before the remainder, and never a zero-length wait: on a clock whose time is a
            # large float, now + 1e-17 is now, and the check ran again at the same instant for
            # ever (the cluster simulator's seed 14 hung).
            self._stall_timer = self.clock.callLater(max(self.stall_timeout - silent, 0.001), self._check_stall)
            return
        # Checked at every recheck (a local look, so that a stall that ends and a new one are
        # seen at once), reported ever less often (a report may cost a Metadata request).
        self._stall_timer = self.clock.callLater(max(self.stall_recheck, 0.001), self._check_stall)
        now = self.clock.seconds()
        if now < self._next_report - 1e-6:
            return
        self._next_report = now + self._report_gap
        self._report_gap = min(self._report_gap * 2, self.stall_recheck_max)
        if self.on_stall is not None:
            try:
                self.on_stall(silent, len(self._pending))
            except Exception:
                self._log.failure("a stall handler failed")

    def _forget(self, rid: int) -> None:
        p = self._pending.pop(rid, None)
        if p is not None and p.timer is not None and p.timer.active():
            p.timer.cancel()
        self._idle_check()

    def _stall_over(self) -> None:
        self._report_gap = self.stall_recheck
        self._next_report = 0.0

    def _idle_check(self) -> None:
        """Nothing in flight: the stall timer has nothing to watch."""
        if not self._pending and self._stall_timer is not None:
            if self._stall_timer.active():
                self._stall_timer.cancel()
            self._stall_timer = None
            self._stall_over()

    def abort(self, why: str) -> None:
        """Drop the connection at once (no FIN handshake with a server that does not answer):
        every request in flight fails with L{errors.ConnectionLost} saying C{why}."""
        if self.transport is None or not self.connected:
            return
        self._fatal = errors.ConnectionLost(why)
        self.transport.abortConnection()

    def _timed_out(self, rid: int, timeout: float) -> None:
        p = self._pending.pop(rid, None)
        if p is None:
            return
        p.timer = None
        self._idle_check()
        p.deferred.errback(errors.Timeout(
            f"no answer to {p.method} (id {rid}) within {timeout:g}s", method=p.method, timeout=timeout))

    def lineReceived(self, line: bytes) -> None:
        try:
            answer = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            self._log.warn("closing: the server sent a line that is not JSON: {error}", error=e)
            self._fatal = errors.ParseError(f"the server sent invalid JSON: {e}")
            self.transport.loseConnection()
            return
        if not isinstance(answer, dict):
            self._log.warn("ignoring an answer that is not an object: {line!r}", line=line[:200])
            return
        rid = answer.get("id")
        error = answer.get("error")
        if rid is None:
            # The server could not tie the error to a request: it could not parse
            # ours (a bug on our side), or it is about to close the connection.
            if isinstance(error, dict):
                exc = errors.from_wire(error)
                self._log.warn("server error without a request id: {code}: {message}",
                               code=exc.code, message=exc.message)
                self._fatal = exc
            return
        p = self._pending.pop(rid, None) if isinstance(rid, int) and not isinstance(rid, bool) else None
        if p is None:
            return  # timed out or cancelled already
        if p.timer is not None and p.timer.active():
            p.timer.cancel()
        if not self._pending:
            self._idle_check()
        if isinstance(error, dict):
            p.deferred.errback(errors.from_wire(error))
        else:
            p.deferred.callback(answer.get("result"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._log.warn("closing: an answer line is longer than {n} bytes", n=self.MAX_LENGTH)
        self._fatal = errors.LineTooLong(f"an answer line is longer than {self.MAX_LENGTH} bytes")
        self.transport.loseConnection()


class _ClientFactory(Factory):
    noisy = False  # no "Starting factory" log line on every reconnect

    def __init__(self, client: StreamlogClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        proto = ClientProtocol(self.client.clock, self.client.request_timeout, self.client.stall_timeout,
                               self.client.stall_recheck, self.client.stall_recheck_max)
        proto.factory = self
        return proto


@implementer(IStreamClientEndpoint)
class _NamedEndpoint:
    """An endpoint that prints as its address, remembers why the last connection attempt failed,
    and gives an attempt up after C{timeout} seconds on C{clock}.

    Twisted's L{ClientService} logs the endpoint it retries with C{repr},
    which for Twisted's endpoints is C{<...TCP4ClientEndpoint object at 0x...>}.

    The timeout is kept here rather than left to the endpoint: it bounds any endpoint (an object
    handed in, a name lookup that hangs, the several addresses of a L{HostnameEndpoint} tried one
    after the other), runs on the client's clock (so a test can drive it), and fails the attempt
    as a refusal does, so the client's backoff, its waiting requests and a cluster client's
    metadata refresh take it the same way.  Cancelling an attempt stops Twisted's connectors.
    (L{streamlog.dialing.connect_within} does it; the peer transport's dials use it too.)
    """

    def __init__(self, endpoint: IStreamClientEndpoint, name: str, clock: IReactorTime | None = None,
                 timeout: float | None = None) -> None:
        self._endpoint = endpoint
        self.name = name
        self.clock = clock
        #: Seconds an attempt may take (None: as long as the endpoint lets it).
        self.timeout = timeout
        #: Why the last attempt failed (None after a success).
        self.last_error: str | None = None
        #: An attempt is on (its outcome not known yet): at most one per node at a time.
        self.attempting = False
        #: Attempts given up at C{timeout} (for tests, metrics).
        self.timed_out = 0

    def connect(self, factory: Any) -> Deferred:
        def expired() -> None:
            self.timed_out += 1

        def failed(failure: Failure) -> Failure:
            self.attempting = False
            self.last_error = failure.getErrorMessage() or type(failure.value).__name__
            return failure

        def connected(proto: Any) -> Any:
            self.attempting = False
            self.last_error = None
            return proto

        self.attempting = True
        try:
            attempt = connect_within(self._endpoint, factory, self.clock, self.timeout, expired)
        except BaseException:
            self.attempting = False
            raise
        return attempt.addCallbacks(connected, failed)

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


@implementer(IDelayedCall)
class _Retry:
    """L{ClientService}'s timer before its next connection attempt, held by the L{StreamlogClient}
    so that it can dial earlier (L{StreamlogClient.dial_now}) or not at all (an idle connection
    past its C{idle_dial_limit}).  The service only cancels it (when stopped)."""

    def __init__(self, client: StreamlogClient, reconnect: Callable[[], object]) -> None:
        self.client = client
        #: The service's "attempt now" (None once spent or cancelled).
        self.reconnect: Callable[[], object] | None = reconnect
        self.call: IDelayedCall | None = None

    def fire(self) -> None:
        """Attempt now (once)."""
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        reconnect, self.reconnect = self.reconnect, None
        if self.client._retry is self:
            self.client._retry = None
        if reconnect is not None:
            reconnect()

    def cancel(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        self.reconnect = None
        if self.client._retry is self:
            self.client._retry = None

    def active(self) -> bool:
        return self.reconnect is not None

    def getTime(self) -> float:  # noqa: N802 (IDelayedCall)
        return self.call.getTime() if self.call is not None and self.call.active() else float("inf")

    def delay(self, secondsLater: float) -> None:  # noqa: N803 (IDelayedCall)
        if self.call is not None and self.call.active():
            self.call.delay(secondsLater)

    def reset(self, secondsFromNow: float) -> None:  # noqa: N803 (IDelayedCall)
        if self.call is not None and self.call.active():
            self.call.reset(secondsFromNow)


class _ServiceClock:
    """The clock L{ClientService} schedules its retries on: the client's, with each retry timer
    handed to the client (the service calls C{callLater} for nothing else)."""

    def __init__(self, client: StreamlogClient) -> None:
        self._client = client

    def seconds(self) -> float:
        return self._client.clock.seconds()

    def callLater(self, delay: float, f: Callable[..., object], *args: Any, **kw: Any) -> _Retry:  # noqa: N802
        retry = _Retry(self._client, lambda: f(*args, **kw))
        retry.call = self._client.clock.callLater(delay, self._client._retry_due, retry)
        self._client._retry = retry
        return retry


class _ClientService(ClientService):
    # Twisted logs every retry ("Scheduling retry 3 to connect <endpoint> in
    # 0.2898926182027236 seconds.") without the reason; StreamlogClient logs
    # the reason instead, once per kind of failure.
    _log = Logger(observer=lambda event: None)


def endpoint_for(address: Any, reactor: Any = None, connect_timeout: float | None = None) -> IStreamClientEndpoint:
    """An endpoint from an endpoint, an endpoint string (C{"tcp:HOST:PORT"}), C{"HOST:PORT"} or C{(host, port)}.

    C{connect_timeout} (seconds; None: Twisted's default, 30 s) is the endpoint's own timeout of a
    connection attempt: a C{tcp:} or C{unix:} string gets C{:timeout=N} (whole seconds, rounded
    up) unless it names one itself; C{HOST:PORT} builds a L{HostnameEndpoint} with it.  An endpoint
    object is returned as it is.  (L{StreamlogClient} also bounds each attempt on its own clock.)
    """
    if not isinstance(address, (str, tuple)):
        return address
    if reactor is None:
        from twisted.internet import reactor
    if isinstance(address, str) and address.split(":", 1)[0] in ENDPOINT_TYPES:
        return endpoints.clientFromString(reactor, with_connect_timeout(address, connect_timeout))
    host, port = parse_address(address)
    if connect_timeout is None:
        return endpoints.HostnameEndpoint(reactor, host, port)
    return endpoints.HostnameEndpoint(reactor, host, port, timeout=connect_timeout)


class Request(Deferred):
    """The Deferred of a L{StreamlogClient.call}: it also knows whether the request was written.

    L{withdraw} takes back a request still waiting for a connection: it is
    then never written (its Deferred fails with C{CancelledError}), which a
    caller keeping order (the Producer) needs in order to resend it later.
    """

    written = False

    def withdraw(self) -> bool:
        """Cancel the request if it was not written yet; True if it was taken back."""
        if self.written or self.called:
            return False
        self.cancel()
        return True


class _Waiting:
    __slots__ = ("method", "params", "timeout", "expect_answer", "bound", "deferred", "timer", "inner")

    def __init__(self, method: str, params: dict[str, Any], timeout: float | None, expect_answer: bool,
                 bound: PartitionBound | None = None) -> None:
        self.method = method
        self.params = params
        self.timeout = timeout
        self.expect_answer = expect_answer
        self.bound = bound
        self.deferred: Request = Request(self._cancel)
        self.timer: IDelayedCall | None = None
        self.inner: Deferred | None = None

    def _cancel(self, _: Deferred) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.inner is not None:
            self.inner.cancel()


class StreamlogClient:
    """A reconnecting client: pipelined requests with timeouts over one connection.

    @param endpoint_or_address: an C{IStreamClientEndpoint}, an endpoint string
        (C{"tcp:127.0.0.1:7070"}), C{"HOST:PORT"} or C{(host, port)}.
    @param clock: schedules timeouts and reconnects (default: the reactor).
    @param reactor: builds the endpoint from a string (default: the reactor).
    @param request_timeout: seconds a request waits, for a connection and for
        its answer together, before it fails with L{errors.Timeout}; None waits forever.
    @param reconnect_min, reconnect_max: bounds of the exponential backoff
        between connection attempts (with jitter).
    @param connect_timeout: seconds a connection attempt may take (the name
        lookup included) before it fails as a refused one does: the backoff
        goes on, requests waiting for it fail (C{fail_waiting_on_connect_failure})
        or keep waiting within their own timeout.  Default 10 s, as Kafka's
        C{socket.connection.setup.timeout.ms}: a host that drops packets
        (powered off, a firewall) would otherwise hold the attempt for
        Twisted's 30 s.  A C{tcp:}/C{unix:} endpoint string that names its
        own C{timeout=} keeps it (that is the connect timeout for it).  None:
        no timeout of the client's own (the endpoint's: 30 s by default).
    @param start: connect now; otherwise call L{start}.
    @param stall_timeout: report a connection on which requests are in flight
        and nothing arrived for this long (past their due time) to
        L{on_stall}; None (the default here) watches nothing.  L{ClusterClient}
        sets it (0.5 s by default) and acts on it.
    @param stall_recheck: how often a stalled connection is looked at again
        while the stall lasts, and the gap before its second report (default a
        fifth of C{stall_timeout}).
    @param stall_recheck_max: the longest gap between two reports of one
        stall (the gap doubles from C{stall_recheck} up to this; default 2 s).
    @param idle_dial_limit: after this many failed connection attempts in a
        row with no request waiting, stop dialling until a request needs the
        connection (or L{dial_now}); None (the default here) dials for ever.
        L{ClusterClient} sets it, so that a node that is down and leads
        nothing in use is not dialled for as long as the client runs.
    """

    _log = Logger()

    def __init__(self, endpoint_or_address: Any = DEFAULT_ADDRESS, clock: IReactorTime | None = None,
                 reactor: Any = None, request_timeout: float | None = 30.0,
                 reconnect_min: float = 0.1, reconnect_max: float = 10.0,
                 rng: _random.Random | None = None, start: bool = True, name: str | None = None,
                 fail_waiting_on_connect_failure: bool = False, stall_timeout: float | None = None,
                 stall_recheck: float | None = None, idle_dial_limit: int | None = None,
                 stall_recheck_max: float = DEFAULT_STALL_RECHECK_MAX,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT) -> None:
        if reactor is None and clock is None:
            reactor = _default_clock()
        check_connect_timeout(connect_timeout)
        if stall_timeout is not None and stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive (or None: not watched)")
        if stall_recheck_max <= 0:
            raise ValueError("stall_recheck_max must be positive")
        if idle_dial_limit is not None and idle_dial_limit < 1:
            raise ValueError("idle_dial_limit must be at least 1 (or None: dial for ever)")
        self.clock = clock if clock is not None else reactor
        self.request_timeout = request_timeout
        self.stall_timeout = stall_timeout
        self.stall_recheck = stall_recheck
        self.stall_recheck_max = stall_recheck_max
        #: Called as C{on_stall(self, silent_for, in_flight)} while the connection is stalled
        #: (see L{ClientProtocol.on_stall}).
        self.on_stall: Callable[[StreamlogClient, float, int], object] | None = None
        #: The connect timeout as given (see L{connect_timeout_for} for the one this address uses).
        self.connect_timeout = connect_timeout
        self.endpoint = endpoint_for(endpoint_or_address, reactor, connect_timeout)
        #: The server's address as logs name it (C{tcp:127.0.0.1:7070}).
        self.address = name if name is not None else describe_address(endpoint_or_address)
        #: Fail the requests waiting for a connection as soon as an attempt fails
        #: (C{ConnectionLost} with C{sent: false}) instead of keeping them until
        #: their timeout: a cluster client then asks another node at once.
        self.fail_waiting_on_connect_failure = fail_waiting_on_connect_failure
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.idle_dial_limit = idle_dial_limit
        #: The service's timer before its next attempt (None while connecting or connected).
        self._retry: _Retry | None = None
        self._waits = 0  # backoff waits since the last connection (or the last dial_now)
        self._failed_attempts = 0  # failed attempts in a row (for idle_dial_limit)
        self._last_failed_at: float | None = None
        self._in_retry_policy = False  # failing waiting requests from inside the service's transition
        #: L{dial_now} was called while an attempt was on (news of the node since it started).
        self._news_while_dialling = False
        #: Requests failed unsent because no connection could be made (for tests, benchmarks).
        self.refused_unsent = 0
        self.protocol: ClientProtocol | None = None
        self._waiting: list[_Waiting] = []
        self._closed = False
        #: Called (without arguments) when L{close} is first called: what was built over this connection.
        self.close_hooks: list[Callable[[], object]] = []
        #: The ClusterClient built over this connection alone, if any (shared by its users).
        self.cluster: Any = None
        self._named = _NamedEndpoint(self.endpoint, self.address, self.clock,
                                     connect_timeout_for(endpoint_or_address, connect_timeout))
        self._backoff = backoff_policy(reconnect_min, reconnect_max, rng)
        self._reported: str | None = None  # the connection failure last logged
        self._service = _ClientService(
            self._named, _ClientFactory(self), retryPolicy=self._retry_delay,
            clock=_ServiceClock(self), prepareConnection=self._connected,
        )
        if start:
            self.start()

    def start(self) -> None:
        if not self._service.running:
            self._service.startService()

    @property
    def connected(self) -> bool:
        return self.protocol is not None and self.protocol.connected

    def when_connected(self, fail_after_failures: int | None = None) -> Deferred:
        """Fires with the L{ClientProtocol} once connected."""
        return self._service.whenConnected(failAfterFailures=fail_after_failures)

    @property
    def dialling(self) -> bool:
        """Whether a connection attempt is on."""
        return self._named.attempting

    @property
    def dormant(self) -> bool:
        """Whether the client stopped dialling (see C{idle_dial_limit}) until a request needs it."""
        retry = self._retry
        return retry is not None and retry.call is None and retry.reconnect is not None

    def dial_now(self) -> bool:
        """Attempt a connection now instead of at the end of the backoff, which starts again from
        C{reconnect_min}: the cluster says the node is up again (a Metadata answer, a NOT_LEADER
        hint).  One attempt at a time, and none within C{reconnect_min} of a failed one (a node
        that just refused is not dialled again at once, however often it is named).  Called while
        an attempt is on, it is noted: should that attempt fail (it may have started while the
        node was dark, and end only at C{connect_timeout}), the next one follows it after
        C{reconnect_min}, not after the backoff.  Returns whether the client is connected or an
        attempt is on now."""
        if self._closed or not self._service.running:
            return False
        if self.connected:
            return True
        if self._named.attempting:
            self._news_while_dialling = True
            return True
        retry = self._retry
        if retry is None or not retry.active():
            return False
        if self._last_failed_at is not None and self.clock.seconds() - self._last_failed_at < self.reconnect_min:
            return False
        self._waits = 0
        retry.fire()
        return self.connected or self._named.attempting

    def _retry_due(self, retry: _Retry) -> None:
        """The backoff is over: attempt again, unless nothing needs the connection and the last
        C{idle_dial_limit} attempts all failed (then the next request, or L{dial_now}, dials)."""
        retry.call = None
        if retry.reconnect is None or self._closed:
            return
        if (self.idle_dial_limit is not None and not self._waiting
                and self._failed_attempts >= self.idle_dial_limit):
            self._log.info("not dialling {address} again until a request needs it: {n} attempts in a row "
                           "failed ({reason})", address=self.address, n=self._failed_attempts,
                           reason=self._named.last_error)
            return  # dormant: the retry keeps its reconnect for later
        retry.fire()

    def _retry_delay(self, attempt: int) -> float:
        """The backoff before the next attempt; logs a failed attempt's reason when it is new.

        C{attempt} (the service's count) is not used: the client counts the waits since the last
        connection itself, so that L{dial_now} can start the backoff again."""
        reason = self._named.last_error
        if self._news_while_dialling and reason is not None:
            # The node was named up or leading while this attempt was on: it is worth a new one
            # as soon as a refused node may be dialled again (see dial_now), backoff started anew.
            self._waits = 0
            delay = self.reconnect_min
        else:
            self._waits += 1
            delay = self._backoff(self._waits)
        self._news_while_dialling = False
        if reason is not None:
            self._failed_attempts += 1
            self._last_failed_at = self.clock.seconds()
        if self.fail_waiting_on_connect_failure and self._waiting:
            waiting, self._waiting = self._waiting, []
            self._in_retry_policy = True
            try:
                for w in waiting:
                    if w.timer is not None and w.timer.active():
                        w.timer.cancel()
                    w.timer = None
                    if not w.deferred.called:
                        self.refused_unsent += 1
                        w.deferred.errback(errors.ConnectionLost(
                            f"cannot connect to {self.address} ({reason or 'connection failed'}): "
                            f"{w.method} was not sent", method=w.method, address=self.address, sent=False))
            finally:
                self._in_retry_policy = False
        if reason is not None and not self._closed and reason != self._reported:
            # Once per kind of failure: twistd shows every level, debug included.
            self._log.warn("cannot connect to {address} ({reason}); trying again in {delay:.1f}s, "
                           "backing off up to {most:g}s", address=self.address, reason=reason,
                           delay=delay, most=self.reconnect_max)
            self._reported = reason
        return delay

    def _connected(self, proto: ClientProtocol) -> None:
        self._waits = self._failed_attempts = 0
        self._last_failed_at = None
        self._news_while_dialling = False
        if self._reported is not None:
            self._log.info("connected to {address}", address=self.address)
            self._reported = None
        else:
            self._log.debug("connected to {address}", address=self.address)
        self.protocol = proto
        # ClientService hands over its proxy of the protocol: the hooks go on the protocol itself
        # (set on the proxy, they were never called).
        real = getattr(proto, "_protocol", proto)
        real.on_lost = lambda reason, proto=proto: self._lost(proto, reason)
        real.on_stall = lambda silent, n, proto=proto: self._stalled(proto, silent, n)
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            self._dispatch(w)

    def _stalled(self, proto: ClientProtocol, silent: float, in_flight: int) -> None:
        if proto is self.protocol and self.on_stall is not None and not self._closed:
            self.on_stall(self, silent, in_flight)

    @property
    def silent_for(self) -> float:
        """Seconds the connection has been stalled (see L{ClientProtocol.silent_for}); 0 if not connected."""
        proto = self.protocol
        return proto.silent_for() if proto is not None and proto.connected else 0.0

    def bound_in_flight(self) -> list[PartitionBound]:
        """The partitions of the partition-bound requests in flight on the current connection."""
        proto = self.protocol
        if proto is None or not proto.connected:
            return []
        return getattr(proto, "_protocol", proto).bound_in_flight()

    def abort_connection(self, why: str) -> None:
        """Drop the current connection at once (requests in flight fail with
        L{errors.ConnectionLost} saying C{why}); the client reconnects as after any loss."""
        if self.protocol is not None:
            self._log.info("dropping the connection to {address}: {why}", address=self.address, why=why)
            self.protocol.abort(why)

    def _lost(self, proto: ClientProtocol, reason: Failure) -> None:
        if self.protocol is proto:
            self.protocol = None
        if not self._closed:
            self._log.info("connection to {address} lost ({reason}); reconnecting", address=self.address,
                           reason=reason.getErrorMessage())

    # --- requests ------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None,
             expect_answer: bool = True, bound: PartitionBound | None = None) -> Deferred:
        """Send one request; fires with its C{result}, fails with a L{errors.StreamlogError}.

        C{timeout} (default C{request_timeout}) covers the wait for a
        connection and the wait for the answer.  C{bound}: the partition a
        partition-bound request is for (see L{ClientProtocol.request}).
        """
        if self._closed:
            return fail(errors.ConnectionLost("the client is closed", method=method, sent=False))
        if timeout is None:
            timeout = self.request_timeout
        w = _Waiting(method, params or {}, timeout, expect_answer, bound)
        if self.connected:
            self._dispatch(w)
            return w.deferred
        dormant = self.dormant
        if (self.fail_waiting_on_connect_failure and self._named.last_error is not None
                and not self._named.attempting and not dormant):
            # The last attempt failed and the next one is a backoff away: say so now.
            self.refused_unsent += 1
            return fail(errors.ConnectionLost(
                f"cannot connect to {self.address} ({self._named.last_error}): {method} was not sent",
                method=method, address=self.address, sent=False))
        # No connection yet, an attempt on (it waits for its outcome), or none since the client
        # stopped dialling an idle connection (it dials now, once: its backoff was over).
        self._waiting.append(w)
        if timeout is not None:
            w.timer = self.clock.callLater(timeout, self._wait_timed_out, w)
        if dormant and self._retry is not None:
            self._log.info("dialling {address} again: a request needs it", address=self.address)
            self._retry.fire()
        return w.deferred

    def _wait_timed_out(self, w: _Waiting) -> None:
        w.timer = None
        if w in self._waiting:
            self._waiting.remove(w)
            w.deferred.errback(errors.Timeout(
                f"no connection to the server within {w.timeout:g}s for {w.method}",
                method=w.method, timeout=w.timeout, sent=False))

    def _dispatch(self, w: _Waiting) -> None:
        if w.deferred.called:  # cancelled while waiting
            return
        remaining = w.timeout
        if w.timer is not None:
            if w.timer.active():
                remaining = max(0.0, w.timer.getTime() - self.clock.seconds())
                w.timer.cancel()
            w.timer = None
        assert self.protocol is not None
        w.deferred.written = True
        inner = w.inner = self.protocol.request(w.method, w.params, timeout=remaining,
                                                expect_answer=w.expect_answer, bound=w.bound)
        inner.addBoth(self._answered, w)

    @staticmethod
    def _answered(result: Any, w: _Waiting) -> None:
        w.inner = None
        if w.deferred.called:  # cancelled by the caller
            return
        if isinstance(result, Failure):
            w.deferred.errback(result)
        else:
            w.deferred.callback(result)

    def close(self) -> Deferred:
        """Disconnect and stop reconnecting; requests still waiting fail with ConnectionLost."""
        if not self._closed:
            hooks, self.close_hooks = self.close_hooks, []
            for hook in hooks:
                hook()
        self._closed = True
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            if w.timer is not None and w.timer.active():
                w.timer.cancel()
            w.timer = None
            if not w.deferred.called:
                w.deferred.errback(errors.ConnectionLost("the client was closed", method=w.method, sent=False))
        if self._service.running:
            if self._in_retry_policy:
                # Called back by a request failed above, inside ClientService's own transition
                # (its retry policy), where the service cannot be stopped (automat refuses a
                # reentrant stop: RuntimeError): stop it once that transition is over.
                stopped: Deferred = Deferred()
                self.clock.callLater(0, lambda: self._stop_service().chainDeferred(stopped))
                return stopped
            return self._service.stopService()
        if self._retry is not None:
            self._retry.cancel()
        return succeed(None)

    def _stop_service(self) -> Deferred:
        return self._service.stopService() if self._service.running else succeed(None)

    # --- the methods -------------------------------------------------------------

    def send(self, topic: str, value: Any, key: str | None = None, partition: int | None = None,
             headers: dict[str, str] | None = None, acks: str = "all", timeout: float | None = None) -> Deferred:
        """C{Send}: fires with C{{topic, partition, offset, timestamp, durability}} (None for acks="none")."""
        params = requests.send(topic, value, key, partition, headers, acks)
        return self.call("Send", params, timeout=timeout, expect_answer=acks != "none")

    def send_batch(self, topic: str, messages: list[dict[str, Any]] | orjson.Fragment, acks: str = "all",
                   timeout: float | None = None) -> Deferred:
        """C{SendBatch}: C{messages} are C{{value, key?, partition?, headers?}} objects
        (or an C{orjson.Fragment} holding that array already encoded).

        Fires with C{{topic, timestamp, durability, partitions: [{partition,
        base_offset, count}]}} (None for acks="none").
        """
        params = requests.send_batch(topic, messages, acks)
        return self.call("SendBatch", params, timeout=timeout, expect_answer=acks != "none")

    def poll(self, topic: str, partition: int, offset: int, max_messages: int | None = None,
             max_bytes: int | None = None, max_wait_ms: int = 0, timeout: float | None = None) -> Deferred:
        """C{Poll}: fires with C{{messages, next_offset, high_watermark, log_start_offset}}.

        The request timeout is stretched by C{max_wait_ms}, so a long poll is
        not mistaken for a dead server.
        """
        params = requests.poll(topic, partition, offset, max_messages, max_bytes, max_wait_ms)
        if timeout is None and self.request_timeout is not None:
            timeout = self.request_timeout + max_wait_ms / 1000.0
        return self.call("Poll", params, timeout=timeout)

    def create_topic(self, topic: str, partitions: int = 1, config: dict[str, Any] | None = None) -> Deferred:
        return self.call("CreateTopic", requests.create_topic(topic, partitions, config))

    def delete_topic(self, topic: str) -> Deferred:
        return self.call("DeleteTopic", {"topic": topic})

    def list_topics(self) -> Deferred:
        """Fires with C{[{topic, partitions}, ...]}."""
        return self.call("ListTopics", {}).addCallback(lambda r: r["topics"])

    def describe_topic(self, topic: str) -> Deferred:
        return self.call("DescribeTopic", {"topic": topic})

    def list_offsets(self, topic: str, partition: int = 0, at: str | int = "latest") -> Deferred:
        """Fires with the offset (an int) for C{at}: "earliest", "latest" or a timestamp in ms."""
        return self.call("ListOffsets", {"topic": topic, "partition": partition, "at": at}).addCallback(
            lambda r: r["offset"])

    def ping(self) -> Deferred:
        return self.call("Ping", {})

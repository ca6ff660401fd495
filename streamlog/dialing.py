"""Connection attempts bounded in time: one implementation for the client's dials and the peer's.

A dial into a black hole (a host powered off, a firewall that drops SYNs) gets no answer at
all, neither an accept nor a refusal, so only a timer ends it; Twisted's TCP endpoints wait 30 s
by default. L{connect_within} bounds an attempt of any endpoint (an object handed in, a name
lookup that hangs, the several addresses of a C{HostnameEndpoint} tried one after the other) on
an injected clock (a test drives it with a C{task.Clock}), and fails it as a refusal fails, so a
reconnecting service's backoff takes it the same way.

Its own module, as L{streamlog.framing} is, so that the client (L{streamlog.client.connection})
and the server's peer transport (L{streamlog.raft.driver}) share it while neither imports the
other (ARCHITECTURE.md, decision 13 and the layers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class _DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What is used of a reactor's time (C{IReactorTime}; a C{task.Clock} in tests): a
    structural type rather than the zope interface, so that mypy checks the calls."""

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> _DelayedCall: ...


class Endpoint(Protocol):
    """What is used of an C{IStreamClientEndpoint}."""

    def connect(self, factory: Any) -> Deferred[Any]: ...


class ConnectTimedOut(error.TimeoutError):
    """A connection attempt given up at its connect timeout.

    A Twisted L{error.TimeoutError}, as the reactor's own connect timeout fails with: whoever
    traps that for a failed attempt traps this too.
    """

    MESSAGE = "The connection attempt timed out"  # how str() begins (Twisted's: "User timeout ...")


def connect_within(endpoint: Endpoint, factory: Any, clock: Clock | None, timeout: float | None,
                   on_expire: Callable[[], object] | None = None) -> Deferred[Any]:
    """C{endpoint.connect(factory)}, given up after C{timeout} seconds on C{clock}.

    At the timeout the attempt is cancelled (Twisted's endpoints stop connecting; an attempt
    without a canceller fails at once and ignores a late outcome) and fails with
    L{ConnectTimedOut}; C{on_expire} is called first (a counter).  C{timeout} or C{clock} None:
    the attempt lasts as long as the endpoint lets it.  The timer is cancelled as soon as the
    attempt has its outcome, and when C{connect} raises.
    """
    if timeout is None or clock is None:
        return endpoint.connect(factory)
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        try:
            if on_expire is not None:
                on_expire()
        finally:
            attempt.cancel()  # even if on_expire raised: the attempt must end at its timeout

    def settled(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if expired and isinstance(result, Failure):
            timed_out = ConnectTimedOut(string=f"no connection within {timeout:g}s (connect timeout)")  # type: ignore[no-untyped-call]
            return Failure(timed_out)  # type: ignore[no-untyped-call]
        return result

    # Armed before connect(): a tcp:/unix: endpoint's connector sets the reactor's own timer
    # (the same whole seconds, if its string names timeout=) inside connect(), and the earlier of
    # two equal timers wins, so this one must come first for ConnectTimedOut to be what the caller
    # sees. Armed even if the attempt has "called" already: that may be a chain paused on an inner
    # Deferred (a HostnameEndpoint whose name resolved at once); if it has its outcome, settled()
    # cancels the timer at once.
    timer = clock.callLater(timeout, expire)
    try:
        attempt = endpoint.connect(factory)
    except BaseException:
        timer.cancel()
        raise
    return attempt.addBoth(settled)

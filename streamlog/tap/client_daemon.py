"""What the producer and consumer daemons share: options and a looping service.

Each daemon's C{Options} extends L{ClientOptions} (Twisted merges the
C{optParameters} of the classes) with its own C{--topic}, C{--interval} and
C{--count} help texts and other parameters, and calls C{super().postOptions()}.
Each daemon's service extends L{LoopingClientService}, which owns the client,
the C{LoopingCall} that drives C{_tick} and the way the daemon finishes.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage

from streamlog import errors, wire
from streamlog.client.addresses import DEFAULT_ADDRESS, check_bootstrap
from streamlog.client.cluster import ClusterClient, as_cluster_client
from streamlog.client.retry import DEFAULT_CONNECT_TIMEOUT

#: The environment variable holding the default --connect (as for the streamlog command).
CONNECT_ENV = "STREAMLOG_CONNECT"


class ClientOptions(usage.Options):
    synopsis = "--topic TOPIC [options]"

    optParameters = [
        ["connect", "c", None, "Server(s) to connect to: an endpoint (tcp:HOST:PORT, unix:/path) or HOST:PORT, or "
                               "several separated by commas (a cluster's bootstrap list: any of them gives the "
                               f"cluster's metadata). Default: ${CONNECT_ENV}, else {DEFAULT_ADDRESS}."],
        ["timeout", None, 10.0, "Seconds to wait for a connection and an answer.", float],
        ["connect-timeout", None, DEFAULT_CONNECT_TIMEOUT,
         "Seconds a connection attempt to a node may take before it counts as failed (and is tried again "
         "after the backoff); a tcp: address naming its own timeout= keeps it.", float],
        ["retry-max", None, 10.0, "Longest backoff between reconnects (and resends), in seconds.", float],
    ]

    def postOptions(self) -> None:
        if self["connect"] is None:
            self["connect"] = os.environ.get(CONNECT_ENV) or DEFAULT_ADDRESS
            where = f" (from ${CONNECT_ENV})" if os.environ.get(CONNECT_ENV) else ""
        else:
            where = ""
        try:
            self["bootstrap"] = check_bootstrap(self["connect"])
        except ValueError as e:
            raise usage.UsageError(f"--connect{where}: {e}") from None
        if self["topic"] is None:
            raise usage.UsageError("--topic is required")
        try:
            wire.check_topic_name(self["topic"])
        except errors.StreamlogError as e:
            raise usage.UsageError(f"--topic: {e.message}") from None
        if self["interval"] <= 0:
            raise usage.UsageError("--interval must be positive")
        if self["count"] is not None and self["count"] < 1:
            raise usage.UsageError("--count must be at least 1")
        if self["timeout"] <= 0 or self["retry-max"] <= 0:
            raise usage.UsageError("--timeout and --retry-max must be positive")
        if not 0 < self["connect-timeout"] < float("inf"):
            raise usage.UsageError(f"--connect-timeout must be positive and finite, not {self['connect-timeout']:g}")


def exit_with(status: int, reactor: Any = None) -> None:
    """Stop the reactor so that the process exits with C{status}.

    twistd always exits 0 once the reactor stops; for another status an
    atexit hook ends the process with it after twistd has cleaned up.
    """
    if reactor is None:
        from twisted.internet import reactor
    if status:
        def hard_exit() -> None:
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(status)

        atexit.register(hard_exit)
    if reactor.running:
        reactor.stop()


class LoopingClientService(service.Service):
    """A daemon that calls C{_tick} every C{--interval} seconds over one client.

    @param client: an existing client (tests inject one: a L{ClusterClient},
        or a L{StreamlogClient} it is wrapped in); else a L{ClusterClient} is
        made from the options (the bootstrap list of C{--connect}) at start.
    @param clock: the clock of the loop (default: the client's, or the reactor).
    @param on_finish: called with the exit status when the daemon is done.
    """

    _log = Logger()
    #: Name used in the log when the loop dies.
    role = "client"

    def __init__(self, options: ClientOptions, client: Any = None, clock: Any = None,
                 reactor: Any = None, on_finish: Callable[[int], object] | None = None) -> None:
        self.options = options
        self._reactor = reactor
        #: The cluster client (an injected StreamlogClient is wrapped in one).
        self.client: ClusterClient | None = as_cluster_client(client) if client is not None else None
        self.clock = clock if clock is not None else (client.clock if client is not None else reactor)
        self.on_finish = on_finish or (lambda status: exit_with(status, self._reactor))
        self._finished = False
        self._loop: LoopingCall | None = None
        self.exit_status: int | None = None

    def startService(self) -> None:
        super().startService()
        if self.client is None:
            if self._reactor is None:
                from twisted.internet import reactor

                self._reactor = reactor
            self.client = ClusterClient(self.options["bootstrap"], reactor=self._reactor,
                                        request_timeout=self.options["timeout"],
                                        reconnect_max=self.options["retry-max"],
                                        connect_timeout=self.options["connect-timeout"])
            if self.clock is None:
                self.clock = self._reactor
        self._started()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.options["interval"], now=True).addErrback(
            lambda f: self._log.failure("the {role}'s loop stopped", f, role=self.role))

    def stopService(self) -> Deferred:
        """Stop (SIGTERM, or the reactor stopping after L{_finish}); requests cut short are not trouble.

        C{running} is false from here on: answers and failures that arrive
        while the client closes are dropped without a log line.
        """
        super().stopService()
        if not self._finished:
            self._stopped_on_request()
        self._stop()
        client = self.client
        return self._before_close().addBoth(lambda _: client.close() if client is not None else None)

    def _stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _finish(self, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        self.exit_status = status
        self._stop()
        self._finished_with(status)
        self.on_finish(status)

    # --- for subclasses ------------------------------------------------------------

    def _started(self) -> None:
        """Set up what the first tick needs (the client exists by now)."""

    def _finished_with(self, status: int) -> None:
        """Say what the daemon did, before C{on_finish}."""

    def _stopped_on_request(self) -> None:
        """Say what the daemon did when it is stopped from outside (SIGTERM, Ctrl-C)."""

    def _before_close(self) -> Deferred:
        """What must still go over the client once stopped (a group member's last commit)."""
        return succeed(None)

    def _tick(self) -> None:
        raise NotImplementedError

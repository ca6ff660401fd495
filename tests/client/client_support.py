"""Helpers for the client tests (imported by name: tests/ has no __init__.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.test import iosim

from streamlog.broker.broker import Broker
from streamlog.protocol import BrokerFactory
from streamlog.storage.memory import MemoryStorage
from streamlog.testing import failure_of, no_result, result_of  # noqa: F401 (re-exported for the tests)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = sys.executable


class BrokerNetwork:
    """A fake client endpoint that connects to a real Broker through iosim pumps.

    C{up} says whether connection attempts succeed; C{attempts} counts them
    with their clock times; C{pump()} moves bytes on every live connection.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.broker = Broker(MemoryStorage(), clock=clock)
        self.factory = BrokerFactory(self.broker, clock=clock)
        self.factory.doStart()
        self.up = True
        self.attempts: list[float] = []
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: Any) -> Deferred:
        self.attempts.append(self.clock.seconds())
        if not self.up:
            return fail(ConnectionRefusedError())
        client = factory.buildProtocol(None)
        server = self.factory.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                             greet=False, clock=self.clock)
        self.pumps.append(pump)
        return succeed(client)

    def replace_handler(self, method: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Answer C{method} with C{handler} from now on, on open connections too (each
        connection copies the broker's handler table when it is made)."""
        self.broker.handlers[method] = handler
        for conn in self.factory.connections:
            conn._handlers[method] = handler

    def pump(self) -> None:
        """Move bytes until quiet (without advancing the clock)."""
        for _ in range(100):
            moved = False
            for p in list(self.pumps):
                if p.pump(advanceClock=False):
                    moved = True
            self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
            if not moved:
                return
        raise AssertionError("the connections never went quiet")

    def drop(self) -> None:
        """Cut every live connection (as a server crash would)."""
        for p in self.pumps:
            p.serverIO.loseConnection()
        self.pump()

    def stop(self) -> None:
        for p in self.pumps:
            p.clientIO.loseConnection()
        self.pump()
        self.factory.doStop()


def run_until(clock: Any, network: BrokerNetwork, condition: Callable[[], bool], step: float = 0.01,
              limit: float = 60.0) -> None:
    """Advance the clock in steps, pumping bytes, until C{condition()} (virtual time, bounded)."""
    end = clock.seconds() + limit
    network.pump()
    while not condition():
        assert clock.seconds() < end, "condition not met within the virtual time limit"
        clock.advance(step)
        network.pump()


def settle(clock: Any, network: BrokerNetwork, d: Deferred) -> Deferred:
    """Run virtual time until C{d} has its result (not merely C{called}: it may wait on another)."""
    box: list[Any] = []

    def keep(result: Any) -> Any:
        box.append(result)
        return result

    d.addBoth(keep)
    run_until(clock, network, lambda: bool(box))
    return d

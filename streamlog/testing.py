"""Test helpers for streamlog and for applications that embed it.

L{BrokerHarness} runs a real broker and its protocol on in-memory transports
and a virtual clock: requests go in as lines, answers come out parsed, and
time only moves when the test says so.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from streamlog import wire
from streamlog.broker.broker import Broker, BrokerConfig
from streamlog.protocol import BrokerFactory, BrokerProtocol
from streamlog.storage.base import Storage
from streamlog.storage.memory import MemoryStorage


class Connection:
    """One client connection to a L{BrokerHarness}, on a StringTransport."""

    def __init__(self, protocol: BrokerProtocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        self._next_id = 0

    def send_line(self, line: bytes) -> None:
        self.protocol.dataReceived(line + b"\n")

    def request(self, method: str, params: dict[str, Any] | None = None, rid: Any = None) -> Any:
        """Send one request; return its id (answers are read with L{answers})."""
        if rid is None:
            self._next_id += 1
            rid = self._next_id
        self.protocol.dataReceived(wire.encode_request(rid, method, params or {}))
        return rid

    def answers(self) -> list[dict[str, Any]]:
        """Every answer line written since the last call, parsed."""
        data = self.transport.value()
        self.transport.clear()
        return [orjson.loads(line) for line in data.split(b"\n") if line]

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Request and return the one answer that is ready at once (asserts there is one)."""
        rid = self.request(method, params)
        answers = [a for a in self.answers() if a["id"] == rid]
        assert len(answers) == 1, f"expected one answer to {method}, got {answers}"
        return answers[0]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        self.protocol.connectionLost(None)


class BrokerHarness:
    """A broker, its factory and a Clock; connections are StringTransports."""

    def __init__(
        self,
        storage: Storage | None = None,
        config: BrokerConfig | None = None,
        limits: wire.Limits | None = None,
        clock: Clock | None = None,
        committer: Any = None,
    ) -> None:
        self.clock = clock or Clock()
        if config is None:
            config = BrokerConfig(limits=limits or wire.DEFAULT_LIMITS)
        self.broker = Broker(storage or MemoryStorage(), config, clock=self.clock, committer=committer)
        self.factory = BrokerFactory(self.broker, config.limits, self.clock)
        self.factory.doStart()
        self._port = 40000

    def connect(self) -> Connection:
        self._port += 1
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", self._port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", self._port))
        protocol.makeConnection(transport)
        return Connection(protocol, transport)

    def stop(self) -> None:
        for conn in list(self.factory.connections):
            conn.connectionLost(None)
        self.factory.doStop()

"""Many real TCP connections at once: offsets stay unique and dense, nothing is lost."""

from __future__ import annotations

import random

import orjson
import pytest_twisted
from twisted.internet import defer, endpoints, reactor

from streamlog import wire
from streamlog.broker.broker import Broker
from streamlog.protocol import BrokerFactory, FastLineReceiver
from streamlog.storage.memory import MemoryStorage


class _Sender(FastLineReceiver):
    """Sends its messages in random-sized pipelined bursts and collects the acks."""

    def __init__(self, name: str, count: int, rng: random.Random) -> None:
        self.name = name
        self.count = count
        self.rng = rng
        self.acks: dict[int, dict] = {}
        self.done: defer.Deferred = defer.Deferred()
        self.sent = 0

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self._burst()

    def _burst(self) -> None:
        n = min(self.rng.randint(1, 7), self.count - self.sent)
        lines = []
        for _ in range(n):
            i = self.sent
            self.sent += 1
            lines.append(wire.encode_request(i, "Send", {"topic": "t", "value": {"c": self.name, "i": i}}))
        self.transport.write(b"".join(lines))
        if self.sent < self.count:
            reactor.callLater(0, self._burst)

    def lineReceived(self, line: bytes) -> None:
        answer = orjson.loads(line)
        self.acks[answer["id"]] = answer
        if len(self.acks) == self.count:
            self.transport.loseConnection()
            self.done.callback(self.acks)


@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_connections_get_unique_dense_offsets():
    broker = Broker(MemoryStorage(), clock=reactor)
    factory = BrokerFactory(broker)
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        address = port.getHost()
        rng = random.Random(1234)
        per_client = 40
        senders = [_Sender(f"c{i}", per_client, random.Random(rng.random())) for i in range(50)]
        for s in senders:
            await endpoints.connectProtocol(
                endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", address.port), s
            )
        timeout = reactor.callLater(30, lambda: [s.done.cancel() for s in senders if not s.done.called])
        results = await defer.gatherResults([s.done for s in senders])
        if timeout.active():
            timeout.cancel()

        offsets = []
        for _sender, acks in zip(senders, results):
            assert all("result" in a for a in acks.values()), acks
            mine = [acks[i]["result"]["offset"] for i in range(per_client)]
            assert mine == sorted(mine), "one connection's sends are ordered"
            offsets.extend(mine)
        total = 50 * per_client
        assert sorted(offsets) == list(range(total))  # unique and dense

        # Every message is in the log at the offset it was acknowledged with.
        partition = broker.partition("t", 0)
        read = partition.log.read(0, total, 1 << 30)
        records = orjson.loads(b"[" + b",".join(read.fragments) + b"]")
        assert len(records) == total
        by_offset = {r["offset"]: r["value"] for r in records}
        for sender, acks in zip(senders, results):
            for i in range(per_client):
                assert by_offset[acks[i]["result"]["offset"]] == {"c": sender.name, "i": i}
    finally:
        await port.stopListening()

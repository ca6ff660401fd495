"""The peer-link proxy on real loopback sockets: bytes pass, a cut drops and refuses, a heal lets through."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import protocol, reactor, task
from twisted.internet.defer import Deferred

from streamlog.chaos.proxy import PeerProxies


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Probe(protocol.Protocol):
    def __init__(self):
        self.received = b""
        self.lost: Deferred = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=None):
        self.lost.callback(None)


async def connect(port: int) -> Probe:
    return await protocol.ClientCreator(reactor, Probe).connectTCP("127.0.0.1", port)


async def until(condition, timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not met in time")


@pytest_twisted.ensureDeferred
async def test_a_cut_drops_the_links_of_the_node_and_refuses_new_ones_until_healed():
    factory = protocol.Factory.forProtocol(Echo)
    server = reactor.listenTCP(0, factory, interface="127.0.0.1")
    target = server.getHost().port
    proxies = PeerProxies("127.0.0.1", {2: target, 3: target}, {(1, 2): 0, (2, 3): 0}, reactor)
    proxies.start()
    try:
        a = await connect(proxies.ports[(1, 2)])
        b = await connect(proxies.ports[(2, 3)])
        a.transport.write(b"hello")
        await until(lambda: a.received == b"hello")
        assert proxies.connected(1) == 1 and proxies.connected(2) == 2

        proxies.cut(1)
        await a.lost  # node 1's link is dropped ...
        b.transport.write(b"still")
        await until(lambda: b.received == b"still")  # ... the others' are not
        refused = await connect(proxies.ports[(1, 2)])
        await refused.lost  # a new connection through a cut link is closed at once
        assert refused.received == b"" and proxies.links[(1, 2)].refused == 1

        proxies.heal(1)
        again = await connect(proxies.ports[(1, 2)])
        again.transport.write(b"back")
        await until(lambda: again.received == b"back")
        again.transport.loseConnection()
        b.transport.loseConnection()
        await again.lost
        await b.lost
    finally:
        await proxies.stop()
        await server.stopListening()

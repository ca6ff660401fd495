"""A TCP proxy that can go silent: a network partition as a client sees it, on loopback.

When a network partition cuts a node off, its clients' TCP connections do
not break: nothing arrives any more, in either direction, and no reset says
so (the packets are lost, the sender's kernel retransmits).  Aborting the
connections (as L{streamlog.chaos.proxy} does between nodes) would tell the
client at once, which a real partition does not.  L{SilentProxy} forwards one
listening port to one target; L{SilentProxy.silence} stops reading from both
ends of every connection (their bytes wait in the kernels' buffers, as TCP
flow control keeps them while a path is down), and a connection made while
silent is accepted and stays silent; L{SilentProxy.restore} lets everything
flow again, nothing lost.  So after the heal the client and the node go on
with the same streams, as TCP would after the retransmissions.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint


class _Outbound(protocol.Protocol):
    """The proxy's connection to the target, paired with one inbound connection."""

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound

    def connectionMade(self) -> None:
        self.inbound.outbound_ready(self)

    def dataReceived(self, data: bytes) -> None:
        if self.inbound.transport is not None:
            self.inbound.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.inbound.transport is not None:
            self.inbound.transport.loseConnection()


class _Inbound(protocol.Protocol):
    """One client connection that came in on the proxy's port."""

    factory: SilentProxy

    def __init__(self) -> None:
        self.outbound: _Outbound | None = None
        self.early: list[bytes] = []  # what came before the target's connection was up

    def connectionMade(self) -> None:
        proxy = self.factory
        proxy.connections.add(self)
        if proxy.silent:
            self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(proxy.reactor, proxy.host, proxy.target_port)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: _Outbound(self)))
        d.addErrback(lambda _: self.transport.loseConnection())

    def outbound_ready(self, outbound: _Outbound) -> None:
        self.outbound = outbound
        if self.factory.silent:
            outbound.transport.pauseProducing()
        for data in self.early:
            outbound.transport.write(data)
        self.early = []

    def dataReceived(self, data: bytes) -> None:
        if self.outbound is None or self.outbound.transport is None:
            self.early.append(data)
        else:
            self.outbound.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)
        if self.outbound is not None and self.outbound.transport is not None:
            self.outbound.transport.loseConnection()

    def pause(self) -> None:
        self.transport.pauseProducing()
        if self.outbound is not None and self.outbound.transport is not None:
            self.outbound.transport.pauseProducing()

    def resume(self) -> None:
        self.transport.resumeProducing()
        if self.outbound is not None and self.outbound.transport is not None:
            self.outbound.transport.resumeProducing()


class SilentProxy(protocol.Factory):
    """Forwards connections on its port to C{host}:C{target_port}; can go silent and come back."""

    noisy = False
    protocol = _Inbound

    def __init__(self, host: str, target_port: int, reactor: Any) -> None:
        self.host = host
        self.target_port = target_port
        self.reactor = reactor
        self.silent = False
        self.connections: set[_Inbound] = set()
        self.port: int | None = None
        self._listening: Any = None

    def listen(self, port: int = 0) -> int:
        """Start listening on C{host}:C{port} (0: any free port); returns the port."""
        self._listening = self.reactor.listenTCP(port, self, interface=self.host)
        self.port = int(self._listening.getHost().port)
        return self.port

    def silence(self) -> None:
        """Nothing passes any more, either way; the connections stay up."""
        self.silent = True
        for conn in list(self.connections):
            conn.pause()

    def restore(self) -> None:
        """Everything waiting passes again."""
        self.silent = False
        for conn in list(self.connections):
            conn.resume()

    def stop(self) -> Any:
        for conn in list(self.connections):
            conn.transport.abortConnection()
        if self._listening is not None:
            listening, self._listening = self._listening, None
            return listening.stopListening()
        return None


__all__ = ["SilentProxy"]

"""Network partitions between local nodes: a TCP proxy on every node pair's peer link.

Nodes of a cluster meet over one peer connection per pair, dialed by the node with the
smaller id (L{streamlog.raft.driver.RaftHost.dial}).  The runner gives each node a
C{--peers} list in which its own entry is its real peer address and every other node's
entry is a port of this proxy, one per ordered pair (A, B): what A dials to reach B
arrives at the proxy, which connects to B's real peer port and copies bytes both ways
(with flow control: a side that cannot keep up pauses the other).

L{PeerProxies.cut} isolates a node: every proxied connection that has the node at either
end is aborted at once (both sides see the connection reset), and a new connection
through one of its links is accepted and aborted at once while the cut lasts, so the
node's dialer keeps failing and backing off.  L{PeerProxies.heal} lets new connections
through again; the dialers reconnect on their own (within their 2 s backoff at most).
Client connections do not go through the proxy: clients still reach a cut node, which
is how a test sees that the minority side acknowledges nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import protocol
from twisted.protocols.portforward import ProxyClient, ProxyClientFactory, ProxyServer


class _QuietClient(ProxyClient):
    noisy = False


class _QuietClientFactory(ProxyClientFactory):
    noisy = False
    protocol = _QuietClient


class _LinkServer(ProxyServer):
    """One connection that came in on a link's port; aborted at once while the link is cut."""

    noisy = False
    clientProtocolFactory = _QuietClientFactory
    factory: Link  # type: ignore[assignment]

    def connectionMade(self) -> None:
        link = self.factory
        if link.is_cut:
            link.refused += 1
            self.transport.abortConnection()
            return
        link.connections.add(self)
        self.reactor = link.reactor
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def abort(self) -> None:
        peer = self.peer
        self.transport.abortConnection()
        if peer is not None and peer.transport is not None:
            peer.transport.abortConnection()


class Link(protocol.Factory):
    """The proxy of one ordered pair: what C{source} dials to reach C{target}."""

    noisy = False
    protocol = _LinkServer  # type: ignore[assignment]

    def __init__(self, source: int, target: int, host: str, target_port: int, reactor: Any) -> None:
        self.source = source
        self.target = target
        self.host = host
        self.port = target_port  # ProxyServer connects to (factory.host, factory.port)
        self.reactor = reactor
        self.connections: set[_LinkServer] = set()
        self.is_cut = False
        #: Connections aborted on arrival while cut, and aborted by a cut.
        self.refused = 0
        self.dropped = 0

    def cut(self) -> None:
        self.is_cut = True
        for conn in list(self.connections):
            self.dropped += 1
            conn.abort()

    def heal(self) -> None:
        self.is_cut = False


class PeerProxies:
    """The links of a cluster, listening on C{ports[(a, b)]} and forwarding to node B's
    real peer port C{peer_ports[b]}."""

    def __init__(self, host: str, peer_ports: dict[int, int], ports: dict[tuple[int, int], int],
                 reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.host = host
        self.reactor = reactor
        self.ports = ports
        self.links = {pair: Link(pair[0], pair[1], host, peer_ports[pair[1]], reactor) for pair in ports}
        self._listening: list[Any] = []
        #: The nodes cut off now.
        self.isolated: set[int] = set()

    def start(self) -> None:
        for pair, port in sorted(self.ports.items()):
            listening = self.reactor.listenTCP(port, self.links[pair], interface=self.host)
            self.ports[pair] = listening.getHost().port  # port 0: the one the system chose
            self._listening.append(listening)

    def stop(self) -> Any:
        from twisted.internet.defer import DeferredList

        for link in self.links.values():
            link.cut()
        stopping = [p.stopListening() for p in self._listening]
        self._listening = []
        return DeferredList([d for d in stopping if d is not None])

    def _links_of(self, node: int) -> Iterable[Link]:
        return [link for (a, b), link in self.links.items() if node in (a, b)]

    def cut(self, node: int) -> None:
        """Cut C{node} off from every other node (both directions)."""
        self.isolated.add(node)
        for link in self._links_of(node):
            link.cut()

    def heal(self, node: int | None = None) -> None:
        """Let C{node}'s links (every link, for None) carry connections again."""
        nodes = set(self.isolated) if node is None else {node}
        self.isolated -= nodes
        for link in self.links.values():
            if not ({link.source, link.target} & self.isolated):
                link.heal()

    def connected(self, node: int) -> int:
        """Proxied connections open now that have C{node} at one end."""
        return sum(len(link.connections) for link in self._links_of(node))

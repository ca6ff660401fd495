"""The simulated network: in-memory connections carrying the real protocol bytes, on the shared Clock.

Each connection is a L{Link} with two sides; bytes written on one side
arrive at the other after the link's latency (plus a little jitter), in
order, as TCP delivers them.  What TCP allows is all that can go wrong:

- delay: every pair of hosts has its own latency, drawn from the seed;
- partitions: a blocked pair holds its bytes (both ways, or one way only)
  until healed, and refuses new connections between them; the endpoints'
  own liveness checks decide whether to close the connection meanwhile;
- connection resets: both sides see the connection lost, what was in
  flight is dropped (so "loss" is always a drop of a whole connection's
  tail, never a hole in the middle of a stream); a lost answer to a client
  (C{drop_answers}) is such a reset, made as the answer goes out;
- a paused host (SIGSTOP) reads nothing: bytes for it wait, then arrive
  when it is resumed; a dial to it connects at once, as its kernel completes
  the handshake, and the process accepts the connection when resumed (the
  dialer's bytes wait until then; should it die first, the dialer sees the
  connection close); a killed host's connections close (its peers see the
  close after the latency), and nothing is delivered to it again.

The protocols on both sides are the real ones (the peer transport, the
broker's JSON-lines protocol, the simulator's clients).  Nothing here
reads the global reactor or wall-clock time.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport

from streamlog.cluster.sim.clock import NodeClock

#: Markers in a side's inbox: the other side closed (FIN) or reset (RST) the connection.
_CLOSE = object()
_RESET = object()


class SimTransport(FakeTransport):  # type: ignore[misc]
    """One side's transport: writes go onto the link (iosim's FakeTransport gives the rest of ITransport)."""

    def __init__(self, link: Link, side: Side, protocol: Any, is_server: bool, host: Any, peer: Any) -> None:
        super().__init__(protocol, is_server, host, peer)
        self.link = link
        self.side = side

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.side.gone:
            return
        self.link.send(self.side, bytes(data))

    def writeSequence(self, iovec: Iterable[bytes]) -> None:  # noqa: N802
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:  # noqa: N802
        if self.disconnecting or self.side.gone:
            return
        self.disconnecting = True
        self.link.close(self.side)

    def abortConnection(self) -> None:  # noqa: N802
        if self.side.gone:
            return
        self.disconnecting = True
        self.link.reset(self.side)


class Side:
    """One end of a link: its host, protocol and transport, and the bytes on their way to it."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.protocol: Any = None
        self.transport: SimTransport | None = None
        self.inbox: deque[tuple[float, Any]] = deque()
        self.last_arrival = 0.0
        self.ready = False  # its protocol is connected (a dialer's only after the handshake)
        self.gone = False  # connectionLost was given (or its host died)


class Link:
    """One TCP connection between two hosts of a L{SimNetwork}."""

    _log = Logger()

    def __init__(self, network: SimNetwork, dialer: str, server: str, number: int) -> None:
        self.network = network
        self.number = number
        self.a = Side(dialer)
        self.b = Side(server)

    def other(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    @property
    def closed(self) -> bool:
        return self.a.gone and self.b.gone

    def hosts(self) -> tuple[str, str]:
        return self.a.host, self.b.host

    # --- sending

    def _enqueue(self, to: Side, item: Any, front: bool = False) -> None:
        net = self.network
        now = net.clock.seconds()
        latency = net.latency(self.other(to).host, to.host)
        at = max(to.last_arrival, now + latency)
        to.last_arrival = at
        if front:
            to.inbox.clear()
        to.inbox.append((at, item))
        net.clock.callLater(at - now, self.pump, to)

    def send(self, frm: Side, data: bytes) -> None:
        to = self.other(frm)
        if to.gone:
            return
        net = self.network
        drop = net.drop_answers.get(to.host) if net.drop_answers else None
        if drop and net.rng.random() < drop:
            # An answer lost on its way to a client: the connection is cut as it goes out
            # (TCP loses no bytes on a live connection; a lost answer is a reset one).
            net.answers_dropped += 1
            self.reset()
            return
        net.bytes_sent += len(data)
        self._enqueue(to, data)

    def close(self, frm: Side) -> None:
        """C{frm} closed cleanly: the other side sees it after what was sent before."""
        to = self.other(frm)
        if not to.gone:
            self._enqueue(to, _CLOSE)
        self.network.clock.callLater(0, self._lost, frm, ConnectionDone())

    def reset(self, frm: Side | None = None) -> None:
        """A reset (RST): what is in flight is dropped, both sides see the connection lost."""
        for side in (self.a, self.b):
            if side.gone:
                continue
            if side is frm:
                side.inbox.clear()
                self.network.clock.callLater(0, self._lost, side, ConnectionLost("connection reset"))
            else:
                self._enqueue(side, _RESET, front=True)

    def host_died(self, host: str) -> None:
        """C{host} was killed: its side is gone silently; the other side sees a close after
        what was sent before (the kernel closes a dead process's sockets)."""
        for side in (self.a, self.b):
            if side.host == host and not side.gone:
                side.gone = True
                side.inbox.clear()
                other = self.other(side)
                if not other.gone:
                    self._enqueue(other, _CLOSE)

    # --- receiving

    def pump(self, to: Side) -> None:
        """Deliver what is due at C{to}, in order, if its host can read now."""
        net = self.network
        if to.gone or not to.ready or not net.can_receive(self.other(to).host, to.host):
            return
        now = net.clock.seconds()
        while to.inbox and to.inbox[0][0] <= now and not to.gone:
            _, item = to.inbox.popleft()
            if item is _CLOSE:
                self._lost(to, ConnectionDone())
            elif item is _RESET:
                self._lost(to, ConnectionLost("connection reset by peer"))
            else:
                try:
                    to.protocol.dataReceived(item)
                except Exception:
                    # As Twisted does: an exception escaping dataReceived drops the connection.
                    net.protocol_errors += 1
                    self._log.failure("host {host}: dataReceived raised; dropping the connection", host=to.host)
                    if to.transport is not None:
                        to.transport.abortConnection()
                if not net.can_receive(self.other(to).host, to.host):
                    return  # the protocol paused its own host, say

    def _lost(self, side: Side, reason: Exception) -> None:
        if side.gone:
            return
        clock = self.network.hosts.get(side.host)
        if clock is not None and not clock.alive:
            side.gone = True
            return
        if clock is not None and clock.paused:
            clock.run(self._lost, side, reason)  # held until SIGCONT
            return
        side.gone = True
        side.inbox.clear()
        if side.transport is not None:
            side.transport.disconnected = True
        if side.ready:
            side.protocol.connectionLost(Failure(reason))


class SimNetwork:
    """Hosts (nodes and clients), their listeners and the links between them."""

    def __init__(self, clock: Clock, rng: random.Random, latency: tuple[float, float] = (0.0002, 0.002),
                 jitter: float = 0.0005) -> None:
        self.clock = clock
        self.rng = rng
        self.latency_range = latency
        self.jitter = jitter
        #: host name -> its NodeClock (None: a client, which never pauses or dies).
        self.hosts: dict[str, NodeClock | None] = {}
        self.addresses: dict[str, IPv4Address] = {}
        self.listeners: dict[str, tuple[str, Any]] = {}
        self.links: list[Link] = []
        self.blocked: set[frozenset[str]] = set()
        #: One-way partitions: (from, to) pairs whose bytes are held (the other way flows).
        self.one_way: set[tuple[str, str]] = set()
        self._latency: dict[tuple[str, str], float] = {}
        self._links_made = 0
        self._ports = 50000
        self.bytes_sent = 0
        #: Exceptions that escaped a protocol's dataReceived (each a bug: the connection dropped).
        self.protocol_errors = 0
        #: Client host -> the probability that bytes written to it (its answers) are lost, the
        #: connection reset as they go out; and how many were.
        self.drop_answers: dict[str, float] = {}
        self.answers_dropped = 0

    # --- hosts and listeners

    def add_host(self, name: str, ip: str, clock: NodeClock | None = None) -> None:
        self.hosts[name] = clock
        self.addresses[name] = IPv4Address("TCP", ip, 0)
        if clock is not None:
            clock.on_resume.append(lambda: self._wake(name))

    def listen(self, address: str, host: str, factory: Any) -> None:
        self.listeners[address] = (host, factory)

    def unlisten(self, address: str) -> None:
        self.listeners.pop(address, None)

    def latency(self, frm: str, to: str) -> float:
        key = (frm, to)
        base = self._latency.get(key)
        if base is None:
            base = self._latency[key] = self.rng.uniform(*self.latency_range)
        return base + self.rng.random() * self.jitter

    def alive(self, host: str) -> bool:
        clock = self.hosts.get(host)
        return clock is None or clock.alive

    def can_receive(self, frm: str, to: str) -> bool:
        clock = self.hosts.get(to)
        if clock is not None and (not clock.alive or clock.paused):
            return False
        return frozenset((frm, to)) not in self.blocked and (frm, to) not in self.one_way

    # --- connecting

    def endpoint(self, source: str, address: str) -> _Endpoint:
        return _Endpoint(self, source, address)

    def connect(self, source: str, address: str, factory: Any) -> Deferred:
        # Cancellable, as Twisted's endpoints are: a cancelled attempt (a ClientService
        # stopped while connecting) fails at once and never connects a protocol later.
        d: Deferred = Deferred(lambda _: None)
        listener = self.listeners.get(address)
        server_host = listener[0] if listener is not None else None
        cut = server_host is not None and self._cut(source, server_host)
        if listener is None or server_host is None or not self.alive(server_host) or cut:
            # Refused (nobody listens, the host is dead) or timed out (a partition, even one
            # way: the handshake needs both): after a while.
            delay = 0.2 if cut else 2 * self.latency(source, address)
            self.clock.callLater(delay, self._as_host, source, _refuse, d, address)
            return d
        assert server_host is not None
        self.clock.callLater(self.latency(source, server_host), self._accept, source, address, factory, d)
        return d

    def _as_host(self, host: str, f: Callable[..., Any], *args: Any) -> None:
        clock = self.hosts.get(host)
        if clock is None:
            f(*args)
        else:
            clock.run(f, *args)

    def _accept(self, source: str, address: str, factory: Any, d: Deferred) -> None:
        if d.called:
            return  # cancelled meanwhile
        listener = self.listeners.get(address)
        if listener is None or not self.alive(listener[0]) or not self.alive(source):
            self._as_host(source, _refuse, d, address)
            return
        server_host, server_factory = listener
        self._links_made += 1
        self._ports += 1
        link = Link(self, source, server_host, self._links_made)
        client_addr = IPv4Address("TCP", self.addresses[source].host, self._ports)
        host, port = address.rsplit(":", 1)
        server_addr = IPv4Address("TCP", host, int(port))
        clock = self.hosts.get(server_host)
        if clock is not None and clock.paused:
            # A stopped process's kernel completes the handshake at once (the connection waits in
            # the listen backlog): the dialer is connected, its bytes wait, and the process accepts
            # the connection at SIGCONT (it never does, should it die first: kill() closes it).
            self.links.append(link)
            clock.run(self._server_accepts, link, server_factory, client_addr, server_addr)
        elif not self._server_accepts(link, server_factory, client_addr, server_addr):
            self.clock.callLater(self.latency(server_host, source), self._as_host, source, _refuse, d, address)
            return
        self.clock.callLater(self.latency(server_host, source), self._as_host, source, self._connected,
                             link, factory, client_addr, server_addr, d)

    def _server_accepts(self, link: Link, server_factory: Any, client_addr: Any, server_addr: Any) -> bool:
        """The server's process accepts C{link}: whether its factory gave it a protocol."""
        if link.b.gone:  # reset, or its host died, before a paused process accepted it
            return True
        server = server_factory.buildProtocol(client_addr)
        if server is None:
            if link in self.links:  # accepted by a paused host's kernel: the process closes it
                link.close(link.b)
            return False
        if link not in self.links:
            self.links.append(link)
        link.b.protocol = server
        link.b.transport = SimTransport(link, link.b, server, True, server_addr, client_addr)
        link.b.ready = True
        server.makeConnection(link.b.transport)
        if link.b.inbox:  # what the dialer sent while the process was stopped
            self.clock.callLater(0, link.pump, link.b)
        return True

    def _connected(self, link: Link, factory: Any, client_addr: Any, server_addr: Any, d: Deferred) -> None:
        if d.called:  # the attempt was cancelled: the dialer closes what the server accepted
            link.a.gone = True
            if not link.b.gone:
                link._enqueue(link.b, _CLOSE)
            return
        if link.b.gone:  # the server side closed (or died) before the handshake ended
            link.a.gone = True
            d.errback(Failure(ConnectionRefusedError(str(server_addr))))
            return
        client = factory.buildProtocol(server_addr)
        if client is None:
            link.a.gone = True
            link.close(link.a)
            d.errback(Failure(ConnectionRefusedError(str(server_addr))))
            return
        link.a.protocol = client
        link.a.transport = SimTransport(link, link.a, client, False, client_addr, server_addr)
        link.a.ready = True
        client.makeConnection(link.a.transport)
        d.callback(client)
        self.clock.callLater(0, link.pump, link.a)

    # --- faults

    def kill(self, host: str) -> None:
        """C{host} died: its connections close (as its peers see them, those its kernel accepted
        while it was paused too), its listeners go."""
        for address, (h, _) in list(self.listeners.items()):
            if h == host:
                del self.listeners[address]
        for link in self.links:
            if host in link.hosts():
                link.host_died(host)
        self._forget_closed()

    def _cut(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self.blocked or (a, b) in self.one_way or (b, a) in self.one_way

    def block(self, a: str, b: str) -> None:
        self.blocked.add(frozenset((a, b)))

    def block_one_way(self, frm: str, to: str) -> None:
        """Bytes from C{frm} to C{to} are held (C{to} still reaches C{frm}); no new connection."""
        self.one_way.add((frm, to))

    def heal_host(self, host: str) -> None:
        """Every partition (both ways or one) that involves C{host} ends."""
        self.blocked = {p for p in self.blocked if host not in p}
        self.one_way = {p for p in self.one_way if host not in p}
        for name in list(self.hosts):
            self._wake(name)

    def unblock_all(self) -> None:
        pairs, self.blocked = self.blocked, set()
        one_way, self.one_way = self.one_way, set()
        for pair in [*pairs, *one_way]:
            for host in pair:
                self._wake(host)

    def reset_one(self, rng: random.Random, among: Callable[[Link], bool] = lambda link: True) -> Link | None:
        """Reset one open link (chosen by C{rng}), if any."""
        self._forget_closed()
        candidates = [link for link in self.links if not link.a.gone and not link.b.gone and link.a.ready
                      and among(link)]
        if not candidates:
            return None
        link = candidates[rng.randrange(len(candidates))]
        link.reset()
        return link

    def _wake(self, host: str) -> None:
        """C{host} can read again (resumed, or a partition healed): deliver what waited."""
        for link in self.links:
            for side in (link.a, link.b):
                if side.host == host and side.inbox:
                    self.clock.callLater(0, link.pump, side)
                other = link.other(side)
                if side.host == host and other.inbox:
                    self.clock.callLater(0, link.pump, other)

    def _forget_closed(self) -> None:
        self.links = [link for link in self.links if not link.closed]


def _refuse(d: Deferred, address: str) -> None:
    if not d.called:
        d.errback(Failure(ConnectionRefusedError(address)))


class _Endpoint:
    """An C{IStreamClientEndpoint} from one host to an address of the simulated network."""

    def __init__(self, network: SimNetwork, source: str, address: str) -> None:
        self.network = network
        self.source = source
        self.address = address

    def connect(self, factory: Any) -> Deferred:
        return self.network.connect(self.source, self.address, factory)

"""The node-level peer channel: hellos, leadership announcements, forwarded requests.

C{RaftHost}'s peer connections carry Raft messages only.  What a node says to
another as a node goes through a L{PeerLink}, a small interface, so that it
can move onto the peer transport's own node-level messages (C{hello},
leadership announcements, C{forward}/C{forward_result}) when that lands.
This implementation is JSON lines on a connection of its own, on the same
peer port: L{PeerPort} reads a connection's first line and hands the
connection to C{RaftHost}'s protocol (a C{{"node": ...}} hello) or to a
L{LinkProtocol} (a C{{"link": ...}} hello).

Messages (one JSON object a line), after the hello each side sends first::

    {"link": 1, "cluster_id": str|null, "node_id": int, "incarnation": str, "client_address": str}
    {"leaders": {group: [term, leader node id or null]}, "full": bool}
    {"forward": id, "method": str, "params": {...}}
    {"forward_result": id, "result": ...} | {"forward_result": id, "error": {...}}

A malformed line closes that connection (logged as a warning).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

LINK_VERSION = 1
MAX_LINK_LINE = 4 * 1024 * 1024


@attrs.frozen
class Hello:
    node_id: int
    incarnation: str
    cluster_id: str | None
    client_address: str


class LinkHandler(Protocol):
    """What the node hears on its links (L{streamlog.cluster.node.ClusterNode})."""

    def hello(self) -> Hello: ...

    def link_up(self, link: LinkProtocol, hello: Hello) -> bool:
        """A peer said hello; False refuses it (the connection closes)."""

    def link_down(self, link: LinkProtocol) -> None: ...

    def leaders_announced(self, node_id: int, leaders: dict[str, tuple[int, int | None]], full: bool) -> None: ...

    def forwarded(self, method: str, params: dict[str, Any]) -> Deferred: ...


class LinkProtocol(LineReceiver):
    """One link to one peer node."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINK_LINE
    _log = Logger()

    def __init__(self, handler: LinkHandler, clock: Any) -> None:
        self.handler = handler
        self.clock = clock
        self.peer: Hello | None = None
        self._next = 0
        self._waiting: dict[int, Deferred] = {}

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        me = self.handler.hello()
        self._write({"link": LINK_VERSION, "cluster_id": me.cluster_id, "node_id": me.node_id,
                     "incarnation": me.incarnation, "client_address": me.client_address})

    def _write(self, obj: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(orjson.dumps(obj) + b"\n")

    def lineReceived(self, line: bytes) -> None:
        try:
            obj = orjson.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            if self.peer is None:
                if "link" not in obj:
                    raise ValueError("expected a hello")
                hello = Hello(int(obj["node_id"]), str(obj["incarnation"]), obj.get("cluster_id"),
                              str(obj.get("client_address") or ""))
                self.peer = hello
                if not self.handler.link_up(self, hello):
                    self.transport.loseConnection()
                return
            if "leaders" in obj:
                leaders = {str(g): (int(v[0]), None if v[1] is None else int(v[1])) for g, v in obj["leaders"].items()}
                self.handler.leaders_announced(self.peer.node_id, leaders, bool(obj.get("full")))
            elif "forward" in obj:
                self._answer(int(obj["forward"]), str(obj["method"]), dict(obj.get("params") or {}))
            elif "forward_result" in obj:
                d = self._waiting.pop(int(obj["forward_result"]), None)
                if d is not None:
                    d.callback(obj)
            else:
                raise ValueError("unknown message")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            self._log.warn("bad link message from {peer}: {error}; closing", peer=self.peer, error=str(e))
            self.transport.loseConnection()

    def _answer(self, rid: int, method: str, params: dict[str, Any]) -> None:
        from streamlog import errors

        def ok(result: Any) -> None:
            self._write({"forward_result": rid, "result": result})

        def failed(failure: Any) -> None:
            error = failure.value
            if not isinstance(error, errors.StreamlogError):
                self._log.failure("forwarded {method} failed", failure, method=method)
                error = errors.Internal("internal error at the controller")
            self._write({"forward_result": rid, "error": error.to_wire()})

        self.handler.forwarded(method, params).addCallbacks(ok, failed)

    def forward(self, method: str, params: dict[str, Any], timeout: float) -> Deferred:
        """Ask the peer to run C{method}: fires with C{{"result": ...}} or C{{"error": ...}}."""
        self._next += 1
        rid = self._next
        d: Deferred = Deferred()
        self._waiting[rid] = d
        timer = self.clock.callLater(timeout, self._expire, rid)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        self._write({"forward": rid, "method": method, "params": params})
        return d.addBoth(done)

    def _expire(self, rid: int) -> None:
        d = self._waiting.pop(rid, None)
        if d is not None:
            d.callback({"error": {"code": "TIMEOUT", "message": "the controller did not answer in time"}})

    def announce(self, leaders: dict[str, tuple[int, int | None]], full: bool) -> None:
        self._write({"leaders": {g: list(v) for g, v in leaders.items()}, "full": full})

    def lineLengthExceeded(self, line: bytes) -> None:
        self._log.warn("link line over {limit} bytes from {peer}; closing", limit=self.MAX_LENGTH, peer=self.peer)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.callback({"error": {"code": "CONNECTION_LOST", "message": "the link to the controller closed"}})
        if self.peer is not None:
            self.handler.link_down(self)


class PeerPort(LineReceiver):
    """The peer listener's protocol: the first line says whose connection it is."""

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024
    _log = Logger()

    def __init__(self, raft_factory: Callable[[], Factory | None], link_factory: Callable[[], LinkProtocol],
                 addr: Any) -> None:
        self.raft_factory = raft_factory
        self.link_factory = link_factory
        self.addr = addr
        self.inner: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buffer = getattr(self, "_buffer", b"") + data
        if b"\n" not in self._buffer:
            if len(self._buffer) > self.MAX_LENGTH:
                self.transport.loseConnection()
            return
        first = self._buffer.split(b"\n", 1)[0]
        try:
            obj = orjson.loads(first)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "link" in obj:
            inner = self.link_factory()
        elif isinstance(obj, dict) and "node" in obj and self.raft_factory() is not None:
            inner = self.raft_factory().buildProtocol(self.addr)
        else:
            # Not a hello, or a Raft connection before this node's Raft runs (it dials again).
            self._log.warn("peer port: no hello this node can take from {addr}; closing", addr=self.addr)
            self.transport.loseConnection()
            return
        buffered, self._buffer = self._buffer, b""
        self.inner = inner
        inner.makeConnection(self.transport)
        inner.dataReceived(buffered)

    def connectionLost(self, reason: Any = None) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)


class PeerPortFactory(Factory):
    def __init__(self, raft_factory: Callable[[], Factory | None], link_factory: Callable[[], LinkProtocol]) -> None:
        self.raft_factory = raft_factory
        self.link_factory = link_factory

    def buildProtocol(self, addr: Any) -> PeerPort:
        return PeerPort(self.raft_factory, self.link_factory, addr)

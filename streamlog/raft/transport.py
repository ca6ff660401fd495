"""The peer transport: node-to-node traffic on its own listener, one connection per node pair.

Why its own module and its own framing (ARCHITECTURE.md decision 11, cluster-design section 4):
replication must move the stored bytes of a batch, not a JSON re-encoding of its records; votes
and heartbeats must not queue behind a bulk catch-up; a slow peer must not grow our memory
without end; and a hostile or broken peer must cost us one connection, never the node.

Framing. Every message is one JSON header line (``{"t": <type>, ...}``), optionally followed by
a raw body of exactly ``len`` bytes announced in the header::

    {"t":"ae","g":"<group>","to":"<member>","fr":"<member>","m":{...},"f":[<frame len>,...],"len":N}\\n
    <N bytes: the entries' frames, back to back>

Types:

* ``hello`` ``{v, cluster, node, inc, addr?, fsync?}``: the first message each way. The dialing side sends it
  at once; the accepting side answers only after a valid hello, so a client that connects to
  the peer listener gets nothing (and is closed after the handshake timeout). A protocol
  version, node id or cluster id that does not fit is refused (logged, counted; a cluster id
  mismatch is also reported to the host, whose node wiring decides whether to exit).
* ``hb``: the node heartbeat (liveness, every heartbeat interval, nothing per group).
* ``raft`` ``{m: [[group, to, from, message], ...]}``: control messages (votes, answers,
  heartbeats, TimeoutNow) of many groups coalesced into one line per reactor turn: the
  heartbeats of every group a node leads towards one peer travel as one message per interval.
* ``ae``: an AppendEntries with entries; the body is the entries' stored frames (storage format
  2: header plus payload, CRC32C), which the receiver checks and hands to the log as received.
* ``snap``: an InstallSnapshot; the body is the snapshot data.
* ``lead`` ``{full, groups: {group: [term, [isr member ids]] or null}}``: leadership
  announcements: the groups this node leads, in full on connect, then deltas.
* ``fwd`` ``{id, req}`` / ``fwd_r`` ``{id, res}``: a generic node-level request/response
  channel (admin requests forwarded to the controller).

Priorities and budgets. Each connection has a control queue (everything but ``ae``/``snap``)
and a bulk queue. Control is written first in every flush and is never dropped while the
connection is up. Bulk is written only while the transport is not paused (we register as its
streaming producer, so Twisted tells us when its buffer is full); past ``bulk_budget_bytes``
queued for one peer, further bulk messages are dropped and counted: Raft treats it as loss and
retries.

Hostile input. Garbage, an oversized header line or body, an unknown type, a malformed field,
a frame whose CRC fails, a message before the hello, or no hello within the handshake timeout:
the connection is closed, logged as a warning and counted in `PeerTransport.stats`. Nothing a
peer sends can raise out of `dataReceived` or stall other connections.
"""

from __future__ import annotations

import collections
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from zope.interface import implementer  # type: ignore[import-untyped]

from streamlog.raft.log import Entry
from streamlog.raft.messages import AppendEntries, InstallSnapshot, Message, from_dict, to_dict

PROTOCOL_VERSION = 1


def node_of(member: str) -> str:
    """The node id part of a member id ``"<node id>.<incarnation>"`` (a bare node id is its own)."""
    return member.split(".", 1)[0]


class BadPeerMessage(ValueError):
    """What a peer sent cannot be trusted: the connection is closed."""


class DelayedCall(Protocol):
    """What the transport uses of a C{callLater} result."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the transport uses of a reactor's time (C{IReactorTime}; a C{task.Clock} in tests).

    A structural type rather than the zope interface, so that mypy checks the calls."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> DelayedCall: ...


# ---------------------------------------------------------------------- entry frames


class FrameCodec(Protocol):
    """How entries travel as raw frames. Injected, so that partition groups (whose entries are
    stored `RecordBatch` frames) and the metadata group (plain-bytes commands) share one wire."""

    def encode(self, entry: Entry) -> Sequence[bytes]:
        """The frame of `entry` as parts to be written back to back (no copy of the payload)."""

    def decode(self, frame: bytes | memoryview) -> Entry:
        """The entry a frame holds (a view into a received body: copy what is kept); `ValueError`
        if the frame is damaged (CRC) or malformed."""


class StoredFrameCodec:
    """Entries as storage format 2 frames (streamlog.storage.codec): a record entry is sent as
    the header and payload it is stored with, and decoded into a `RecordBatch` that keeps that
    header, so the follower's log stores it as received (after checking its CRC); a no-op, a
    configuration or a plain-bytes command becomes a batch of no records (NOOP, CONFIG, DATA).
    The receiving log places bookkeeping batches at its own record offset."""

    def encode(self, entry: Entry) -> Sequence[bytes]:
        from streamlog.storage import codec
        from streamlog.storage.appends import stored_batch
        from streamlog.storage.base import RecordBatch

        data: Any = entry.data
        if isinstance(data, RecordBatch):
            if data.header is None or data.raft_index != entry.index or data.term != entry.term:
                data = codec.stamp(data, entry.index, entry.term)
            return codec.frame_parts(data)
        batch = stored_batch(entry, 0)
        assert batch.header is not None
        return batch.header, batch.payload

    def decode(self, frame: bytes | memoryview) -> Entry:
        from streamlog.storage import codec
        from streamlog.storage.base import BatchType

        try:
            batch = codec.decode(frame)
        except codec.FrameError as e:
            raise ValueError(f"bad frame: {e}") from None
        if batch.type == BatchType.RECORDS:
            return Entry(batch.raft_index, batch.term, batch)  # type: ignore[arg-type]  # data: bytes or RecordBatch
        if batch.type == BatchType.CONFIG:
            members = orjson.loads(batch.payload)
            if not isinstance(members, list) or not all(type(m) is str for m in members):
                raise ValueError("a configuration frame holds a JSON array of member ids")
            return Entry(batch.raft_index, batch.term, b"", tuple(members))
        if batch.type == BatchType.DATA:
            return Entry(batch.raft_index, batch.term, batch.payload)
        return Entry(batch.raft_index, batch.term, b"")


# ---------------------------------------------------------------------- limits and the host side


@attrs.frozen
class TransportLimits:
    """Every bound of the peer wire (server options; docs/operations.md "Limits")."""

    max_header_bytes: int = 4 * 1024 * 1024  # one JSON header line (coalesced control messages)
    max_body_bytes: int = 64 * 1024 * 1024  # one raw body (a batch of frames, a snapshot)
    bulk_budget_bytes: int = 16 * 1024 * 1024  # bulk queued towards one peer before drops
    handshake_timeout: float = 5.0  # seconds from connect to a valid hello
    control_line_bytes: int = 256 * 1024  # the sender splits coalesced control lines near this
    max_unread_bytes: int = 64 * 1024 * 1024  # control written while the peer reads nothing; then close
    #: Bytes one socket read takes, one socket write gives, and the write buffer holds before
    #: bulk pauses (Twisted's C{bufferSize}/C{SEND_LIMIT}, 64/128 KiB by default): a 500 KiB
    #: batch then costs one read and one write instead of eight reads, four writes and as many
    #: reactor turns on each side.
    socket_chunk_bytes: int = 1024 * 1024
    #: Seconds a dial of a peer may take before it is given up and dialled again after the
    #: backoff (streamlog.raft.driver, RaftHost.dial): a peer that drops SYNs (powered off, a
    #: firewall) otherwise holds the dial for Twisted's 30 s. 2 s covers a lost SYN (Linux sends
    #: it again after 1 s); a black-holed peer is then redialled every 4-5 s (2 s timeout, 2 s
    #: backoff cap, <= 1 s jitter).
    connect_timeout: float = 2.0


@attrs.frozen
class Hello:
    node: str
    incarnation: str | None
    cluster_id: str | None
    version: int = PROTOCOL_VERSION
    #: Where the node serves clients (``addr``, optional): what other nodes tell clients of it
    #: before the cluster metadata has it.
    client_address: str | None = None
    #: Whether the node fsyncs its log before acknowledging entries (``fsync``, optional: its
    #: ``--fsync always``), so that a leader's acks=all answer says what its replicas did.
    fsyncs: bool | None = None


class TransportHost(Protocol):
    """What the transport tells the node (RaftHost implements it)."""

    def peer_connected(self, node: str, hello: Hello) -> None: ...

    def peer_lost(self, node: str) -> None: ...

    def peer_back(self, node: str) -> None: ...

    def deliver(self, node: str, group: str, to: str, frm: str, msg: Message) -> None: ...

    def leadership(self, node: str, full: bool, groups: dict[str, Any]) -> None: ...

    def forwarded(self, node: str, request: Any) -> Any: ...

    def cluster_mismatch(self, node: str, theirs: str) -> None: ...


_MESSAGE_TYPES = frozenset({"hello", "hb", "raft", "ae", "snap", "lead", "fwd", "fwd_r"})


def _header_line(header: dict[str, Any]) -> bytes:
    return orjson.dumps(header) + b"\n"


def _need(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(name)
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BadPeerMessage(f"{header.get('t')}: {name} must not be a boolean")
    if not isinstance(value, kind):
        raise BadPeerMessage(f"{header.get('t')}: {name} missing or of the wrong type")
    return value


# ---------------------------------------------------------------------- one connection


@implementer(IPushProducer)
class PeerConnection(TwistedProtocol):
    """One connection to one peer node: the parser, the hello, and the two send queues."""

    _log = Logger()
    #: The TCP (or in-memory) transport, once connected; typed loosely because mypy cannot
    #: read zope interfaces (the calls are C{ITransport}'s).
    transport: Any

    def __init__(self, transport_: PeerTransport, expect: str | None = None):
        self.peer_transport = transport_
        self.expect = expect  # the node we dialed (None: we accepted)
        self.peer: str | None = None
        self.hello: Hello | None = None
        self._buf = bytearray()  # an unfinished header line
        self._body_header: dict[str, Any] | None = None
        self._body_len = 0
        #: The reads of a body that is still arriving (views of immutable bytes), and their size.
        self._body_parts: list[bytes | memoryview] = []
        self._body_have = 0
        self._closing = False
        self._paused = False
        self._unread = 0  # control bytes written while the socket buffer was full
        self._control_lines: list[bytes] = []
        self._raft: list[list[Any]] = []
        self._raft_bytes = 0
        self._bulk: deque[tuple[bytes, Sequence[bytes], int]] = deque()
        self.bulk_bytes = 0
        self._flush_call: Any = None
        self._handshake_call: Any = None

    # --- connection lifecycle

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)  # small pipelined messages must not wait on Nagle + delayed ACK
        chunk = self.peer_transport.limits.socket_chunk_bytes
        for name in ("bufferSize", "SEND_LIMIT"):  # a TCP connection's (instance attributes shadow the class's)
            if hasattr(self.transport, name):
                setattr(self.transport, name, chunk)
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self, True)
        pt = self.peer_transport
        self._handshake_call = pt.clock.callLater(pt.limits.handshake_timeout, self._handshake_timeout)
        if self.expect is not None:
            self.transport.write(_header_line(pt.hello_header()))

    def _handshake_timeout(self) -> None:
        self._handshake_call = None
        if self.peer is None:
            self._refuse("handshake_timeouts", "no valid hello within {timeout}s", timeout=self.peer_transport.limits.handshake_timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self._closing = True
        for call in (self._flush_call, self._handshake_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._handshake_call = None
        self._bulk.clear()
        self.bulk_bytes = 0
        if self.peer is not None:
            self.peer_transport._connection_lost(self.peer, self)

    # --- IPushProducer: Twisted pauses us when its write buffer is full

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._unread = 0
        self._schedule_flush()

    def stopProducing(self) -> None:
        self._paused = True

    # --- receiving

    def dataReceived(self, data: bytes) -> None:
        """Parse what arrived. Bodies are views of the reads that carry them, copied once when
        a frame is decoded (a 500 KiB batch cost 0.5 ms of copies into and out of one growing
        buffer before); a body spread over several reads is joined once."""
        if self._closing:
            return
        if type(data) is not bytes:
            data = bytes(data)
        pos = 0
        try:
            if self._body_header is not None:  # the rest of a body that is arriving in pieces
                need = self._body_len - self._body_have
                if len(data) < need:
                    self._body_parts.append(data)
                    self._body_have += len(data)
                    return
                parts, self._body_parts, self._body_have = self._body_parts, [], 0
                parts.append(memoryview(data)[:need])
                pos = need
                header, self._body_header = self._body_header, None
                self._dispatch(header, b"".join(parts))
            if self._buf and not self._closing:  # the rest of a header line
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self._buf += memoryview(data)[pos:]
                    self._check_partial_line(len(self._buf))
                    return
                line = bytes(self._buf) + data[pos:nl]
                self._buf.clear()
                pos = nl + 1
                self._header_line(line)
            while not self._closing and pos < len(data):
                if self._body_header is not None:
                    if len(data) - pos < self._body_len:
                        self._body_parts.append(memoryview(data)[pos:])  # immutable bytes: a view is safe
                        self._body_have = len(data) - pos
                        return
                    body = memoryview(data)[pos : pos + self._body_len]
                    pos += self._body_len
                    header, self._body_header = self._body_header, None
                    self._dispatch(header, body)
                    continue
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self._buf += memoryview(data)[pos:]
                    self._check_partial_line(len(self._buf))
                    return
                line = data[pos:nl]
                pos = nl + 1
                self._header_line(line)
        except BadPeerMessage as e:
            self._refuse("bad_messages", "bad peer message: {error}", error=str(e))

    def _check_partial_line(self, size: int) -> None:
        limit = self.peer_transport.limits.max_header_bytes
        if size > limit:
            raise BadPeerMessage(f"header line over {limit} bytes")

    def _header_line(self, line: bytes) -> None:
        """A whole header line: dispatch it, or wait for the body it announces."""
        limits = self.peer_transport.limits
        if len(line) > limits.max_header_bytes:
            raise BadPeerMessage(f"header line over {limits.max_header_bytes} bytes")
        header = self._parse_header(line)
        length = header.get("len", 0)
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise BadPeerMessage("len must be a non-negative integer")
        if length > limits.max_body_bytes:
            raise BadPeerMessage(f"body of {length} bytes over {limits.max_body_bytes}")
        if length:
            self._body_header, self._body_len = header, length
        else:
            self._dispatch(header, b"")

    def _parse_header(self, line: bytes) -> dict[str, Any]:
        try:
            header = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise BadPeerMessage(f"not JSON: {e}") from None
        if not isinstance(header, dict) or header.get("t") not in _MESSAGE_TYPES:
            raise BadPeerMessage(f"unknown message {str(header)[:80]!r}")
        return header

    def _dispatch(self, header: dict[str, Any], body: bytes | memoryview) -> None:
        kind = header["t"]
        pt = self.peer_transport
        if self.peer is None:
            if kind != "hello":
                raise BadPeerMessage(f"{kind} before hello")
            self._receive_hello(header)
            return
        if kind == "hello":
            raise BadPeerMessage("a second hello")
        pt.stats["received"] += 1
        peer = self.peer
        pt._heard(peer)  # any message is a sign of life
        if kind == "hb":
            if "meta" in header:
                pt.peer_metadata[peer] = header["meta"]
        elif kind == "raft":
            items = _need(header, "m", list)
            decoded = []
            for item in items:
                if not (isinstance(item, list) and len(item) == 4):
                    raise BadPeerMessage("raft item must be [group, to, from, message]")
                group, to, frm, body_dict = item
                self._check_route(group, to, frm)
                try:
                    msg = from_dict(body_dict)
                except ValueError as e:
                    raise BadPeerMessage(str(e)) from None
                if isinstance(msg, AppendEntries) and msg.entries:
                    raise BadPeerMessage("entries travel as frames (ae), not in control messages")
                decoded.append((group, to, frm, msg))
            for group, to, frm, msg in decoded:
                pt._deliver(peer, group, to, frm, msg)
        elif kind == "ae":
            group, to, frm = self._check_route(header.get("g"), header.get("to"), header.get("fr"))
            lengths = _need(header, "f", list)
            if not lengths or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths):
                raise BadPeerMessage("ae: f must be a non-empty list of frame lengths")
            if sum(lengths) != len(body):
                raise BadPeerMessage(f"ae: frames of {sum(lengths)} bytes in a body of {len(body)}")
            fields = _need(header, "m", dict)
            try:
                msg = from_dict({**fields, "type": AppendEntries.kind, "entries": []})
            except ValueError as e:
                raise BadPeerMessage(str(e)) from None
            assert isinstance(msg, AppendEntries)
            entries = []
            pos = 0
            expected = msg.prev_index + 1
            for n in lengths:
                try:
                    entry = pt.codec.decode(body if n == len(body) else body[pos : pos + n])  # one frame: no copy
                except ValueError as e:
                    raise BadPeerMessage(f"ae: {e}") from None
                if entry.index != expected:
                    raise BadPeerMessage(f"ae: frame of index {entry.index} where {expected} was due")
                entries.append(entry)
                expected += 1
                pos += n
            pt.stats["frames_received"] += len(entries)
            pt._deliver(peer, group, to, frm, attrs.evolve(msg, entries=tuple(entries)))
        elif kind == "snap":
            group, to, frm = self._check_route(header.get("g"), header.get("to"), header.get("fr"))
            fields = _need(header, "m", dict)
            try:
                msg = from_dict({**fields, "type": InstallSnapshot.kind, "data": ""})
            except ValueError as e:
                raise BadPeerMessage(str(e)) from None
            assert isinstance(msg, InstallSnapshot)  # from_dict builds the type it is given
            pt._deliver(peer, group, to, frm, attrs.evolve(msg, data=bytes(body)))
        elif kind == "lead":
            groups = _need(header, "groups", dict)
            full = header.get("full", False)
            if not isinstance(full, bool):
                raise BadPeerMessage("lead: full must be a boolean")
            for value in groups.values():
                if value is not None and not (isinstance(value, list) and len(value) == 2
                                              and isinstance(value[0], int) and isinstance(value[1], list)):
                    raise BadPeerMessage("lead: each group is [term, [member ids]] or null")
            pt._call_host("leadership", peer, full, groups)
        elif kind == "fwd":
            request_id = _need(header, "id", int)
            pt._forwarded(self, peer, request_id, header.get("req"))
        elif kind == "fwd_r":
            request_id = _need(header, "id", int)
            pt._forward_result(peer, request_id, header.get("res"))

    def _check_route(self, group: Any, to: Any, frm: Any) -> tuple[str, str, str]:
        """The route of a group message, checked: (group, to, from), all strings."""
        if not (isinstance(group, str) and isinstance(to, str) and isinstance(frm, str)):
            raise BadPeerMessage("group, to and from must be strings")
        if node_of(frm) != self.peer:
            raise BadPeerMessage(f"message from member {frm!r} on the connection of node {self.peer}")
        return group, to, frm

    def _receive_hello(self, header: dict[str, Any]) -> None:
        pt = self.peer_transport
        version = header.get("v")
        node = header.get("node")
        inc = header.get("inc")
        cluster = header.get("cluster")
        addr = header.get("addr")
        fsyncs = header.get("fsync")
        if version != PROTOCOL_VERSION:
            self._refuse("refused_hellos", "peer speaks protocol version {version}, we speak {ours}",
                         version=version, ours=PROTOCOL_VERSION)
            return
        if not isinstance(node, str) or node == pt.node_id or node not in pt.peers or \
                (self.expect is not None and node != self.expect):
            self._refuse("refused_hellos", "hello from unknown node {node!r}", node=node)
            return
        if not (inc is None or isinstance(inc, str)) or not (cluster is None or isinstance(cluster, str)) \
                or not (addr is None or isinstance(addr, str)) or not (fsyncs is None or isinstance(fsyncs, bool)):
            self._refuse("refused_hellos", "malformed hello from {node!r}", node=node)
            return
        if cluster is not None and pt.cluster_id is not None and cluster != pt.cluster_id:
            self._log.error("node {node} belongs to cluster {theirs}, this node to {ours}: refusing it",
                            node=node, theirs=cluster, ours=pt.cluster_id)
            pt.stats["cluster_mismatches"] += 1
            self._close()
            pt._call_host("cluster_mismatch", node, cluster)
            return
        if self._handshake_call is not None and self._handshake_call.active():
            self._handshake_call.cancel()
        self._handshake_call = None
        if self.expect is None:
            self.transport.write(_header_line(pt.hello_header()))  # the accepting side answers now
        self.peer = node
        self.hello = Hello(node, inc, cluster, version, addr, fsyncs)
        pt._connection_made(node, self)

    def _refuse(self, counter: str, text: str, **fields: Any) -> None:
        pt = self.peer_transport
        pt.stats[counter] += 1
        self._log.warn(text + "; closing the connection with {who}", who=self._who(), **fields)
        self._close()

    def _who(self) -> str:
        """The peer as a log line names it: its node id once known, else its address."""
        if self.peer is not None:
            return f"node {self.peer}"
        address = None
        get_peer = getattr(self.transport, "getPeer", None)
        if get_peer is not None:
            try:
                p = get_peer()
                address = f"{p.host}:{p.port}" if hasattr(p, "host") else str(p)
            except Exception:
                address = None
        if self.expect is not None:
            return f"node {self.expect} (dialed)"
        return f"unidentified peer {address}" if address else "an unidentified peer"

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    # --- sending

    def send_control(self, header: dict[str, Any]) -> None:
        """A node-level control message (heartbeat, announcement, forward): never dropped."""
        self._control_lines.append(_header_line(header))
        self._schedule_flush()

    def send_raft(self, group: str, to: str, frm: str, msg: Message) -> None:
        """A group's control message: coalesced with every other one of this turn."""
        item = [group, to, frm, to_dict(msg)]
        self._raft.append(item)
        self._raft_bytes += 64 + len(group)
        if self._raft_bytes > self.peer_transport.limits.control_line_bytes:
            self._pack_raft()
        self._schedule_flush()

    def send_bulk(self, header: dict[str, Any], parts: Sequence[bytes]) -> bool:
        """A message with a raw body. False (dropped, counted) past the peer's bulk budget."""
        size = sum(len(p) for p in parts)
        pt = self.peer_transport
        if self._bulk and self.bulk_bytes + size > pt.limits.bulk_budget_bytes:
            pt.stats["bulk_dropped"] += 1
            pt.stats["bulk_dropped_bytes"] += size
            return False
        header["len"] = size
        self._bulk.append((_header_line(header), parts, size))
        self.bulk_bytes += size
        self._schedule_flush()
        return True

    def _pack_raft(self) -> None:
        if self._raft:
            self._control_lines.append(_header_line({"t": "raft", "m": self._raft}))
            self._raft, self._raft_bytes = [], 0

    def _schedule_flush(self) -> None:
        if self._flush_call is None and not self._closing:
            self._flush_call = self.peer_transport.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if self._closing or self.transport is None:
            return
        self._pack_raft()
        if self._control_lines:
            lines, self._control_lines = self._control_lines, []
            data = b"".join(lines)
            if self._paused:
                # Control is never dropped, so a peer that reads nothing (stopped, wedged)
                # would grow this buffer without end: past the bound, close the connection.
                self._unread += len(data)
                if self._unread > self.peer_transport.limits.max_unread_bytes:
                    self._refuse("unread_closes", "the peer read nothing while {bytes} bytes of control "
                                 "messages queued", bytes=self._unread)
                    return
            self.transport.write(data)  # control first, whatever the bulk queue holds
        while self._bulk and not self._paused and not self._closing:
            line, parts, size = self._bulk.popleft()
            self.bulk_bytes -= size
            self.transport.writeSequence([line, *parts])


# ---------------------------------------------------------------------- the node's edge


class PeerTransport:
    """One node's peer edge: the connection per peer node, node heartbeats and liveness, the
    forwarding channel, and counters. Group traffic is routed by the node id part of the
    target member id; what a group message means is the host's business."""

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        host: TransportHost,
        clock: Clock,
        incarnation: str | None = None,
        cluster_id: str | None = None,
        codec: FrameCodec | None = None,
        limits: TransportLimits | None = None,
        heartbeat_interval: float = 0.05,
        dead_after: float = 0.5,
        now: Callable[[], float] | None = None,
    ):
        self.node_id = node_id
        self.peers = frozenset(peers) - {node_id}
        self.host = host
        self.clock = clock
        self.incarnation = incarnation
        self.cluster_id = cluster_id
        #: This node's client address, sent in the hello if set (the node wiring sets it).
        self.client_address: str | None = None
        #: Whether this node fsyncs before acknowledging, sent in the hello if set (the node wiring).
        self.fsyncs: bool | None = None
        self.codec: FrameCodec = codec or StoredFrameCodec()
        self.limits = limits or TransportLimits()
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.now = now or clock.seconds  # the host's Raft time: silence is judged in it
        self.connections: dict[str, PeerConnection] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self._last_heard: dict[str, float] = {}
        self._silent: set[str] = set()
        #: What this node's node heartbeats say of its metadata, if set (the cluster node sets
        #: it: its applied metadata index when that is current, else None), and what each
        #: connected peer's last heartbeat said (node -> value; gone with the connection).
        self.beat_metadata: Callable[[], Any] | None = None
        self.peer_metadata: dict[str, Any] = {}
        self._beat_due = 0.0
        self._next_forward = 0
        self._forwards: dict[int, tuple[str, Deferred[Any]]] = {}

    def hello_header(self) -> dict[str, Any]:
        header = {"t": "hello", "v": PROTOCOL_VERSION, "cluster": self.cluster_id, "node": self.node_id,
                  "inc": self.incarnation}
        if self.client_address:
            header["addr"] = self.client_address
        if self.fsyncs is not None:
            header["fsync"] = self.fsyncs
        return header

    def factory(self, expect: str | None = None) -> Factory[PeerConnection]:
        """For the peer listener (expect None) or for dialing `expect`. Not noisy: a dialer's
        factory is started and stopped at every reconnect attempt, and its two info lines per
        attempt (every 50 ms to 2 s while a peer is down) drowned the node's own log."""
        factory = Factory.forProtocol(lambda: PeerConnection(self, expect))
        factory.noisy = False
        return factory

    # --- sending

    def send(self, group: str, to: str, frm: str, msg: Message) -> bool:
        """Send a group message towards the node of member `to`. False when it was not sent
        (no connection, or past the bulk budget): Raft treats that as a lost message."""
        conn = self.connections.get(node_of(to))
        if conn is None:
            self.stats["unsent_no_connection"] += 1
            return False
        if isinstance(msg, AppendEntries) and msg.entries:
            parts: list[bytes] = []
            lengths = []
            for e in msg.entries:
                frame = self.codec.encode(e)
                parts.extend(frame)
                lengths.append(sum(len(p) for p in frame))
            fields = to_dict(attrs.evolve(msg, entries=()))
            del fields["type"], fields["entries"]
            self.stats["frames_sent"] += len(lengths)
            return conn.send_bulk({"t": "ae", "g": group, "to": to, "fr": frm, "m": fields, "f": lengths}, parts)
        if isinstance(msg, InstallSnapshot):
            fields = to_dict(attrs.evolve(msg, data=b""))
            del fields["type"], fields["data"]
            return conn.send_bulk({"t": "snap", "g": group, "to": to, "fr": frm, "m": fields}, [msg.data])
        conn.send_raft(group, to, frm, msg)
        return True

    def flush(self) -> None:
        """Write what every connection has queued now, instead of at its own next turn (the
        host calls this right after sending a turn's entries, which would otherwise wait one
        more reactor turn)."""
        for conn in list(self.connections.values()):
            call = conn._flush_call
            if call is not None and call.active():
                call.cancel()
                conn._flush()

    def announce(self, groups: dict[str, Any], full: bool = False, to: str | None = None) -> None:
        """Leadership announcements: `groups` maps group -> [term, isr] (led) or None (no longer)."""
        targets = [self.connections[to]] if to is not None and to in self.connections else (
            [] if to is not None else list(self.connections.values()))
        for conn in targets:
            conn.send_control({"t": "lead", "full": full, "groups": groups})

    def forward(self, node: str, request: Any, timeout: float = 5.0) -> Deferred[Any]:
        """Send `request` (JSON-able) to `node`; the Deferred fires with its answer, or fails
        with ConnectionError if the connection is down or goes down first, or on timeout."""
        conn = self.connections.get(node)
        if conn is None:
            return _failed(ConnectionError(f"no connection to node {node}"))
        self._next_forward += 1
        request_id = self._next_forward
        d: Deferred[Any] = Deferred()
        self._forwards[request_id] = (node, d)
        call = self.clock.callLater(timeout, self._forward_timeout, request_id)

        def stop_timer(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        d.addBoth(stop_timer)
        conn.send_control({"t": "fwd", "id": request_id, "req": request})
        return d

    # --- liveness

    def tick(self, now: float) -> list[str]:
        """Send node heartbeats when due; return the peers that just went silent (no message
        for `dead_after` seconds while connected)."""
        if now >= self._beat_due - self.heartbeat_interval / 4:  # ticks need not land on the beat
            self._beat_due = max(self._beat_due + self.heartbeat_interval, now)
            beat: dict[str, Any] = {"t": "hb"}
            if self.beat_metadata is not None:
                beat["meta"] = self.beat_metadata()
            for conn in self.connections.values():
                conn.send_control(beat)
        lost = []
        for node, heard in self._last_heard.items():
            if node not in self._silent and now - heard > self.dead_after:
                self._silent.add(node)
                lost.append(node)
        return lost

    def is_alive(self, node: str) -> bool:
        return node in self.connections and node not in self._silent

    def close(self) -> None:
        for conn in list(self.connections.values()):
            conn._close()

    # --- from connections

    def _heard(self, node: str) -> None:
        self._last_heard[node] = self.now()
        if node in self._silent:
            self._silent.discard(node)
            self._log.info("peer node {node} heard from again", node=node)
            self._call_host("peer_back", node)

    def _connection_made(self, node: str, conn: PeerConnection) -> None:
        old = self.connections.get(node)
        self.connections[node] = conn
        self.stats["connections"] += 1
        if old is not None and old is not conn:
            old.peer = None  # its loss is not this peer's loss any more
            old._close()
        self._heard(node)
        self._log.info("peer node {node} connected (incarnation {inc})", node=node,
                       inc=conn.hello.incarnation if conn.hello else None)
        assert conn.hello is not None
        self._call_host("peer_connected", node, conn.hello)

    def _connection_lost(self, node: str, conn: PeerConnection) -> None:
        if self.connections.get(node) is not conn:
            return
        del self.connections[node]
        self._last_heard.pop(node, None)
        self.peer_metadata.pop(node, None)
        self._silent.discard(node)
        for request_id, (target, d) in list(self._forwards.items()):
            if target == node:
                del self._forwards[request_id]
                d.errback(ConnectionError(f"connection to node {node} lost"))
        self._log.info("peer node {node} disconnected", node=node)
        self._call_host("peer_lost", node)

    def _deliver(self, node: str, group: str, to: str, frm: str, msg: Message) -> None:
        try:
            self.host.deliver(node, group, to, frm, msg)
        except ValueError as e:
            # The message was well-formed but its content does not fit (a frame that does not
            # follow the log, say): the peer is not to be trusted.
            raise BadPeerMessage(f"group {group}: {e}") from None
        except Exception:
            # Not for a disk fault: a failed log write or sync under this message (a follower's
            # append, truncation, snapshot install) told the fail-stop handler before it was
            # raised (streamlog.storage.sync_failure), so a running node never gets here with one.
            self._log.failure("delivering a message of group {group} from {node} failed", group=group, node=node)

    def _call_host(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.host, name)(*args)
        except Exception:
            self._log.failure("host {name} failed", name=name)
            return None

    def _forwarded(self, conn: PeerConnection, node: str, request_id: int, request: Any) -> None:
        from twisted.internet.defer import maybeDeferred

        d = maybeDeferred(self.host.forwarded, node, request)

        def answer(result: Any) -> None:
            if not conn._closing:
                conn.send_control({"t": "fwd_r", "id": request_id, "res": result})

        def failed(failure: Any) -> None:
            self._log.failure("forwarded request from {node} failed", failure, node=node)
            answer({"error": {"code": "INTERNAL", "message": "forwarded request failed"}})

        d.addCallbacks(answer, failed)

    def _forward_result(self, node: str, request_id: int, result: Any) -> None:
        pending = self._forwards.get(request_id)
        if pending is None or pending[0] != node:
            return  # late (timed out) or not ours: ignore
        del self._forwards[request_id]
        pending[1].callback(result)

    def _forward_timeout(self, request_id: int) -> None:
        pending = self._forwards.pop(request_id, None)
        if pending is not None:
            pending[1].errback(TimeoutError(f"no answer from node {pending[0]}"))


def _failed(error: Exception) -> Deferred[Any]:
    from twisted.internet.defer import fail

    return fail(error)


__all__ = [
    "BadPeerMessage",
    "FrameCodec",
    "Hello",
    "PeerConnection",
    "PeerTransport",
    "StoredFrameCodec",
    "TransportHost",
    "TransportLimits",
    "node_of",
    "PROTOCOL_VERSION",
]

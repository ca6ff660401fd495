"""The Twisted driver: runs many Raft groups over real timers and one connection per node pair.

`RaftHost` is one node's edge. It owns the groups that node is a member of (one `RaftNode`
each), one `LoopingCall` that ticks them all, and at most one `PeerProtocol` per peer node.
Each group's effects go through their own FIFO (`_GroupRunner`), honouring the core's contract:
`PersistHardState` and `SyncLog` are barriers whose Deferred must fire before any later effect
of that group (a `Send`, a `Commit`) is released. Barriers of different groups do not wait for
each other.

Framing is JSON lines: after a hello line ``{"node": "<id>"}`` each line is
``{"group": "<group id>", "from": "<node id>", "msg": {...}}`` (see `messages.to_dict`). Lines
produced for one peer in the same reactor turn are written together, so the heartbeats of many
groups share one write (and, with TCP_NODELAY, usually one segment).

Storage is injected per group as a `GroupStorage`: saving term/vote and syncing the log may
return Deferreds (fsync in a thread pool, batched as a group commit); the driver waits on them.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
import orjson
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from streamlog.raft.core import (
    LEADER,
    ChangeRefused,
    Commit,
    HardState,
    NotLeader,
    PersistHardState,
    RaftConfig,
    RaftNode,
    RoleChange,
    Send,
    SnapshotInstalled,
    SyncLog,
)
from streamlog.raft.log import RaftLog
from streamlog.raft.messages import InstallSnapshot, Message, from_dict, to_dict

MAX_LINE = 8 * 1024 * 1024  # keep RaftConfig.max_batch_bytes well below this (base64 grows data by 4/3)


class GroupStorage(Protocol):
    """Durability for one group. Either method may return a Deferred (fsync in a thread)."""

    log: RaftLog

    def load_hard_state(self) -> HardState: ...

    def save_hard_state(self, state: HardState) -> Deferred | None: ...

    def sync_log(self) -> Deferred | None: ...


class MemoryGroupStorage:
    """In-memory storage for tests and single-process experiments: nothing is durable."""

    def __init__(self, log: RaftLog):
        self.log = log
        self.hard_state = HardState()

    def load_hard_state(self) -> HardState:
        return self.hard_state

    def save_hard_state(self, state: HardState) -> None:
        self.hard_state = state

    def sync_log(self) -> None:
        pass


class GroupCallbacks:
    """What the application hears from a group. Override what you need."""

    def committed(self, group: str, upto: int) -> None:
        """Entries up to `upto` are committed: apply them, answer their producers."""

    def role_changed(self, group: str, role: str, term: int, leader: str | None) -> None:
        """Leadership moved: update metadata, fail or redirect pending requests."""

    def snapshot_installed(self, group: str, index: int, term: int, data: bytes) -> None:
        """The group's log now starts after `index`: restore the state machine there."""

    def snapshot_data(self, group: str, index: int) -> bytes:
        """The state machine as of `index` (the leader's log start - 1), for a follower that
        needs entries retention removed. Partition logs need none: their removed records are
        gone for every reader alike."""
        return b""


class NotLeaderError(Exception):
    """The write was refused, or its outcome is unknown because leadership moved: retry at
    `leader` (a hint, may be None). An idempotent producer makes the retry safe."""

    def __init__(self, group: str, leader: str | None, message: str = "not the leader"):
        super().__init__(f"group {group}: {message} (leader hint: {leader})")
        self.group = group
        self.leader = leader


class _GroupRunner:
    """One group's node and its effect FIFO."""

    _log = Logger()

    def __init__(self, host: RaftHost, group: str, node: RaftNode, storage: GroupStorage):
        self.host = host
        self.group = group
        self.node = node
        self.storage = storage
        self.queue: deque = deque()
        self.blocked = False
        self.waiters: dict[int, tuple[int, Deferred]] = {}  # index -> (term, Deferred)

    def feed(self, effects: Iterable[Any]) -> None:
        self.queue.extend(effects)
        self.drain()

    def drain(self) -> None:
        while self.queue and not self.blocked:
            eff = self.queue.popleft()
            if isinstance(eff, Send):
                self.host._send(eff.to, self.group, eff.msg)
            elif isinstance(eff, (PersistHardState, SyncLog)):
                if isinstance(eff, PersistHardState):
                    d = maybeDeferred(self.storage.save_hard_state, HardState(eff.term, eff.voted_for))
                else:
                    d = maybeDeferred(self.storage.sync_log)
                if d.called and not isinstance(d.result, Failure):
                    continue  # already durable (synchronous storage)
                self.blocked = True
                d.addCallbacks(self._unblock, self._fsync_failed)
            elif isinstance(eff, Commit):
                self._call(self.host.callbacks.committed, self.group, eff.upto)
                self._resolve(eff.upto)
            elif isinstance(eff, RoleChange):
                self._log.info("group {group}: {role} in term {term}, leader {leader}",
                               group=self.group, role=eff.role, term=eff.term, leader=eff.leader)
                self._call(self.host.callbacks.role_changed, self.group, eff.role, eff.term, eff.leader)
                if eff.role != LEADER:
                    self._fail_waiters(eff.leader)
            elif isinstance(eff, SnapshotInstalled):
                self._call(self.host.callbacks.snapshot_installed, self.group, eff.index, eff.term, eff.data)

    def _resolve(self, upto: int) -> None:
        for index in sorted(i for i in self.waiters if i <= upto):
            term, d = self.waiters.pop(index)
            if self.node.log.term_at(index) == term or index < self.node.log.start_index:
                d.callback(index)
            else:
                d.errback(NotLeaderError(self.group, self.node.leader_id, "write lost to a new leader"))

    def _fail_waiters(self, leader: str | None) -> None:
        waiters, self.waiters = self.waiters, {}
        for _, d in waiters.values():
            d.errback(NotLeaderError(self.group, leader, "leadership lost; outcome unknown"))

    def _unblock(self, _: Any) -> None:
        self.blocked = False
        self.drain()

    def _fsync_failed(self, failure: Any) -> None:
        # Nothing after a failed fsync may be released: the group stays blocked. A disk that
        # cannot sync cannot take part in consensus; the operator must intervene.
        self.blocked = True
        self.queue.clear()
        self._log.failure("group {group}: fsync failed; the group stops here", failure, group=self.group)

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._log.failure("group {group}: callback {fn} failed", group=self.group, fn=fn)


class PeerProtocol(LineReceiver):
    """One connection to one peer node, carrying every group's messages."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    _log = Logger()

    def __init__(self, host: RaftHost):
        self.host = host
        self.peer: str | None = None
        self._pending: list[bytes] = []
        self._flush_call: Any = None
        self._rx = b""

    def connectionMade(self) -> None:
        # Small pipelined lines must not wait on Nagle plus delayed ACK (ARCHITECTURE.md).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.transport.write(orjson.dumps({"node": self.host.node_id}) + b"\n")

    def dataReceived(self, data: bytes) -> None:
        """Split the whole read at once. `LineReceiver.dataReceived` re-splits its buffer once
        per line, which is quadratic in the number of lines per read, and this connection
        carries hundreds of small lines per write (one per group) by design."""
        self._rx = self._rx + data if self._rx else data
        if b"\n" not in data:
            if len(self._rx) > self.MAX_LENGTH:
                self.lineLengthExceeded(self._rx)
            return
        *lines, self._rx = self._rx.split(b"\n")
        for line in lines:
            if self.transport.disconnecting:
                return
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
                return
            self.lineReceived(line)
        if len(self._rx) > self.MAX_LENGTH:
            self.lineLengthExceeded(self._rx)

    def lineReceived(self, line: bytes) -> None:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            self._log.warn("bad line from {peer}: {error}", peer=self.peer, error=str(e))
            return
        if self.peer is None:
            node = obj.get("node") if isinstance(obj, dict) else None
            if not isinstance(node, str) or node not in self.host.peers:
                self._log.warn("unknown peer hello {obj!r}; closing", obj=obj)
                self.transport.loseConnection()
                return
            self.peer = node
            self.host._peer_connected(node, self)
            return
        try:
            if not isinstance(obj, dict) or obj.get("from") != self.peer:
                raise ValueError("envelope must be {group, from, msg} from the connected peer")
            group = obj.get("group")
            if not isinstance(group, str):
                raise ValueError("group must be a string")
            msg = from_dict(obj.get("msg"))
        except ValueError as e:
            self._log.warn("bad message from {peer}: {error}", peer=self.peer, error=str(e))
            return
        self.host._receive(self.peer, group, msg)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._log.warn("line over {limit} bytes from {peer}; closing", limit=self.MAX_LENGTH, peer=self.peer)
        self.transport.loseConnection()

    def send_line(self, line: bytes) -> None:
        """Queue a line; all lines queued in this reactor turn go out in one write."""
        self._pending.append(line)
        if self._flush_call is None:
            self._flush_call = self.host.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        lines, self._pending = self._pending, []
        if lines and self.transport is not None:
            self.transport.write(b"".join(lines))

    def connectionLost(self, reason: Any = None) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self.peer is not None:
            self.host._peer_lost(self.peer, self)


class RaftHost:
    """One node: its Raft groups, their timers, and its connections to peer nodes."""

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        config: RaftConfig,
        callbacks: GroupCallbacks | None = None,
        clock: IReactorTime | None = None,
        tick_interval: float | None = None,
        rng: random.Random | None = None,
    ):
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        self.node_id = node_id
        self.peers = frozenset(peers) - {node_id}
        self.config = config
        self.callbacks = callbacks or GroupCallbacks()
        self.clock = clock
        self.rng = rng or random.Random()
        self.groups: dict[str, _GroupRunner] = {}
        self.connections: dict[str, PeerProtocol] = {}
        self._dialers: dict[str, ClientService] = {}
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._tick_interval = tick_interval or config.heartbeat_interval / 2

    # --- lifecycle

    def start(self) -> None:
        self._ticker.start(self._tick_interval, now=False)

    def stop(self) -> None:
        if self._ticker.running:
            self._ticker.stop()
        for service in self._dialers.values():
            service.stopService()
        self._dialers.clear()
        for proto in list(self.connections.values()):
            proto.transport.loseConnection()

    def dial(self, peer: str, endpoint: IStreamClientEndpoint) -> bool:
        """Keep a connection to `peer` open (reconnecting with backoff) if this node is the
        one that dials: the node with the smaller id dials, the other only accepts, so each
        pair has exactly one connection. Returns whether a dialer was started."""
        if peer not in self.peers or peer <= self.node_id or peer in self._dialers:
            return False
        service = ClientService(endpoint, self.peer_factory(), retryPolicy=backoffPolicy(0.05, 2.0),
                                clock=self.clock)
        self._dialers[peer] = service
        service.startService()
        return True

    def peer_factory(self) -> Factory:
        """A factory for both listening and connecting: the hello line names the peer."""
        return Factory.forProtocol(lambda: PeerProtocol(self))

    # --- groups

    def add_group(self, group: str, members: Iterable[str], storage: GroupStorage) -> RaftNode:
        """Run this node's member of a group, recovering from `storage`. `members` is the
        group's initial voter set and must include this node; pass no members to join an
        existing group, whose leader then adds this node with `change_membership`."""
        members = set(members)
        if (members and self.node_id not in members) or not (members - {self.node_id}) <= self.peers:
            raise ValueError(f"group {group}: members {sorted(members)} do not fit node {self.node_id}")
        rng = random.Random(self.rng.random())
        node = RaftNode(self.node_id, members, storage.log, storage.load_hard_state(), self.config, rng,
                        self.clock.seconds())
        self.groups[group] = _GroupRunner(self, group, node, storage)
        return node

    def remove_group(self, group: str) -> None:
        self.groups.pop(group, None)

    def propose(self, group: str, data: bytes) -> int | NotLeader:
        """Propose an entry; the index commits when `callbacks.committed` passes it."""
        runner = self.groups[group]
        result, effects = runner.node.propose(data, self.clock.seconds())
        runner.feed(effects)
        return result

    def submit(self, group: str, data: bytes) -> Deferred:
        """Propose an entry and wait: the Deferred fires with its index once it is committed
        (on a majority's disks), or fails with NotLeaderError if this node is not the leader
        or stops being the leader before then (the entry may still commit: retry
        idempotently)."""
        runner = self.groups[group]
        result, effects = runner.node.propose(data, self.clock.seconds())
        if isinstance(result, NotLeader):
            runner.feed(effects)
            return fail(NotLeaderError(group, result.leader))
        d: Deferred = Deferred()
        runner.waiters[result] = (runner.node.term, d)
        runner.feed(effects)
        return d

    def change_membership(
        self, group: str, add: str | None = None, remove: str | None = None
    ) -> int | NotLeader | ChangeRefused:
        """Add or remove one voter; done when the returned index is committed."""
        runner = self.groups[group]
        result, effects = runner.node.change_membership(self.clock.seconds(), add=add, remove=remove)
        runner.feed(effects)
        return result

    def add_learner(self, group: str, peer: str) -> None:
        """Start catching `peer` up before making it a voter (`RaftNode.add_learner`)."""
        runner = self.groups[group]
        runner.feed(runner.node.add_learner(peer, self.clock.seconds()))

    def transfer_leadership(self, group: str, target: str) -> None:
        runner = self.groups[group]
        runner.feed(runner.node.transfer_leadership(target, self.clock.seconds()))

    # --- internals

    def _tick(self) -> None:
        now = self.clock.seconds()
        for runner in list(self.groups.values()):
            try:
                runner.feed(runner.node.tick(now))
            except Exception:
                self._log.failure("group {group}: tick failed", group=runner.group)

    def _receive(self, peer: str, group: str, msg: Message) -> None:
        runner = self.groups.get(group)
        if runner is None:
            self._log.warn("message for unknown group {group} from {peer}", group=group, peer=peer)
            return
        runner.feed(runner.node.receive(peer, msg, self.clock.seconds()))

    def _send(self, peer: str, group: str, msg: Message) -> None:
        proto = self.connections.get(peer)
        if proto is None:
            return  # not connected: Raft treats it as a lost message and retries
        if isinstance(msg, InstallSnapshot) and not msg.data:
            # The core knows where the log starts; the application knows its state there.
            msg = attrs.evolve(msg, data=self.callbacks.snapshot_data(group, msg.last_index))
        proto.send_line(orjson.dumps({"group": group, "from": self.node_id, "msg": to_dict(msg)}) + b"\n")

    def _peer_connected(self, peer: str, proto: PeerProtocol) -> None:
        old = self.connections.get(peer)
        self.connections[peer] = proto
        if old is not None and old is not proto:
            old.transport.loseConnection()
        self._log.info("peer {peer} connected", peer=peer)

    def _peer_lost(self, peer: str, proto: PeerProtocol) -> None:
        if self.connections.get(peer) is proto:
            del self.connections[peer]

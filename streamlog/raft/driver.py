"""The Twisted driver: runs many Raft groups of one node over the peer transport.

`RaftHost` is one node's edge. It owns the groups that node is a member of (one `RaftNode`
each), one `LoopingCall` that ticks the groups that are awake (a quiet group costs nothing per
tick), and a `PeerTransport` (streamlog.raft.transport) with one connection per peer node.
Each group's effects go through their own FIFO (`_GroupRunner`), honouring the core's contract:
`PersistHardState` and barrier `SyncLog`s hold back every later effect of that group until
their Deferred fires; a leader's own `SyncLog` (not a barrier) starts its fsync and lets the
sends go on, and every `SyncLog` is reported back to the core (`log_synced`) in the order
asked, so the leader counts itself at its durable index. Barriers of different groups do not
wait for each other.

Identities: a member id is ``"<node id>.<incarnation>"`` (or a bare node id, when the host is
built without an incarnation, as in tests). Messages are routed by the node id part; a message
whose target member is not this node's current member is dropped and counted.

Liveness: the transport sends a node heartbeat per peer per heartbeat interval. When a peer's
connection closes (a killed process closes its sockets at once), every group here whose leader
is on that node is told (`leader_node_lost`: campaign soon). When its node heartbeats stop for
an election timeout (SIGSTOP, a partition, or a stall), its quiet groups here are woken, so
their election timers run again. Either way the groups this node leads with a member there
are woken (so check-quorum can judge them).

Storage is injected per group as a `GroupStorage`: saving term/vote and syncing the log may
return Deferreds (fsync in a thread pool, batched as a group commit; the node's
`HardStateStore` shares one fsync among every group saving in a turn); the driver waits on them.
A failed fsync stops the group and calls `on_fatal` (the node wiring stops the process with
exit status 70, as storage does).
"""

from __future__ import annotations

import collections
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from streamlog.dialing import connect_within
from streamlog.raft.core import (
    CANDIDATE,
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
from streamlog.raft.messages import InstallSnapshot, Message
from streamlog.raft.transport import (
    FrameCodec,
    Hello,
    PeerConnection,
    PeerTransport,
    TransportLimits,
    node_of,
)

PeerProtocol = PeerConnection  # the name main's tests and wiring knew


class GroupStorage(Protocol):
    """Durability for one group. Either method may return a Deferred (fsync in a thread).

    It may also have `install_snapshot(m)`: how an InstallSnapshot `m` replaces its log (the
    core's `reset_log`; a partition's log resumes at the record offset `m.data` carries).
    """

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
        """Leadership moved: update metadata, redirect new requests (pending submissions are
        not failed by this: they resolve when their entry commits or is replaced)."""

    def snapshot_installed(self, group: str, index: int, term: int, data: bytes) -> None:
        """The group's log now starts after `index`: restore the state machine there."""

    def snapshot_data(self, group: str, index: int) -> bytes:
        """The state machine as of `index` (the leader's log start - 1), for a follower that
        needs entries retention removed. Partition logs need none: their removed records are
        gone for every reader alike."""
        return b""

    def forwarded(self, node: str, request: Any) -> Any:
        """A node-level request forwarded by peer `node` (RaftHost.forward there): return the
        answer (JSON-able) or a Deferred of it."""
        return {"error": {"code": "NOT_SUPPORTED", "message": "this node takes no forwarded requests"}}

    def cluster_mismatch(self, node: str, theirs: str) -> None:
        """Peer `node` says it belongs to cluster `theirs`: its connection was refused. The node
        wiring decides (a node whose data dir has a cluster id exits with one clear line)."""


class NotLeaderError(Exception):
    """The write was refused, or its outcome is unknown because leadership moved: retry at
    `leader` (a hint, may be None). An idempotent producer makes the retry safe."""

    def __init__(self, group: str, leader: str | None, message: str = "not the leader",
                 outcome_unknown: bool = False):
        super().__init__(f"group {group}: {message} (leader hint: {leader})")
        self.group = group
        self.leader = leader
        #: The entry was appended here and may still be committed (by the next leader): not a
        #: refusal.  False for a proposal refused, or an entry another leader's replaced.
        self.outcome_unknown = outcome_unknown


@attrs.define
class _Waiter:
    term: int
    deferred: Deferred
    deadline: float


_DEFAULT = object()


def _call_storage(fn: Callable[..., Any], *args: Any) -> Deferred | None:
    """Call a storage method: None when it completed synchronously, else a Deferred of its
    completion (a synchronous exception becomes a failed Deferred). Cheaper than maybeDeferred
    on the common in-memory and already-synced paths."""
    try:
        result = fn(*args)
    except Exception:
        return fail()
    if isinstance(result, Deferred):
        if result.called and not isinstance(result.result, Failure):
            return None
        return result
    return None


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
        self.failed = False
        self.syncs: deque[list[Any]] = deque()  # [upto, done] per SyncLog, in the order asked
        self.waiters: dict[int, _Waiter] = {}
        #: The role and leader this group last reported (RaftHost.role_counts).
        self.reported_role = node.role
        self.known_leader: str | None = None

    def feed(self, effects: Iterable[Any]) -> None:
        self.queue.extend(effects)
        self.drain()
        self.host._awake_check(self)

    def drain(self) -> None:
        while self.queue and not self.blocked:
            eff = self.queue.popleft()
            if isinstance(eff, Send):
                self.host._send(eff.to, self.group, eff.msg)
            elif isinstance(eff, PersistHardState):
                d = _call_storage(self.storage.save_hard_state, HardState(eff.term, eff.voted_for))
                if d is None:
                    continue  # already durable (synchronous storage)
                self.blocked = True
                d.addCallbacks(self._unblock, self._fsync_failed)
            elif isinstance(eff, SyncLog):
                entry: list[Any] = [eff.upto, False]
                self.syncs.append(entry)
                d = _call_storage(self.storage.sync_log)
                if d is None:
                    entry[1] = True
                    self._report_syncs()
                    continue
                if eff.barrier:
                    self.blocked = True
                d.addCallbacks(self._synced, self._fsync_failed, callbackArgs=(entry, eff.barrier))
            elif isinstance(eff, Commit):
                self._call(self.host.callbacks.committed, self.group, eff.upto)
                self._resolve(eff.upto)
            elif isinstance(eff, RoleChange):
                # Not logged here: a thousand groups failing over would write (and format) a
                # thousand lines; the application's role_changed decides what is worth a line.
                led = self.host._led.get(self.group)
                self._call(self.host.callbacks.role_changed, self.group, eff.role, eff.term, eff.leader)
                self.host._role_changed(self, eff)
                if led is not None and eff.role != LEADER and eff.leader is None and eff.term == led[0]:
                    # Stepped down in its own term with no leader known: check-quorum found no
                    # majority in touch. Cut off, this node cannot learn its writes' outcome; its
                    # writers hear so now, not at proposal_timeout (seen: 3 s of silence to a
                    # producer, which then retries elsewhere; the entry may still commit there).
                    self.fail_all("stepped down: no majority in touch (check-quorum); outcome unknown")
                self.check_waiters(self.host.clock.seconds())
            elif isinstance(eff, SnapshotInstalled):
                # The log restarts after the leader's snapshot: an entry of ours at or below its
                # index may have been replaced (its Commit must not pass it as committed below the
                # log's start), and the application never applies it; the next leader decides.
                self.fail_all("log replaced by the leader's snapshot; outcome unknown", upto=eff.index)
                self._call(self.host.callbacks.snapshot_installed, self.group, eff.index, eff.term, eff.data)

    def _report_syncs(self) -> None:
        """Tell the core of completed fsyncs, oldest first (its effects join the FIFO)."""
        while self.syncs and self.syncs[0][1] and not self.failed:
            upto = self.syncs.popleft()[0]
            self.queue.extend(self.node.log_synced(upto, self.host.now()))

    def _synced(self, _: Any, entry: list[Any], barrier: bool) -> None:
        entry[1] = True
        if barrier:
            self.blocked = False
        self._report_syncs()
        self.drain()
        self.host._awake_check(self)

    # --- waiters: resolved by commit with their term, failed when replaced or late

    def add_waiter(self, index: int, term: int) -> Deferred:
        d: Deferred = Deferred()
        self.waiters[index] = _Waiter(term, d, self.host.clock.seconds() + self.host.proposal_timeout)
        self.host._waiting.add(self.group)
        return d

    def _resolve(self, upto: int) -> None:
        log = self.node.log
        for index in sorted(i for i in self.waiters if i <= upto):
            w = self.waiters.pop(index)
            # Below the log's start: compacted here once committed (the application's committed()
            # runs first); a snapshot installed over it failed its waiter at SnapshotInstalled.
            if index < log.start_index or log.term_at(index) == w.term:
                w.deferred.callback(index)
            else:
                w.deferred.errback(NotLeaderError(self.group, self._hint(), "write lost to a new leader"))

    def check_waiters(self, now: float) -> None:
        """Fail the waiters whose entry was replaced (truncated, or another term's entry now
        at its index) or whose deadline passed: the outcome is then unknown to the caller."""
        if not self.waiters:
            self.host._waiting.discard(self.group)
            return
        log = self.node.log
        for index in sorted(self.waiters):
            w = self.waiters[index]
            replaced = index >= log.start_index and log.term_at(index) != w.term
            if replaced or now >= w.deadline:
                del self.waiters[index]
                why = "write lost to a new leader" if replaced else "not committed in time; outcome unknown"
                w.deferred.errback(NotLeaderError(self.group, self._hint(), why, outcome_unknown=not replaced))
        if not self.waiters:
            self.host._waiting.discard(self.group)

    def fail_all(self, why: str, upto: int | None = None) -> None:
        """Fail the waiters (those at or below `upto` if given) with their outcome unknown."""
        failed = [i for i in self.waiters if upto is None or i <= upto]
        for index in failed:
            w = self.waiters.pop(index)
            w.deferred.errback(NotLeaderError(self.group, self._hint(), why, outcome_unknown=True))

    def _hint(self) -> str | None:
        leader = self.node.leader_id
        return None if leader == self.node.id else leader

    def _unblock(self, _: Any) -> None:
        self.blocked = False
        self.drain()
        self.host._awake_check(self)

    def _fsync_failed(self, failure: Any) -> None:
        # Nothing after a failed fsync may be released: the group stays blocked. A disk that
        # cannot sync cannot take part in consensus (fail-stop: the node wiring exits).
        self.blocked = True
        self.failed = True
        self.queue.clear()
        if self.host.groups.get(self.group) is not self:
            # The group was removed meanwhile (its topic deleted): the sync it waited on was
            # called off with its log, which is no disk fault.
            return
        self._log.failure("group {group}: fsync failed; the group stops here", failure, group=self.group)
        if self.host.on_fatal is not None:
            self.host.on_fatal(failure)

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._log.failure("group {group}: callback {fn} failed", group=self.group, fn=fn)


class RaftHost:
    """One node: its Raft groups, their timers, and its peer transport.

    `peers` are node ids (this node's may be included). With `incarnation` the node's member
    id in every group is ``"<node_id>.<incarnation>"``; without, it is `node_id`. The hello
    carries `cluster_id` (None: not yet known, the node wiring may set `cluster_id` later).
    `on_fatal(failure)` is called when an fsync fails. `proposal_timeout` bounds how long
    `submit` waits for a commit after leadership moved (default: 6 election timeouts).
    `max_tick_gap` (default two ticks) is the most Raft time a gap between ticks counts for
    (see `now`); None gives wall-clock time, where one `Clock.advance(1.0)` in a test expires
    every timer at once, as a one-second stall of the reactor then would.
    """

    _log = Logger()
    #: The class of every group's Raft node (a test or the cluster simulator may put a
    #: deliberately broken subclass here to prove that its checker catches the bug).
    node_class: type[RaftNode] = RaftNode
    #: What drives each group's node (the cluster simulator's broken variants replace it).
    runner_class: type[_GroupRunner] = _GroupRunner

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        config: RaftConfig,
        callbacks: GroupCallbacks | None = None,
        clock: IReactorTime | None = None,
        tick_interval: float | None = None,
        rng: random.Random | None = None,
        *,
        incarnation: str | None = None,
        cluster_id: str | None = None,
        codec: FrameCodec | None = None,
        limits: TransportLimits | None = None,
        on_fatal: Callable[[Failure], Any] | None = None,
        proposal_timeout: float | None = None,
        max_tick_gap: float | None | object = _DEFAULT,
    ):
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        if config.quiesce is None:
            config = attrs.evolve(config, quiesce=True)  # this host provides node liveness
        self.node_id = node_id
        self.incarnation = incarnation
        self.member_id = f"{node_id}.{incarnation}" if incarnation else node_id
        self.peers = frozenset(peers) - {node_id}
        self.config = config
        self.callbacks = callbacks or GroupCallbacks()
        self.clock = clock
        self.rng = rng or random.Random()
        #: The jitter of the dialers' reconnect backoff (Twisted's default, the global
        #: C{random.random}; the cluster simulator draws it from its seed instead).
        self.dial_jitter: Callable[[], float] = random.random
        self.on_fatal = on_fatal
        self.proposal_timeout = proposal_timeout if proposal_timeout is not None else 6 * config.election_timeout
        self.groups: dict[str, _GroupRunner] = {}
        self._raft_now = self._raft_real = clock.seconds()
        self.transport = PeerTransport(node_id, self.peers, self, clock, incarnation=incarnation,
                                       cluster_id=cluster_id, codec=codec, limits=limits,
                                       heartbeat_interval=config.heartbeat_interval,
                                       dead_after=config.election_timeout, now=self.now)
        self.stats = self.transport.stats
        #: What the groups' role changes add up to (/metrics): C{elections_started} (this node
        #: became a candidate, or leader at once: a group of one), C{elections_won}, and
        #: C{leader_changes} (a group's leader became a node other than the one last known here;
        #: the first one known, after the group was made or this node started, is not a change).
        self.role_counts: collections.Counter[str] = collections.Counter()
        self.remote_leadership: dict[str, dict[str, Any]] = {}  # node -> group -> [term, isr]
        self._awake: set[str] = set()
        #: Per silent peer node, the followers here its silence woke: group -> (term, leader).
        self._silence_woken: dict[str, dict[str, tuple[int, str]]] = {}
        self._waiting: set[str] = set()
        self._led: dict[str, list[Any]] = {}  # groups this node leads -> [term, isr] as announced
        self._lead_delta: dict[str, Any] = {}
        self._lead_call: Any = None
        self._dialers: dict[str, ClientService] = {}
        #: Groups with proposals of this reactor turn not yet sent (see `_replicate_later`).
        self._unsent: set[str] = set()
        self._replicate_call: Any = None
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._tick_interval = tick_interval or config.heartbeat_interval / 2
        # See now(): None means wall-clock time (a stalled reactor expires every timer at once).
        self._max_step = 2 * self._tick_interval if max_tick_gap is _DEFAULT else (
            float("inf") if max_tick_gap is None else float(max_tick_gap))  # type: ignore[arg-type]

    # --- lifecycle

    @property
    def connections(self) -> dict[str, PeerConnection]:
        return self.transport.connections

    @property
    def cluster_id(self) -> str | None:
        return self.transport.cluster_id

    @cluster_id.setter
    def cluster_id(self, value: str | None) -> None:
        self.transport.cluster_id = value

    def start(self) -> None:
        self._ticker.start(self._tick_interval, now=False)

    def stop(self) -> None:
        if self._ticker.running:
            self._ticker.stop()
        for call in (self._lead_call, self._replicate_call):
            if call is not None and call.active():
                call.cancel()
        self._lead_call = self._replicate_call = None
        self._unsent.clear()
        for service in self._dialers.values():
            service.stopService()
        self._dialers.clear()
        self.transport.close()

    def dial(self, peer: str, endpoint: IStreamClientEndpoint) -> bool:
        """Keep a connection to `peer` open (reconnecting with backoff) if this node is the
        one that dials: the node with the smaller id dials, the other only accepts, so each
        pair has exactly one connection. Returns whether a dialer was started.

        An attempt that has no outcome within the transport's `connect_timeout` (a peer whose
        SYNs are dropped) is given up as a refused one is (counted `dial_timeouts`), and the
        next follows the backoff. No message waits for a dial: while there is no connection the
        transport sends nothing to that peer (counted `unsent_no_connection`; Raft resends), and
        the other peers' connections, each dialled on its own, are not held up by it."""
        if peer not in self.peers or peer <= self.node_id or peer in self._dialers:
            return False
        bounded = _PeerEndpoint(endpoint, peer, self._log, self.clock, self.transport.limits.connect_timeout,
                                self.stats)
        service = _PeerDialer(bounded, self.transport.factory(expect=peer),
                              retryPolicy=backoffPolicy(0.05, 2.0, jitter=self.dial_jitter), clock=self.clock)
        self._dialers[peer] = service
        service.startService()
        return True

    def peer_factory(self, expect: str | None = None) -> Factory:
        """A factory for the peer listener (`expect` None: the hello names the peer) or for
        dialing `expect`."""
        return self.transport.factory(expect)

    def forward(self, node: str, request: Any, timeout: float = 5.0) -> Deferred:
        """Send a node-level request (JSON-able) to `node`; fires with its answer
        (`callbacks.forwarded` there)."""
        return self.transport.forward(node, request, timeout)

    # --- groups

    def add_group(self, group: str, members: Iterable[str], storage: GroupStorage) -> RaftNode:
        """Run this node's member of a group, recovering from `storage`. `members` is the
        group's initial voter set (member ids) and must include this node's; pass no members
        to join an existing group, whose leader then adds this node with `change_membership`."""
        members = set(members)
        if group in self.groups:
            raise ValueError(f"group {group} already runs here")
        others = {node_of(m) for m in members if m != self.member_id}
        if (members and self.member_id not in members) or not others <= self.peers:
            raise ValueError(f"group {group}: members {sorted(members)} do not fit node {self.member_id}")
        rng = random.Random(self.rng.random())
        node = self.node_class(self.member_id, members, storage.log, storage.load_hard_state(), self.config, rng,
                               self.now(), reset_log=getattr(storage, "install_snapshot", None))
        runner = self.runner_class(self, group, node, storage)
        self.groups[group] = runner
        self._awake.add(group)
        return node

    def remove_group(self, group: str) -> None:
        runner = self.groups.pop(group, None)
        self._awake.discard(group)
        self._waiting.discard(group)
        if runner is not None:
            runner.fail_all("the group was removed from this node")
            if self._led.pop(group, None) is not None:
                self.transport.announce({group: None})

    def propose(self, group: str, data: bytes) -> int | NotLeader:
        """Propose an entry; the index commits when `callbacks.committed` passes it."""
        runner = self.groups[group]
        result, effects = runner.node.propose(data, self.now(), replicate=False)
        runner.feed(effects)
        self._replicate_later(runner, result)
        return result

    def submit(self, group: str, data: bytes) -> Deferred:
        """Propose an entry and wait: the Deferred fires with its index once it is committed
        (on a majority's disks), or fails with NotLeaderError if this node is not the leader,
        if the entry is replaced by another leader's, or if it is not committed within
        `proposal_timeout` (the entry may still commit then: retry idempotently). A change of
        leader alone fails nothing: a graceful transfer commits the entry in its term."""
        runner = self.groups[group]
        result, effects = runner.node.propose(data, self.now(), replicate=False)
        if isinstance(result, NotLeader):
            runner.feed(effects)
            return fail(NotLeaderError(group, result.leader))
        d = runner.add_waiter(result, runner.node.term)
        runner.feed(effects)
        self._replicate_later(runner, result)
        return d

    def _replicate_later(self, runner: _GroupRunner, result: int | NotLeader) -> None:
        """Send a proposal's entry at the start of the next reactor turn, with every other
        proposal of this turn: N Sends handled in one turn then cost each follower one
        AppendEntries, one append and one answer, not N, and do not fill the leader's window
        of `max_inflight` batches per follower (a ninth proposal waited a round trip). The
        peer transport writes on the next turn anyway, so no send goes out later than before."""
        if isinstance(result, NotLeader) or not self.peers:
            return  # refused, or a node alone (the embedded default): nobody to send to
        self._unsent.add(runner.group)
        if self._replicate_call is None:
            self._replicate_call = self.clock.callLater(0, self._replicate_unsent)

    def _replicate_unsent(self) -> None:
        self._replicate_call = None
        unsent, self._unsent = self._unsent, set()
        now = self.now()
        for group in sorted(unsent):
            runner = self.groups.get(group)
            if runner is None or runner.failed:
                continue
            try:
                runner.feed(runner.node.replicate(now))
            except Exception:
                self._log.failure("group {group}: replication failed", group=group)
        self.transport.flush()  # in this turn: the entries waited one already

    def change_membership(
        self, group: str, add: str | None = None, remove: str | None = None
    ) -> int | NotLeader | ChangeRefused:
        """Add or remove one voter; done when the returned index is committed."""
        runner = self.groups[group]
        result, effects = runner.node.change_membership(self.now(), add=add, remove=remove)
        runner.feed(effects)
        return result

    def add_learner(self, group: str, peer: str) -> None:
        """Start catching `peer` up before making it a voter (`RaftNode.add_learner`)."""
        runner = self.groups[group]
        runner.feed(runner.node.add_learner(peer, self.now()))

    def transfer_leadership(self, group: str, target: str) -> None:
        runner = self.groups[group]
        runner.feed(runner.node.transfer_leadership(target, self.now()))

    def campaign(self, group: str) -> None:
        """Make this node's member of `group` campaign now (`RaftNode.campaign`): a group of
        one is then led at once instead of after an election timeout."""
        runner = self.groups[group]
        runner.feed(runner.node.campaign(self.now()))

    def wake(self, group: str) -> None:
        runner = self.groups[group]
        runner.feed(runner.node.wake(self.now()))

    def led_groups(self) -> frozenset[str]:
        """The groups whose member here is leader (kept from their role changes: no group is
        looked at to answer)."""
        return frozenset(self._led)

    def awake_groups(self) -> frozenset[str]:
        """The groups that are not quiet (ticked every tick)."""
        return frozenset(self._awake)

    # --- internals

    def _awake_check(self, runner: _GroupRunner) -> None:
        if runner.node.quiet:
            self._awake.discard(runner.group)
        elif runner.group in self.groups:
            self._awake.add(runner.group)

    def now(self) -> float:
        """Raft time: the clock, except that a gap between ticks counts as at most two ticks.
        A reactor busy for a second (a burst of a thousand elections, a GC pause) then does not
        find every election timer expired when it gets round to ticking: like etcd's tick
        counting, timeouts stretch when the node is starved instead of firing all at once and
        feeding the overload (seen: 3 x 1,000 groups on a loaded 2-core machine never elected a
        leader with wall-clock timers)."""
        return self._raft_now + min(self.clock.seconds() - self._raft_real, self._max_step)

    def _tick(self) -> None:
        real = self.clock.seconds()
        self._raft_now = now = self.now()
        self._raft_real = real
        ticked = list(self._awake)
        for group in ticked:
            runner = self.groups.get(group)
            if runner is None:
                self._awake.discard(group)
                continue
            try:
                runner.feed(runner.node.tick(now))
            except Exception:
                self._log.failure("group {group}: tick failed", group=group)
        for group in list(self._waiting):
            runner = self.groups.get(group)
            if runner is not None:
                runner.check_waiters(real)  # a client's bound: wall-clock time
        for node in self.transport.tick(now):
            self._log.warn("peer node {node} silent for {t}s", node=node, t=self.config.election_timeout)
            self._node_silent(node)
            self._announce_isr_with(node)
        self._announce_isr(ticked)

    def _announce_isr(self, groups: Iterable[str]) -> None:
        """Deltas of in-sync replicas of the groups this tick ticked that this node leads,
        those it made quiet included: a leader goes quiet only at a tick (its heartbeat), maybe
        the first since the commit that changed them (a dead follower left behind), and a
        quiet group's cannot change until it wakes."""
        changed: dict[str, Any] = {}
        for group in groups:
            value = self._led.get(group)
            runner = self.groups.get(group)
            if value is None or runner is None or runner.node.role != LEADER:
                continue
            isr = self._isr(runner.node)
            if isr != value[1]:
                value[1] = isr
                changed[group] = value
        if changed:
            self.transport.announce(changed)

    def _isr(self, node: RaftNode) -> list[str]:
        """In-sync replicas as the leader sees them: itself and the voters holding its commit
        index on a peer node it hears from, in the incarnation that member is (a dead follower
        of a quiet group holds the commit index for ever: nothing commits after it)."""
        return sorted(m for m in node.voters if m == node.id or (
            (node.match_index(m) or 0) >= node.commit_index and self._member_alive(m)))

    def _member_alive(self, member: str) -> bool:
        """Whether the node of `member` is connected and heard from, in that member's incarnation."""
        peer, _, incarnation = member.partition(".")
        if peer == self.node_id:
            return True
        if not self.transport.is_alive(peer):
            return False
        hello = getattr(self.transport.connections.get(peer), "hello", None)
        return not incarnation or hello is None or hello.incarnation in (None, incarnation)

    def _announce_isr_with(self, node: str) -> None:
        """Announce the in-sync replicas of the groups led here with a voter on peer `node`,
        quiet ones included: its death, silence or return changes them without a tick."""
        self._announce_isr(g for g in list(self._led) if (runner := self.groups.get(g)) is not None
                           and any(node_of(m) == node for m in runner.node.voters))

    def _role_changed(self, runner: _GroupRunner, eff: RoleChange) -> None:
        group = runner.group
        counts = self.role_counts
        if eff.role == CANDIDATE or (eff.role == LEADER and runner.reported_role != CANDIDATE):
            counts["elections_started"] += 1
        if eff.role == LEADER:
            counts["elections_won"] += 1
        if eff.leader is not None and eff.leader != runner.known_leader:
            if runner.known_leader is not None:  # the first leader learned (a new group, a start) is no change
                counts["leader_changes"] += 1
            runner.known_leader = eff.leader
        runner.reported_role = eff.role
        if eff.role == LEADER:
            self._led[group] = [eff.term, [runner.node.id]]
            self._announce_later(group, self._led[group])
        elif self._led.pop(group, None) is not None:
            self._announce_later(group, None)

    def _announce_later(self, group: str, value: Any) -> None:
        """Leadership deltas of one reactor turn go out as one announcement (a node failing
        over hundreds of groups sends one message, not hundreds). A host without peers (a node
        alone) has nobody to tell, and schedules nothing."""
        if not self.peers:
            return
        self._lead_delta[group] = value
        if self._lead_call is None:
            self._lead_call = self.clock.callLater(0, self._announce_delta)

    def _announce_delta(self) -> None:
        self._lead_call = None
        delta, self._lead_delta = self._lead_delta, {}
        if delta:
            self.transport.announce(delta)

    def deliver(self, node: str, group: str, to: str, frm: str, msg: Message) -> None:
        """From the transport: one group message from peer node `node`."""
        if to != self.member_id:
            self.stats["misaddressed"] += 1
            self._log.debug("message for member {to} (we are {me}) of group {group} dropped",
                            to=to, me=self.member_id, group=group)
            return
        runner = self.groups.get(group)
        if runner is None:
            self.stats["unknown_group"] += 1
            self._log.debug("message for unknown group {group} from {node}", group=group, node=node)
            return
        runner.feed(runner.node.receive(frm, msg, self.now()))

    def peer_connected(self, node: str, hello: Hello) -> None:
        # Full leadership on connect; wake what we lead with a member there (it may have
        # restarted and needs heartbeats to learn who leads).
        self._announce_isr_with(node)
        self.transport.announce({g: v for g, v in self._led.items()}, full=True, to=node)
        self._wake_led_with(node)

    def peer_back(self, node: str) -> None:
        """A silent peer node is heard from again (a partition healed, a process resumed, or a
        starved node's heartbeat was only late): the followers here that its silence woke go
        back to quiet if nothing happened to them meanwhile (`RaftNode.requiesce`), and the
        quiet groups led here with a member there that is behind are woken, so that it is
        caught up at once rather than when its own election timer fires."""
        now = self.now()
        for group, (term, leader) in self._silence_woken.pop(node, {}).items():
            runner = self.groups.get(group)
            if runner is not None:
                runner.feed(runner.node.requiesce(leader, term, now))
        self._announce_isr_with(node)
        self._wake_led_with(node, behind_only=True)

    def _wake_led_with(self, node: str, behind_only: bool = False) -> None:
        """Wake the quiet groups led here with a voter on `node` (`behind_only`: only those
        whose voter there does not hold the leader's whole log; a quiet leader had every
        follower it heard from caught up when it went quiet, and stayed so)."""
        now = self.now()
        for group in list(self._led):
            runner = self.groups.get(group)
            if runner is None or not runner.node.quiet:
                continue
            n = runner.node
            there = [m for m in n.voters if node_of(m) == node]
            if there and (not behind_only or any((n.match_index(m) or 0) < n.log.last_index for m in there)):
                runner.feed(n.wake(now))

    def peer_lost(self, node: str) -> None:
        self.remote_leadership.pop(node, None)
        self._silence_woken.pop(node, None)
        self._node_lost(node)
        self._announce_isr_with(node)

    def _node_silent(self, node: str) -> None:
        """Peer node `node` sent nothing (no frame of any kind) for an election timeout. That
        may be death (SIGSTOP, a partition) or only a slow process: wake every quiet group it
        leads here, whose election timers then run as in any awake group (pre-vote first: an
        alive leader answers it with heartbeats), remembering them so that they go quiet again
        if the node is heard from before their timers fire (`peer_back`). A quiet group led
        here is woken only if its voters on the nodes still heard from are no quorum (so that
        check-quorum can depose it): one silent follower node among three costs no wake-up.
        Waking, not campaigning at once: a stall of one busy node must not start an election
        in every group it leads."""
        now = self.now()
        woken = self._silence_woken.setdefault(node, {})
        for runner in list(self.groups.values()):
            n = runner.node
            if not n.quiet:
                continue
            if n.role == LEADER:
                if any(node_of(m) == node for m in n.voters) and not self._quorum_heard(n):
                    runner.feed(n.wake(now))
            elif n.leader_id is not None and node_of(n.leader_id) == node:
                woken[runner.group] = (n.term, n.leader_id)
                runner.feed(n.wake(now))

    def _quorum_heard(self, n: RaftNode) -> bool:
        """Whether the voters of `n` on this node and on the peer nodes still heard from are a quorum."""
        alive = sum(1 for m in n.voters if node_of(m) == self.node_id or self.transport.is_alive(node_of(m)))
        return alive >= n.quorum

    def _node_lost(self, node: str) -> None:
        """Peer node `node` is gone (connection closed or silent): its followers here
        campaign soon, and the groups led here with a member there wake up."""
        now = self.now()
        for runner in list(self.groups.values()):
            n = runner.node
            if n.role == LEADER:
                lost = [m for m in n.voters | n.learners if node_of(m) == node]
                if lost:
                    runner.feed(n.followers_lost(lost, now))
            elif n.leader_id is not None and node_of(n.leader_id) == node:
                runner.feed(n.leader_node_lost(now))

    def leadership(self, node: str, full: bool, groups: dict[str, Any]) -> None:
        known = self.remote_leadership.setdefault(node, {})
        if full:
            known.clear()
        for group, value in groups.items():
            if value is None:
                known.pop(group, None)
            else:
                known[group] = value

    def forwarded(self, node: str, request: Any) -> Any:
        handler = getattr(self.callbacks, "forwarded", None)
        if handler is None:
            return {"error": {"code": "NOT_SUPPORTED", "message": "this node takes no forwarded requests"}}
        return handler(node, request)

    def cluster_mismatch(self, node: str, theirs: str) -> None:
        handler = getattr(self.callbacks, "cluster_mismatch", None)
        if handler is not None:
            handler(node, theirs)

    def _send(self, to: str, group: str, msg: Message) -> None:
        if isinstance(msg, InstallSnapshot) and not msg.data:
            # The core knows where the log starts; the application knows its state there.
            msg = attrs.evolve(msg, data=self.callbacks.snapshot_data(group, msg.last_index))
        self.transport.send(group, to, self.member_id, msg)


class _PeerDialer(ClientService):
    # Twisted logs every retry ("Scheduling retry 3 to connect <...TCP4ClientEndpoint object
    # at 0x7f...> in 0.29 seconds."): several lines a second per unreachable peer, naming no
    # peer and no reason. _PeerEndpoint says it once per streak of failures instead.
    _log = Logger(observer=lambda event: None)


@implementer(IStreamClientEndpoint)
class _PeerEndpoint:
    """A peer's endpoint that gives an attempt up after `timeout` seconds on `clock`
    (streamlog.dialing), and logs the first failed attempt of a streak (with the reason) and
    the first success after it, instead of Twisted's line per retry."""

    def __init__(self, endpoint: IStreamClientEndpoint, peer: str, log: Logger, clock: IReactorTime,
                 timeout: float, stats: collections.Counter[str]) -> None:
        self._endpoint = endpoint
        self._peer = peer
        self._log = log
        self._clock = clock
        self._timeout = timeout
        self._stats = stats
        self._failing = False

    def connect(self, factory: Any) -> Deferred:
        def failed(failure: Failure) -> Failure:
            if not self._failing:
                self._failing = True
                self._log.info("cannot reach peer node {peer} ({why}); retrying with backoff up to 2 s",
                               peer=self._peer, why=failure.getErrorMessage() or type(failure.value).__name__)
            return failure

        def connected(proto: Any) -> Any:
            self._failing = False
            return proto

        def expired() -> None:
            self._stats["dial_timeouts"] += 1

        return connect_within(self._endpoint, factory, self._clock, self._timeout, expired).addCallbacks(connected, failed)

    def __repr__(self) -> str:
        return f"peer node {self._peer}"

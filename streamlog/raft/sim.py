"""A seeded, deterministic simulator for the Raft core, with safety checks after every step.

One seed fixes everything: the fault profile, every network delay, drop and duplicate, every
crash, pause and clock drift, and every node's election-timeout randomness. Nothing reads the
wall clock or the global `random` module, so a failing seed replays exactly:

    python -m streamlog.raft.sim --seed 1234 --nodes 5 --trace

The fault model and the invariants are described in docs/raft.md; in short the network
delays, drops, duplicates and reorders messages, holds some back or replays them seconds later
(above all to fresh leaders), and partitions nodes (random halves, an isolated leader, the
leader with a minority, one-way links); nodes crash (losing whatever was not fsynced), restart,
pause, stall on their disks and run their clocks at different rates; leaders change membership
in bursts and compact their logs. Episodes compose such faults into the schedules that classic
bugs need. After the fault phase everything heals and the cluster must elect a leader and
commit new proposals within a bounded simulated time.
"""

from __future__ import annotations

import argparse
import heapq
import importlib
import importlib.util
import json
import random
import sys
import time as _wallclock_for_cli_only
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

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
from streamlog.raft.log import Entry, Members, MemoryRaftLog
from streamlog.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    RequestVoteResponse,
    TimeoutNow,
    from_dict,
    to_dict,
)

NodeFactory = Callable[..., RaftNode]
DiskState = tuple[int, int, tuple[Entry, ...], "Members | None"]  # start, prefix term, entries, prefix config


class Violation(Exception):
    """An invariant failed; the message says which, where and when."""


@attrs.frozen
class SimResult:
    seed: int
    nodes: int
    violation: str | None
    trace: tuple[str, ...]
    stats: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.violation is None


class SimLog(MemoryRaftLog):
    """A MemoryRaftLog that reports its writes to the checker."""

    def __init__(self, sim: Simulation, host: Host, state: DiskState):
        start, prefix_term, entries, prefix_config = state
        super().__init__(entries, start, prefix_term, prefix_config)
        self._sim = sim
        self._host = host
        self.version = 0  # bumped on every write: lets one fsync serve many SyncLogs

    def truncate_prefix(self, upto_index: int) -> None:
        node = self._host.node
        if node is not None and upto_index > node.commit_index and upto_index >= self.start_index:
            raise Violation(f"{self._host.id} retention removes uncommitted entries up to {upto_index} "
                            f"(commit index {node.commit_index})")
        self.version += 1
        super().truncate_prefix(upto_index)

    def reset(self, index: int, term: int, config: Members | None = None) -> None:
        # Entries up to `index` are replaced by the snapshot; those after it are gone.
        self._sim._check_snapshot_point(self._host, index, term)
        self._sim._check_shrink(self._host, index + 1, f"a snapshot install at {index}")
        self.version += 1
        self._host.registered_upto = min(self._host.registered_upto, index)
        super().reset(index, term, config)

    def append(self, entries: Sequence[Entry]) -> None:
        self.version += 1
        super().append(entries)

    def truncate_suffix(self, from_index: int) -> None:
        self._sim._check_shrink(self._host, from_index, f"truncating from {from_index}")
        self.version += 1
        self._host.registered_upto = min(self._host.registered_upto, from_index - 1)
        super().truncate_suffix(from_index)


class Host:
    """One simulated machine: a disk with a durable and a volatile part, a process, a clock."""

    def __init__(self, node_id: str, drift: float, offset: float):
        self.id = node_id
        self.durable_hs = HardState()
        self.durable_log: DiskState = (1, 0, (), None)
        self.node: RaftNode | None = None
        self.log: SimLog | None = None
        self.queue: deque = deque()
        self.durable_version = -1
        self.registered_upto = 0  # durable entries up to here were given to the log-matching check
        self.syncing = False  # a barrier fsync is in progress: the effect queue waits
        self.sync_done_at = 0.0  # log fsyncs complete in the order asked
        self.hs_done_at = 0.0  # hard-state saves too
        self.syncs_in_flight = 0
        self.was_quiet = False
        self.last_heard: dict[str, float] = {}  # node heartbeats: when each peer node was last heard
        self.silence_woken: tuple[str, int] | None = None  # (leader, term) when its silence woke the node
        self.paused = False
        self.inbox: list[tuple[str, Any]] = []
        self.incarnation = 0
        self.drift = drift
        self.offset = offset
        self.applied = 0
        self.commit_seen = 0  # highest Commit released in this incarnation
        self.max_commit_ever = 0  # across incarnations: must stay durable
        self.pending: dict[int, tuple[int, bytes, bool]] = {}
        self.vouched: dict[int, int | None] = {}  # id of a queued answer -> term of the entry it vouches for
        # The newest acknowledgement this node made (term, match index): until its term moves
        # on, it must keep every entry up to there. Once released, across restarts too.
        self.ack_term = -1
        self.ack_upto = 0
        self.sent_ack_term = -1
        self.sent_ack_upto = 0
        self.sent_as_leader = -1  # newest term in which it released a leader's message
        self.was_leader_term = -1
        self.slow_until = float("-inf")  # its fsyncs stall until then
        self.lag_until = float("-inf")  # its outgoing messages are delayed by most of a second until then
        self.healthy_since: float | None = None
        self.transfer_at = float("-inf")
        self.elected_at = 0.0

    @property
    def up(self) -> bool:
        return self.node is not None and not self.paused

    def local(self, now: float) -> float:
        return self.offset + now * self.drift


@attrs.frozen
class Profile:
    """The per-seed knobs, drawn from the seed so that seeds explore different regimes."""

    fault_time: float
    fault_gap: tuple[float, float]
    max_delay: float
    max_fsync: float
    client_gap: float
    max_batch_bytes: int
    max_inflight: int
    crash_weight: float
    fresh_leader_fault: float
    strike_window: float
    # Membership: how often changes are attempted, and how often they pile up (a second change
    # while one is in flight, one at every fresh leader, a strike right after one is accepted).
    membership_weight: float = 0.7
    change_burst: float = 0.0
    change_on_election: float = 0.0
    strike_after_change: float = 0.0
    # Retention, which sends followers to InstallSnapshot; half of it runs on the leader.
    compact_weight: float = 0.7
    # Spells of stale messages: some are held back, or delivered once more, seconds later.
    stale_weight: float = 0.0
    replay_on_election: float = 0.0  # a fresh leader also gets old messages (answers from its last term)
    slow_disk_weight: float = 0.0  # disks that stall for most of a second
    partition_leader_weight: float = 1.0  # the leader cut off with a minority that acknowledges its tail
    transfer_weight: float = 0.5
    rebalance_weight: float = 0.0  # hand leadership back to the previous leader (preferred-leader balancing)
    spare_nodes: int = 0  # nodes outside the initial configuration (they join through a change)
    background: float = 1.0  # scales the generic faults (partitions, crashes, pauses, loss)
    slow_link_weight: float = 0.0  # a node's messages arrive most of a second late
    # Episodes (compound faults, see Simulation): weights in the same draw as the faults.
    change_then_strike_weight: float = 0.0
    cut_acks_weight: float = 0.0
    minority_returns_weight: float = 0.0
    retention_interval: float = 0.0  # > 0: every node compacts to its commit index this often
    # Simulated seconds after healing by which the cluster converges: a node removed early and
    # re-added after healing may catch up at one entry per round trip (tiny batches, one in flight).
    liveness_bound: float = 20.0

    @classmethod
    def draw(cls, rng: random.Random, regime: str = "mixed") -> Profile:
        """`mixed` varies every knob (each fault family is sometimes off, sometimes frequent).
        `churn` keeps leaders short-lived and replication slow (one entry per message, one
        message in flight), the regime where a new leader still catching followers up is struck
        down: where commit-rule bugs (Figure 8) live. `reconfig` piles membership changes on
        top of each other: in bursts, at every fresh leader, with their leader struck right
        after, in groups that start without one node (even-sized configurations), where
        one-at-a-time and Ongaro's rule matter. `stale` is the regime of old messages: held
        back, replayed (above all to fresh leaders), congested links, stalled disks, lost
        acknowledgements under aggressive retention (InstallSnapshot to followers in every
        position) and leadership handed back over a rewritten log."""
        if regime not in REGIMES:
            raise ValueError(f"unknown regime {regime!r}; pick one of {REGIMES}")
        p = cls(
            fault_time=rng.uniform(2.0, 5.0),
            fault_gap=(0.05, rng.uniform(0.2, 0.8)),
            max_delay=rng.uniform(0.002, 0.03),
            max_fsync=rng.uniform(0.001, 0.03),
            client_gap=rng.uniform(0.005, 0.05),
            max_batch_bytes=rng.choice([8, 32, 1 << 20]),
            max_inflight=rng.choice([1, 2, 4, 16]),
            crash_weight=rng.choice([1.0, 3.0, 6.0]),
            fresh_leader_fault=rng.choice([0.0, 0.2, 0.5]),
            strike_window=rng.choice([3.0, 10.0, 30.0]),
            membership_weight=rng.choice([0.7, 2.0, 4.0]),
            change_burst=rng.choice([0.0, 0.5, 0.8]),
            change_on_election=rng.choice([0.0, 0.4, 0.8]),
            strike_after_change=rng.choice([0.0, 0.3, 0.6]),
            compact_weight=rng.choice([0.7, 2.0, 4.0]),
            stale_weight=rng.choice([0.0, 1.0, 2.0]),
            replay_on_election=rng.choice([0.0, 0.5, 1.0]),
            slow_disk_weight=rng.choice([0.0, 0.5, 1.5]),
            partition_leader_weight=rng.choice([0.5, 1.0, 2.0]),
            transfer_weight=0.5,
            rebalance_weight=rng.choice([0.0, 0.5]),
            spare_nodes=rng.choice([0, 0, 1]),
            slow_link_weight=rng.choice([0.0, 0.5, 1.0]),
            change_then_strike_weight=rng.choice([0.0, 0.5, 1.0]),
            cut_acks_weight=rng.choice([0.0, 0.5, 1.0]),
            minority_returns_weight=rng.choice([0.0, 0.5, 1.0]),
            retention_interval=rng.choice([0.0, 0.0, 0.05, 0.2]),
        )
        if regime == "churn":
            # The fault families of the other regimes stay off: churn is about commit rules.
            p = cls(fault_time=p.fault_time, fault_gap=(0.02, 0.2), max_delay=p.max_delay, max_fsync=p.max_fsync,
                    client_gap=p.client_gap, max_batch_bytes=8, max_inflight=1, crash_weight=3.0,
                    fresh_leader_fault=0.5, strike_window=p.strike_window)
        elif regime == "reconfig":
            p = attrs.evolve(p, background=0.3, fresh_leader_fault=0.0, membership_weight=rng.choice([3.0, 6.0]),
                             change_burst=rng.choice([0.5, 0.9]), change_on_election=rng.choice([0.5, 1.0]),
                             strike_after_change=rng.choice([0.3, 0.7]), spare_nodes=rng.choice([0, 1]),
                             change_then_strike_weight=rng.choice([2.0, 4.0]))
        elif regime == "stale":
            p = attrs.evolve(p, background=0.4, stale_weight=2.0, replay_on_election=1.0, slow_disk_weight=1.0,
                             slow_link_weight=rng.choice([1.0, 3.0]), cut_acks_weight=rng.choice([1.0, 3.0]),
                             minority_returns_weight=rng.choice([1.0, 3.0]),
                             retention_interval=rng.choice([0.05, 0.2]))
        return p


REGIMES = ("mixed", "churn", "reconfig", "stale")
ELECTION_TIMEOUT = 0.3
HEARTBEAT = 0.05
TICK = 0.01
MAX_PENDING = 64
MAX_EVENTS = 400_000  # a healthy seed needs a few thousand; more means a livelock or storm
NODE_BEAT = object()  # a node-level heartbeat (liveness only, carries nothing per group)


class Simulation:
    """Run one seed. `node_factory` builds nodes (tests pass broken subclasses)."""

    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        node_factory: NodeFactory = RaftNode,
        trace: bool = False,
        config: RaftConfig | None = None,
        check_durability: bool = True,
        regime: str = "mixed",
        wire: bool = False,
    ):
        self.seed = seed
        self.wire = wire  # send every message through its JSON form, as the driver does
        self.check_durability = check_durability
        self.n = nodes
        self.factory = node_factory
        self.tracing = trace
        self.trace: list[str] = []
        master = random.Random(f"raft-sim:{seed}:{nodes}")
        self.profile = Profile.draw(master, regime)
        self.net_rng = random.Random(master.random())
        self.fault_rng = random.Random(master.random())
        self.client_rng = random.Random(master.random())
        self.node_seed = master.random()
        self.config = config or RaftConfig(
            election_timeout=ELECTION_TIMEOUT,
            heartbeat_interval=HEARTBEAT,
            max_inflight=self.profile.max_inflight,
            max_batch_bytes=self.profile.max_batch_bytes,
            quiesce=True,  # the simulator models node liveness (node heartbeats, connection loss)
        )
        self.ids = [f"n{i + 1}" for i in range(nodes)]
        # The group starts with every node, or (spare_nodes) without the last one, which joins
        # later through a membership change: then configurations of even size, in which
        # overlapping changes can have disjoint majorities, are there from the start.
        spare = min(self.profile.spare_nodes, nodes - 1)
        self.initial_voters = tuple(self.ids[: nodes - spare])
        self.hosts = {
            i: Host(i, drift=master.uniform(0.95, 1.05), offset=master.uniform(0, 100)) for i in self.ids
        }
        self.now = 0.0
        self._events: list = []
        self._seq = 0
        # Network state.
        self.cut: set[tuple[str, str]] = set()  # directed links that are down
        self.drop = 0.0
        self.dup = 0.0
        self.tail = 0.0  # probability of a long delay
        self.reorder = False  # links are FIFO (like TCP) unless a lossy spell reorders them
        self.straggle = 0.0  # probability that a message is held back for seconds (across terms)
        self.replay = 0.0  # probability that a message is delivered once more, seconds later
        self.stale_until = 0.0  # when the last held-back or replayed message arrives
        self.history: deque[tuple[float, str, str, Any]] = deque(maxlen=1024)  # recent sends, to replay
        # Episodes (compound faults) leave work for the next election:
        # The struck leader whose change is pending, and the change to ask its successor for.
        self.change_at_next_leader: tuple[str, dict[str, str] | None] | None = None
        self.replay_at_election: set[str] = set()  # nodes to which old answers are replayed when elected
        self.episode_until = 0.0  # no other fault starts before then
        self.link_clock: dict[tuple[str, str], float] = {}
        self.goal: int | None = None
        # Checker state.
        self.leaders: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.max_committed = 0
        self.commit_term: dict[int, int] = {}
        self.protected_upto = 0
        self.acked: dict[int, tuple[int, bytes]] = {}
        self.entry_keys: dict[tuple[int, int], tuple[bytes, int | None]] = {}
        self.term_first_seen: dict[int, float] = {}
        self.healed_at: float | None = None
        self.live_marker: int | None = None
        self.done = False
        self.client_target = self.ids[0]
        self.proposal_no = 0
        self.stats = {"events": 0, "messages": 0, "dropped": 0, "elections": 0, "crashes": 0,
                      "pauses": 0, "partitions": 0, "transfers": 0, "snapshots": 0, "proposed": 0, "config_changes": 0,
                      # States the classic bugs need, counted so a test can show they are reached:
                      "refused_in_progress": 0,  # a change while the previous one is uncommitted
                      "refused_own_term": 0,  # a change before the leader committed in its term
                      "stale_messages": 0,  # held back or replayed across seconds
                      "stale_append": 0,  # AppendEntries of an older term reaching a node
                      "stale_success": 0,  # a success response of an older term reaching a leader
                      "obsolete_acks": 0,  # answers released after a newer term overwrote what they name
                      # InstallSnapshot reaching a follower of its term, by where its log stands:
                      "snapshot_behind": 0,  # its log ends before the snapshot's last entry
                      "snapshot_conflict": 0,  # it has another entry (another term) there
                      "snapshot_at": 0,  # it holds the last entry, and nothing after it
                      "snapshot_ahead": 0,  # it holds the last entry and more after it
                      "snapshot_covered": 0,  # it already committed past the snapshot point
                      # Quiescence: groups going quiet, and quiet followers woken by node liveness.
                      "quiesced": 0, "node_lost": 0, "requiesced": 0, "connection_lost": 0, "follower_lost": 0,
                      "leader_ahead_of_disk": 0}  # a commit released while its leader's disk lagged
        self.last_config_change = float("-inf")

    # ------------------------------------------------------------------ plumbing

    def _at(self, t: float, fn: Callable, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, fn, args))

    def _log(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.now:10.6f} {text}")

    def run(self) -> SimResult:
        violation = None
        try:
            for h in self.hosts.values():
                self._start(h)
                self._at(self.fault_rng.uniform(0, TICK), self._tick, h.id)
            self._at(self.profile.client_gap, self._client)
            self._at(self.fault_rng.uniform(*self.profile.fault_gap), self._fault)
            self._at(self.profile.fault_time, self._heal)
            if self.profile.retention_interval > 0:
                self._at(self.profile.retention_interval, self._retention)
            deadline = self.profile.fault_time + self.profile.liveness_bound
            while self._events and not self.done:
                t, _, fn, args = heapq.heappop(self._events)
                if t > deadline:
                    raise Violation(f"liveness: no new proposal committed on all nodes within "
                                    f"{self.profile.liveness_bound}s of healing")
                self.now = t
                self.stats["events"] += 1
                if self.stats["events"] > MAX_EVENTS:
                    raise Violation(f"liveness: event budget of {MAX_EVENTS} exhausted (a message storm?)")
                fn(*args)
            self._final_check()
        except Violation as v:
            violation = f"seed {self.seed} nodes {self.n} t={self.now:.6f}: {v}"
            self._log(f"VIOLATION {v}")
        self.stats["max_term"] = max((h.node.term for h in self.hosts.values() if h.node), default=0)
        self.stats["committed"] = len(self.committed)
        self.stats["acked"] = len(self.acked)
        self.stats["recovered_in"] = (round(self.now - self.healed_at, 3) if self.healed_at is not None
                                      and violation is None else None)
        return SimResult(self.seed, self.n, violation, tuple(self.trace), dict(self.stats))

    # ------------------------------------------------------------------ nodes

    def _start(self, h: Host) -> None:
        h.incarnation += 1
        start = h.durable_log[0]
        h.log = SimLog(self, h, h.durable_log)
        h.registered_upto = h.log.last_index
        h.durable_version = h.log.version
        rng = random.Random(f"{self.node_seed}:{h.id}:{h.incarnation}")
        h.node = self.factory(h.id, self._initial_members(h.id), h.log, h.durable_hs, self.config, rng,
                              h.local(self.now))
        h.queue.clear()
        h.vouched = {}
        h.syncing = False
        h.syncs_in_flight = 0
        h.sync_done_at = h.hs_done_at = self.now
        h.last_heard = {i: self.now for i in self.ids}
        h.silence_woken = None
        h.inbox = []
        h.pending = {}
        h.applied = h.log.start_index - 1
        h.commit_seen = 0
        h.was_leader_term = -1
        # A node's durable state must still hold everything it ever reported committed.
        for index in range(max(start, 1), h.max_commit_ever + 1):
            e = h.log.entry_at(index)
            if e is None or self.committed.get(index) != (e.term, e.data):
                raise Violation(f"{h.id} restarted without committed entry {index} "
                                f"(durable log {start}..{h.log.last_index})")
        # ... and everything it acknowledged in its (durable) current term. Acknowledgements it
        # made but never released died with the process.
        if self.check_durability and h.sent_ack_term == h.durable_hs.term and h.log.last_index < h.sent_ack_upto:
            raise Violation(f"{h.id} restarted without entry {h.log.last_index + 1}, which it acknowledged "
                            f"in term {h.sent_ack_term} (up to {h.sent_ack_upto}) before it is durable")
        h.ack_term, h.ack_upto = h.sent_ack_term, h.sent_ack_upto
        self._log(f"{h.id} start #{h.incarnation} term={h.durable_hs.term} vote={h.durable_hs.voted_for} "
                  f"log={start}..{h.log.last_index}")

    def _feed(self, h: Host, effects: list) -> None:
        self._enqueue(h, effects)
        self._drain(h)
        self._after_step(h)

    def _enqueue(self, h: Host, effects: list) -> None:
        for eff in effects:
            if isinstance(eff, Send) and isinstance(eff.msg, AppendEntriesResponse) and eff.msg.success:
                # The node vouches for its log up to match_index from now on, in that term: for
                # the entry it holds there now (its log may move on before the answer leaves).
                assert h.log is not None
                h.vouched[id(eff)] = h.log.term_at(eff.msg.match_index)
                if eff.msg.term > h.ack_term:
                    h.ack_term, h.ack_upto = eff.msg.term, eff.msg.match_index
                elif eff.msg.term == h.ack_term:
                    h.ack_upto = max(h.ack_upto, eff.msg.match_index)
        h.queue.extend(effects)

    def _drain(self, h: Host) -> None:
        while h.queue and not h.syncing and not h.paused:
            eff = h.queue.popleft()
            if isinstance(eff, Send):
                vouched = h.vouched.pop(id(eff), None)
                if self.check_durability:
                    self._check_durable_send(h, eff.msg, vouched)
                if isinstance(eff.msg, (AppendEntries, InstallSnapshot, TimeoutNow)):
                    self._register_leader(h, eff.msg.term)  # it acts as the leader of that term
                elif isinstance(eff.msg, AppendEntriesResponse) and eff.msg.success:
                    if eff.msg.term > h.sent_ack_term:
                        h.sent_ack_term, h.sent_ack_upto = eff.msg.term, eff.msg.match_index
                    elif eff.msg.term == h.sent_ack_term:
                        h.sent_ack_upto = max(h.sent_ack_upto, eff.msg.match_index)
                if isinstance(eff.msg, AppendEntries):
                    prev_term = eff.msg.prev_term
                    for e in eff.msg.entries:
                        self._check_log_matching(h, e, prev_term)
                        prev_term = e.term
                self._send(h.id, eff.to, eff.msg)
            elif isinstance(eff, (PersistHardState, SyncLog)):
                if isinstance(eff, SyncLog) and h.log is not None and h.log.version == h.durable_version:
                    delay = 0.0  # group commit: an earlier fsync already covered these writes
                else:
                    delay = self.net_rng.uniform(0.0001, self.profile.max_fsync)
                    if self.now < h.slow_until:
                        delay = self.net_rng.uniform(0.05, 0.8)
                # A leader's own SyncLog is no barrier: its sends go on while the disk works.
                # Every fsync completes in the order asked, and is reported back so.
                if not isinstance(eff, SyncLog) or eff.barrier:
                    h.syncing = True
                h.syncs_in_flight += 1
                # Log fsyncs complete in order among themselves, and so do hard-state saves; the
                # two are different files (sync workers): one may overtake the other.
                if isinstance(eff, SyncLog):
                    at = h.sync_done_at = max(self.now + delay, h.sync_done_at)
                else:
                    at = h.hs_done_at = max(self.now + delay, h.hs_done_at)
                self._at(at, self._fsync_done, h.id, h.incarnation, eff)
            elif isinstance(eff, Commit):
                self._apply(h, eff.upto)
            elif isinstance(eff, SnapshotInstalled):
                self.stats["snapshots"] += 1
                if self.committed and eff.index > max(self.committed):
                    raise Violation(f"{h.id} installed a snapshot at {eff.index} past anything committed")
                h.applied = max(h.applied, eff.index)
                self._log(f"{h.id} snapshot installed at {eff.index}")
            elif isinstance(eff, RoleChange):
                self._log(f"{h.id} {eff.role} term={eff.term} leader={eff.leader}")

    def _check_shrink(self, h: Host, lo: int, what: str) -> None:
        """`h`'s log is about to lose its entries from `lo` on. Checked on every such change
        (not only when a commit is released, which may come much later or never): no node may
        lose a committed entry on the word of a leader whose term is at least the one it was
        committed in (that leader would lack it), nor one it knows is committed, nor, in the
        term in which it acknowledged it, an entry it acknowledged: its leader may have counted
        that acknowledgement towards a commit no one has released yet.

        A node that lags behind may lose an entry committed in a later term than its own: a
        deposed leader that does not know it yet can still rewrite such a node's log (Raft
        allows it; the majority that holds the entry is untouched). `commit_term` is an upper
        bound on the term an entry was committed in, so comparing with it never reports that."""
        log, node = h.log, h.node
        if log is None or node is None or lo > log.last_index:
            return
        lo = max(lo, log.start_index)
        for index in range(lo, min(log.last_index, self.max_committed) + 1):
            e = log.entry_at(index)
            if (e is not None and self.committed.get(index) == (e.term, e.data)
                    and node.term >= self.commit_term[index]):
                raise Violation(f"{h.id} loses committed entry {index} by {what} "
                                f"(its log {log.start_index}..{log.last_index}, term {node.term}; "
                                f"committed by term {self.commit_term[index]})")
        if lo <= node.commit_index:
            raise Violation(f"{h.id} loses entries from {lo} at or below its commit index "
                            f"{node.commit_index} by {what}")
        if h.ack_term == node.term and lo <= h.ack_upto:
            raise Violation(f"{h.id} loses entry {lo}, which it acknowledged in its current term "
                            f"{node.term} (up to {h.ack_upto}), by {what}")

    def _check_durable_claim(self, h: Host) -> None:
        """What a node believes durable (`durable_index`, which a leader counts towards commits)
        is on its disk: the durable log holds the same entries as the log up to there."""
        node, log = h.node, h.log
        assert node is not None and log is not None
        start, prefix_term, entries, _ = h.durable_log
        for index in range(max(start, log.start_index), node.durable_index + 1):
            e = log.entry_at(index)
            pos = index - start
            d = entries[pos] if pos < len(entries) else None
            if e is not None and (d is None or (d.term, d.data) != (e.term, e.data)):
                raise Violation(f"{h.id} believes its log durable up to {node.durable_index}, but entry {index} "
                                f"is {'missing from' if d is None else 'different on'} its disk")

    def _check_snapshot_point(self, h: Host, index: int, term: int) -> None:
        """A snapshot stands for the committed log up to its last entry: that entry must agree."""
        want = self.committed.get(index)
        if want is not None and want[0] != term:
            raise Violation(f"{h.id} installs a snapshot ending at ({index}, term {term}) but the "
                            f"entry committed there has term {want[0]}")

    def _states(self, h: Host) -> list[DiskState]:
        """Every log state `h` could be in after a crash or an fsync: durable, and in memory."""
        states = [h.durable_log]
        if h.log is not None:
            states.append(h.log.snapshot())
        return states

    def _check_protected(self, index: int) -> None:
        """A committed entry must be safe from every election that the fault model can still
        bring about: no node lacking it may be as up to date as a majority of the cluster (in
        any mix of their durable and in-memory states). Catching this when the commit is
        released, rather than when a later leader overwrites the entry, finds bugs such as
        counting old-term replicas (Figure 8) without waiting for the unlucky schedule."""
        want = self.committed.get(index)
        if want is None:
            return  # reached by snapshot install, not by applying entries: nothing to compare

        def last(state: DiskState) -> tuple[int, int]:
            start, prefix_term, entries, _ = state
            return (entries[-1].term, entries[-1].index) if entries else (prefix_term, start - 1)

        def has(state: DiskState) -> bool:
            start, _, entries, _ = state
            if index < start:
                return True
            pos = index - start
            return pos < len(entries) and (entries[pos].term, entries[pos].data) == want

        lasts = {h.id: [last(st) for st in self._states(h)] for h in self.hosts.values()}
        for c in self.hosts.values():
            states = self._states(c)
            # The commit index it would campaign with: what it knows in memory; after a restart
            # from the durable state, the log start (RaftNode's initial commit index).
            commits = [states[0][0] - 1] + ([c.node.commit_index] if c.node is not None else [])
            for state, commit in zip(states, commits):
                if has(state):
                    continue
                mine = last(state)
                config = self._campaign_config(state, c.id, commit)  # it counts votes in this configuration
                if config is None:
                    continue
                voters = (c.id in config) + sum(1 for v in config if v != c.id and min(lasts[v]) <= mine)
                if voters >= len(config) // 2 + 1:
                    raise Violation(f"committed entry {index} is not protected: {c.id} lacks it but "
                                    f"could win with {voters} votes (its log ends at {mine})")

    def _initial_members(self, node_id: str) -> tuple[str, ...]:
        """What a node is started with: the initial voters, or nothing for a node that joins."""
        return self.initial_voters if node_id in self.initial_voters else ()

    def _campaign_config(self, state: DiskState, node_id: str, commit: int) -> frozenset[str] | None:
        """The configuration in which `node_id` would count votes, starting from this state with
        this commit index, or None if it would not campaign. Mirrors RaftNode._may_campaign: a
        voter of its newest configuration campaigns; so does a node whose own removal is that
        newest configuration, not known to be committed, if it was a voter before it."""
        _, _, entries, prefix_config = state
        base = frozenset(prefix_config if prefix_config is not None else self._initial_members(node_id))
        newest: Entry | None = None
        previous: Entry | None = None
        for e in reversed(entries):
            if e.config is not None:
                if newest is None:
                    newest = e
                else:
                    previous = e
                    break
        if newest is None or newest.config is None:
            return base if node_id in base else None
        config = frozenset(newest.config)
        if node_id in config:
            return config
        before = frozenset(previous.config) if previous is not None and previous.config is not None else base
        return config if newest.index > commit and node_id in before else None

    def _check_durable_send(self, h: Host, msg: Any, vouched: int | None = None) -> None:
        """Persistence before send (Raft Figure 2: "updated on stable storage before responding
        to RPCs"): whatever a released message vouches for must already be on the durable disk."""
        hs = h.durable_hs
        if msg.term > hs.term and not getattr(msg, "pre_vote", False):
            raise Violation(f"{h.id} sends {type(msg).__name__} at term {msg.term} "
                            f"but its durable term is {hs.term}")
        if isinstance(msg, RequestVoteResponse) and msg.granted and not msg.pre_vote and msg.term == hs.term:
            if hs.voted_for is None:
                raise Violation(f"{h.id} grants a vote in term {msg.term} without a durable vote")
        if isinstance(msg, AppendEntriesResponse) and msg.success:
            assert h.log is not None
            start, prefix_term, entries, _ = h.durable_log
            m = msg.match_index
            durable_term = prefix_term if m == start - 1 else (
                entries[m - start].term if start <= m < start + len(entries) else None)
            # The entry it vouched for when it made the answer (`vouched`, its term then) must be
            # on disk now: not merely some entry at that index, nor none.
            if m >= start - 1 and m > 0 and (durable_term is None or durable_term != vouched):
                if h.node is not None and msg.term < h.node.term and h.log.term_at(m) != vouched:
                    # An answer made in an older term and queued behind an fsync, while a leader
                    # of a newer term overwrote the entry it names: it leaves false, but harmless,
                    # like an answer the network delays past that overwrite. The newer leader was
                    # elected by a majority lacking the entry; a member of it that answered for
                    # the entry in the older term held it when it voted (it refused, then) unless
                    # it crashed in between, and then its unreleased answer died with it. So the
                    # older term's leader cannot count a majority for the entry. (A driver could
                    # drop such answers.)
                    self.stats["obsolete_acks"] += 1
                    return
                raise Violation(f"{h.id} acknowledges index {m} before it is durable "
                                f"(durable log {start}..{start + len(entries) - 1})")

    def _fsync_done(self, node_id: str, incarnation: int, eff: Any) -> None:
        h = self.hosts[node_id]
        if h.incarnation != incarnation or h.node is None:
            return
        if isinstance(eff, PersistHardState):
            h.durable_hs = HardState(eff.term, eff.voted_for)
        else:
            assert h.log is not None
            h.durable_log = h.log.snapshot()  # fsync flushes every write made so far
            h.durable_version = h.log.version
            start, prefix_term, entries, _ = h.durable_log
            for pos in range(max(0, h.registered_upto + 1 - start), len(entries)):
                e = entries[pos]
                self._check_log_matching(h, e, entries[pos - 1].term if pos else prefix_term)
            h.registered_upto = start + len(entries) - 1
        h.syncs_in_flight -= 1
        if not isinstance(eff, SyncLog) or eff.barrier:
            h.syncing = False
        if isinstance(eff, SyncLog):
            if h.paused:
                h.inbox.append((None, eff))  # the process hears of it when it runs again
            else:
                self._enqueue(h, h.node.log_synced(eff.upto, h.local(self.now)))
        if not h.paused:
            self._drain(h)
            self._after_step(h)

    def _apply(self, h: Host, upto: int) -> None:
        assert h.log is not None and h.node is not None
        if upto < h.commit_seen:
            raise Violation(f"{h.id} commit index went back from {h.commit_seen} to {upto}")
        h.commit_seen = upto
        # A leader commits on its followers' disks, before its own fsync (thesis §10.2.1): it may
        # lose, in a crash, a committed entry it did not yet hold durably (the majority holds it).
        # What it must keep is what it committed up to its durable index.
        h.max_commit_ever = max(h.max_commit_ever, min(upto, h.node.durable_index))
        if h.node.role == LEADER and h.node.durable_index < upto:
            self.stats["leader_ahead_of_disk"] += 1  # committed by followers' disks before the leader's
        for index in range(max(h.applied + 1, h.log.start_index), upto + 1):
            e = h.log.entry_at(index)
            if e is None:
                raise Violation(f"{h.id} committed {index} but does not have it")
            known = self.committed.setdefault(index, (e.term, e.data))
            self.max_committed = max(self.max_committed, index)
            # An upper bound on the term in which it was committed (the node's term now).
            self.commit_term.setdefault(index, h.node.term)
            if known != (e.term, e.data):
                raise Violation(f"state machine safety: {h.id} applies {(e.term, e.data)} at {index}, "
                                f"another node applied {known}")
        h.applied = max(h.applied, upto)
        if upto > self.protected_upto:
            self.protected_upto = upto
            self._check_protected(upto)
        for index in [i for i in h.pending if i <= upto]:
            term, data, after_heal = h.pending.pop(index)
            if h.log.term_at(index) == term:
                self.acked[index] = (term, data)
                self._log(f"{h.id} ack {index} {data!r}")
                if after_heal and self.live_marker is None:
                    self.live_marker = index
        if self.healed_at is not None and self.live_marker is not None and self.live_marker in self.acked:
            # Done once every node applied the first post-heal proposal and everything acked by then.
            if self.goal is None:
                self.goal = max(self.acked)
            if all(x.applied >= self.goal for x in self.hosts.values()):
                self.done = True

    def _after_step(self, h: Host) -> None:
        node = h.node
        if node is None:
            return
        self.term_first_seen.setdefault(node.term, self.now)
        if node.quiet and not h.was_quiet:
            self.stats["quiesced"] += 1
            self._log(f"{h.id} quiet ({node.role}, term {node.term}, commit {node.commit_index})")
        h.was_quiet = node.quiet
        if h.was_leader_term >= 0 and (node.role != LEADER or node.term != h.was_leader_term):
            self._on_deposed(h)
        # A node leads a term, as far as anyone can tell, once that term is on its disk (it can
        # no longer come back from a crash in an older term and campaign for this one again) or
        # once it sent a leader's message in it. Counting its in-memory role alone would report
        # two leaders of one term when a lone voter elects itself, crashes before its term is
        # durable, and another node wins that same term.
        if (node.role == LEADER and h.was_leader_term != node.term
                and node.term in (h.durable_hs.term, h.sent_as_leader)):
            self._on_elected(h)

    def _check_knowledge(self, leader: Host, follower: Host) -> None:
        """What a leader counts towards commits must be true: unless the follower has moved to
        a newer term (the leader is stale), its log holds the leader's entry at the leader's
        match index for it. A correct leader learns a match only from an acknowledgement of its
        own term, which the follower cannot take back in that term; an acknowledgement of an
        older term vouches for a log that may since have been rewritten, on either side.
        Checked whenever a leader takes an answer (the only input that moves a match index);
        a follower losing what it acknowledged is caught by `_check_shrink`."""
        ln, fn = leader.node, follower.node
        if ln is None or fn is None or ln.role != LEADER or fn.term > ln.term or leader is follower:
            return
        match = ln.match_index(follower.id)
        if not match:
            return
        if match > ln.log.last_index:
            raise Violation(f"{leader.id} (leader of term {ln.term}) counts {follower.id} as holding entry "
                            f"{match}, past its own log (..{ln.log.last_index})")
        want = ln.log.term_at(match)
        if want is None or match < fn.log.start_index - 1:
            return  # compacted on either side: committed, so nothing left to count
        have = fn.log.term_at(match)
        if have != want:
            raise Violation(f"{leader.id} (leader of term {ln.term}) counts {follower.id} as holding entry "
                            f"{match} of term {want}, but {follower.id} (term {fn.term}) has "
                            f"{'nothing' if have is None else f'term {have}'} there")

    def _register_leader(self, h: Host, term: int) -> None:
        h.sent_as_leader = max(h.sent_as_leader, term)
        other = self.leaders.setdefault(term, h.id)
        if other != h.id:
            raise Violation(f"election safety: {other} and {h.id} both lead term {term}")

    def _on_elected(self, h: Host) -> None:
        node = h.node
        assert node is not None and h.log is not None
        self._register_leader(h, node.term)
        h.was_leader_term = node.term
        h.elected_at = self.now
        self.stats["elections"] += 1
        for index, (term, data) in self.committed.items():
            # Leader completeness (§5.4): entries committed in earlier terms are in every later
            # leader's log. A stale leader of an older term may legitimately lack newer ones.
            if index >= h.log.start_index and self.commit_term[index] < node.term:
                e = h.log.entry_at(index)
                if e is None or (e.term, e.data) != (term, data):
                    raise Violation(f"leader completeness: {h.id} leads term {node.term} "
                                    f"without committed entry {index}")
        self._log(f"{h.id} elected term={node.term} log={h.log.start_index}..{h.log.last_index}")
        if self.healed_at is None and self.fault_rng.random() < self.profile.fresh_leader_fault:
            # A new leader's first round trips are Raft's riskiest moment: strike there often.
            delay = self.fault_rng.uniform(0, self.profile.strike_window * self.profile.max_delay)
            self._at(self.now + delay, self._strike_leader, h.id, h.incarnation)
        if self.healed_at is None and (self.straggle or self.replay or h.id in self.replay_at_election
                                       or self.fault_rng.random() < self.profile.replay_on_election):
            self.replay_at_election.discard(h.id)
            self._replay_to_fresh_leader(h)
        if self.healed_at is None and self.change_at_next_leader and self.change_at_next_leader[0] != h.id:
            change = self.change_at_next_leader[1]
            self.change_at_next_leader = None
            self._at(self.now + self.fault_rng.uniform(0, self.profile.max_delay / 2), self._change_at, h.id,
                     h.incarnation, change)
        if self.healed_at is None and self.fault_rng.random() < self.profile.change_on_election:
            # A change at a fresh leader, usually before its no-op commits (Ongaro's case).
            delay = self.fault_rng.uniform(0, 2 * self.profile.max_delay)
            self._at(self.now + delay, self._change_at, h.id, h.incarnation)

    def _strike_leader(self, node_id: str, incarnation: int) -> None:
        h = self.hosts[node_id]
        if self.healed_at is not None or h.incarnation != incarnation or h.node is None:
            return
        if self.fault_rng.random() < 0.5:
            self._crash(h)
        else:
            self._isolate(h.id)
            self._log(f"FAULT isolate fresh leader {h.id}")
        self._recompute_health()

    def _on_deposed(self, h: Host) -> None:
        """No disruption: a leader that kept a calm link to a majority is never deposed by a
        term that was born while it was healthy (what pre-vote and check-quorum promise)."""
        term = h.was_leader_term
        h.was_leader_term = -1
        node = h.node
        assert node is not None
        hs = h.healthy_since
        if hs is None or self.now - h.transfer_at < 2 * ELECTION_TIMEOUT:
            return
        grace = max(hs + 4 * ELECTION_TIMEOUT, h.elected_at + 2 * ELECTION_TIMEOUT,
                    self.last_config_change + 4 * ELECTION_TIMEOUT)
        newer = [t for t, seen in self.term_first_seen.items() if t > term and seen > grace]
        if newer:
            raise Violation(f"disruption: healthy leader {h.id} of term {term} (healthy since "
                            f"{hs:.3f}) deposed by term {min(newer)}")

    # ------------------------------------------------------------------ network

    def _send(self, frm: str, to: str, msg: Any) -> None:
        if msg is NODE_BEAT:
            if (frm, to) not in self.cut and self.net_rng.random() >= self.drop:
                delay = self.net_rng.uniform(0.0005, self.profile.max_delay)
                if self.now < self.hosts[frm].lag_until:
                    delay += self.net_rng.uniform(0.2, 1.0)
                self._at(self.now + delay, self._deliver, frm, to, msg)
            return
        self.stats["messages"] += 1
        if (frm, to) in self.cut or self.net_rng.random() < self.drop:
            self.stats["dropped"] += 1
            return
        if self.wire:
            msg = from_dict(json.loads(json.dumps(to_dict(msg))))
        if self.profile.stale_weight or self.profile.replay_on_election or self.profile.minority_returns_weight:
            self.history.append((self.now, frm, to, msg))
        if self.replay and self.net_rng.random() < self.replay:
            self._send_stale(frm, to, msg)  # a copy turns up again, seconds later
        if self.straggle and self.net_rng.random() < self.straggle:
            self._send_stale(frm, to, msg)  # held back: it arrives seconds late, after newer ones
            return
        copies = 2 if self.net_rng.random() < self.dup else 1
        lagging = self.now < self.hosts[frm].lag_until
        for _ in range(copies):
            delay = self.net_rng.uniform(0.0005, self.profile.max_delay)
            if self.net_rng.random() < self.tail:
                delay *= 20
            if lagging:
                delay += self.net_rng.uniform(0.2, 1.0)  # a congested outgoing link
            at = self.now + delay
            if not self.reorder:
                at = max(at, self.link_clock.get((frm, to), 0.0))
                self.link_clock[(frm, to)] = at
            self._at(at, self._deliver, frm, to, msg)

    def _send_stale(self, frm: str, to: str, msg: Any, at: float | None = None) -> None:
        """Deliver `msg` late, past the link's FIFO: by default 30 ms to 2 s later (log-uniform),
        from within the same term to several election timeouts, so it often lands in a later
        term, whose leader may be this message's author or addressee again."""
        if at is None:
            at = self.now + 0.03 * (2.0 / 0.03) ** self.net_rng.random()
        self.stale_until = max(self.stale_until, at)
        self.stats["stale_messages"] += 1
        self._at(at, self._deliver, frm, to, msg)

    def _replay_to_fresh_leader(self, h: Host) -> None:
        """A new leader's first round trips also bring old messages: the answers it was sent in
        older terms (when it led before, they vouched for logs that may have been rewritten
        since) turn up again, and a few old messages to anyone."""
        assert h.node is not None
        old = [m for m in self.history if self.now - m[0] > 0.05]
        if not old:
            return
        term = h.node.term
        answers = [m for m in old if m[2] == h.id and isinstance(m[3], AppendEntriesResponse) and m[3].term < term]
        r = self.net_rng
        picked = answers if r.random() < 0.5 else r.sample(answers, min(len(answers), 4))
        picked += [r.choice(old) for _ in range(r.randint(0, 4))]
        for _, frm, to, msg in picked:
            self._send_stale(frm, to, msg, at=self.now + r.uniform(0, 2 * self.profile.max_delay))

    def _deliver(self, frm: str, to: str, msg: Any) -> None:
        h = self.hosts[to]
        if h.node is None:
            return
        if msg is NODE_BEAT:
            if not h.paused:
                h.last_heard[frm] = self.now
                if h.silence_woken is not None and h.silence_woken[0] == frm:
                    # As RaftHost.peer_back: the silent leader's node is heard again.
                    leader, term = h.silence_woken
                    h.silence_woken = None
                    was_quiet = h.node.quiet
                    self._feed(h, h.node.requiesce(leader, term, h.local(self.now)))
                    if h.node.quiet and not was_quiet:
                        self.stats["requiesced"] += 1
            return
        if h.paused:
            h.inbox.append((frm, msg))
            return
        if self.tracing:
            self._log(f"{frm}->{to} {msg!r}")
        self._count_delivery(h, msg)
        self._feed(h, h.node.receive(frm, msg, h.local(self.now)))
        if isinstance(msg, AppendEntriesResponse):
            self._check_knowledge(h, self.hosts[frm])

    def _count_delivery(self, h: Host, msg: Any) -> None:
        """Count the deliveries that put a node in a state a classic bug needs (see stats)."""
        node, log = h.node, h.log
        assert node is not None and log is not None
        if isinstance(msg, InstallSnapshot) and msg.term >= node.term:
            if node.commit_index >= msg.last_index:
                key = "snapshot_covered"
            elif log.last_index < msg.last_index:
                key = "snapshot_behind"
            elif log.term_at(msg.last_index) != msg.last_term:
                key = "snapshot_conflict"
            else:
                key = "snapshot_at" if log.last_index == msg.last_index else "snapshot_ahead"
            self.stats[key] += 1
        elif isinstance(msg, AppendEntries) and msg.term < node.term:
            self.stats["stale_append"] += 1
        elif isinstance(msg, AppendEntriesResponse) and msg.success and msg.term < node.term and node.role == LEADER:
            self.stats["stale_success"] += 1

    def _tick(self, node_id: str) -> None:
        h = self.hosts[node_id]
        self._at(self.now + TICK, self._tick, node_id)
        if h.up:
            assert h.node is not None
            self._feed(h, h.node.tick(h.local(self.now)))
            self._node_liveness(h)

    def _node_liveness(self, h: Host) -> None:
        """Node-level heartbeats, as the peer transport sends them (one per node pair per
        heartbeat interval, whatever the groups do), and the quiet follower's watch on them:
        its leader's node silent for an election timeout wakes the group (its election timer
        runs again)."""
        beat_due = h.last_heard.get("__beat__", float("-inf")) + HEARTBEAT
        if self.now >= beat_due:
            h.last_heard["__beat__"] = self.now
            for other in self.ids:
                if other != h.id:
                    self._send(h.id, other, NODE_BEAT)
        node = h.node
        assert node is not None
        leader = node.leader_id
        if node.quiet and node.role != LEADER and leader is not None and leader in h.last_heard \
                and self.now - h.last_heard[leader] > ELECTION_TIMEOUT:
            # Silence is ambiguous (a stopped process, a partition, or just a slow one): the
            # group wakes and its election timer runs again; only a closed connection is news
            # of death (leader_node_lost, below).
            self.stats["node_lost"] += 1
            self._log(f"{h.id} lost node heartbeats of {leader}: wake")
            h.silence_woken = (leader, node.term)
            self._feed(h, node.wake(h.local(self.now)))

    def _connection_lost(self, node_id: str, peer: str) -> None:
        h = self.hosts[node_id]
        if h.up and h.node is not None and h.node.leader_id == peer and h.node.role != LEADER:
            self.stats["connection_lost"] += 1
            self._log(f"{h.id} lost its connection to {peer}, its leader")
            self._feed(h, h.node.leader_node_lost(h.local(self.now)))
        elif h.up and h.node is not None and h.node.role == LEADER and (
                peer in h.node.voters or peer in h.node.learners):
            # As RaftHost does: the leader stops counting the lost follower's last answers.
            self.stats["follower_lost"] += 1
            self._log(f"{h.id} lost its connection to {peer}, its follower")
            self._feed(h, h.node.followers_lost([peer], h.local(self.now)))

    # ------------------------------------------------------------------ client

    def _client(self) -> None:
        if self.goal is not None:
            return  # liveness shown; now let every node converge on what was acknowledged
        self._at(self.now + self.client_rng.uniform(0, 2 * self.profile.client_gap), self._client)
        h = self.hosts[self.client_target]
        if not h.up:
            self.client_target = self.client_rng.choice(self.ids)
            return
        assert h.node is not None
        term = h.node.term
        if h.node.role == LEADER and sum(1 for t, _, _ in h.pending.values() if t == term) >= MAX_PENDING:
            return  # client backpressure, as a producer's max in-flight requests (this term's)
        self.proposal_no += 1
        data = b"s%d-p%d" % (self.seed, self.proposal_no)
        result, effects = h.node.propose(data, h.local(self.now))
        if isinstance(result, NotLeader):
            self.client_target = result.leader or self.client_rng.choice(self.ids)
        else:
            self.stats["proposed"] += 1
            h.pending[result] = (h.node.term, data, self.healed_at is not None)
            self._log(f"{h.id} propose {result} {data!r}")
        self._feed(h, effects)

    # ------------------------------------------------------------------ faults

    def _fault(self) -> None:
        if self.healed_at is not None:
            return
        self._at(self.now + self.fault_rng.uniform(*self.profile.fault_gap), self._fault)
        if self.now < self.episode_until:
            return  # an episode is playing out: other faults would only break its chain
        r = self.fault_rng
        b = self.profile.background  # the generic faults, toned down where episodes must play out
        actions = [
            ("partition", b), ("isolate_leader", b), ("partition_leader", self.profile.partition_leader_weight),
            ("one_way", b), ("isolate_one", b),
            ("heal_links", 2.0), ("crash", b * self.profile.crash_weight), ("crash_leader", b * self.profile.crash_weight),
            ("crash_syncing", b * self.profile.crash_weight),
            ("pause", b), ("lossy", b), ("calm", 1.5), ("transfer", self.profile.transfer_weight),
            ("rebalance", self.profile.rebalance_weight), ("compact", self.profile.compact_weight),
            ("skew", 0.3), ("membership", self.profile.membership_weight), ("stale", self.profile.stale_weight),
            ("slow_disk", self.profile.slow_disk_weight), ("slow_link", self.profile.slow_link_weight),
            ("change_then_strike", self.profile.change_then_strike_weight),
            ("cut_acks", self.profile.cut_acks_weight), ("minority_returns", self.profile.minority_returns_weight),
        ]
        if self.n == 1:  # no network to break
            actions = [(a, w) for a, w in actions if a not in (
                "partition", "partition_leader", "one_way", "isolate_one", "transfer", "rebalance", "stale", "slow_link",
                "change_then_strike", "cut_acks", "minority_returns")]
        action = r.choices([a for a, _ in actions], [w for _, w in actions])[0]
        getattr(self, f"_fault_{action}")(r)
        self._recompute_health()

    def _leaders(self) -> list[Host]:
        """Every running node that believes it leads (a deposed one may not know it yet)."""
        return [h for h in self.hosts.values() if h.up and h.node and h.node.role == LEADER]

    def _leader(self) -> Host | None:
        leaders = self._leaders()
        return max(leaders, key=lambda h: h.node.term) if leaders else None  # type: ignore[union-attr]

    def _isolate(self, node_id: str) -> None:
        for other in self.ids:
            if other != node_id:
                self.cut.add((node_id, other))
                self.cut.add((other, node_id))

    def _fault_partition(self, r: random.Random) -> None:
        side = set(r.sample(self.ids, r.randint(1, self.n // 2)))
        self.cut = {(a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)}
        self.stats["partitions"] += 1
        self._log(f"FAULT partition {sorted(side)} | {sorted(set(self.ids) - side)}")

    def _fault_isolate_leader(self, r: random.Random) -> None:
        leader = self._leader()
        if leader is not None:
            self._isolate(leader.id)
            self.stats["partitions"] += 1
            self._log(f"FAULT isolate leader {leader.id}")

    def _fault_partition_leader(self, r: random.Random) -> None:
        # The leader and a minority of followers on one side: it keeps taking proposals that
        # its followers acknowledge but can never commit, while the majority moves on. Such long
        # acknowledged tails are what later leaders must overwrite (Raft Figure 7).
        leader = self._leader()
        if leader is not None:
            others = [i for i in self.ids if i != leader.id]
            side = {leader.id, *r.sample(others, r.randint(0, (self.n - 1) // 2 - 1))}
            self.cut = {(a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)}
            self.stats["partitions"] += 1
            self._log(f"FAULT partition leader {sorted(side)} | {sorted(set(self.ids) - side)}")

    def _fault_isolate_one(self, r: random.Random) -> None:
        victim = r.choice(self.ids)
        self._isolate(victim)
        self._log(f"FAULT isolate {victim}")

    def _fault_one_way(self, r: random.Random) -> None:
        a, b = r.sample(self.ids, 2)
        self.cut.add((a, b))
        self._log(f"FAULT cut link {a}->{b}")

    def _fault_heal_links(self, r: random.Random) -> None:
        self.cut = set()
        self._log("FAULT heal links")

    def _fault_lossy(self, r: random.Random) -> None:
        self.drop, self.dup, self.tail = r.uniform(0, 0.3), r.uniform(0, 0.2), r.uniform(0, 0.1)
        self.reorder = True
        self._log(f"FAULT lossy drop={self.drop:.3f} dup={self.dup:.3f} tail={self.tail:.3f}")

    def _fault_calm(self, r: random.Random) -> None:
        self.drop, self.dup, self.tail = 0.0, r.uniform(0, 0.05), 0.0
        self.reorder = False
        self.straggle = self.replay = 0.0
        self._log(f"FAULT calm dup={self.dup:.3f}")

    def _fault_stale(self, r: random.Random) -> None:
        # Messages of older terms: held back past newer ones, or delivered again much later.
        self.straggle, self.replay = r.uniform(0.01, 0.15), r.uniform(0.01, 0.15)
        self._log(f"FAULT stale straggle={self.straggle:.3f} replay={self.replay:.3f}")

    def _crash(self, h: Host, restart_after: float | None = None) -> None:
        if h.node is not None:
            self._check_durable_claim(h)
            h.max_commit_ever = max(h.max_commit_ever, min(h.commit_seen, h.node.durable_index))
        h.node = None
        h.log = None
        h.paused = False
        h.queue.clear()
        h.vouched = {}
        h.incarnation += 1
        h.healthy_since = None
        self.stats["crashes"] += 1
        self._log(f"FAULT crash {h.id}")
        for other in self.ids:
            if other != h.id:
                # A killed process's sockets close at once: its peers see the connection drop.
                self._at(self.now + self.net_rng.uniform(0.0005, self.profile.max_delay), self._connection_lost,
                         other, h.id)
        if restart_after is None:
            restart_after = self.fault_rng.uniform(0.01, 1.0)
        self._at(self.now + restart_after, self._restart, h.id)

    def _restart(self, node_id: str) -> None:
        h = self.hosts[node_id]
        if h.node is None:
            self._start(h)
            self._recompute_health()

    def _fault_crash(self, r: random.Random) -> None:
        live = [h for h in self.hosts.values() if h.node is not None]
        if live:
            self._crash(r.choice(live))

    def _fault_crash_syncing(self, r: random.Random) -> None:
        # Power loss in the middle of an fsync: whatever it had not flushed is gone.
        syncing = [h for h in self.hosts.values() if h.node is not None and h.syncing]
        if syncing:
            self._crash(r.choice(syncing))

    def _fault_crash_leader(self, r: random.Random) -> None:
        leader = self._leader()
        if leader is not None:
            self._crash(leader)

    def _fault_pause(self, r: random.Random) -> None:
        h = self.hosts[r.choice(self.ids)]
        if h.up:
            h.paused = True
            self.stats["pauses"] += 1
            self._log(f"FAULT pause {h.id}")
            self._at(self.now + r.uniform(0.05, 1.0), self._resume, h.id, h.incarnation)

    def _resume(self, node_id: str, incarnation: int) -> None:
        h = self.hosts[node_id]
        if h.incarnation != incarnation or not h.paused or h.node is None:
            return
        h.paused = False
        self._log(f"resume {h.id}")
        self._drain(h)
        inbox, h.inbox = h.inbox, []
        h.last_heard = {i: self.now for i in self.ids}  # it was asleep: it cannot judge who went silent
        for frm, msg in inbox:
            if h.node is None:
                break
            if frm is None:
                self._feed(h, h.node.log_synced(msg.upto, h.local(self.now)))
            else:
                self._feed(h, h.node.receive(frm, msg, h.local(self.now)))
        self._recompute_health()

    def _fault_transfer(self, r: random.Random) -> None:
        leader = self._leader()
        if leader is not None and leader.node is not None:
            target = r.choice([i for i in self.ids if i != leader.id])
            leader.transfer_at = self.now
            self.stats["transfers"] += 1
            self._log(f"FAULT transfer {leader.id} -> {target}")
            self._feed(leader, leader.node.transfer_leadership(target, leader.local(self.now)))

    def _fault_rebalance(self, r: random.Random) -> None:
        # Preferred-leader balancing (as Kafka and Redpanda do): hand leadership back to the node
        # that led before this one. If a partition cut that node off meanwhile, it now leads
        # again over a log that was rewritten under it, while answers from its old term linger.
        leader = self._leader()
        if leader is None or leader.node is None:
            return
        before = [(t, i) for t, i in self.leaders.items() if t < leader.node.term and i != leader.id]
        if before:
            target = max(before)[1]
            leader.transfer_at = self.now
            self.stats["transfers"] += 1
            self._log(f"FAULT rebalance {leader.id} -> {target}")
            self._feed(leader, leader.node.transfer_leadership(target, leader.local(self.now)))

    def _fault_membership(self, r: random.Random) -> None:
        leaders = self._leaders()
        if leaders:
            # Any node that believes it leads: a deposed leader may still accept a change.
            self._attempt_change(r.choice(leaders))

    def _change_at(self, node_id: str, incarnation: int, change: dict[str, str] | None = None) -> None:
        """A change attempt at one given leader (a fresh one, before its no-op commits)."""
        h = self.hosts[node_id]
        if self.healed_at is None and h.incarnation == incarnation and h.up and h.node is not None \
                and h.node.role == LEADER:
            if change is None:
                self._attempt_change(h)
            else:
                self._change_membership(h, change)

    def _change_again(self) -> None:
        """A further change soon after one: at whoever leads now, often while one is in flight."""
        if self.healed_at is None:
            self._fault_membership(self.fault_rng)

    def _attempt_change(self, leader: Host) -> bool:
        """Add or remove one voter (down to n - 2), sometimes as a learner first. Changes come
        in bursts, at successive leaders, and are followed by strikes on their leader: the
        states in which one change can overlap another, whose bugs the checker must see."""
        r, node = self.fault_rng, leader.node
        assert node is not None
        voters = node.voters
        missing = [i for i in self.ids if i not in voters]
        options = (["add"] if missing else []) + (["remove"] if len(voters) > max(1, self.n - 2) else [])
        if not options:
            return False
        if r.choice(options) == "add":
            peer = r.choice(missing)
            if r.random() < 0.3 and not node.caught_up(peer):
                # An operator often catches the node up as a learner first (thesis §4.2.1).
                self._log(f"FAULT add learner {peer} at {leader.id}")
                self._feed(leader, node.add_learner(peer, leader.local(self.now)))
                return False
            change = {"add": peer}
        else:
            change = {"remove": r.choice(sorted(voters))}
        accepted = self._change_membership(leader, change)
        if self.healed_at is None:
            delay = self.profile.max_delay
            if accepted and r.random() < self.profile.strike_after_change:
                # The change is in the leader's log and hardly anywhere else: strike now.
                self._at(self.now + r.uniform(0, delay), self._strike_leader, leader.id, leader.incarnation)
            if accepted and r.random() < self.profile.change_burst:
                # Another change right away (an operator's script), or while this one travels.
                self._at(self.now + (0.0 if r.random() < 0.5 else r.uniform(0, 2 * delay)), self._change_again)
        return accepted

    def _change_membership(self, leader: Host, change: dict[str, str]) -> bool:
        assert leader.node is not None
        result, effects = leader.node.change_membership(leader.local(self.now), **change)
        self.last_config_change = self.now
        self.stats["config_changes"] += isinstance(result, int)
        if isinstance(result, ChangeRefused):
            if "in progress" in result.reason:
                self.stats["refused_in_progress"] += 1
            elif "of its term" in result.reason:
                self.stats["refused_own_term"] += 1
        self._log(f"FAULT membership {change} at {leader.id}: {result}")
        self._feed(leader, effects)
        self._recompute_health()
        return isinstance(result, int)

    def _restore_members(self) -> None:
        """After healing, an operator adds back every node that was removed."""
        leader = self._leader()
        if leader is not None and leader.node is not None:
            missing = [i for i in self.ids if i not in leader.node.voters]
            if missing and not leader.node.caught_up(missing[0]):
                self._feed(leader, leader.node.add_learner(missing[0], leader.local(self.now)))
            elif missing:
                self._change_membership(leader, {"add": missing[0]})
        self._at(self.now + 0.1, self._restore_members)  # until the run ends: leaders change

    def _fault_compact(self, r: random.Random) -> None:
        # The leader's retention is what sends followers to InstallSnapshot: pick it half the time.
        leader = self._leader() if r.random() < 0.5 else None
        self._compact(leader or self.hosts[r.choice(self.ids)], r.randint(0, 5))

    def _retention(self) -> None:
        """Aggressive retention on every node, as a partition with a tiny retention limit: log
        starts follow commit indexes closely, so any follower the leader has lost track of
        (behind, holding the snapshot point, or past it) is sent an InstallSnapshot."""
        self._at(self.now + self.profile.retention_interval, self._retention)
        for h in self.hosts.values():
            if h.up:
                self._compact(h, self.fault_rng.randint(0, 3))

    def _compact(self, h: Host, keep: int) -> None:
        if h.node is not None:
            # Retention removes only what the application has applied as well as committed.
            upto = min(h.node.commit_index, h.applied) - keep
            if upto < h.node.log.start_index:
                return
            h.node.compact(upto)
            assert h.log is not None
            # Deleting whole segments below the commit point is safe to treat as durable at once.
            start, prefix_term, _, prefix_config = h.log.snapshot()
            d_start, d_prefix, d_entries, _ = h.durable_log
            if start > d_start:
                keep_entries = tuple(e for e in d_entries if e.index >= start)
                h.durable_log = (start, prefix_term, keep_entries, prefix_config)
            self._log(f"compact {h.id} upto {upto} -> start {h.log.start_index}")

    # ------------------------------------------------------------------ episodes
    # Compound faults: short scripts of ordinary faults with random timing, each leading the
    # cluster into a state that a classic bug needs and that independent faults reach rarely.

    def _fault_change_then_strike(self, r: random.Random) -> None:
        """Ongaro's case: a leader appends a membership change and is cut off before anyone
        else has it (its copy survives, in memory and on its disk); the next leader, which
        lacks it, is asked for another change at once, before it has committed anything."""
        leader = self._leader()
        if leader is None or leader.node is None:
            return
        missing = [i for i in self.ids if i not in leader.node.voters]
        follow_up: dict[str, str] | None = None
        # Cut off as the change is appended, so that it reaches no one: the leader sends its
        # appends before its own fsync (thesis §10.2.1), so a strike any later would come after
        # the change left.
        links = set(self.cut)
        self._isolate(leader.id)
        if missing and len(leader.node.voters) % 2 == 0 and r.random() < 0.5:
            # Ongaro's counterexample itself: from an even-sized configuration the struck leader
            # adds a node, and the next leader removes the struck one.
            if not self._change_membership(leader, {"add": r.choice(missing)}):
                self.cut = links
                return
            follow_up = {"remove": leader.id}
        elif not self._attempt_change(leader):
            self.cut = links
            return
        self._log(f"FAULT isolate {leader.id} with its change")
        self.change_at_next_leader = (leader.id, follow_up)
        self.episode_until = self.now + 3 * ELECTION_TIMEOUT

    def _fault_cut_acks(self, r: random.Random) -> None:
        """A follower's answers are lost (its link to the leader is cut one way) while the leader
        commits with the others and its retention moves the log start past what it knows of
        that follower: the leader sends InstallSnapshot to a follower that already holds the
        snapshot's last entry, and entries after it that it has acknowledged."""
        leader = self._leader()
        if leader is None or leader.node is None or not leader.node.peers:
            return
        follower = r.choice(leader.node.peers)
        self.cut.add((follower, leader.id))
        self._log(f"FAULT cut acks {follower}->{leader.id}")
        self._at(self.now + r.uniform(1, 3) * HEARTBEAT, self._compact_now, leader.id, leader.incarnation)
        until = self.now + r.uniform(6, 12) * HEARTBEAT
        self._at(until, self._uncut, follower, leader.id)
        self.episode_until = until

    def _compact_now(self, node_id: str, incarnation: int) -> None:
        h = self.hosts[node_id]
        if h.incarnation == incarnation:
            self._compact(h, 0)

    def _uncut(self, a: str, b: str) -> None:
        self.cut.discard((a, b))
        self._recompute_health()

    def _fault_slow_link(self, r: random.Random) -> None:
        # A congested link: a node's messages arrive most of a second late. When it is the
        # leader it is deposed, and its last AppendEntries reach followers after they have
        # followed (and answered) its successor.
        leader = self._leader() if r.random() < 0.7 else None
        h = leader or self.hosts[r.choice(self.ids)]
        h.lag_until = self.now + r.uniform(0.2, 1.2)
        self._log(f"FAULT slow link from {h.id} until {h.lag_until:.3f}")

    def _fault_minority_returns(self, r: random.Random) -> None:
        """The leader and one follower are cut off from the rest: the follower acknowledges
        entries the leader can never commit, while the majority elects a leader of its own.
        When the links heal, leadership is handed back to the old leader (preferred-leader
        balancing) over a log the new leader rewrote, and the follower's answers from the old
        term come in again (they are replayed to it when it is elected)."""
        leader = self._leader()
        if leader is None or leader.node is None or len(leader.node.peers) < 3:
            return  # with fewer than 4 voters a leader and a follower are no minority
        side = {leader.id, r.choice(leader.node.peers)}
        self.cut = {(a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)}
        self.stats["partitions"] += 1
        self._log(f"FAULT minority with the leader {sorted(side)}")
        back = self.now + r.uniform(1.5, 3) * ELECTION_TIMEOUT
        self._at(back, self._return_leadership, leader.id, leader.incarnation)
        self.episode_until = back + 6 * HEARTBEAT + 2 * ELECTION_TIMEOUT

    def _return_leadership(self, node_id: str, incarnation: int) -> None:
        h = self.hosts[node_id]
        if self.healed_at is not None or h.incarnation != incarnation:
            return
        self.cut = set()
        self._log("FAULT heal links")
        self._recompute_health()
        self.replay_at_election.add(node_id)
        self._at(self.now + self.fault_rng.uniform(1, 4) * HEARTBEAT, self._transfer_to, node_id)

    def _transfer_to(self, target: str) -> None:
        leader = self._leader()
        if self.healed_at is None and leader is not None and leader.node is not None and leader.id != target:
            leader.transfer_at = self.now
            self.stats["transfers"] += 1
            self._log(f"FAULT transfer {leader.id} -> {target}")
            self._feed(leader, leader.node.transfer_leadership(target, leader.local(self.now)))

    def _fault_slow_disk(self, r: random.Random) -> None:
        # A disk that stalls (fsync taking most of a second): answers and votes queued behind it
        # leave late, often in an older term; a leader's sends wait too, so it is deposed.
        leader = self._leader() if r.random() < 0.5 else None
        h = leader or self.hosts[r.choice(self.ids)]
        h.slow_until = self.now + r.uniform(0.2, 1.5)
        self._log(f"FAULT slow disk {h.id} until {h.slow_until:.3f}")

    def _fault_skew(self, r: random.Random) -> None:
        h = self.hosts[r.choice(self.ids)]
        # Keep local time monotonic: re-anchor the offset at the current instant.
        local_now = h.local(self.now)
        h.drift = r.uniform(0.9, 1.1)
        h.offset = local_now - self.now * h.drift
        self._log(f"FAULT skew {h.id} drift={h.drift:.3f}")

    def _responsive(self, h: Host) -> bool:
        return h.up and self.now >= h.slow_until and self.now >= h.lag_until

    def _recompute_health(self) -> None:
        """A node is healthy while it runs and has calm two-way links to a majority."""
        calm = (self.drop == 0 and self.tail == 0 and not self.reorder and not self.straggle and not self.replay
                and self.now >= self.stale_until)
        for h in self.hosts.values():
            voters = h.node.voters if h.node is not None else frozenset()
            healthy = calm and self._responsive(h) and h.id in voters and 1 + sum(
                1 for o in self.hosts.values()
                if o is not h and o.id in voters and self._responsive(o)
                and (h.id, o.id) not in self.cut and (o.id, h.id) not in self.cut
            ) >= len(voters) // 2 + 1
            if not healthy:
                h.healthy_since = None
            elif h.healthy_since is None:
                h.healthy_since = self.now

    def _heal(self) -> None:
        self.healed_at = self.now
        self.cut = set()
        self.drop = self.dup = self.tail = self.straggle = self.replay = 0.0
        self.reorder = False
        self._log("HEAL everything")
        self._at(self.now, self._restore_members)
        for h in self.hosts.values():
            h.slow_until = h.lag_until = float("-inf")
            if h.node is None:
                self._start(h)
            elif h.paused:
                self._resume(h.id, h.incarnation)
        self._recompute_health()

    def _final_check(self) -> None:
        for index, value in self.acked.items():
            if self.committed.get(index) != value:
                raise Violation(f"acknowledged proposal at {index} lost")
        for h in self.hosts.values():
            assert h.log is not None
            for index, value in self.acked.items():
                e = h.log.entry_at(index)
                if h.log.start_index <= index <= (self.goal or 0) and (e is None or (e.term, e.data) != value):
                    raise Violation(f"acknowledged proposal at {index} missing on {h.id}")

    def _check_log_matching(self, h: Host, e: Entry, prev_term: int | None) -> None:
        key = (e.index, e.term)
        value = (e.data, prev_term)
        known = self.entry_keys.setdefault(key, value)
        if known != value:
            raise Violation(f"log matching: {h.id} has entry {key} = {value}, elsewhere {known}")


def run_seed(
    seed: int,
    nodes: int = 3,
    node_factory: NodeFactory = RaftNode,
    trace: bool = False,
    check_durability: bool = True,
    regime: str = "mixed",
    wire: bool = False,
) -> SimResult:
    """Run one seed and return its result (violation or None, trace, stats)."""
    return Simulation(seed, nodes, node_factory, trace, check_durability=check_durability,
                      regime=regime, wire=wire).run()


def load_factory(spec: str) -> NodeFactory:
    """A node factory named `module:attr` or `path/to/file.py:attr` (for the CLI, which can
    then run the broken variants of tests/raft/broken_variants.py)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"expected MODULE:NAME or FILE.py:NAME, got {spec!r}")
    if where.endswith(".py"):
        loader_spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"cannot load {where}")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{where} has no node factory {name!r}")
    return factory  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamlog.raft.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the seed to run (or the first seed with --soak)")
    parser.add_argument("--nodes", type=int, default=None, choices=[1, 3, 5],
                        help="cluster size (default 3; --soak alternates 3 and 5 unless given)")
    parser.add_argument("--trace", action="store_true", help="print every event of the run")
    parser.add_argument("--regime", default="mixed", choices=REGIMES, help="fault profile family")
    parser.add_argument("--wire", action="store_true", help="send messages through their JSON form")
    parser.add_argument("--soak", action="store_true", help="run many seeds and report every violation")
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds --soak runs")
    parser.add_argument("--node-factory", metavar="MODULE:NAME", default=None,
                        help="build nodes with this callable instead of RaftNode, e.g. "
                             "tests/raft/broken_variants.py:NoOngaroFix (a broken variant)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    factory: NodeFactory = RaftNode
    if args.node_factory is not None:
        try:
            factory = load_factory(args.node_factory)
        except (ValueError, ImportError, OSError) as e:
            parser.error(f"--node-factory: {e}")
    if not args.soak:
        nodes = args.nodes or 3
        result = run_seed(args.seed, nodes, factory, trace=args.trace, regime=args.regime, wire=args.wire)
        for line in result.trace:
            print(line)
        print(f"seed {args.seed} nodes {nodes} regime {args.regime}: "
              f"{'OK' if result.ok else 'VIOLATION'} {result.stats}")
        if not result.ok:
            print(result.violation)
        return 0 if result.ok else 1
    failures = 0
    started = _wallclock_for_cli_only.monotonic()  # reporting only; never reaches the simulation
    totals: dict[str, float] = {}
    for seed in range(args.seed, args.seed + args.seeds):
        nodes = args.nodes or (3 if seed % 2 == 0 else 5)
        result = run_seed(seed, nodes, factory, regime=args.regime, wire=args.wire)
        for k, v in result.stats.items():
            if isinstance(v, (int, float)) and k != "recovered_in":
                totals[k] = totals.get(k, 0) + v
        if not result.ok:
            failures += 1
            print(result.violation, flush=True)
    elapsed = _wallclock_for_cli_only.monotonic() - started
    print(f"soak ({args.regime}): {args.seeds} seeds from {args.seed}, {failures} violations, {elapsed:.1f}s; totals {totals}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

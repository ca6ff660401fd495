"""A seeded, deterministic simulator for the Raft core, with safety checks after every step.

One seed fixes everything: the fault profile, every network delay, drop and duplicate, every
crash, pause and clock drift, and every node's election-timeout randomness. Nothing reads the
wall clock or the global `random` module, so a failing seed replays exactly:

    python -m streamlog.raft.sim --seed 1234 --nodes 5 --trace

The fault model and the invariants are described in docs/raft.md; in short the network
delays, drops, duplicates and reorders messages and partitions nodes (random halves, an
isolated leader, one-way links); nodes crash (losing whatever was not fsynced), restart,
pause, and run their clocks at different rates. After the fault phase everything heals and
the cluster must elect a leader and commit new proposals within a bounded simulated time.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time as _wallclock_for_cli_only
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from streamlog.raft.core import (
    LEADER,
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
from streamlog.raft.messages import AppendEntries, AppendEntriesResponse, RequestVoteResponse, from_dict, to_dict

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
        self.version += 1
        super().truncate_prefix(upto_index)

    def reset(self, index: int, term: int, config: Members | None = None) -> None:
        self.version += 1
        self._host.registered_upto = min(self._host.registered_upto, index)
        super().reset(index, term, config)

    def append(self, entries: Sequence[Entry]) -> None:
        self.version += 1
        super().append(entries)

    def truncate_suffix(self, from_index: int) -> None:
        node = self._host.node
        if node is not None and from_index <= node.commit_index:
            raise Violation(f"{self._host.id} truncates committed entries from {from_index} "
                            f"(commit index {node.commit_index})")
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
        self.syncing = False
        self.paused = False
        self.inbox: list[tuple[str, Any]] = []
        self.incarnation = 0
        self.drift = drift
        self.offset = offset
        self.applied = 0
        self.commit_seen = 0  # highest Commit released in this incarnation
        self.max_commit_ever = 0  # across incarnations: must stay durable
        self.pending: dict[int, tuple[int, bytes, bool]] = {}
        self.was_leader_term = -1
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
    liveness_bound: float = 10.0  # simulated seconds after healing by which the cluster converges

    @classmethod
    def draw(cls, rng: random.Random, regime: str = "mixed") -> Profile:
        """`mixed` varies every knob; `churn` keeps leaders short-lived and replication slow
        (one entry per message, one message in flight), the regime where a new leader still
        catching followers up is struck down: where commit-rule bugs (Figure 8) live."""
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
        )
        if regime == "churn":
            # One entry per round trip makes catching a re-added node up slow: allow for it.
            p = attrs.evolve(p, fault_gap=(0.02, 0.2), max_batch_bytes=8, max_inflight=1,
                             crash_weight=3.0, fresh_leader_fault=0.5, liveness_bound=20.0)
        return p


REGIMES = ("mixed", "churn")
ELECTION_TIMEOUT = 0.3
HEARTBEAT = 0.05
TICK = 0.01
MAX_PENDING = 64
MAX_EVENTS = 400_000  # a healthy seed needs a few thousand; more means a livelock or storm


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
        )
        self.ids = [f"n{i + 1}" for i in range(nodes)]
        self.quorum = nodes // 2 + 1
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
        self.link_clock: dict[tuple[str, str], float] = {}
        self.goal: int | None = None
        # Checker state.
        self.leaders: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
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
                      "pauses": 0, "partitions": 0, "transfers": 0, "snapshots": 0, "proposed": 0, "config_changes": 0}
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
        h.node = self.factory(h.id, self.ids, h.log, h.durable_hs, self.config, rng, h.local(self.now))
        h.queue.clear()
        h.syncing = False
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
        self._log(f"{h.id} start #{h.incarnation} term={h.durable_hs.term} vote={h.durable_hs.voted_for} "
                  f"log={start}..{h.log.last_index}")

    def _feed(self, h: Host, effects: list) -> None:
        h.queue.extend(effects)
        self._drain(h)
        self._after_step(h)

    def _drain(self, h: Host) -> None:
        while h.queue and not h.syncing and not h.paused:
            eff = h.queue.popleft()
            if isinstance(eff, Send):
                if self.check_durability:
                    self._check_durable_send(h, eff.msg)
                if isinstance(eff.msg, AppendEntries):
                    prev_term = eff.msg.prev_term
                    for e in eff.msg.entries:
                        self._check_log_matching(h, e, prev_term)
                        prev_term = e.term
                self._send(h.id, eff.to, eff.msg)
            elif isinstance(eff, (PersistHardState, SyncLog)):
                if isinstance(eff, SyncLog) and h.log is not None and h.log.version == h.durable_version:
                    continue  # group commit: an earlier fsync already covered these writes
                h.syncing = True
                delay = self.net_rng.uniform(0.0001, self.profile.max_fsync)
                self._at(self.now + delay, self._fsync_done, h.id, h.incarnation, eff)
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
            for state in self._states(c):
                if has(state):
                    continue
                mine = last(state)
                config = self._config_of(state)  # a candidate counts votes in its own configuration
                voters = (c.id in config) + sum(1 for v in config if v != c.id and min(lasts[v]) <= mine)
                if c.id in config and voters >= len(config) // 2 + 1:
                    raise Violation(f"committed entry {index} is not protected: {c.id} lacks it but "
                                    f"could win with {voters} votes (its log ends at {mine})")

    def _config_of(self, state: DiskState) -> frozenset[str]:
        _, _, entries, prefix_config = state
        for e in reversed(entries):
            if e.config is not None:
                return frozenset(e.config)
        return frozenset(prefix_config) if prefix_config is not None else frozenset(self.ids)

    def _check_durable_send(self, h: Host, msg: Any) -> None:
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
            if m >= start - 1 and durable_term != h.log.term_at(m) and m > 0:
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
        h.syncing = False
        if not h.paused:
            self._drain(h)
            self._after_step(h)

    def _apply(self, h: Host, upto: int) -> None:
        assert h.log is not None and h.node is not None
        if upto < h.commit_seen:
            raise Violation(f"{h.id} commit index went back from {h.commit_seen} to {upto}")
        h.commit_seen = upto
        h.max_commit_ever = max(h.max_commit_ever, upto)
        for index in range(max(h.applied + 1, h.log.start_index), upto + 1):
            e = h.log.entry_at(index)
            if e is None:
                raise Violation(f"{h.id} committed {index} but does not have it")
            known = self.committed.setdefault(index, (e.term, e.data))
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
        if node.role == LEADER:
            if h.was_leader_term != node.term:
                self._on_elected(h)
        elif h.was_leader_term >= 0:
            self._on_deposed(h)

    def _on_elected(self, h: Host) -> None:
        node = h.node
        assert node is not None and h.log is not None
        other = self.leaders.setdefault(node.term, h.id)
        if other != h.id:
            raise Violation(f"election safety: {other} and {h.id} both lead term {node.term}")
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
        self.stats["messages"] += 1
        if (frm, to) in self.cut or self.net_rng.random() < self.drop:
            self.stats["dropped"] += 1
            return
        if self.wire:
            msg = from_dict(json.loads(json.dumps(to_dict(msg))))
        copies = 2 if self.net_rng.random() < self.dup else 1
        for _ in range(copies):
            delay = self.net_rng.uniform(0.0005, self.profile.max_delay)
            if self.net_rng.random() < self.tail:
                delay *= 20
            at = self.now + delay
            if not self.reorder:
                at = max(at, self.link_clock.get((frm, to), 0.0))
                self.link_clock[(frm, to)] = at
            self._at(at, self._deliver, frm, to, msg)

    def _deliver(self, frm: str, to: str, msg: Any) -> None:
        h = self.hosts[to]
        if h.node is None:
            return
        if h.paused:
            h.inbox.append((frm, msg))
            return
        if self.tracing:
            self._log(f"{frm}->{to} {msg!r}")
        self._feed(h, h.node.receive(frm, msg, h.local(self.now)))

    def _tick(self, node_id: str) -> None:
        h = self.hosts[node_id]
        self._at(self.now + TICK, self._tick, node_id)
        if h.up:
            assert h.node is not None
            self._feed(h, h.node.tick(h.local(self.now)))

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
        r = self.fault_rng
        actions = [
            ("partition", 1.0), ("isolate_leader", 1.0), ("one_way", 1.0), ("isolate_one", 1.0),
            ("heal_links", 2.0), ("crash", self.profile.crash_weight), ("crash_leader", self.profile.crash_weight),
            ("crash_syncing", self.profile.crash_weight),
            ("pause", 1.0), ("lossy", 1.0), ("calm", 1.5), ("transfer", 0.5), ("compact", 0.7), ("skew", 0.3),
            ("membership", 0.7),
        ]
        if self.n == 1:  # no network to break
            actions = [(a, w) for a, w in actions if a not in ("partition", "one_way", "isolate_one", "transfer")]
        action = r.choices([a for a, _ in actions], [w for _, w in actions])[0]
        getattr(self, f"_fault_{action}")(r)
        self._recompute_health()

    def _leader(self) -> Host | None:
        leaders = [h for h in self.hosts.values() if h.up and h.node and h.node.role == LEADER]
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
        self._log(f"FAULT calm dup={self.dup:.3f}")

    def _crash(self, h: Host) -> None:
        h.node = None
        h.log = None
        h.paused = False
        h.queue.clear()
        h.incarnation += 1
        h.healthy_since = None
        self.stats["crashes"] += 1
        self._log(f"FAULT crash {h.id}")
        self._at(self.now + self.fault_rng.uniform(0.01, 1.0), self._restart, h.id)

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
        for frm, msg in inbox:
            if h.node is None:
                break
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

    def _fault_membership(self, r: random.Random) -> None:
        leader = self._leader()
        if leader is None or leader.node is None:
            return
        voters = leader.node.voters
        missing = [i for i in self.ids if i not in voters]
        if missing and (len(voters) <= max(1, self.n - 2) or r.random() < 0.5):
            peer = r.choice(missing)
            if r.random() < 0.5 and not leader.node.caught_up(peer):
                # Usually an operator catches the node up as a learner first (thesis §4.2.1).
                self._log(f"FAULT add learner {peer} at {leader.id}")
                self._feed(leader, leader.node.add_learner(peer, leader.local(self.now)))
                return
            change = {"add": peer}
        elif len(voters) > max(1, self.n - 2):
            change = {"remove": r.choice(sorted(voters))}
        else:
            return
        self._change_membership(leader, change)

    def _change_membership(self, leader: Host, change: dict[str, str]) -> None:
        assert leader.node is not None
        result, effects = leader.node.change_membership(leader.local(self.now), **change)
        self.last_config_change = self.now
        self.stats["config_changes"] += isinstance(result, int)
        self._log(f"FAULT membership {change} at {leader.id}: {result}")
        self._feed(leader, effects)
        self._recompute_health()

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
        h = self.hosts[r.choice(self.ids)]
        if h.node is not None:
            # Retention removes only what the application has applied as well as committed.
            upto = min(h.node.commit_index, h.applied) - r.randint(0, 5)
            h.node.compact(upto)
            assert h.log is not None
            # Deleting whole segments below the commit point is safe to treat as durable at once.
            start, prefix_term, _, prefix_config = h.log.snapshot()
            d_start, d_prefix, d_entries, _ = h.durable_log
            if start > d_start:
                keep = tuple(e for e in d_entries if e.index >= start)
                h.durable_log = (start, prefix_term, keep, prefix_config)
            self._log(f"FAULT compact {h.id} upto {upto} -> start {h.log.start_index}")

    def _fault_skew(self, r: random.Random) -> None:
        h = self.hosts[r.choice(self.ids)]
        # Keep local time monotonic: re-anchor the offset at the current instant.
        local_now = h.local(self.now)
        h.drift = r.uniform(0.9, 1.1)
        h.offset = local_now - self.now * h.drift
        self._log(f"FAULT skew {h.id} drift={h.drift:.3f}")

    def _recompute_health(self) -> None:
        """A node is healthy while it runs and has calm two-way links to a majority."""
        calm = self.drop == 0 and self.tail == 0 and not self.reorder
        for h in self.hosts.values():
            voters = h.node.voters if h.node is not None else frozenset()
            healthy = calm and h.up and h.id in voters and 1 + sum(
                1 for o in self.hosts.values()
                if o is not h and o.id in voters and o.up
                and (h.id, o.id) not in self.cut and (o.id, h.id) not in self.cut
            ) >= len(voters) // 2 + 1
            if not healthy:
                h.healthy_since = None
            elif h.healthy_since is None:
                h.healthy_since = self.now

    def _heal(self) -> None:
        self.healed_at = self.now
        self.cut = set()
        self.drop = self.dup = self.tail = 0.0
        self.reorder = False
        self._log("HEAL everything")
        self._at(self.now, self._restore_members)
        for h in self.hosts.values():
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamlog.raft.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the seed to run (or the first seed with --soak)")
    parser.add_argument("--nodes", type=int, default=3, choices=[1, 3, 5])
    parser.add_argument("--trace", action="store_true", help="print every event of the run")
    parser.add_argument("--regime", default="mixed", choices=REGIMES, help="fault profile family")
    parser.add_argument("--wire", action="store_true", help="send messages through their JSON form")
    parser.add_argument("--soak", action="store_true", help="run many seeds, alternating 3 and 5 nodes")
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds --soak runs")
    args = parser.parse_args(argv)
    if not args.soak:
        result = run_seed(args.seed, args.nodes, trace=args.trace, regime=args.regime, wire=args.wire)
        for line in result.trace:
            print(line)
        print(f"seed {args.seed} nodes {args.nodes} regime {args.regime}: "
              f"{'OK' if result.ok else 'VIOLATION'} {result.stats}")
        if not result.ok:
            print(result.violation)
        return 0 if result.ok else 1
    failures = 0
    started = _wallclock_for_cli_only.monotonic()  # reporting only; never reaches the simulation
    totals: dict[str, float] = {}
    for seed in range(args.seed, args.seed + args.seeds):
        nodes = 3 if seed % 2 == 0 else 5
        result = run_seed(seed, nodes, regime=args.regime, wire=args.wire)
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

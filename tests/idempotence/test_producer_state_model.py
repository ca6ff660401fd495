"""The table and the sequencer together, in a model of a replicated partition (hypothesis).

Three replicas, each a log (a list of stored batches) and its own
L{ProducerStateTable}, fed every batch it stores in index order.  A leader
checks and appends; followers catch up from the leader, truncating a
suffix that diverges (a leader change that lost uncommitted entries);
snapshot installs, restarts (the table rebuilt from the log, or from the
snapshot plus the log after it), expiry sweeps and time passing; three
producers (more than the table may hold: evictions and refusals) driven by
real L{Sequencer}s over a network that drops, delays and reorders requests,
loses answers, and delivers copies of old attempts.

Invariants, after every step: no replica's log holds a batch twice; each
producer's batches are in its send order in every log; every batch a
table remembers is in its replica's log at that index with those offsets
(so a DUPLICATE answer is always true); every acknowledgement (first or
duplicate) names the offsets where the batch really is, committed.  At the
end the faults stop and everything drains: every batch is acknowledged or
failed, each acknowledged batch is in the log exactly once, a batch failed
as certainly-not-stored is not in it.

Timing assumptions of the model (the same as the product's, docs/storage.md):
a producer gives up a batch DELIVERY ms after making it, a request copy is
gone LIFETIME ms after it was sent, and the table evicts only producers
idle at least evict_min_idle_ms > DELIVERY + LIFETIME.
"""

from __future__ import annotations

import itertools
import os

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from producer_sequencer import LOST, Acked, Failed, SequencedBatch, Sequencer

from streamlog.idempotence.rules import Outcome
from streamlog.idempotence.table import ProducerStateConfig, ProducerStateTable
from streamlog.storage.base import RecordBatch

DELIVERY = 3_000
LIFETIME = 1_500
CONFIG = ProducerStateConfig(window=8, max_producers=2, expiry_ms=8_000, evict_min_idle_ms=5_000, undo_limit=6)
PART = "p"
PRODUCERS = (1, 2, 3)
REPLICAS = 3


@attrs.frozen
class Stored:
    """One entry of a model log."""

    uid: int  # unique per append (two appends of one token are two entries)
    pid: int
    epoch: int
    seq: int
    count: int
    base_offset: int
    ts: int
    token: tuple[int, int]

    def batch(self, index: int) -> RecordBatch:
        return RecordBatch(self.base_offset, self.count, 1, self.ts, self.ts, b"", producer_id=self.pid,
                           producer_epoch=self.epoch, base_sequence=self.seq, raft_index=index)


@attrs.define
class Replica:
    log: list[Stored] = attrs.Factory(list)
    table: ProducerStateTable = attrs.Factory(lambda: ProducerStateTable(CONFIG))
    base: tuple[bytes, int] | None = None  # the snapshot its log was reset to, and its index

    def end_offset(self) -> int:
        return self.log[-1].base_offset + self.log[-1].count if self.log else 0


@attrs.define
class Request:
    pid: int
    epoch: int
    seq: int
    count: int
    token: tuple[int, int]
    batch: SequencedBatch
    dest: int
    sent_at: int


class ReplicatedPartition(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000_000
        self.replicas = [Replica() for _ in range(REPLICAS)]
        self.leader = 0
        self.commit = 0
        self.uids = itertools.count(1)
        self.seqs = {pid: Sequencer(pid, 0) for pid in PRODUCERS}
        self.made: dict[tuple[int, int], int] = {}  # token -> time made
        self.counter = {pid: itertools.count() for pid in PRODUCERS}
        self.network: list[Request] = []
        self.pending: list[tuple[Request, int, int, bool, bool]] = []  # request, index, uid, duplicate, lose
        self.acked: dict[tuple[int, int], tuple[int, int]] = {}
        self.failed: dict[tuple[int, int], bool] = {}
        self.bumps = 0
        self.outcomes: set[str] = set()

    # -- the producers --------------------------------------------------------------------------

    def _effects(self, effects: list[Acked | Failed]) -> None:
        for effect in effects:
            assert effect.token not in self.acked and effect.token not in self.failed, effect
            if isinstance(effect, Acked):
                self.acked[effect.token] = (effect.base_offset, effect.last_offset)
                self._assert_committed_at(effect.token, effect.base_offset, effect.last_offset)
            else:
                self.failed[effect.token] = effect.maybe_stored

    def _answer(self, req: Request, code: str, base: int = -1, last: int = -1) -> None:
        self.outcomes.add(code)
        seq = self.seqs[req.pid]
        self._effects(seq.answer(PART, req.batch, code, base, last, epoch=req.epoch))

    @rule(pid=st.sampled_from(PRODUCERS), count=st.integers(1, 3))
    def make_batch(self, pid: int, count: int) -> None:
        seq = self.seqs[pid]
        if seq.room(PART):
            token = (pid, next(self.counter[pid]))
            self.made[token] = self.now
            seq.add(PART, token, count)

    @rule(pid=st.sampled_from(PRODUCERS))
    def send(self, pid: int) -> None:
        seq = self.seqs[pid]
        if seq.epoch_bump_ready():
            seq.bump_epoch(seq.epoch + 1)
            self.bumps += 1
        for b in seq.to_send(PART):
            self.network.append(Request(pid, b.epoch, b.base_sequence, b.count, b.token, b, self.leader, self.now))

    @rule(data=st.data(), lose=st.booleans())
    def deliver(self, data: st.DataObject, lose: bool) -> None:
        """Deliver any request in the network (reordering), maybe losing its answer."""
        if not self.network:
            return
        req = self.network.pop(data.draw(st.integers(0, len(self.network) - 1)))
        self._deliver(req, lose)

    @rule(data=st.data(), copy=st.booleans())
    def drop(self, data: st.DataObject, copy: bool) -> None:
        """A request is lost (or, with C{copy}, the client times out while a copy stays in the network)."""
        if not self.network:
            return
        k = data.draw(st.integers(0, len(self.network) - 1))
        req = self.network[k] if copy else self.network.pop(k)
        self._answer(req, LOST)

    def _deliver(self, req: Request, lose: bool) -> None:
        if req.dest != self.leader:
            self._answer(req, LOST)  # NOT_LEADER: retriable
            return
        leader = self.replicas[self.leader]
        decision = leader.table.check(req.pid, req.epoch, req.seq, req.count, self.now)
        assert decision.outcome is not Outcome.INVALID, decision
        if decision.outcome is Outcome.NEW:
            entry = Stored(next(self.uids), req.pid, req.epoch, req.seq, req.count, leader.end_offset(), self.now, req.token)
            leader.log.append(entry)
            leader.table.apply(req.pid, req.epoch, req.seq, req.count, entry.base_offset, len(leader.log), self.now)
            self.pending.append((req, len(leader.log), entry.uid, False, lose))
        elif decision.outcome is Outcome.DUPLICATE:
            original = leader.log[decision.raft_index - 1]
            # the table's claim is true of the log: that index holds this very batch at those offsets
            assert (original.token, original.base_offset, original.base_offset + original.count - 1) == (
                req.token, decision.base_offset, decision.last_offset), (original, decision, req)
            self.pending.append((req, decision.raft_index, original.uid, True, lose))
        else:
            code = decision.outcome.code
            assert code is not None
            self._answer(req, LOST if lose else code)

    # -- replication ----------------------------------------------------------------------------

    def _matching(self, replica: Replica) -> int:
        """How long a prefix of the leader's log C{replica} holds."""
        leader_log = self.replicas[self.leader].log
        n = 0
        for a, b in zip(replica.log, leader_log):
            if a.uid != b.uid:
                break
            n += 1
        return n

    @rule(follower=st.integers(0, REPLICAS - 1), n=st.integers(1, 8))
    def replicate(self, follower: int, n: int) -> None:
        if follower == self.leader:
            return
        replica = self.replicas[follower]
        common = self._matching(replica)
        if len(replica.log) > common:
            replica.table.truncate_after(common)
            del replica.log[common:]
        for entry in self.replicas[self.leader].log[common:common + n]:
            replica.log.append(entry)
            replica.table.apply(entry.pid, entry.epoch, entry.seq, entry.count, entry.base_offset, len(replica.log), entry.ts)

    @rule()
    def advance_commit(self) -> None:
        leader_log = self.replicas[self.leader].log
        held = sorted((self._matching(r) for r in self.replicas), reverse=True)
        self.commit = max(self.commit, min(held[REPLICAS // 2], len(leader_log)))
        for r in self.replicas:
            r.table.mark_committed(min(self.commit, self._matching(r)))
        still = []
        for req, index, uid, duplicate, lose in self.pending:
            if index > self.commit:
                still.append((req, index, uid, duplicate, lose))
                continue
            entry = leader_log[index - 1]
            if entry.uid != uid:
                self._answer(req, LOST)
            elif lose:
                self._answer(req, LOST)
            else:
                self._answer(req, "DUPLICATE" if duplicate else "OK", entry.base_offset, entry.base_offset + entry.count - 1)
        self.pending = still

    @rule(candidate=st.integers(0, REPLICAS - 1))
    def elect(self, candidate: int) -> None:
        """A new leader: any replica holding every committed entry (it keeps its own uncommitted suffix)."""
        if candidate == self.leader or self._matching(self.replicas[candidate]) < self.commit:
            return
        for req, *_ in self.pending:
            self._answer(req, LOST)
        self.pending = []
        self.leader = candidate

    @rule(candidate=st.integers(0, REPLICAS - 1), pid=st.sampled_from(PRODUCERS))
    def leader_writes_alone_then_fails_over(self, candidate: int, pid: int) -> None:
        """The leader appends what reaches it but replicates none of it, then another replica takes over.

        The old leader's uncommitted suffix diverges from what the new leader
        will append; when it catches up as a follower, that suffix is truncated.
        """
        self.make_batch(pid, 1)
        self.send(pid)
        while self.network:
            self._deliver(self.network.pop(0), lose=False)
        self.elect(candidate)

    @rule(follower=st.integers(0, REPLICAS - 1))
    def install_snapshot(self, follower: int) -> None:
        """The follower's log is reset after the commit index, its table restored from the leader's snapshot there."""
        if follower == self.leader or self.commit == 0:
            return
        leader = self.replicas[self.leader]
        data = leader.table.snapshot(self.commit)
        replica = self.replicas[follower]
        replica.log = list(leader.log[:self.commit])  # the committed prefix, as the snapshot stands for it
        replica.table = ProducerStateTable.restore(data, CONFIG)
        replica.base = (data, self.commit)

    @rule(which=st.integers(0, REPLICAS - 1))
    def restart(self, which: int) -> None:
        """The table is rebuilt from the log (after the snapshot it was reset to, if any)."""
        replica = self.replicas[which]
        batches = [e.batch(i) for i, e in enumerate(replica.log, start=1)]
        if replica.base is None:
            replica.table = ProducerStateTable.rebuild(batches, CONFIG)
        else:
            data, index = replica.base
            replica.table = ProducerStateTable.rebuild(batches[index:], CONFIG, snapshot=data)
        if which == self.leader:
            for req, *_ in self.pending:
                self._answer(req, LOST)
            self.pending = []

    @rule(which=st.integers(0, REPLICAS - 1))
    def expire(self, which: int) -> None:
        self.replicas[which].table.expire(self.now)

    @rule(pid=st.sampled_from(PRODUCERS), count=st.integers(1, 3))
    def healthy_round(self, pid: int, count: int) -> None:
        """A stretch without faults: a new batch, everything sent, delivered in order, replicated, committed."""
        self.make_batch(pid, count)
        self._round()

    def _round(self) -> None:
        for pid in PRODUCERS:
            self.send(pid)
        while self.network:
            self._deliver(self.network.pop(0), lose=False)
        for f in range(REPLICAS):
            self.replicate(f, 10**6)
        self.advance_commit()

    @rule(ms=st.sampled_from([10, 10, 50, 200, 1_000, 2_500, 6_000]))
    def tick(self, ms: int) -> None:
        self.now += ms
        self._time_passes()

    def _time_passes(self) -> None:
        # request copies older than their lifetime are gone; batches past their delivery timeout are given up
        self.network = [r for r in self.network if self.now - r.sent_at <= LIFETIME]
        for seq in self.seqs.values():
            for b in seq.unacked(PART):
                if self.now - self.made[b.token] > DELIVERY and b in seq.unacked(PART):
                    self._effects(seq.abandon(PART, b))

    # -- invariants ------------------------------------------------------------------------------

    def _assert_committed_at(self, token: tuple[int, int], base: int, last: int) -> None:
        leader_log = self.replicas[self.leader].log
        where = [e for e in leader_log[:self.commit] if e.token == token]
        assert len(where) == 1 and (where[0].base_offset, where[0].base_offset + where[0].count - 1) == (base, last), (
            token, base, last, where)

    @invariant()
    def logs_hold_each_batch_once_in_send_order(self) -> None:
        for replica in self.replicas:
            tokens = [e.token for e in replica.log]
            assert len(tokens) == len(set(tokens)), tokens
            for pid in PRODUCERS:
                mine = [n for p, n in tokens if p == pid]
                assert mine == sorted(mine), (pid, mine)
            assert not any(not self.failed.get(t, True) for t in tokens), "a batch failed as not stored is stored"

    @invariant()
    def tables_remember_only_what_their_log_holds(self) -> None:
        for replica in self.replicas:
            for pid in replica.table.producer_ids():
                for b in replica.table.batches_of(pid):
                    entry = replica.log[b.raft_index - 1]
                    assert (entry.pid, entry.epoch, entry.seq, entry.base_offset, entry.base_offset + entry.count - 1) == (
                        pid, replica.table.epoch_of(pid), b.base_sequence, b.base_offset, b.last_offset), (entry, b)

    @invariant()
    def acknowledged_batches_stay_where_they_were_acknowledged(self) -> None:
        for token, (base, last) in self.acked.items():
            self._assert_committed_at(token, base, last)

    def teardown(self) -> None:
        """Faults stop; everything drains; every batch ends acknowledged (once) or failed."""
        for _ in range(400):
            if not any(seq.unacked(PART) for seq in self.seqs.values()) and not self.network and not self.pending:
                break
            self._round()
            self.now += 100
            self._time_passes()
        else:
            raise AssertionError("did not drain")
        leader_log = self.replicas[self.leader].log
        stored = [e.token for e in leader_log]
        for token in self.made:
            assert token in self.acked or token in self.failed, token
        for token in self.acked:
            assert stored.count(token) == 1, token
        for token, maybe in self.failed.items():
            if not maybe:
                assert token not in stored, token
        for seq in self.seqs.values():
            assert seq.fatal is None, seq.fatal


TestReplicatedPartition = ReplicatedPartition.TestCase
#: Examples per run (about 6 s of CPU at 150); a soak: STREAMLOG_PRODUCER_MODEL_EXAMPLES=5000.
EXAMPLES = int(os.environ.get("STREAMLOG_PRODUCER_MODEL_EXAMPLES", "150"))
TestReplicatedPartition.settings = settings(max_examples=EXAMPLES, stateful_step_count=80, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])

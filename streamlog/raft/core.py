"""The sans-io Raft node: inputs in, a list of effects out.

`RaftNode` owns no clock, socket, thread or file. Each input (`receive`, `tick`, `propose`,
`transfer_leadership`, `compact`) takes `now` and returns the effects it caused, in order.

The effects contract (the driver and the simulator both honour it):

* Effects of one node are processed strictly in order, across calls: a driver keeps one FIFO
  per node and appends each call's effects to it.
* `PersistHardState` and `SyncLog(barrier=True)` are barriers: nothing after them in the FIFO
  (in particular no `Send`, `Commit`) is released until the fsync has completed. This is what
  makes "term and vote are durable before any message that depends on them" and "a follower
  acknowledges only durable entries" hold, even with asynchronous (group-commit) fsync.
* A leader's own appends emit `SyncLog(barrier=False)`: the driver starts the fsync and goes
  on releasing effects (the leader replicates before its own fsync, thesis §10.2.1). Every
  `SyncLog`, barrier or not, is reported back in the order emitted with `log_synced(upto, now)`
  once complete; the leader counts itself in the quorum only at that durable index.
* The core writes entries through its `RaftLog` itself (so it reads its own writes at once);
  `SyncLog` asks the driver to make everything written so far durable.
* `Commit(upto)` may be acted on (applied, acknowledged to clients) once released.

Why these rules and not others: see docs/raft.md.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable

import attrs

from streamlog.raft.log import Entry, RaftLog
from streamlog.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)

FOLLOWER = "follower"
PRE_CANDIDATE = "pre-candidate"
CANDIDATE = "candidate"
LEADER = "leader"

# Replication progress states of a follower, as seen by the leader (as in etcd/raft).
PROBE = "probe"  # one AppendEntries at a time until the follower's log position is known
REPLICATE = "replicate"  # optimistic pipelining, up to max_inflight unacknowledged batches
SNAPSHOT = "snapshot"  # the follower needs entries the leader no longer has


@attrs.frozen
class RaftConfig:
    """Timing and flow control. Times are in the units of `now` (seconds for the driver).

    The election timeout is randomized per election in [election_timeout, 2 * election_timeout).
    """

    election_timeout: float = 1.0
    heartbeat_interval: float = 0.1
    max_inflight: int = 8
    max_batch_bytes: int = 1 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    # Idle groups go quiet (no heartbeats, no election timers). Quiescence needs node-level
    # liveness from the driver (wake, leader_node_lost): None leaves it off in the core and
    # on under RaftHost, which provides it; True or False decides for both.
    quiesce: bool | None = None


@attrs.frozen
class HardState:
    """What must survive a crash besides the log: the current term and the vote in it."""

    term: int = 0
    voted_for: str | None = None


@attrs.frozen
class Send:
    to: str
    msg: Message


@attrs.frozen
class PersistHardState:
    """Barrier: fsync (term, voted_for) before releasing later effects."""

    term: int
    voted_for: str | None


@attrs.frozen
class SyncLog:
    """Fsync every log write made so far (entries up to `upto` at least), then report it with
    `RaftNode.log_synced(upto, now)`. A barrier (the default) holds back every later effect
    until then; a leader's own appends are not barriers (it counts itself at its durable index)."""

    upto: int
    barrier: bool = True


@attrs.frozen
class Commit:
    """Entries up to `upto` are committed: apply them, acknowledge their proposers."""

    upto: int


@attrs.frozen
class SnapshotInstalled:
    """The log was reset to start after (index, term): restore the state machine there."""

    index: int
    term: int
    data: bytes


@attrs.frozen
class RoleChange:
    role: str
    term: int
    leader: str | None


Effect = Send | PersistHardState | SyncLog | Commit | SnapshotInstalled | RoleChange


@attrs.frozen
class NotLeader:
    """propose() refused: this node is not the leader (or is handing leadership over)."""

    leader: str | None


@attrs.frozen
class ChangeRefused:
    """change_membership() refused, and why (retry later, or fix the request)."""

    reason: str


class Progress:
    """The leader's view of one follower's log."""

    __slots__ = ("match", "next", "state", "inflight", "probe_sent", "recent_active", "last_progress")

    def __init__(self, next_index: int, now: float):
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.inflight: list[int] = []  # last index of each unacknowledged batch
        self.probe_sent = False
        self.recent_active = False
        self.last_progress = now


class RaftNode:
    """One member of one Raft group. Pure: all time comes in as `now`, all randomness from `rng`.

    `peers` is the group's initial voter set (this node may be included): it applies until
    the log holds a configuration entry. A node joining an existing group starts with no
    peers and learns its membership from the leader. `hard_state` is what was last
    persisted; `log` is the durable log as recovered. `reset_log(m)` replaces the log by an
    InstallSnapshot `m` (default: `log.reset(m.last_index, m.last_term, m.config)`); a
    partition log also needs what `m.data` says, the record offset its log resumes at.
    """

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        log: RaftLog,
        hard_state: HardState,
        config: RaftConfig,
        rng: random.Random,
        now: float = 0.0,
        reset_log: Callable[[InstallSnapshot], None] | None = None,
    ):
        self.id = node_id
        self._reset_log = reset_log
        self._initial_voters = frozenset(peers)
        self.voters: frozenset[str] = frozenset()
        self.peers: tuple[str, ...] = ()
        self._config_index = 0
        self.log = log
        self.config = config
        self.term = hard_state.term
        self.voted_for = hard_state.voted_for
        self.role = FOLLOWER
        self.leader_id: str | None = None
        # Entries below the log start were committed (retention only drops committed entries).
        self.commit_index = log.start_index - 1
        self._rng = rng
        self._now = now
        self._effects: list[Effect] = []
        self._votes: set[str] = set()
        self._progress: dict[str, Progress] = {}  # voters and learners, while leader
        self._learners: set[str] = set()
        self._last_leader_contact = float("-inf")
        self._election_deadline = 0.0
        self._heartbeat_due = 0.0
        self._quorum_check_due = 0.0
        self._transfer_target: str | None = None
        self._transfer_deadline = 0.0
        self._reported: tuple[str, int, str | None] = (self.role, self.term, self.leader_id)
        # Durability of the log as this node knows it: the recovered log is on disk. Every
        # SyncLog emitted and not yet reported is a point in `_sync_points` (clamped when the log
        # shrinks under it: an fsync that completes later may predate the rewrite).
        self.durable_index = log.last_index
        self._sync_points: deque[int] = deque()
        self._barrier_upto = log.last_index  # durable once every barrier SyncLog emitted completes
        # Quiescence: a quiet group sends nothing and runs no election timer (see `quiet`).
        self.quiet = False
        self._refresh_config()
        self._reset_election_timer()

    # ------------------------------------------------------------------ public inputs

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    @property
    def transfer_target(self) -> str | None:
        """The peer this leader is handing leadership to (proposals are refused meanwhile), or None.
        Read by the application to point its clients there; nothing in the core depends on it."""
        return self._transfer_target if self.role == LEADER else None

    def receive(self, from_id: str, msg: Message, now: float) -> list[Effect]:
        """Handle one message from another node (members change, so any sender is heard)."""
        self._now = now
        if from_id != self.id:
            if self._leader_campaigns(from_id, msg):
                self._forget_leader()
            elif self.quiet and not self._stays_quiet(msg):
                self._wake()
            self._receive(from_id, msg)
        return self._take()

    def _leader_campaigns(self, frm: str, msg: Message) -> bool:
        """The node this follower follows asks for votes in a later term: it no longer leads
        ours, however late the request arrives (it was sent in a term of at least T' - 1 >=
        ours, terms only grow, and a pre-candidate of a term never leads it). It restarted,
        say, as the same member: its node heartbeats resumed, and a message it sent before it
        died may have arrived after its connection closed and made us quiet and leased again.
        A lease kept for it would refuse it, and every other candidate, for ever (simulator
        seed 5210602, stale)."""
        return (isinstance(msg, RequestVote) and msg.term > self.term and frm == self.leader_id
                and self.role != LEADER)

    def _forget_leader(self) -> None:
        """Our leader stepped down: end its lease, and leave quiescence with a full election
        timeout (its candidacy is under way; a stopped timer would otherwise fire at once)."""
        if self.quiet:
            self.quiet = False
            self._reset_election_timer()
        self.leader_id = None
        self._last_leader_contact = float("-inf")

    def _stays_quiet(self, msg: Message) -> bool:
        """A quiet follower stays quiet for a vote request it refuses anyway (its leader is
        alive: node heartbeats say so), for a repeated quiet heartbeat and for any message of
        an older term (answered with our term, nothing else: a deposed leader's late appends
        woke every quiet follower, whose quiet leader then never heartbeat them, and an
        election timeout later they elected one of themselves, deposing a healthy leader:
        stale seed 5209921); anything else wakes the group. A quiet leader stays quiet for the
        answers to its quiet heartbeat (they say nothing new) and wakes on any other message:
        a node that missed the quiet heartbeat campaigns, and the leader then heartbeats it
        back into line."""
        if self.role == LEADER:
            return (isinstance(msg, AppendEntriesResponse) and msg.success and msg.term == self.term
                    and msg.match_index >= self.log.last_index)
        if msg.term < self.term:
            return True
        if isinstance(msg, RequestVote):
            return not msg.transfer
        return isinstance(msg, AppendEntries) and msg.quiet and msg.term == self.term

    def tick(self, now: float) -> list[Effect]:
        """Advance time: elections, heartbeats, check-quorum, transfer timeouts."""
        self._now = now
        if self.quiet:
            return self._take()
        if self.role == LEADER:
            if now >= self._heartbeat_due:
                self._heartbeat_due = now + self.config.heartbeat_interval
                if self._may_quiesce():
                    self._quiesce()
                    return self._take()
                for peer in list(self._progress):
                    self._replicate(peer, heartbeat=True)
            if now >= self._quorum_check_due:
                self._quorum_check_due = now + self.config.election_timeout
                if self.config.check_quorum and not self._quorum_active():
                    self._become_follower(self.term, None)
            if self._transfer_target is not None and now >= self._transfer_deadline:
                self._transfer_target = None
        elif now >= self._election_deadline:
            if self._may_campaign():
                self._campaign(pre_vote=self.config.pre_vote)
            else:
                self._reset_election_timer()
        return self._take()

    def propose(self, data: bytes, now: float, replicate: bool = True) -> tuple[int | NotLeader, list[Effect]]:
        """Append `data` as a new entry if leader; returns its index (not yet committed).

        `replicate=False` appends without sending it: the caller promises a `replicate` call
        soon (a driver, at the end of its reactor turn), so that the proposals of one turn
        travel as one AppendEntries per follower, not one each."""
        self._now = now
        if self.role != LEADER or self._transfer_target is not None:
            return NotLeader(self.leader_id if self.leader_id != self.id else None), self._take()
        self._wake()
        index = self._append_local(data)
        if replicate:
            for peer in list(self._progress):
                self._replicate(peer)
        self._maybe_commit()
        return index, self._take()

    def replicate(self, now: float) -> list[Effect]:
        """As leader, send every follower what it lacks, within its window (the sends that
        `propose(..., replicate=False)` left for later); nothing otherwise. Sending later than
        the append is always safe: it only delays the commit."""
        self._now = now
        if self.role == LEADER:
            for peer in list(self._progress):
                self._replicate(peer)
        return self._take()

    def transfer_leadership(self, target: str, now: float) -> list[Effect]:
        """Hand leadership to `target` (graceful shutdown, rebalancing). Proposals are refused
        until the transfer completes or an election timeout passes."""
        self._now = now
        if self.role == LEADER and target in self.peers:
            self._wake()
            self._transfer_target = target
            self._transfer_deadline = now + self.config.election_timeout
            if self._progress[target].match == self.log.last_index:
                self._send_timeout_now(target)
            else:
                self._replicate(target)
        return self._take()

    def change_membership(
        self, now: float, add: str | None = None, remove: str | None = None
    ) -> tuple[int | NotLeader | ChangeRefused, list[Effect]]:
        """Add or remove one voter (thesis §4.1: one server at a time, so any majority of the
        old configuration overlaps any majority of the new one). The new configuration takes
        effect when appended; the change is done when the returned index commits."""
        self._now = now
        if self.role != LEADER or self._transfer_target is not None:
            return NotLeader(self.leader_id if self.leader_id != self.id else None), self._take()
        if (add is None) == (remove is None):
            return ChangeRefused("give exactly one of add= or remove="), self._take()
        if self._change_in_progress():
            return ChangeRefused("a membership change is still in progress"), self._take()
        if not self._committed_own_term():
            return ChangeRefused("this leader has not committed an entry of its term yet"), self._take()
        if add is not None:
            if add in self.voters:
                return ChangeRefused(f"{add} is already a voter"), self._take()
            new = self.voters | {add}
        else:
            if remove not in self.voters:
                return ChangeRefused(f"{remove} is not a voter"), self._take()
            new = self.voters - {remove}
            if not new:
                return ChangeRefused("cannot remove the last voter"), self._take()
        self._wake()
        index = self.log.last_index + 1
        self.log.append([Entry(index, self.term, b"", tuple(sorted(new)))])
        self._sync_log(barrier=False)
        self._refresh_config()
        for peer in list(self._progress):
            self._replicate(peer)
        self._maybe_commit()
        return index, self._take()

    def _change_in_progress(self) -> bool:
        """One change at a time: the newest configuration entry is not known to be committed.
        Two uncommitted single-server steps are a two-server change, and the majorities of the
        configurations before and after it need not overlap."""
        return self._config_index > self.commit_index

    def _committed_own_term(self) -> bool:
        """Ongaro's fix to single-server changes (raft-dev, 2015): a leader may change the
        configuration only after committing an entry of its own term (its no-op). Otherwise a
        change of an earlier leader that never committed, and that this leader does not hold,
        can come back from its author and overwrite this leader's committed change."""
        return self.log.term_at(self.commit_index) == self.term

    def add_learner(self, peer: str, now: float) -> list[Effect]:
        """Start replicating to a non-voter, so it can catch up before `change_membership`
        makes it a voter (thesis §4.2.1): a new voter that is far behind would otherwise hold
        up commits of a small group. Leader-local: a new leader forgets its learners."""
        self._now = now
        if self.role == LEADER and peer != self.id and peer not in self.voters and peer not in self._learners:
            self._wake()
            self._learners.add(peer)
            self._progress[peer] = Progress(self.log.last_index + 1, now)
            self._replicate(peer, heartbeat=True)
        return self._take()

    def caught_up(self, peer: str) -> bool:
        """Whether `peer` (learner or voter) holds everything committed: a learner that has
        caught up can become a voter without stalling commits."""
        pr = self._progress.get(peer)
        return self.role == LEADER and pr is not None and pr.match >= self.commit_index

    def match_index(self, peer: str) -> int | None:
        """The leader's knowledge of `peer` (voter or learner): the highest index known to match
        its log, counted towards commits. None when not leading or not replicating to `peer`."""
        pr = self._progress.get(peer) if self.role == LEADER else None
        return pr.match if pr is not None else None

    def follower_progress(self) -> dict[str, tuple[int, float]]:
        """While leader: each follower's (voter or learner) match index and the Raft time its
        match last moved forward, for lag metrics; empty when not leading. Read-only."""
        if self.role != LEADER:
            return {}
        return {peer: (pr.match, pr.last_progress) for peer, pr in self._progress.items()}

    def compact(self, upto_index: int) -> None:
        """Retention: drop entries up to `upto_index`, never past the commit index."""
        upto = min(upto_index, self.commit_index)
        if upto >= self.log.start_index:
            self.log.truncate_prefix(upto)

    def next_deadline(self) -> float:
        """The earliest `now` at which tick() has work to do (a driver may sleep until then);
        infinity while the group is quiet."""
        if self.quiet:
            return float("inf")
        if self.role == LEADER:
            deadlines = [self._heartbeat_due, self._quorum_check_due]
            if self._transfer_target is not None:
                deadlines.append(self._transfer_deadline)
            return min(deadlines)
        return self._election_deadline

    def log_synced(self, upto: int, now: float) -> list[Effect]:
        """The oldest outstanding `SyncLog` (whose `upto` is passed back) has completed: every
        log write made before it was emitted is durable. Drivers report every SyncLog, barrier
        or not, in the order emitted. A leader counts itself towards commits at this index."""
        self._now = now
        point = self._sync_points.popleft() if self._sync_points else upto
        durable = min(point, upto, self.log.last_index)
        if durable > self.durable_index:
            self.durable_index = durable
            if self.role == LEADER:
                self._maybe_commit()
        return self._take()

    def wake(self, now: float) -> list[Effect]:
        """Leave quiescence (a driver's signal: a peer node reconnected, an operator asked). A
        woken follower gives its leader a full election timeout to be heard from."""
        self._now = now
        self._wake()
        return self._take()

    def requiesce(self, leader: str, term: int, now: float) -> list[Effect]:
        """The driver woke this follower (`wake`) because the node of its leader `leader` was
        silent, and that node is heard from again: go back to quiet if nothing has happened
        since, i.e. it is still a follower of `leader` in `term` (no candidacy of its own, no
        other leader, no newer term), as it was when the silence began. A heartbeat that is
        merely late on a starved node then costs no election timer and no pre-vote in each of
        hundreds of groups (each pre-vote wakes the quiet leader, whose heartbeats delay the
        starved node further). Safety is untouched (no term, vote or log changes); liveness
        is that of the quiet state before the silence: a leader that stepped down campaigns or
        is replaced, and either message wakes this follower."""
        self._now = now
        if (self.config.quiesce and not self.quiet and self.role == FOLLOWER and self.leader_id == leader
                and self.term == term):
            self.quiet = True
            self._last_leader_contact = now
        return self._take()

    def campaign(self, now: float) -> list[Effect]:
        """Campaign now, without pre-vote, as a leader's TimeoutNow would make this node do:
        for a group whose only voter is this node (nobody else's vote to wait an election
        timeout for), or an operator's request. The new term is above the log's last term
        too: a term the hard state lost in a crash must not make the new leader write below
        its own log's term. Nothing happens at a leader or a node that may not campaign."""
        self._now = now
        if self.role != LEADER and self._may_campaign():
            self.term = max(self.term, self.log.last_term)  # _campaign moves it on and persists it
            self._campaign(pre_vote=False, transfer=True)
        return self._take()

    @property
    def learners(self) -> frozenset[str]:
        """The non-voters this leader replicates to (`add_learner`); empty unless leading."""
        return frozenset(self._learners)

    def followers_lost(self, members: Iterable[str], now: float) -> list[Effect]:
        """As leader: the node of these followers is gone (the driver saw its connection close).
        A voter's last answers, from before the loss, must not count any more: neither for
        going quiet (a leader that went quiet counting a dead voter would never run
        check-quorum again) nor for the next quorum check. A learner there is dropped: it
        would keep the leader awake (see `_may_quiesce`) for nothing; whoever added it adds
        it again once its node is back. A quiet leader wakes."""
        self._now = now
        if self.role == LEADER:
            self._wake()
            for m in members:
                if m in self._learners:
                    self._learners.discard(m)
                    self._progress.pop(m, None)
                    continue
                pr = self._progress.get(m)
                if pr is not None:
                    pr.recent_active = False
        return self._take()

    def leader_node_lost(self, now: float) -> list[Effect]:
        """The node of this group's leader is gone (its connection closed, or its node
        heartbeats stopped for an election timeout): a quiet follower would otherwise never
        notice. Wake, forget the leader's lease and campaign after a short delay (with pre-vote,
        so a false alarm costs no term)."""
        self._now = now
        if self.role == LEADER:
            self._wake()
            return self._take()
        lost = self.leader_id
        self.quiet = False
        self._last_leader_contact = float("-inf")
        self.leader_id = None
        # Every follower of the lost leader hears of it at about the same moment: random delays
        # alone would often start two candidates together and split the vote (then everyone
        # waits an election timeout). So the survivors take turns, half an election timeout
        # apart, in an order that every one of them computes alike (sorted ids, rotated by the
        # term, so that the groups of one lost node spread over the survivors).
        survivors = sorted(v for v in self.voters if v != lost)
        rank = (survivors.index(self.id) + self.term) % len(survivors) if self.id in survivors else len(survivors)
        self._election_deadline = now + rank * self.config.election_timeout / 2 + (
            self._rng.random() * self.config.heartbeat_interval)
        return self._take()

    def committed_in_term(self) -> bool:
        """Whether this node (as leader) has committed an entry of its own term: only then is
        its commit index (and a high watermark derived from it) known to be the group's."""
        return self.role == LEADER and self._committed_own_term()

    # ------------------------------------------------------------------ quiescence

    def _may_quiesce(self) -> bool:
        """A leader goes quiet only when there is nothing left to tell anyone who listens:
        every follower (voter or learner) heard from since the last quorum check or wake holds
        its whole log, and so does every learner (heard from or not: it has no election timer
        to wake the group with), all of it committed and on the leader's own disk, no transfer
        is under way, and those followers and the leader are a quorum. A follower that did not answer
        (its node is down, say) is no reason to stay awake: it cannot be sent anything anyway,
        and when it comes back its election timer runs (it is not quiet), so its first
        pre-vote wakes the group; the driver also wakes the group when its node reconnects. A
        leader cut off from a quorum stays awake, so check-quorum can depose it. Followers
        learn the commit index from the quiet heartbeat."""
        log = self.log
        if not self.config.quiesce or self._transfer_target is not None or not self._committed_own_term():
            return False
        if self.commit_index != log.last_index or self.durable_index < log.last_index:
            return False
        active = 0
        for peer, p in self._progress.items():
            if peer in self._learners and p.match < log.last_index:
                # A learner catching up: unlike a voter it has no election timer whose pre-vote
                # would wake the group, so a probe it missed (its replica was not created yet)
                # would never be sent again.
                return False
            if not p.recent_active:
                continue
            if p.match != log.last_index or p.state != REPLICATE or p.inflight:
                return False
            active += peer in self.voters
        return active + (self.id in self.voters) >= self.quorum

    def _quiesce(self) -> None:
        last = self.log.last_index
        for peer in list(self._progress):
            self._send(peer, AppendEntries(self.term, self.id, last, self.log.last_term, (), self.commit_index,
                                           quiet=True))
        self.quiet = True

    def _wake(self) -> None:
        if not self.quiet:
            return
        self.quiet = False
        if self.role == LEADER:
            # Responses stopped while quiet: give the quorum a full window from now.
            self._heartbeat_due = self._now
            self._quorum_check_due = self._now + self.config.election_timeout
            for p in self._progress.values():
                p.recent_active = False
                p.last_progress = self._now
        else:
            self._last_leader_contact = self._now
            self._reset_election_timer()

    # ------------------------------------------------------------------ message handling

    def _receive(self, frm: str, msg: Message) -> None:
        if msg.term > self.term:
            if isinstance(msg, RequestVote):
                if self._in_lease() and not msg.transfer:
                    # A leader is alive and well: a disruptive candidate does not even move our term.
                    self._send(frm, RequestVoteResponse(self.term, False, msg.pre_vote))
                    return
                if not msg.pre_vote:
                    self._become_follower(msg.term, None)
            elif isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote carries the term asked about, not the voter's
            elif isinstance(msg, (AppendEntries, InstallSnapshot, TimeoutNow)):
                self._become_follower(msg.term, frm)
            else:
                self._become_follower(msg.term, None)
        elif msg.term < self.term:
            # Tell a stale leader or candidate about the newer term so it steps down.
            if isinstance(msg, (AppendEntries, InstallSnapshot)):
                self._send(frm, AppendEntriesResponse(self.term, False))
            elif isinstance(msg, RequestVote):
                self._send(frm, RequestVoteResponse(self.term, False, msg.pre_vote))
            return
        getattr(self, self._handlers[type(msg)])(frm, msg)

    def _handle_request_vote(self, frm: str, m: RequestVote) -> None:
        up_to_date = (m.last_log_term, m.last_log_index) >= (self.log.last_term, self.log.last_index)
        if m.pre_vote:
            grant = m.term > self.term and up_to_date and not self._in_lease()
            self._send(frm, RequestVoteResponse(m.term if grant else self.term, grant, True))
            return
        grant = up_to_date and self.voted_for in (None, frm)
        if grant and self.voted_for is None:
            self.voted_for = frm
            self._persist_hard_state()
        if grant:
            self._reset_election_timer()
        self._send(frm, RequestVoteResponse(self.term, grant, False))

    def _handle_request_vote_response(self, frm: str, m: RequestVoteResponse) -> None:
        if m.pre_vote:
            if self.role != PRE_CANDIDATE or not m.granted or m.term != self.term + 1:
                return
            self._votes.add(frm)
            if len(self._votes & self.voters) >= self.quorum:
                self._campaign(pre_vote=False)
            return
        if self.role != CANDIDATE or not m.granted:
            return
        self._votes.add(frm)
        if len(self._votes & self.voters) >= self.quorum:
            self._become_leader()

    def _handle_append_entries(self, frm: str, m: AppendEntries) -> None:
        self._heard_from_leader(frm)
        log = self.log
        if m.prev_index < self.commit_index:
            # Everything up to our commit index matches the leader already; skip ahead.
            self._ack(frm, self.commit_index)
            return
        local_prev_term = log.term_at(m.prev_index)
        if local_prev_term is None:
            self._send(frm, AppendEntriesResponse(
                self.term, False, reject_index=m.prev_index, conflict_index=log.last_index + 1))
            return
        if local_prev_term != m.prev_term:
            first = m.prev_index
            floor = max(log.start_index, self.commit_index + 1)
            while first - 1 >= floor and log.term_at(first - 1) == local_prev_term:
                first -= 1
            self._send(frm, AppendEntriesResponse(
                self.term, False, reject_index=m.prev_index,
                conflict_term=local_prev_term, conflict_index=first))
            return
        new: tuple[Entry, ...] = ()
        truncated = False
        for i, e in enumerate(m.entries):
            local = log.term_at(e.index)
            if local is None:
                new = m.entries[i:]
                break
            if local != e.term:
                truncated = e.index <= self._config_index
                log.truncate_suffix(e.index)
                self._log_shrunk(e.index)
                new = m.entries[i:]
                break
        if new:
            log.append(new)
            self._sync_log()
            if truncated or any(e.config is not None for e in new):
                self._refresh_config()
        last_new = m.prev_index + len(m.entries)
        if m.commit > self.commit_index and last_new > self.commit_index:
            self._set_commit(min(m.commit, last_new))
        self._ack(frm, last_new)
        if m.quiet and not m.entries and last_new == log.last_index and self.commit_index >= m.commit:
            self.quiet = True  # the leader has nothing more to say: stop the election timer

    def _ack(self, frm: str, match: int) -> None:
        """Acknowledge `match`: only durable entries. A node that led wrote entries without a
        barrier (its own fsync was not awaited); if its acknowledgement would vouch for such an
        entry, a barrier SyncLog goes first (a no-op for the disk when it is synced already)."""
        if match > max(self.durable_index, self._barrier_upto):
            self._sync_log()
        self._send(frm, AppendEntriesResponse(self.term, True, match_index=match))

    def _log_shrunk(self, lo: int) -> None:
        """Entries from `lo` on were removed (and may be rewritten): no fsync that was asked for
        before now can vouch for them."""
        floor = lo - 1
        self.durable_index = min(self.durable_index, floor)
        self._barrier_upto = min(self._barrier_upto, floor)
        self._sync_points = deque(min(p, floor) for p in self._sync_points)

    def _handle_install_snapshot(self, frm: str, m: InstallSnapshot) -> None:
        self._heard_from_leader(frm)
        if m.last_index > self.commit_index:
            if self.log.term_at(m.last_index) != m.last_term:
                if self._reset_log is not None:
                    self._reset_log(m)
                else:
                    self.log.reset(m.last_index, m.last_term, m.config)
                self._log_shrunk(m.last_index + 1)
                self._sync_log()
                self._refresh_config()
                self._effects.append(SnapshotInstalled(m.last_index, m.last_term, m.data))
            self._set_commit(m.last_index)
        self._ack(frm, max(m.last_index, self.commit_index))

    def _handle_append_entries_response(self, frm: str, m: AppendEntriesResponse) -> None:
        pr = self._progress.get(frm)
        if self.role != LEADER or pr is None:
            return
        pr.recent_active = True
        if m.success:
            if m.match_index > pr.match:
                pr.match = m.match_index
                pr.last_progress = self._now
            pr.inflight = [i for i in pr.inflight if i > pr.match]
            if pr.state != REPLICATE:
                pr.state = REPLICATE
                pr.next = pr.match + 1
                pr.inflight = []
            pr.next = max(pr.next, pr.match + 1)
            self._maybe_commit()
            if self.role != LEADER:
                return  # the commit removed us from the group
            if self._transfer_target == frm and pr.match == self.log.last_index:
                self._send_timeout_now(frm)
            self._replicate(frm)
            return
        if m.reject_index < pr.match:
            return  # stale rejection of something already matched
        next_index = m.conflict_index
        if m.conflict_term is not None:
            idx = min(m.reject_index, self.log.last_index)
            while idx >= self.log.start_index and (self.log.term_at(idx) or 0) > m.conflict_term:
                idx -= 1
            if idx >= self.log.start_index and self.log.term_at(idx) == m.conflict_term:
                next_index = idx + 1
        pr.next = max(pr.match + 1, min(next_index, self.log.last_index + 1))
        pr.state = PROBE
        pr.inflight = []
        pr.probe_sent = False
        self._replicate(frm)

    def _send_timeout_now(self, target: str) -> None:
        """The target is up to date: tell it to campaign. Keep refusing proposals for another
        election timeout from now, so that an entry appended after this cannot make every
        voter refuse the target (its log would no longer be up to date): the transfer would
        then fail with a needless election, as it did when TimeoutNow went out just before
        the transfer's original deadline."""
        self._transfer_deadline = max(self._transfer_deadline, self._now + self.config.election_timeout)
        self._send(target, TimeoutNow(self.term, self.id))

    def _handle_timeout_now(self, frm: str, m: TimeoutNow) -> None:
        if self.role == FOLLOWER and self._may_campaign():
            self._campaign(pre_vote=False, transfer=True)

    # By name, so that a subclass (a test's deliberately broken variant) can override one.
    _handlers = {
        RequestVote: "_handle_request_vote",
        RequestVoteResponse: "_handle_request_vote_response",
        AppendEntries: "_handle_append_entries",
        AppendEntriesResponse: "_handle_append_entries_response",
        InstallSnapshot: "_handle_install_snapshot",
        TimeoutNow: "_handle_timeout_now",
    }

    # ------------------------------------------------------------------ replication

    def _replicate(self, peer: str, heartbeat: bool = False) -> None:
        """Send what `peer` needs, within its flow-control window."""
        pr = self._progress[peer]
        log = self.log
        if heartbeat and pr.state == REPLICATE and pr.inflight and (
            self._now - pr.last_progress > 2 * self.config.heartbeat_interval
        ):
            # Batches were lost (or the follower restarted): fall back to probing.
            pr.state, pr.next, pr.inflight = PROBE, pr.match + 1, []
        if pr.next < log.start_index:
            if pr.state != SNAPSHOT or heartbeat:
                pr.state = SNAPSHOT
                pr.inflight = []
                found = log.config_at(log.start_index - 1)
                config = found[1] if found else tuple(sorted(self._initial_voters))
                self._send(peer, InstallSnapshot(self.term, self.id, log.start_index - 1, log.prefix_term,
                                                 b"", config))
            return
        if pr.state == SNAPSHOT:
            if not heartbeat:
                return
            pr.state, pr.probe_sent = PROBE, False
        if pr.state == PROBE:
            if pr.probe_sent and not heartbeat:
                return
            self._send_append(peer, pr.next)
            pr.probe_sent = True
            return
        sent = False
        while len(pr.inflight) < self.config.max_inflight and pr.next <= log.last_index:
            last = self._send_append(peer, pr.next)
            pr.inflight.append(last)
            pr.next = last + 1
            sent = True
        if heartbeat and not sent:
            prev = pr.match if pr.match >= log.start_index - 1 else pr.next - 1
            self._send(peer, AppendEntries(self.term, self.id, prev, log.term_at(prev) or 0, (), self.commit_index))

    def _send_append(self, peer: str, next_index: int) -> int:
        """Send entries from next_index (one batch); returns the last index sent."""
        log = self.log
        prev = next_index - 1
        entries = tuple(log.entries(next_index, log.last_index + 1, self.config.max_batch_bytes))
        prev_term = log.term_at(prev)
        assert prev_term is not None, (prev, log.start_index)
        self._send(peer, AppendEntries(self.term, self.id, prev, prev_term, entries, self.commit_index))
        return prev + len(entries)

    def _maybe_commit(self) -> None:
        matches = [p.match for peer, p in self._progress.items() if peer in self.voters]
        if self.id in self.voters:
            # Counted at its durable index: it replicated before its own fsync completed.
            matches.append(self._self_match())
        if len(matches) < self.quorum:
            return
        candidate = sorted(matches, reverse=True)[self.quorum - 1]
        if candidate > self.commit_index and self._can_commit(candidate):
            self._set_commit(candidate)

    def _self_match(self) -> int:
        """What the leader counts for itself: its durable index (a subclass may get this wrong)."""
        return min(self.durable_index, self.log.last_index)

    def _can_commit(self, index: int) -> bool:
        """Raft §5.4.2: count replicas only for an entry of the leader's own term; earlier
        entries are committed indirectly by it."""
        return self.log.term_at(index) == self.term

    def _quorum_active(self) -> bool:
        active = (self.id in self.voters) + sum(
            1 for peer, p in self._progress.items() if p.recent_active and peer in self.voters)
        for p in self._progress.values():
            p.recent_active = False
        return active >= self.quorum

    # ------------------------------------------------------------------ role changes

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        self.quiet = False
        self._reset_election_timer()
        self._votes = {self.id}
        self.leader_id = None
        if pre_vote:
            self.role = PRE_CANDIDATE
            term = self.term + 1
        else:
            self.role = CANDIDATE
            self.term += 1
            self.voted_for = self.id
            self._persist_hard_state()
            term = self.term
        if len(self._votes & self.voters) >= self.quorum:  # a group of one
            if pre_vote:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
            return
        req = RequestVote(term, self.id, self.log.last_index, self.log.last_term, pre_vote, transfer)
        for peer in self.peers:
            self._send(peer, req)

    def _become_follower(self, term: int, leader: str | None) -> None:
        self.quiet = False
        if term != self.term:
            self.term = term
            self.voted_for = None
            self._persist_hard_state()
        if self.role != FOLLOWER:
            self._reset_election_timer()
        self.role = FOLLOWER
        self.leader_id = leader
        self._progress = {}
        self._learners = set()
        self._transfer_target = None

    def _become_leader(self) -> None:
        self.quiet = False
        self.role = LEADER
        self.leader_id = self.id
        next_index = self.log.last_index + 1
        self._progress = {p: Progress(next_index, self._now) for p in self.peers}
        self._learners = set()
        self._heartbeat_due = self._now + self.config.heartbeat_interval
        self._quorum_check_due = self._now + self.config.election_timeout
        self._transfer_target = None
        self._report_role()
        self._append_local(b"")  # the no-op: lets earlier-term entries commit (§5.4.2)
        for peer in self.peers:
            self._replicate(peer, heartbeat=True)
        self._maybe_commit()

    def _heard_from_leader(self, frm: str) -> None:
        if self.role != FOLLOWER:
            self._become_follower(self.term, frm)
        self.leader_id = frm
        self._last_leader_contact = self._now
        self._reset_election_timer()

    def _in_lease(self) -> bool:
        """True while a leader is known to be alive: then vote requests are not disruptive
        elections but partitioned nodes rejoining, and are refused (thesis §4.2.3)."""
        if self.role == LEADER or (self.quiet and self.leader_id is not None):
            return True  # quiet: the leader's node heartbeats keep the lease (or leader_node_lost ends it)
        return self.leader_id is not None and self._now - self._last_leader_contact < self.config.election_timeout

    # ------------------------------------------------------------------ effects

    def _append_local(self, data: bytes) -> int:
        index = self.log.last_index + 1
        self.log.append([Entry(index, self.term, data)])
        self._sync_log(barrier=False)  # the leader's sends do not wait for its own fsync
        return index

    def _set_commit(self, index: int) -> None:
        self.commit_index = index
        self._effects.append(Commit(index))
        if self.role == LEADER and self.id not in self.voters and self._config_index <= index:
            # Our own removal is committed: hand over by stepping down (thesis §4.2.2).
            self._become_follower(self.term, None)

    def _may_campaign(self) -> bool:
        """Voters campaign; so does a node whose removal is not known to be committed. Without
        that, a leader that appended its own removal and crashed could hold the only copy of
        the newest configuration while refusing (as more up to date) every remaining candidate:
        no election could ever succeed. Such a node may lead a configuration it is not part of
        until the change commits, then steps down (thesis §4.2.2)."""
        if self.id in self.voters:
            return True
        if self._config_index == 0 or self._config_index <= self.commit_index:
            return False
        previous = self.log.config_at(self._config_index - 1)
        return self.id in (previous[1] if previous else self._initial_voters)

    def _refresh_config(self) -> None:
        """Voters = the latest configuration in the log, committed or not (thesis §4.1)."""
        found = self.log.config_at(self.log.last_index)
        if found is None:
            self._config_index, voters = 0, self._initial_voters
        else:
            self._config_index, voters = found[0], frozenset(found[1])
        self.voters = frozenset(voters)
        self.peers = tuple(sorted(self.voters - {self.id}))
        if self.role == LEADER:
            for peer in self.peers:
                if peer not in self._progress:
                    self._progress[peer] = Progress(self.log.last_index + 1, self._now)
            self._learners -= self.voters
            for peer in list(self._progress):
                if peer not in self.voters and peer not in self._learners:
                    del self._progress[peer]

    def _persist_hard_state(self) -> None:
        self._effects.append(PersistHardState(self.term, self.voted_for))

    def _sync_log(self, barrier: bool = True) -> None:
        upto = self.log.last_index
        self._sync_points.append(upto)
        if barrier:
            self._barrier_upto = max(self._barrier_upto, upto)
        self._effects.append(SyncLog(upto, barrier))

    def _send(self, to: str, msg: Message) -> None:
        self._effects.append(Send(to, msg))

    def _reset_election_timer(self) -> None:
        timeout = self.config.election_timeout
        self._election_deadline = self._now + timeout + self._rng.random() * timeout

    def _report_role(self) -> None:
        state = (self.role, self.term, self.leader_id)
        if state != self._reported:
            self._reported = state
            self._effects.append(RoleChange(*state))

    def _take(self) -> list[Effect]:
        self._report_role()
        effects, self._effects = self._effects, []
        return effects

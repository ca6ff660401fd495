"""L{PartitionReplica}: one partition as a member of its Raft group, as the broker sees it.

What C{streamlog.broker.partition.Partition} was on a single node, now over
Raft: the partition's log (which I{is} the group's Raft log), the group's
role, leader and term as this node last heard them, the high watermark and
the parked long polls (the O(1) waiter index of C{Partition}, reused).

The high watermark is the record offset after the group's commit index.  It
only moves forward, and a leader reports it (and serves Polls) only once it
has committed an entry of its own term: before that its commit index may lag
what the previous leader already let consumers see (Raft thesis §6.4), and a
consumer must never see the high watermark go back.

C{append(batch, acks)} is the write path: the batch becomes the group's next
entry through C{RaftHost} (C{submit} for C{acks=all}, C{propose} otherwise).
Nothing here touches a socket or a file directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.broker.partition import Partition
from streamlog.cluster.catchup import PartitionSnapshot
from streamlog.idempotence.rules import Outcome
from streamlog.idempotence.table import Decision, ProducerStateTable
from streamlog.raft.core import LEADER, HardState, NotLeader
from streamlog.raft.driver import NotLeaderError
from streamlog.raft.messages import InstallSnapshot
from streamlog.storage.base import RecordBatch
from streamlog.storage.group_commit import CommitterStopped


class ReplicaStorage:
    """The C{GroupStorage} of one replica: its log, its term and vote, and its sync.

    The hard state goes to the node's store (C{hard_state} with C{get} and
    C{save}, L{streamlog.storage.hardstate.HardStateStore}) or, without one
    (C{--storage memory}), stays in memory.  The sync goes to the node's
    group committer, looked up when needed (it starts after the storage is
    opened, in the process that runs); without one the log needs no sync.  A
    failed sync is reported to C{on_sync_failed} so the replica can answer
    its waiting writes (the Raft driver stops the group there).
    """

    def __init__(self, group: str, log: Any, hard_state: Any, committer: Callable[[], Any],
                 on_sync_failed: Callable[[Failure], object], alone: bool = False) -> None:
        self.group = group
        #: The log itself (C{log} may be an adapter the host reads and writes through).
        self.raw = log
        #: The group's only voter is this node: see L{save_hard_state}.
        self.alone = alone
        self.log = log
        self._hard_state = hard_state
        self._memory_state = HardState()
        self._committer = committer
        self._on_sync_failed = on_sync_failed

    def load_hard_state(self) -> HardState:
        if self._hard_state is None:
            return self._memory_state
        state: HardState = self._hard_state.get(self.group)
        return state

    def save_hard_state(self, state: HardState) -> Deferred | None:
        if self._hard_state is None:
            self._memory_state = state
            return None
        d: Deferred = self._hard_state.save(self.group, state)
        if self.alone:
            # A group of one need not wait: a vote is fsynced first so that no voter votes
            # twice in a term, and its only voter always votes for itself.  A term lost in a
            # crash is taken again from the log's last term (ReplicaDirectory.elect_alone).
            # Its writes still wait for their own fsync (sync_log) before they are committed.
            d.addErrback(lambda f: self._on_sync_failed(f))
            return None
        return d

    def install_snapshot(self, m: InstallSnapshot) -> None:
        """The leader's log starts after C{m.last_index}: this log is reset to start there, at
        the record offset and with the producer state C{m.data} carries (L{PartitionSnapshot};
        empty data: the log's own end). Data this version cannot read raises
        PartitionSnapshotError before anything changes: the message is dropped (and logged),
        the leader sends it again."""
        snapshot = PartitionSnapshot.decode(m.data) if m.data else None
        install = getattr(self.log, "install_snapshot", None)
        if install is not None:
            # The producer-tracking log (streamlog.cluster.producer_log): the log is reset and
            # the replica's producer table restored from the same snapshot.
            install(m.last_index, m.last_term, m.config, snapshot)
        elif snapshot is None:
            self.raw.reset(m.last_index, m.last_term, m.config)
        else:
            self.raw.reset(m.last_index, m.last_term, m.config, next_offset=snapshot.next_offset,
                           producer_state=snapshot.producer_state)

    def sync_log(self) -> Deferred | None:
        committer = self._committer()
        if committer is None:
            return None
        log = self.raw
        target = log.last_index
        d: Deferred = committer.wait_index(log, target)

        def failed(failure: Failure) -> Failure | Deferred | None:
            if failure.check(CommitterStopped):
                if log.durable_index >= target:
                    # Asked after the node's final sync, which covered it (the driver releases
                    # a group's syncs one at a time): it is durable.
                    return None
                # The node is stopping (a follower still took entries after the final sync):
                # this sync never happens, so the group stays held where it is until the
                # process exits.  No disk failed: not a fatal fsync error (exit 70).
                return Deferred()
            self._on_sync_failed(failure)
            return failure

        return d.addErrback(failed)


class PartitionReplica(Partition):
    """This node's replica of partition C{index} of C{topic}, a member of Raft group C{group}.

    @param host: the node's C{RaftHost} (public API only: C{propose}, C{submit}).
    @param member: this node's member id in the group.
    @param locate: member id -> (node id, client address) of its node, for C{NOT_LEADER} hints.
    """

    _log = Logger()

    def __init__(self, topic: str, index: int, log: Any, group: str, host: Any, member: str,
                 locate: Callable[[str | None], tuple[int | None, str | None]],
                 replication_factor: int = 1, durability: Callable[[], str] = lambda: "memory") -> None:
        super().__init__(topic, index, log)
        self.group = group
        self.host = host
        self.member = member
        self.locate = locate
        self.replication_factor = replication_factor
        self._durability = durability
        self.role = "follower"
        self.term = 0
        self.leader: str | None = None
        #: Whether this leader has committed an entry of its own term (it may serve reads).
        self.ready = False
        self.commit_index = log.start_index - 1
        # Until this replica knows what is committed, consumers see only what retention kept.
        self.high_watermark = log.start_offset
        #: acks=all answers not yet given: failed together if the log cannot sync.
        self._pending: set[Deferred] = set()
        self._ready_waiters: list[tuple[Deferred, bool]] = []
        #: Set once the group is gone (topic deleted) or its storage failed.
        self.closed_error: Exception | None = None
        #: The group's Raft node (set by the directory): its role, and retention's C{compact}.
        self.node: Any = None
        #: The log the Raft node writes through, with this replica's producer state
        #: (L{streamlog.cluster.producer_log.ProducerTrackingLog}; set by the directory).
        self.producer_log: Any = None
        #: Answers to duplicate batches, waiting for their original's commit: (index, term, Deferred).
        self._commit_waiters: list[tuple[int, int, Deferred]] = []
        #: The last term the directory's leading listeners were told this replica leads in.
        self.announced_term = -1

    # --- what the Raft group tells us (through the directory's GroupCallbacks)

    def role_changed(self, role: str, term: int, leader: str | None) -> None:
        was_leader = self.role == LEADER
        self.role, self.term, self.leader = role, term, leader
        if role == LEADER:
            self.ready = self.commit_index >= 0 and self.log.term_at(self.commit_index) == term
        else:
            self.ready = False
            if was_leader:
                # Parked polls were waiting on this node's commits: send them to the new leader.
                self.fail_waiters(self.not_leader())
                # A commit waiter waits for an entry appended already (a duplicate's original):
                # the next leader may still commit it, so the answer must not say "not appended".
                self._fail_commit_waiters(self.not_leader(maybe_appended=True))
        self._wake_ready()  # writers may go on (leader), or learn where to (another leader)

    def committed(self, upto: int) -> None:
        # Everything below the log's start is committed (retention and snapshots take only
        # that).  A commit queued in the driver before this follower installed a snapshot
        # arrives after the reset with an index the log no longer holds: it stands for the
        # snapshot's own commit (reading its offset raised inside the Raft callback).
        upto = max(upto, self.log.start_index - 1)
        if upto <= self.commit_index:
            return
        self.commit_index = upto
        if self.producer_log is not None:
            self.producer_log.mark_committed(upto)
        if self.role == LEADER and not self.ready and self.log.term_at(upto) == self.term:
            self.ready = True
        if self.ready or self.role != LEADER:
            self.advance(self.log.next_offset_after(upto))
        if self._commit_waiters:
            self._release_commit_waiters()
        self._wake_ready()

    def storage_failed(self, failure: Failure) -> None:
        """The log could not sync: answer every waiting write with the error (the node stops)."""
        error = failure.value
        if not isinstance(error, errors.StreamlogError):
            error = errors.StorageError(f"fsync failed: {error}")
        self.close(error)

    def close(self, error: Exception) -> None:
        """The replica goes away (its topic was deleted, its storage failed)."""
        self.closed_error = error
        pending, self._pending = self._pending, set()
        for d in pending:
            if not d.called:
                d.errback(error)
        self.fail_waiters(error)
        self._fail_commit_waiters(error)
        self._wake_ready()

    # --- the broker's questions

    @property
    def leads(self) -> bool:
        """Whether this replica may serve reads now: it leads, and has committed in its term."""
        return self.role == LEADER and self.ready and self.closed_error is None

    @property
    def writable(self) -> bool:
        """Whether this replica may take writes now (it leads; its reads may wait on its first commit)."""
        return self.role == LEADER and self.closed_error is None

    def check_leader(self, write: bool = False) -> None:
        """Raise C{NOT_LEADER} (with a hint) or C{LEADER_NOT_AVAILABLE} unless this replica
        leads (for a C{write}: is the leader; else: may also serve reads)."""
        if self.closed_error is not None:
            raise self.closed_error
        if self.role == LEADER and (write or self.ready):
            return
        if self.leader is None or self.leader == self.member:
            raise errors.LeaderNotAvailable(
                f"partition {self.topic}/{self.index} is electing a leader; retry shortly",
                topic=self.topic, partition=self.index,
            )
        raise self.not_leader()

    def not_leader(self, maybe_appended: bool = False) -> errors.NotLeader:
        """C{NOT_LEADER} with the hint; C{maybe_appended}: the write was appended here before
        this node lost the leadership (or gave up waiting for its commit), and the next
        leader may still commit it, so the answer says so (C{maybe_appended: true}).

        While this node hands leadership over (it still leads, and its Raft core refuses
        proposals), the hint is the transfer's target (C{transfer: true}): a client goes
        straight there instead of asking for the metadata."""
        target = getattr(self.node, "transfer_target", None) if self.role == LEADER else None
        member = target if target is not None else (self.leader if self.leader != self.member else None)
        node, address = self.locate(member)
        extra: dict[str, Any] = {"maybe_appended": True} if maybe_appended else {}
        if target is not None:
            extra["transfer"] = True
        return errors.NotLeader(
            f"this node does not lead {self.topic}/{self.index}"
            + ("; the write was appended and may still be committed" if maybe_appended else "")
            + (f"; leadership is moving to node {node} at {address}" if target is not None and node is not None
               else f"; its leader is node {node} at {address}" if node is not None else ""),
            topic=self.topic, partition=self.index, leader=node, leader_address=address, leader_term=self.term,
            **extra,
        )

    def when_leading(self, clock: IReactorTime, timeout: float, write: bool = False) -> Deferred:
        """Fires (with None) once this replica leads (for a C{write}: is the leader; for a
        read: has also committed in its term), knows another leader, or C{timeout} passes.

        A request that meets an election waits for it (a new group of one, a
        new leader's first commit) rather than bouncing off
        C{LEADER_NOT_AVAILABLE}; the caller then asks again.
        """
        if self._settled(write):
            return succeed(None)
        d: Deferred = Deferred()
        self._ready_waiters.append((d, write))
        timer = clock.callLater(timeout, self._expire, d)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(done)

    def _settled(self, write: bool) -> bool:
        return ((self.writable if write else self.leads) or self.closed_error is not None
                or (self.leader is not None and self.leader != self.member))

    def _expire(self, d: Deferred) -> None:
        for i, (waiting, _) in enumerate(self._ready_waiters):
            if waiting is d:
                del self._ready_waiters[i]
                d.callback(None)
                return

    def _wake_ready(self) -> None:
        if not self._ready_waiters:
            return
        keep: list[tuple[Deferred, bool]] = []
        woken: list[Deferred] = []
        for d, write in self._ready_waiters:
            if self._settled(write):
                woken.append(d)
            else:
                keep.append((d, write))  # with its kind: the next wake and _expire unpack both
        self._ready_waiters = keep
        for d in woken:
            d.callback(None)

    @property
    def durability(self) -> str:
        """What an acks=all answer says about its records (C{fsync}, C{written}, C{memory})."""
        return self._durability()

    # --- the write path

    def append(self, batch: RecordBatch, acks: str) -> Deferred | None:
        """Append C{batch} as the group's next entry (leader only; L{check_leader} first).

        C{acks="all"}: a Deferred that fires once the entry is committed,
        with how many replicas hold it then (L{holding}); C{"leader"}: fired
        already (the leader appended it), with 1; C{"none"}: None.  The high watermark moves on the commit itself, so
        an answer cancelled (its connection dropped) hides nothing.
        """
        if acks != "all":
            result = self.host.propose(self.group, batch)
            if isinstance(result, NotLeader):
                raise self.not_leader()
            return None if acks == "none" else succeed(1)
        d = self.host.submit(self.group, batch)
        if d.called and isinstance(d.result, Failure) and isinstance(d.result.value, NotLeaderError):
            d.addErrback(lambda _: None)
            raise self.not_leader()
        answer: Deferred = Deferred()
        self._pending.add(answer)

        def relay(result: Any) -> None:
            self._pending.discard(answer)
            if answer.called:
                return  # cancelled meanwhile, or answered by close()
            if isinstance(result, Failure):
                if isinstance(result.value, NotLeaderError):
                    answer.errback(self.not_leader(maybe_appended=result.value.outcome_unknown))
                else:
                    answer.errback(result)
            else:
                answer.callback(self.holding(result))

        d.addBoth(relay)
        return answer

    # --- idempotent producers

    @property
    def producers(self) -> ProducerStateTable:
        """This replica's producer-state table (kept in step with its log by the log it writes through)."""
        table: ProducerStateTable = self.producer_log.table
        return table

    def check_producer(self, producer_id: int, epoch: int, base_sequence: int, count: int, now_ms: int) -> Decision:
        """The leader's check of an idempotent batch before it is appended: NEW or DUPLICATE, else the error.

        Raises C{OUT_OF_ORDER_SEQUENCE}, C{PRODUCER_FENCED},
        C{UNKNOWN_PRODUCER_ID}, C{TOO_MANY_PRODUCERS} or C{INVALID_PARAMS}.
        A NEW batch must be appended (L{append}) before anything else is
        checked: the append records it in the table.
        """
        decision = self.producers.check(producer_id, epoch, base_sequence, count, now_ms)
        outcome = decision.outcome
        if outcome is Outcome.NEW or outcome is Outcome.DUPLICATE:
            return decision
        where = dict(topic=self.topic, partition=self.index)
        message = f"partition {self.topic}/{self.index}, producer {producer_id} epoch {epoch}: {decision.reason}"
        if outcome is Outcome.OUT_OF_ORDER_SEQUENCE:
            raise errors.OutOfOrderSequence(message, **where)
        if outcome is Outcome.PRODUCER_FENCED:
            raise errors.ProducerFenced(message, **where)
        if outcome is Outcome.UNKNOWN_PRODUCER_ID:
            raise errors.UnknownProducerId(message, **where)
        if outcome is Outcome.TOO_MANY_PRODUCERS:
            raise errors.TooManyProducers(message, limit=self.producers.config.max_producers, **where)
        raise errors.InvalidParams(message, **where)

    def when_committed(self, index: int) -> Deferred:
        """Fires once entry C{index} (in this leader's log now) is committed; fails C{NOT_LEADER} if this
        replica stops leading first (the entry's fate is then the next leader's to tell)."""
        if index <= self.commit_index:
            return succeed(None)
        term = self.log.term_at(index)
        d: Deferred = Deferred()
        self._commit_waiters.append((index, -1 if term is None else term, d))
        return d

    def _release_commit_waiters(self) -> None:
        keep = []
        for index, term, d in self._commit_waiters:
            if index > self.commit_index:
                keep.append((index, term, d))
            elif index < self.log.start_index or self.log.term_at(index) == term:
                d.callback(None)
            else:
                d.errback(self.not_leader())
        self._commit_waiters = keep

    def _fail_commit_waiters(self, error: Exception) -> None:
        waiters, self._commit_waiters = self._commit_waiters, []
        for _, _, d in waiters:
            if not d.called:
                d.errback(error)

    def expire_producers(self, now_ms: int) -> list[int]:
        """Forget the producers idle longer than the expiry (C{--producer-id-expiry-ms}); return their ids."""
        if self.producer_log is None:
            return []
        return self.producers.expire(now_ms)

    def holding(self, index: int) -> int:
        """How many replicas hold entry C{index} at this node's durability, as this node knows
        at its commit: as leader, itself once its own sync covered it and each voter whose
        acknowledged match index reaches it (a follower acknowledges after its own sync).  A
        node that lost the leadership meanwhile (its entry committed in the next leader's
        term) knows only that a majority does."""
        node = self.node
        voters = node.voters
        quorum = len(voters) // 2 + 1
        if node.role != LEADER:
            return quorum
        count = 0
        for member in voters:
            if member == node.id:
                count += min(node.durable_index, node.log.last_index) >= index
            else:
                count += (node.match_index(member) or 0) >= index
        return max(count, quorum)

    def replica_offsets(self, node_of: Callable[[str], int]) -> list[dict[str, Any]] | None:
        """As leader, each voter's log as this leader knows it, by node: C{match_index} (the
        last entry known to match this log; for the leader itself its own last entry) and
        C{log_end_offset} (the record offset after that entry; None for a follower behind
        this log's start, which needs a snapshot).  None when this replica does not lead."""
        node = self.node
        if node is None or node.role != LEADER or self.closed_error is not None:
            return None
        log = self.log
        out = []
        for member in sorted(node.voters, key=node_of):
            match = log.last_index if member == node.id else (node.match_index(member) or 0)
            end = log.next_offset_after(match) if match >= log.start_index - 1 else None
            out.append({"node_id": node_of(member), "match_index": match, "log_end_offset": end})
        return out

    def apply_retention(self, now_ms: int) -> int:
        """Drop what retention allows, never past the commit index (C{RaftNode.compact});
        return the new start offset."""
        if getattr(self.log, "failed", None) is not None:
            return int(self.log.start_offset)
        point = int(self.log.retention_point(now_ms))
        if point >= self.log.start_index:
            self.node.compact(point)
        return int(self.log.start_offset)



class RemotePartition:
    """A partition of a topic this node holds no replica of: every request for it is
    answered with where its leader is (C{NOT_LEADER}), from the node's leader table."""

    failed = None
    closed_error = None
    leads = False
    writable = False

    def __init__(self, topic: str, index: int, group: str, node: Any, replication_factor: int) -> None:
        self.topic = topic
        self.index = index
        self.group = group
        self.node = node
        self.replication_factor = replication_factor

    def check_leader(self, write: bool = False) -> None:
        leader, term = self.node.leader_of(self.group)
        if leader is None or leader == self.node.node_id:
            raise errors.LeaderNotAvailable(
                f"partition {self.topic}/{self.index} is electing a leader; retry shortly",
                topic=self.topic, partition=self.index,
            )
        address = self.node.address_of(leader)
        raise errors.NotLeader(
            f"this node holds no replica of {self.topic}/{self.index}; its leader is node {leader} at {address}",
            topic=self.topic, partition=self.index, leader=leader, leader_address=address, leader_term=term,
        )

    def when_leading(self, clock: IReactorTime, timeout: float, write: bool = False) -> Deferred:
        """A short wait for the leader table to learn the partition's leader (announcements)."""
        d: Deferred = Deferred()
        clock.callLater(min(timeout, 0.1), d.callback, None)
        return d

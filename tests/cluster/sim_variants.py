"""Deliberately broken nodes for the cluster simulator: one classic bug each.

They prove that the simulator's checker has teeth (tests/cluster/test_cluster_sim.py),
and measure how many seeds it needs to catch each:

    python -m streamlog.cluster.sim --seed 0 --seeds 200 --broken ack-before-majority-fsync

Each variant is a function that adjusts a L{SimCluster} before its nodes are
built (the Raft node class of every group, the partition replica class).
`VARIANTS` maps a short name to each.  Never use these outside a test.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from streamlog.cluster.replica import PartitionReplica
from streamlog.raft.core import RaftNode, SyncLog
from streamlog.raft.messages import AppendEntries, Message
from streamlog.storage.base import RecordBatch


class AckBeforeFsync(RaftNode):
    """Broken: a follower acknowledges entries before its fsync, and a leader counts its own
    entries before its fsync: an acks=all answer can go out while no disk holds the batch."""

    def _handle_append_entries(self, frm: str, m: AppendEntries) -> None:
        mark = len(self._effects)
        super()._handle_append_entries(frm, m)
        new = self._effects[mark:]
        syncs = [e for e in new if isinstance(e, SyncLog)]
        self._effects[mark:] = [e for e in new if not isinstance(e, SyncLog)] + syncs

    def _self_match(self) -> int:
        return self.log.last_index


class TruncatesOnOverlap(RaftNode):
    """Broken: a follower cuts its log after the leader's C{prev_index} whenever entries come,
    even where its entries match (Raft says: only at the first conflicting one).  A repeated
    or reordered AppendEntries (a retry after a lost connection) then cuts entries it had
    acknowledged, which the leader may have counted towards a commit."""

    def _handle_append_entries(self, frm: str, m: AppendEntries) -> None:
        if m.entries and m.prev_index >= self.commit_index and self.log.last_index > m.prev_index \
                and self.log.term_at(m.prev_index) == m.prev_term:
            self.log.truncate_suffix(m.prev_index + 1)
            self._log_shrunk(m.prev_index + 1)
        super()._handle_append_entries(frm, m)


class AcceptStaleAppend(RaftNode):
    """Broken: a follower takes AppendEntries from a deposed leader (an older term) and cuts
    its log where that leader's log differs, committed entries included."""

    def _receive(self, frm: str, msg: Message) -> None:
        if isinstance(msg, AppendEntries) and msg.term < self.term:
            self._handle_append_entries(frm, msg)
            return
        super()._receive(frm, msg)


class ServesUncommitted(PartitionReplica):
    """Broken: the leader's high watermark moves at its own append, so Polls read records
    that no majority holds yet (and that a new leader may never have)."""

    def append(self, batch: RecordBatch, acks: str) -> Deferred | None:
        answer = super().append(batch, acks)
        self.advance(self.log.end_offset)
        return answer


class AcksOnLeaderAppend(PartitionReplica):
    """Broken: acks=all is answered once the leader appended the batch, as acks=leader is."""

    def append(self, batch: RecordBatch, acks: str) -> Deferred | None:
        super().append(batch, "leader" if acks == "all" else acks)
        return succeed(None) if acks != "none" else None


def ack_before_majority_fsync(world: Any) -> None:
    world.raft_node_class = AckBeforeFsync


def follower_truncates_committed(world: Any) -> None:
    world.raft_node_class = TruncatesOnOverlap


def follower_accepts_stale_append(world: Any) -> None:
    world.raft_node_class = AcceptStaleAppend


def leader_serves_uncommitted(world: Any) -> None:
    world.replica_class = ServesUncommitted


def acks_on_leader_append(world: Any) -> None:
    world.replica_class = AcksOnLeaderAppend


VARIANTS = {
    "ack-before-majority-fsync": ack_before_majority_fsync,
    "follower-truncates-committed": follower_truncates_committed,
    "follower-accepts-stale-append": follower_accepts_stale_append,
    "leader-serves-uncommitted": leader_serves_uncommitted,
    "acks-on-leader-append": acks_on_leader_append,
}


def _as_new(decision: Any) -> Any:
    from streamlog.idempotence.table import NEW

    return NEW


class DedupeNotRebuilt(PartitionReplica):
    """Broken: a new leader recognises only the batches it appended itself, as if its producer
    state were not rebuilt from the log at a leader change: a retry of a batch an earlier
    leader wrote (its answer lost in the failover) is stored again."""

    def check_producer(self, producer_id: int, epoch: int, base_sequence: int, count: int, now_ms: int) -> Any:
        from streamlog.idempotence.rules import Outcome

        decision = super().check_producer(producer_id, epoch, base_sequence, count, now_ms)
        if decision.outcome is Outcome.DUPLICATE and self.log.term_at(decision.raft_index) != self.term:
            return _as_new(decision)
        return decision


class DedupeOff(PartitionReplica):
    """Broken: the leader never recognises a retry (every DUPLICATE is appended as NEW)."""

    def check_producer(self, producer_id: int, epoch: int, base_sequence: int, count: int, now_ms: int) -> Any:
        from streamlog.idempotence.rules import Outcome

        decision = super().check_producer(producer_id, epoch, base_sequence, count, now_ms)
        return _as_new(decision) if decision.outcome is Outcome.DUPLICATE else decision


def dedupe_not_rebuilt_on_leader_change(world: Any) -> None:
    world.replica_class = DedupeNotRebuilt


def dedupe_off(world: Any) -> None:
    world.replica_class = DedupeOff


VARIANTS.update({
    "dedupe-not-rebuilt-on-leader-change": dedupe_not_rebuilt_on_leader_change,
    "dedupe-off": dedupe_off,
})


class CommitRaisesAfterSnapshot(PartitionReplica):
    """Broken (the bug the simulator found, put back): a commit queued in the Raft driver
    before a follower installed a snapshot reads the offset of an entry the reset log no
    longer holds, and raises inside the Raft callback."""

    def committed(self, upto: int) -> None:
        if upto > self.commit_index:
            self.log.next_offset_after(upto)  # what committed() read before the fix: raises below the log start
        super().committed(upto)


def queued_commit_raises_after_snapshot(world: Any) -> None:
    world.replica_class = CommitRaisesAfterSnapshot


def _metadata_current_once_a_leader_is_known(node: Any) -> bool:
    core = node.cores.get("__meta")
    return node.state is not None and core is not None and core.leader_id is not None \
        and node.state.applied_index >= core.commit_index


def _metadata_always_current(node: Any) -> bool:
    return True


def unknown_topic_while_metadata_behind(world: Any) -> None:
    """Broken (the bug the simulator found, put back): a node whose metadata is behind (no
    controller heard from since it restarted) answers UNKNOWN_TOPIC for a live topic; the
    idempotent Producer then sends unnumbered batches.

    Run with the metadata log not compacted: with snapshots every 2 entries a restarted node is
    back with the topic from its own snapshot at once, so its metadata lacks the topic only on a
    wiped node before it installs the controller's snapshot (2 of 40 seeds caught, against 7 of
    20 without compaction): the bug is the same, the window it needs is rarer."""
    import attrs

    world.config = attrs.evolve(world.config, metadata_snapshot_entries=0)
    world.node_overrides["metadata_current"] = _metadata_always_current


def unknown_topic_before_the_new_controller_commits(world: Any) -> None:
    """Broken (the first fix of that bug, which the simulator showed short): a known
    leader is taken as current metadata, though after every node restarted the new
    controller's commit index is 0 until it commits an entry of its own term."""
    world.node_overrides["metadata_current"] = _metadata_current_once_a_leader_is_known


VARIANTS.update({
    "queued-commit-raises-after-snapshot": queued_commit_raises_after_snapshot,
    "unknown-topic-while-metadata-behind": unknown_topic_while_metadata_behind,
    "unknown-topic-before-the-new-controller-commits": unknown_topic_before_the_new_controller_commits,
})


def _snapshot_then_compact_to_the_commit(node: Any) -> None:
    """ClusterNode._snapshot_metadata, then the metadata log cut up to the commit index, past
    the snapshots: a restart (or a follower needing InstallSnapshot) then finds no snapshot
    that reaches the log's start."""
    from streamlog.cluster.node import ClusterNode

    ClusterNode._snapshot_metadata(node)
    core = node.cores.get("__meta")
    if core is not None and node.compactor is not None and node.compactor.index:
        core.compact(core.commit_index)


def _snapshot_with_the_uncommitted_tail(node: Any) -> None:
    """The snapshot is taken at the log's last entry, its uncommitted tail applied to the state."""
    from streamlog.cluster import metadata as md
    from streamlog.cluster.node import ClusterNode

    compactor, log = node.compactor, node.meta_log
    if compactor is not None and node.state is not None and log is not None and compactor.due(log.last_index) \
            and log.last_index > node.meta_applied:
        state = node.state
        for entry in log.entries(node.meta_applied + 1, log.last_index + 1, 1 << 22):
            state, _ = md.apply_entry(state, entry.data, entry.index)
        compactor.take(state, log.last_term)
    ClusterNode._snapshot_metadata(node)


def metadata_compacted_past_the_snapshot(world: Any) -> None:
    """Broken: the metadata log's prefix is dropped up to the commit index, past the snapshot kept."""
    world.node_overrides["_snapshot_metadata"] = _snapshot_then_compact_to_the_commit


def metadata_snapshot_at_an_uncommitted_index(world: Any) -> None:
    """Broken: a metadata snapshot holds entries not yet committed (the log's tail applied)."""
    world.node_overrides["_snapshot_metadata"] = _snapshot_with_the_uncommitted_tail


VARIANTS.update({
    "metadata-compacted-past-the-snapshot": metadata_compacted_past_the_snapshot,
    "metadata-snapshot-at-an-uncommitted-index": metadata_snapshot_at_an_uncommitted_index,
})


def _keeps_waiters_at_snapshot_install() -> type:
    from streamlog.raft.driver import _GroupRunner

    class KeepsWaitersAtSnapshotInstall(_GroupRunner):
        """Broken (the bug the simulator found, put back): a snapshot installed over a pending
        submission fails nothing, so the entry that replaced it is reported as its commit."""

        def fail_all(self, why: str, upto: int | None = None) -> None:
            if upto is None:
                super().fail_all(why)

    return KeepsWaitersAtSnapshotInstall


def replaced_write_reported_committed(world: Any) -> None:
    """Broken (the bug seed 9400052 found, put back): a cut-off leader's pending write, replaced
    by the next leader's entry and compacted away before it caught up by InstallSnapshot, is
    answered as committed (InitProducerId then raised KeyError at the forwarding node). A blind
    spot more than a catch: seed 9400052 found it on 3eb6fce, but on the tree after that day's
    merges (the simulator's Producer and network changed the runs) 0 of 300 seeds
    (9400000-9400299) reach it; tests/raft/test_driver.py proves the fix. No CI budget."""
    world.host_overrides["runner_class"] = _keeps_waiters_at_snapshot_install()


VARIANTS.update({"replaced-write-reported-committed": replaced_write_reported_committed})


def _compact_to_the_snapshot_handed_off(node: Any) -> None:
    """ClusterNode._snapshot_metadata, then the metadata log cut up to the snapshot just handed
    to the writer, as if its write were already done (and one snapshot enough)."""
    from streamlog.cluster.node import ClusterNode

    compactor, handed = node.compactor, []
    if compactor is not None:
        start = compactor.start_write

        def start_write(durable_index: int) -> Any:
            job = start(durable_index)
            if job is not None:
                handed.append(job[0])
            return job

        compactor.start_write = start_write
    try:
        ClusterNode._snapshot_metadata(node)
    finally:
        if compactor is not None:
            del compactor.start_write
    core = node.cores.get("__meta")
    if handed and core is not None:
        upto = min(handed[0], core.commit_index, core.durable_index)
        if upto >= node.meta_log.start_index:
            core.compact(upto)


def metadata_compacted_before_its_snapshot_is_durable(world: Any) -> None:
    """Broken: the node takes a metadata snapshot as written when it hands the write to its
    committer's worker, and drops the log's prefix up to it at once. A crash before the write
    is durable leaves a log whose start no snapshot reaches: the node refuses to restart. Only
    a simulator whose committer runs the write later (run_tracked) can catch it: with the
    write done on the spot the snapshot is always on disk before the cut."""
    world.node_overrides["_snapshot_metadata"] = _compact_to_the_snapshot_handed_off


def _expire_judged_by_the_last_attempt(producer: Any, batch: Any) -> None:
    """Producer._expire, with "may it be stored?" judged by the batch's last attempt alone."""
    from streamlog.client import retry
    from streamlog.client.producer import Producer

    last = batch.last_error
    batch.maybe_landed = last is not None and retry.may_have_landed(last)
    Producer._expire(producer, batch)


def timed_out_send_reported_unsent(world: Any) -> None:
    """Broken: when a batch's delivery timeout passes, the Producer says whether it may be stored
    (C{sent}) from its last attempt only: a batch written once, whose answer never came, then
    refused a connection at every resend, fails as never sent, so the application takes it
    for not stored while the first attempt landed (C{aborted-read} once a consumer reads it).
    Only runs whose faults outlast the delivery timeout (the long-fault regime) reach it."""
    world.producer_overrides["_expire"] = _expire_judged_by_the_last_attempt


VARIANTS.update({
    "metadata-compacted-before-its-snapshot-is-durable": metadata_compacted_before_its_snapshot_is_durable,
    "timed-out-send-reported-unsent": timed_out_send_reported_unsent,
})

"""ReplicaStorage: a replica's sync over the node's group committer, at the node's stop."""

from __future__ import annotations

from twisted.internet.task import Clock

from streamlog.cluster.replica import ReplicaStorage
from streamlog.raft.log import Entry
from streamlog.storage.base import TopicConfig
from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
from streamlog.storage.log import SegmentedLog
from streamlog.storage.segmented import SegmentedStorage
from streamlog.testing import ManualThreads, result_of


def test_a_sync_asked_after_the_committer_stopped_holds_the_group_and_is_no_fsync_failure(tmp_path):
    clock, threads = Clock(), ManualThreads()
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=None)
    storage_ = SegmentedStorage(str(tmp_path))
    storage_.load()
    log = storage_.create_topic("g", 1, TopicConfig())[0]
    raw = getattr(log, "log", log)
    failures: list = []
    storage = ReplicaStorage("g", raw, None, lambda: committer, failures.append)
    result_of(committer.stop())
    raw.append([Entry(raw.last_index + 1, 1, b"")])  # a follower appends after the final sync
    d = storage.sync_log()
    outcome: list = []
    d.addBoth(outcome.append)
    clock.advance(1)
    threads.run_all()
    assert outcome == []  # never fires: nothing after this entry may be released
    assert failures == []  # and no replica is failed, no fatal fsync error is reported
    assert raw.durable_index < raw.last_index
    storage_.close()


def test_a_replicas_sync_barrier_survives_a_new_leader_cutting_the_tail_it_waits_for(tmp_path):
    """Review finding 1 (storage v2) for the cluster's own GroupStorage: the barrier asked for
    index 10 passes once what the log still holds is durable, the replica is not failed."""
    clock, threads = Clock(), ManualThreads()
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=None)
    log = SegmentedLog(str(tmp_path / "g"), cache_bytes=0)
    failures: list = []
    storage = ReplicaStorage("g", log, None, lambda: committer, failures.append)
    log.append([Entry(i, 1, b"") for i in range(1, 6)])
    log.sync()
    log.append([Entry(i, 1, b"") for i in range(6, 11)])  # from the leader of term 1, not synced
    barrier = storage.sync_log()
    clock.advance(0)  # its sync job is handed to a worker, not run yet
    log.truncate_suffix(6)
    log.append([Entry(6, 2, b"")])  # the new leader's no-op at 6
    while threads.jobs:
        threads.run_one()
        clock.advance(0)
    result_of(barrier)
    assert failures == [] and log.durable_index == 6
    stopped = committer.stop()
    threads.run_all()
    clock.advance(0)
    result_of(stopped)
    log.close()

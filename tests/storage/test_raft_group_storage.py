"""A Raft group on real storage: the segmented log as its log, the hard-state store, the committer.

One node's group of one, through the Twisted driver, on a virtual clock
with the syncs held in fake threads: its term and vote are saved before it
leads, its no-op and a record batch are on disk before they commit, and after
a restart the group comes back with its term and its log.
"""

from __future__ import annotations

import random

import pytest
from storage_helpers import append_batch, append_noop, make_batch, read_all
from twisted.internet.task import Clock

from streamlog.raft.core import LEADER, RaftConfig
from streamlog.raft.driver import GroupCallbacks, RaftHost
from streamlog.storage.base import RecordBatch
from streamlog.storage.errors import StorageFailed
from streamlog.storage.group import RaftGroupStorage
from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
from streamlog.storage.hardstate import HardStateStore, read_states
from streamlog.storage.log import SegmentedLog
from streamlog.testing import ManualThreads, result_of

CFG = RaftConfig(election_timeout=0.3, heartbeat_interval=0.05)


class Commits(GroupCallbacks):
    def __init__(self):
        self.upto = 0

    def committed(self, group, upto):
        self.upto = upto


def node(tmp_path, clock, threads):
    log = SegmentedLog(str(tmp_path / "p0"))
    hard_state = HardStateStore(str(tmp_path / "hardstate"), clock=clock, run_in_thread=threads)
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=None)
    callbacks = Commits()
    host = RaftHost("1.a", ["1.a"], CFG, callbacks, clock=clock, rng=random.Random(1))
    raft = host.add_group("t-0", ["1.a"], RaftGroupStorage("t-0", log, hard_state, committer))
    host.start()
    return host, raft, log, hard_state, callbacks


def settle(clock, threads, seconds=1.0):
    for _ in range(int(seconds / 0.01)):
        clock.advance(0.01)
        threads.run_all()


def test_a_group_of_one_on_the_segmented_log(tmp_path):
    clock, threads = Clock(), ManualThreads()
    host, raft, log, hard_state, callbacks = node(tmp_path, clock, threads)
    # The election timeout passes (in ticks, as a running reactor does: RaftHost counts a single
    # one-second jump as a stall of two ticks): it campaigns; its term and vote must be saved first.
    clock.pump([0.01] * 100)
    assert [f.__name__ for _, f, _ in threads.jobs] == ["_write_round"]  # the hard-state round, held
    on_disk = read_states(hard_state.path, open(hard_state.path, "rb").read())[0]
    assert on_disk == {} and callbacks.upto == 0  # not yet on disk: nothing released behind the barrier
    settle(clock, threads)
    assert raft.role == LEADER and hard_state.get("t-0").term == raft.term >= 1
    assert log.last_index == 1 and log.entries(1, 2, 100)[0].data == b""  # the new leader's no-op
    done = host.submit("t-0", make_batch(log.end_offset, 3))
    settle(clock, threads, 0.2)
    index = result_of(done)
    assert index == 2 and callbacks.upto == 2 and log.durable_index == 2
    [entry] = log.entries(2, 3, 1 << 20)
    assert isinstance(entry.data, RecordBatch) and entry.data.raft_index == 2 and entry.data.term == raft.term
    assert read_all(log) == [0, 1, 2] and log.next_offset_after(callbacks.upto) == 3  # the high watermark
    term = raft.term
    host.stop()
    log.close()
    hard_state.close()

    # Restarted: the term, the vote and the log come back, and it leads a later term.
    clock2, threads2 = Clock(), ManualThreads()
    host, raft, log, hard_state, callbacks = node(tmp_path, clock2, threads2)
    assert raft.term == term and log.last_index == 2
    clock2.pump([0.01] * 100)
    settle(clock2, threads2)
    assert raft.role == LEADER and raft.term == term + 1 and log.term_at(3) == term + 1
    assert callbacks.upto == 3 and read_all(log) == [0, 1, 2]
    host.stop()
    log.close()
    hard_state.close()


# -- a follower's sync barrier across a truncation or a snapshot (review finding 1) ------------
#
# The core keeps writing its log while the driver's FIFO waits on a SyncLog: a new leader's
# AppendEntries can cut the tail the barrier was asked for, an InstallSnapshot can reset the log.
# The barrier must then pass once what the log still holds is durable; an error here is taken
# by the driver for a failed fsync and stops the group for good.


def follower(tmp_path):
    clock, threads = Clock(), ManualThreads()
    log = SegmentedLog(str(tmp_path / "p0"), cache_bytes=0)
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=None)
    storage = RaftGroupStorage("t-0", log, None, committer)
    for _ in range(5):
        append_batch(log, make_batch(log.end_offset, 2), term=1)
    log.sync()
    for _ in range(5):  # 6..10 from the leader of term 1, not synced yet
        append_batch(log, make_batch(log.end_offset, 2), term=1)
    return clock, threads, log, storage


def drain(clock, threads):
    while threads.jobs:
        threads.run_one()
        clock.advance(0)


def test_sync_log_passes_when_a_new_leader_cuts_the_tail_before_the_sync_runs(tmp_path):
    clock, threads, log, storage = follower(tmp_path)
    barrier = storage.sync_log()  # SyncLog(10)
    clock.advance(0)  # its sync job is handed to a worker, not run yet
    log.truncate_suffix(6)
    append_noop(log, term=2)  # the new leader's no-op at 6
    drain(clock, threads)
    assert result_of(barrier) is True
    assert log.last_index == log.durable_index == 6


def test_sync_log_waits_for_the_next_sync_when_a_truncation_straddles_its_sync(tmp_path):
    clock, threads, log, storage = follower(tmp_path)
    barrier = storage.sync_log()  # SyncLog(10)
    clock.advance(0)
    [(d, f, args)] = threads.jobs
    threads.jobs.clear()
    outcome = f(*args)  # the sync runs (1..10 on disk) ...
    log.truncate_suffix(6)  # ... and the cut lands before its result is back on the reactor
    append_noop(log, term=2)
    assert log.durable_index == 5  # the new entry 6 is not durable yet
    d.callback(outcome)
    clock.advance(0)
    assert not barrier.called  # not vouched for: it waits for the next sync
    drain(clock, threads)
    assert result_of(barrier) is True
    assert log.last_index == log.durable_index == 6


def test_sync_log_passes_when_a_snapshot_resets_the_log_meanwhile(tmp_path):
    clock, threads, log, storage = follower(tmp_path)
    barrier = storage.sync_log()  # SyncLog(10)
    clock.advance(0)
    log.reset(7, 2, ("a",))  # InstallSnapshot at 7 over a conflicting tail
    drain(clock, threads)
    assert result_of(barrier) is True
    assert log.last_index == log.durable_index == 7


def test_sync_log_after_a_truncation_still_fails_on_an_fsync_error(tmp_path):
    clock, threads, log, storage = follower(tmp_path)
    barrier = storage.sync_log()
    clock.advance(0)
    log.truncate_suffix(6)
    append_noop(log, term=2)

    def broken_sync():
        raise StorageFailed("fsync failed: EIO")

    log.sync = broken_sync
    drain(clock, threads)
    with pytest.raises(StorageFailed, match="EIO"):
        result_of(barrier)


# -- a Raft group's barrier is an fsync whatever --fsync says (review finding 2) ---------------


@pytest.mark.parametrize("policy", ["never", "interval:100"])
def test_a_raft_group_refuses_a_committer_that_does_not_fsync(tmp_path, policy):
    log = SegmentedLog(str(tmp_path / "p0"))
    committer = GroupCommitter(FsyncPolicy.parse(policy), Clock(), ManualThreads(), checkpoint_interval=None)
    with pytest.raises(ValueError, match=f"fsync policy 'always'.*not '{policy}'"):
        RaftGroupStorage("t-0", log, None, committer)
    log.close()


def test_a_raft_groups_sync_log_waits_for_the_fsync(tmp_path):
    clock, threads = Clock(), ManualThreads()
    log = SegmentedLog(str(tmp_path / "p0"))
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=None)
    storage = RaftGroupStorage("t-0", log, None, committer)
    append_batch(log, make_batch(log.end_offset, 3), term=1)
    barrier = storage.sync_log()
    clock.advance(0)
    assert not barrier.called and log.durable_index == 0
    drain(clock, threads)
    assert result_of(barrier) is True and log.durable_index == 1
    log.close()

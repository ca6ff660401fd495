"""GroupCommitter: group commit, several sync workers, checkpoints outside commits, policies and
fail-stop, on a virtual clock and fake threads."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from storage_helpers import append_noop, fill
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import StorageCorrupted, StorageError, StorageFailed
from streamlog.storage.group_commit import CommitterStopped, FsyncPolicy, GroupCommitter
from streamlog.storage.log import SegmentedLog
from streamlog.testing import ManualThreads as FakeThreads
from streamlog.testing import result_of


class FakeLog:
    def __init__(self) -> None:
        self.end_offset = 0
        self.durable_offset = 0
        self.syncs = 0
        self.error: Exception | None = None
        self.closed = False
        self.failed = None
        self.checkpoints = 0

    checkpoint_due = False

    def checkpoint(self, sync: bool = True) -> bool:
        self.checkpoints += 1
        if sync:
            self.sync()
        return True

    def append(self, n: int) -> int:
        self.end_offset += n
        return self.end_offset

    def sync(self) -> int:
        self.syncs += 1
        if self.error is not None:
            raise self.error
        self.durable_offset = self.end_offset
        return self.durable_offset


def has_fired(d: Deferred) -> bool:
    out: list = []
    d.addBoth(lambda r: out.append(r) or r)
    return bool(out)


@pytest.fixture
def setup():
    clock = Clock()
    threads = FakeThreads()
    fatal: list[Failure] = []
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, fatal.append, checkpoint_interval=None)
    yield clock, threads, committer, fatal
    assert not clock.getDelayedCalls() or committer._stopped or fatal


@pytest.mark.parametrize(
    "text, policy",
    [
        ("always", FsyncPolicy("always")),
        ("never", FsyncPolicy("never")),
        ("interval:250", FsyncPolicy("interval", 250)),
        (" ALWAYS ", FsyncPolicy("always")),
    ],
)
def test_parse_policy(text, policy):
    assert FsyncPolicy.parse(text) == policy
    assert FsyncPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize("bad", ["", "sometimes", "interval", "interval:", "interval:0", "interval:-5", "interval:1.5", "interval:ms"])
def test_parse_policy_rejects_bad_strings(bad):
    with pytest.raises(ValueError, match="always.*interval.*never"):
        FsyncPolicy.parse(bad)


def test_concurrent_waiters_share_one_fsync_per_log(setup):
    clock, threads, committer, _ = setup
    a, b = FakeLog(), FakeLog()
    waits = [committer.wait(a, a.append(1)) for _ in range(50)] + [committer.wait(b, b.append(3))]
    assert not any(has_fired(d) for d in waits)
    clock.advance(0)
    assert len(threads.jobs) == 2  # one job per log: several workers sync them at once
    threads.run_one()
    assert all(result_of(d) is True for d in waits[:50]) and not has_fired(waits[50])
    threads.run_one()
    assert result_of(waits[50]) is True
    assert (a.syncs, b.syncs, committer.rounds) == (1, 1, 2)


def test_a_log_fires_its_waiters_as_soon_as_its_own_sync_is_done(setup):
    clock, threads, committer, _ = setup
    slow, fast = FakeLog(), FakeLog()
    d_slow = committer.wait(slow, slow.append(1))
    d_fast = committer.wait(fast, fast.append(1))
    clock.advance(0)
    (_, _, (first,)), (_, _, (second,)) = [job for job in threads.jobs]
    assert {first, second} == {slow, fast}
    threads.jobs.reverse()  # the second log's sync finishes first
    threads.run_one()
    assert has_fired(d_fast if second is fast else d_slow) and not has_fired(d_slow if second is fast else d_fast)
    # And its next waiters do not wait for the other log's sync either.
    again = committer.wait(second, second.append(1))
    clock.advance(0)
    assert len(threads.jobs) == 2
    threads.run_all()
    assert result_of(again) is True


def test_waiters_arriving_during_a_round_form_the_next_round(setup):
    clock, threads, committer, _ = setup
    log = FakeLog()
    first = committer.wait(log, log.append(1))
    clock.advance(0)
    later = [committer.wait(log, log.append(1)) for _ in range(10)]
    clock.advance(0)
    assert len(threads.jobs) == 1  # no second job while the first runs
    log.end_offset, snapshot = 1, log.end_offset  # the sync saw only the first append
    threads.run_one()
    log.end_offset = snapshot
    assert result_of(first) is True
    assert not any(has_fired(d) for d in later)
    clock.advance(0)
    assert len(threads.jobs) == 1
    threads.run_one()
    assert all(result_of(d) is True for d in later)
    assert log.syncs == 2


def test_already_durable_fires_at_once(setup):
    _, threads, committer, _ = setup
    log = FakeLog()
    log.append(5)
    log.sync()
    assert result_of(committer.wait(log, 5)) is True
    assert threads.jobs == []


def test_fsync_error_is_fail_stop(setup):
    clock, threads, committer, fatal = setup
    log = FakeLog()
    d1 = committer.wait(log, log.append(1))
    clock.advance(0)
    d2 = committer.wait(log, log.append(1))  # queued for the next round
    log.error = StorageFailed("fsync failed: EIO")
    threads.run_one()
    assert len(fatal) == 1 and fatal[0].check(StorageFailed)
    for d in (d1, d2):
        with pytest.raises(StorageFailed):
            result_of(d)
    with pytest.raises(StorageFailed):
        result_of(committer.wait(log, log.append(1)))
    log.error = None
    clock.advance(1)
    assert threads.jobs == []  # never tries again
    assert log.durable_offset == 0


def test_a_corrupt_log_fails_only_its_own_waiters(setup):
    clock, threads, committer, fatal = setup
    bad, good = FakeLog(), FakeLog()
    bad.error = StorageCorrupted("x.log", 0, "CRC mismatch")
    d_bad = committer.wait(bad, bad.append(1))
    d_good = committer.wait(good, good.append(1))
    clock.advance(0)
    threads.run_all()
    with pytest.raises(StorageCorrupted):
        result_of(d_bad)
    assert result_of(d_good) is True
    assert fatal == []


def test_truncated_before_durable_errbacks(setup):
    clock, threads, committer, _ = setup
    log = FakeLog()
    d = committer.wait(log, log.append(5))
    log.end_offset = 2  # truncated (Raft) before the sync ran
    clock.advance(0)
    threads.run_one()
    with pytest.raises(StorageError, match="truncated"):
        result_of(d)


def test_interval_policy_acks_at_once_and_syncs_on_the_clock():
    clock, threads = Clock(), FakeThreads()
    committer = GroupCommitter(FsyncPolicy.parse("interval:100"), clock, threads, checkpoint_interval=None)
    log = FakeLog()
    assert result_of(committer.wait(log, log.append(1))) is False
    assert threads.jobs == []
    clock.advance(0.1)
    assert len(threads.jobs) == 1
    threads.run_one()
    assert log.durable_offset == 1
    clock.pump([0.1] * 5)
    assert threads.jobs == []  # nothing new to sync
    committer.wait(log, log.append(1))
    clock.advance(0.1)
    threads.run_one()
    assert log.durable_offset == 2
    d = committer.stop()
    threads.run_one()
    assert result_of(d) is not False
    assert clock.getDelayedCalls() == []


def test_never_policy_never_syncs_until_stop():
    clock, threads = Clock(), FakeThreads()
    committer = GroupCommitter(FsyncPolicy.parse("never"), clock, threads, checkpoint_interval=None)
    log = FakeLog()
    assert result_of(committer.wait(log, log.append(3))) is False
    clock.advance(3600)
    assert threads.jobs == [] and log.syncs == 0
    d = committer.stop()
    threads.run_one()
    result_of(d)
    assert log.durable_offset == 3
    with pytest.raises(CommitterStopped):
        result_of(committer.wait(log, 4))


def test_stop_waits_for_a_running_round_then_syncs(setup):
    clock, threads, committer, _ = setup
    log = FakeLog()
    d = committer.wait(log, log.append(1))
    clock.advance(0)
    stopped = committer.stop()
    assert not has_fired(stopped)
    threads.run_one()
    assert result_of(d) is True
    assert len(threads.jobs) == 1
    threads.run_one()
    result_of(stopped)
    assert log.syncs == 2


def test_forget_fails_waiters_of_a_deleted_log(setup):
    clock, threads, committer, _ = setup
    log = FakeLog()
    d = committer.wait(log, log.append(1))
    committer.forget(log)
    with pytest.raises(StorageFailed):
        result_of(d)
    clock.advance(0)
    assert threads.jobs == []


def test_with_a_real_log(tmp_path):
    clock, threads = Clock(), FakeThreads()
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=None)
    log = SegmentedLog(str(tmp_path))
    fill(log, 3)
    d = committer.wait(log, log.end_offset)
    clock.advance(0)
    threads.run_one()
    assert result_of(d) is True and log.durable_offset == 15
    # A Raft driver waits for entries by index (its SyncLog) the same way.
    append_noop(log)
    d = committer.wait_index(log, log.last_index)
    clock.advance(0)
    threads.run_all()  # (the first sync also made a checkpoint due: it runs as a job of its own)
    assert result_of(d) is True and log.durable_index == 4
    log.close()


def test_a_due_checkpoint_is_written_after_the_sync_never_inside_it(tmp_path):
    clock, threads = Clock(), FakeThreads()
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=None)
    log = SegmentedLog(str(tmp_path), TopicConfig(segment_bytes=1_100))
    fill(log, 4)  # rolls: a checkpoint is due after the next sync
    d = committer.wait(log, log.end_offset)
    clock.advance(0)
    [(_, job, _)] = threads.jobs
    assert job.__name__ == "_sync_one"
    threads.run_one()
    assert result_of(d) is True  # answered before any checkpoint is written
    assert not os.path.exists(tmp_path / "recovery-checkpoint") or log.checkpoint_due
    [(_, job, _)] = threads.jobs
    assert job.__name__ == "_checkpoint_one"
    # A send arriving now gets its own sync, on another worker, while the checkpoint runs.
    fill(log, 1)
    d2 = committer.wait(log, log.end_offset)
    clock.advance(0)
    assert [j.__name__ for _, j, _ in threads.jobs] == ["_checkpoint_one", "_sync_one"]
    threads.jobs.reverse()
    threads.run_one()
    assert result_of(d2) is True
    threads.run_all()
    assert not log.checkpoint_due and committer.checkpoints == 1
    log.close()


@pytest_twisted.ensureDeferred
async def test_real_reactor_and_worker_threads(tmp_path):
    """The defaults: the global reactor and deferToThread; many waiters, few fsyncs."""
    committer = GroupCommitter(FsyncPolicy.parse("always"))
    log = SegmentedLog(str(tmp_path))
    waits = []
    for _ in range(20):
        fill(log, 1)
        waits.append(committer.wait(log, log.end_offset))
    results = await DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)
    assert [ok for ok, _ in results] == [True] * 20
    assert all(value is True for _, value in results)
    assert committer.rounds == 1
    await committer.stop()
    log.close()


@pytest_twisted.ensureDeferred
async def test_many_logs_are_synced_by_several_workers_at_once(tmp_path, monkeypatch):
    """Forty logs, four workers: at most four syncs run at once, and more than one does.

    (Due checkpoints run elsewhere, on the reactor's thread pool: not counted.)
    """
    import threading
    import time

    running, peak, lock = [0], [0], threading.Lock()
    real = os.fdatasync

    def slow_fdatasync(fd):
        if not threading.current_thread().name.startswith("streamlog-sync-"):
            return real(fd)
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002)
        real(fd)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    committer = GroupCommitter(FsyncPolicy.parse("always"), sync_workers=4, checkpoint_interval=None)
    logs = [SegmentedLog(str(tmp_path / str(i))) for i in range(40)]
    for log in logs:
        fill(log, 1)
    await DeferredList([committer.wait(log, log.end_offset) for log in logs], fireOnOneErrback=True)
    assert all(log.durable_offset == 5 for log in logs)
    assert 1 < peak[0] <= 4
    await committer.stop()
    for log in logs:
        log.close()


@pytest.mark.parametrize("policy", ["always", "interval:1000", "never"])
def test_background_checkpoints_under_every_policy(policy):
    """Checkpoints bound recovery and let retention delete, even with never."""
    clock, threads = Clock(), FakeThreads()
    committer = GroupCommitter(FsyncPolicy.parse(policy), clock, threads, checkpoint_interval=60)
    log, gone = FakeLog(), FakeLog()
    committer.wait(log, log.append(1))
    committer.wait(gone, gone.append(1))
    clock.advance(0)
    threads.run_all()  # an always round
    gone.closed = True

    def checkpoint_jobs() -> int:
        return sum(1 for _, f, _ in threads.jobs if f.__name__ == "_background_one")

    assert threads.jobs == []

    clock.advance(60)  # (with interval:, the pass first waits for the interval sync of that log)
    clock.advance(60)  # the first pass has not finished: no second one
    while threads.jobs:
        assert checkpoint_jobs() <= 1  # never two background jobs at once
        threads.run_one()
    assert (log.checkpoints, gone.checkpoints) == (1, 0)
    assert list(committer._logs.values()) == [log]  # closed logs are forgotten
    d = committer.stop()
    threads.run_all()
    result_of(d)
    assert clock.getDelayedCalls() == []


def pass_jobs(threads: FakeThreads) -> list[str]:
    return [f.__name__ for _, f, _ in threads.jobs]


def synced_and_checkpointed(tmp_path, n: int, clock, threads, committer) -> list[SegmentedLog]:
    """C{n} real logs with records, each synced by a commit and checkpointed."""
    logs = [SegmentedLog(str(tmp_path / str(i))) for i in range(n)]
    for log in logs:
        fill(log, 2)
        committer.wait(log, log.end_offset)
    clock.advance(0)
    threads.run_all()  # the syncs, then each first checkpoint (due: none yet)
    assert all(not log.background_due for log in logs)
    return logs


def test_the_periodic_pass_skips_idle_logs_and_writes_only_what_changed(tmp_path):
    """Issue 9: the 60-s pass synced and checkpointed every log of a 1,000-partition node, idle or not."""
    clock, threads = Clock(), FakeThreads()
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=60)
    logs = synced_and_checkpointed(tmp_path, 4, clock, threads, committer)
    busy = logs[1]
    fill(busy, 1)  # a write since the last checkpoint, synced by its commit: stale, not due
    committer.wait(busy, busy.end_offset)
    clock.advance(0)
    threads.run_all()
    assert not busy.checkpoint_due and busy.background_due
    syncs = [log.durability.syncs for log in logs]
    before = (tmp_path / "1" / "recovery-checkpoint").read_bytes()
    clock.advance(60)
    assert pass_jobs(threads) == ["_background_one"]  # the one changed log; the idle ones cost no job
    threads.run_all()
    assert [log.durability.syncs for log in logs] == syncs  # synced already: no fsync of its data again
    assert (tmp_path / "1" / "recovery-checkpoint").read_bytes() != before
    assert not busy.background_due and committer.pass_jobs == 1
    clock.advance(60)  # nothing changed since: a pass with nothing to do
    assert threads.jobs == [] and (committer.passes, committer.pass_jobs) == (2, 1)
    fill(logs[2], 1)  # appended, not synced (as with --fsync never): the pass syncs it
    clock.advance(60)
    threads.run_all()
    assert logs[2].durability.syncs == syncs[2] + 1 and logs[2].durable_offset == logs[2].end_offset
    for log in logs:
        log.close()


def test_the_pass_does_one_log_at_a_time_and_never_beside_a_commit_of_that_log(tmp_path):
    clock, threads = Clock(), FakeThreads()
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=60)
    logs = synced_and_checkpointed(tmp_path, 3, clock, threads, committer)
    for log in logs:
        fill(log, 1)
    committer.wait(logs[0], logs[0].end_offset)
    clock.advance(0)
    assert pass_jobs(threads) == ["_sync_one"]  # a commit of logs[0] in flight
    clock.advance(60)
    assert pass_jobs(threads) == ["_sync_one"]  # the pass waits for it: nothing queued beside it
    threads.run_one()
    assert pass_jobs(threads) == ["_background_one"]  # at once after that sync, before any new round
    send = committer.wait(logs[0], logs[0].end_offset + 0)  # already durable: answered at once
    assert result_of(send) is True
    fill(logs[0], 1)
    waiting = committer.wait(logs[0], logs[0].end_offset)
    clock.advance(0)
    assert pass_jobs(threads) == ["_background_one"]  # the commit waits for the pass job of its log...
    threads.run_one()
    clock.advance(0)
    assert sorted(pass_jobs(threads)) == ["_background_one", "_sync_one"]  # ...then gets its round; the pass goes on
    threads.jobs.sort(key=lambda job: job[1].__name__ != "_sync_one")
    threads.run_one()
    assert result_of(waiting) is True
    while threads.jobs:
        assert pass_jobs(threads).count("_background_one") <= 1  # never two pass jobs queued
        threads.run_one()
        clock.advance(0)
    assert committer.pass_jobs == 3 and not any(log.background_due for log in logs[1:])
    d = committer.stop()
    threads.run_all()
    result_of(d)
    assert clock.getDelayedCalls() == []
    for log in logs:
        log.close()


def test_a_failing_background_checkpoint_is_fatal():
    clock, threads, fatal = Clock(), FakeThreads(), []
    committer = GroupCommitter(FsyncPolicy.parse("never"), clock, threads, fatal.append, checkpoint_interval=60)
    log = FakeLog()
    committer.wait(log, log.append(1))
    log.error = StorageFailed("fsync failed: EIO")
    clock.advance(60)
    threads.run_one()
    assert len(fatal) == 1
    assert clock.getDelayedCalls() == []
    with pytest.raises(StorageFailed):
        result_of(committer.wait(log, 2))


@pytest_twisted.ensureDeferred
async def test_the_sync_pool_runs_jobs_reports_errors_and_stops():
    from twisted.internet import reactor

    from streamlog.storage.group_commit import SyncPool

    one = SyncPool(reactor)
    order: list[int] = []
    await DeferredList([one(order.append, i) for i in range(5)])
    assert order == [0, 1, 2, 3, 4]  # one worker: in order
    with pytest.raises(ZeroDivisionError):
        await one(lambda: 1 / 0)
    pool = SyncPool(reactor, 3)
    assert sorted(await DeferredList([pool(lambda i=i: i) for i in range(9)])) == [(True, i) for i in range(9)]
    for p in (one, pool):
        p.stop()
        for thread in p._threads:
            thread.join(5)
            assert not thread.is_alive()
    with pytest.raises(ValueError):
        SyncPool(reactor, 0)


def test_a_committer_on_a_plain_clock_needs_no_sync_pool():
    committer = GroupCommitter(FsyncPolicy.parse("always"), Clock(), checkpoint_interval=None)
    assert committer._pool is None
    with pytest.raises(ValueError):
        GroupCommitter(FsyncPolicy.parse("always"), Clock(), sync_workers=0)


def test_sync_workers_is_a_server_option():
    from twisted.python import usage

    from streamlog.tap.server import Options

    options = Options()
    options.parseOptions(["--sync-workers", "8"])
    assert options["sync-workers"] == 8
    defaults = Options()
    defaults.parseOptions([])
    assert defaults["sync-workers"] == 4
    with pytest.raises(usage.UsageError, match="--sync-workers must be at least 1"):
        Options().parseOptions(["--sync-workers", "0"])


def test_a_sync_looks_at_its_own_log_only_not_every_log_seen():
    """A 1,000-partition node walked all its logs after every sync (5 % of its reactor thread in a
    restart under load); closed logs are forgotten after their own sync, and by the periodic pass."""
    looks = [0]

    class CountedLog(FakeLog):
        @property
        def closed(self) -> bool:  # type: ignore[override]
            looks[0] += 1
            return self._closed

        @closed.setter
        def closed(self, value: bool) -> None:
            self._closed = value

    clock, threads = Clock(), FakeThreads()
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=60)
    logs = [CountedLog() for _ in range(200)]
    for log in logs:
        committer.wait(log, log.append(1))
    clock.advance(0)
    threads.run_all()
    looks[0] = 0
    d = committer.wait(logs[0], logs[0].append(1))
    clock.advance(0)
    threads.run_all()
    assert result_of(d) is True
    assert looks[0] <= 3  # its own log, not 200
    logs[5].closed = True
    d = committer.wait(logs[5], logs[5].append(1))
    clock.advance(0)
    threads.run_all()
    assert id(logs[5]) not in committer._logs  # forgotten after its own sync
    logs[7].closed = True
    clock.advance(60)
    threads.run_all()
    assert id(logs[7]) not in committer._logs and len(committer._logs) == 198  # and by the pass

"""Every durability sync of the storage reports its failure to the fail-stop handler.

A failed fsync leaves the page cache in an unknown state (fsyncgate), so the
storage never leaves it to its caller: each class of sync site below gets EIO
for one path and must tell the handler (in a server: exit 70) with the path
and the errno, before any caller's C{except} could log and go on, and must not
report durable what the failed sync was for.  (docs/operations.md, "A failed
fsync".)
"""

from __future__ import annotations

import errno
import os

import pytest
from storage_helpers import append_batch, make_batch, rolled_segments
from twisted.internet.task import Clock

from streamlog.raft.core import HardState
from streamlog.raft.log import Entry
from streamlog.storage import checkpoint, producer_snapshots, sync_failure
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import StorageError, StorageFailed, SyncFailed
from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
from streamlog.storage.hardstate import HardStateStore
from streamlog.storage.log import MAX_RETIRED, SegmentedLog
from streamlog.storage.segmented import SegmentedStorage
from streamlog.storage.snapshot_files import DirectorySnapshots
from streamlog.testing import ManualThreads, failure_of, result_of


def reported(recorder: sync_failure.Recorder, under: object) -> list[SyncFailed]:
    """The failures told to the handler, each checked: a path under C{under}, errno EIO, both named."""
    assert recorder.failures, "the failed sync was not reported to the fail-stop handler"
    for failure in recorder.failures:
        assert isinstance(failure, SyncFailed)
        assert failure.errno == errno.EIO and str(failure.path).startswith(str(under)), failure
        assert str(failure.path) in str(failure) and "EIO" in str(failure)
    return recorder.failures


def filled(directory, entries: int = 5, **options) -> SegmentedLog:
    log = SegmentedLog(str(directory), **options)
    log.append([Entry(i, 1, make_batch(i - 1, 1)) for i in range(1, entries + 1)])
    return log


# --- the helpers: the one place a failed sync is reported -----------------------------------


def test_each_sync_helper_reports_a_failed_sync_then_raises_as_before(tmp_path, sync_failures, eio_syncs):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    eio_syncs(str(tmp_path))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as raised:
            checkpoint.datasync(fd)
    finally:
        os.close(fd)
    assert raised.value.errno == errno.EIO  # what callers catch is unchanged
    with pytest.raises(OSError):
        checkpoint.datasync_path(str(path))
    with pytest.raises(OSError):
        checkpoint.fsync_dir(str(tmp_path))
    with pytest.raises(OSError):
        checkpoint.write_atomically(str(tmp_path / "g"), b"data")
    paths = [f.path for f in reported(sync_failures, tmp_path)]
    assert paths == [str(path), str(path), str(tmp_path), str(tmp_path / "g.tmp")]


def test_a_failed_open_or_write_is_no_sync_failure(tmp_path, sync_failures, monkeypatch):
    with pytest.raises(FileNotFoundError):
        checkpoint.datasync_path(str(tmp_path / "missing"))

    def enospc(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", enospc)
    with pytest.raises(OSError):
        checkpoint.write_atomically(str(tmp_path / "g"), b"data")  # a full disk: the write may be tried again
    assert sync_failures.failures == []


def test_with_no_handler_a_failed_sync_is_only_raised(tmp_path, eio_syncs):
    sync_failure.install(None)
    eio_syncs(str(tmp_path))
    with pytest.raises(OSError):
        checkpoint.fsync_dir(str(tmp_path))


# --- a partition log's syncs, in a worker: the group committer --------------------------------


def test_a_failed_log_sync_in_a_worker_is_reported_and_nothing_is_acknowledged(tmp_path, sync_failures, eio_syncs):
    clock, threads, fatal = Clock(), ManualThreads(), []
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, fatal.append, checkpoint_interval=None)
    log = filled(tmp_path / "p")
    waiting = committer.wait_index(log, 5)
    clock.advance(0)  # the round's job is handed to a worker
    eio_syncs(str(tmp_path / "p"))
    threads.run_all()
    reported(sync_failures, tmp_path / "p")
    assert failure_of(waiting).check(StorageFailed) and len(fatal) == 1
    assert log.durable_index == 0
    assert failure_of(committer.wait_index(log, 5)).check(StorageFailed)  # never reported durable again
    result_of(committer.stop())
    log.close(sync=False)


# --- syncs on the reactor thread: rolls, truncations, snapshot installs, retention -----------


def test_a_roll_that_settles_retired_segments_reports_their_failed_sync(tmp_path, sync_failures, eio_syncs):
    log = filled(tmp_path / "p", 1)
    for _ in range(MAX_RETIRED):
        log.roll()
        append_batch(log, make_batch(log.end_offset, 1))
    eio_syncs(str(tmp_path / "p"))
    with pytest.raises(StorageFailed):
        log.roll()  # one retired segment too many: the oldest are synced and closed here
    reported(sync_failures, tmp_path / "p")
    assert log.durable_index == 0
    log.close(sync=False)


def test_a_suffix_truncation_reports_its_failed_sync(tmp_path, sync_failures, eio_syncs):
    log = filled(tmp_path / "p")
    log.sync()
    eio_syncs(str(tmp_path / "p"))
    with pytest.raises(StorageFailed):
        log.truncate_suffix(3)  # a follower's conflicting tail (Raft), synced before it returns
    reported(sync_failures, tmp_path / "p")
    log.close(sync=False)


def test_a_snapshot_install_reports_its_failed_sync(tmp_path, sync_failures, eio_syncs):
    log = filled(tmp_path / "p")
    eio_syncs(str(tmp_path / "p"))
    with pytest.raises(StorageFailed):
        log.reset(10, 2, next_offset=10)
    reported(sync_failures, tmp_path / "p")
    log.close(sync=False)


def test_retention_reports_the_failed_sync_of_its_checkpoint(tmp_path, sync_failures, eio_syncs):
    log = filled(tmp_path / "p", 1)
    rolled_segments(log)
    eio_syncs(str(tmp_path / "p"))
    with pytest.raises(StorageFailed):
        log.truncate_prefix(2)  # retention, or compaction after a snapshot
    reported(sync_failures, tmp_path / "p")
    assert len([n for n in os.listdir(tmp_path / "p") if n.endswith(".log")]) == 4  # no file deleted
    assert log.failed is not None  # and the log serves nothing more
    log.close(sync=False)


def test_a_clean_close_reports_the_failed_sync_of_its_checkpoint(tmp_path, sync_failures, eio_syncs):
    log = filled(tmp_path / "p")
    eio_syncs(str(tmp_path / "p"))
    with pytest.raises(StorageFailed):
        log.close()
    reported(sync_failures, tmp_path / "p")


# --- the data directory: topics created and deleted, start-up ---------------------------------


def test_creating_and_deleting_a_topic_report_their_failed_directory_syncs(tmp_path, sync_failures, eio_syncs):
    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    storage.create_topic("kept", 1, TopicConfig())
    eio_syncs(str(tmp_path / "new"))
    with pytest.raises(StorageFailed):
        storage.create_topic("new", 2, TopicConfig())
    reported(sync_failures, tmp_path / "new")
    sync_failures.failures.clear()
    eio_syncs(lambda path: path == str(tmp_path))  # the data directory, after the rename
    with pytest.raises(OSError):
        storage.delete_topic("kept")
    reported(sync_failures, tmp_path)
    eio_syncs(None)
    storage.close()


def test_a_recovery_sync_at_start_up_is_reported(tmp_path, sync_failures, eio_syncs):
    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    log = storage.create_topic("t", 1, TopicConfig())[0]
    append_batch(log, make_batch(0, 3))  # never synced: a crash leaves it for recovery to read back
    log.log._release()  # as a crash would: no clean-shutdown checkpoint
    storage.hard_state.close()
    again = SegmentedStorage(str(tmp_path))
    eio_syncs(str(tmp_path / "t"))
    with pytest.raises(StorageError):  # CannotLoad: the server refuses to start
        again.load()
    reported(sync_failures, tmp_path / "t")


# --- the node's other durable files -------------------------------------------------------


def test_a_hard_state_round_reports_its_failed_sync(tmp_path, sync_failures, eio_syncs):
    fatal: list = []
    clock = Clock()
    store = HardStateStore(str(tmp_path / "hardstate"), clock=clock,
                           run_in_thread=lambda f, *a: result_deferred(f, *a), on_fatal=fatal.append)
    eio_syncs(str(tmp_path / "hardstate"))
    saved = store.save("g", HardState(2, "a"))
    clock.advance(0)
    reported(sync_failures, tmp_path / "hardstate")
    assert failure_of(saved).check(StorageFailed) and len(fatal) == 1  # the vote is never acted on
    store.close()


def result_deferred(f, *args):
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


def test_a_metadata_snapshot_write_and_set_aside_report_their_failed_syncs(tmp_path, sync_failures, eio_syncs):
    store = DirectorySnapshots(str(tmp_path / "meta"))
    store.save(1, b"one")
    eio_syncs(str(tmp_path / "meta"))
    with pytest.raises(SyncFailed):
        store.save(2, b"two")  # the write a node makes, and the InstallSnapshot path's
    with pytest.raises(OSError):
        store.refuse(1)
    assert len(reported(sync_failures, tmp_path / "meta")) == 2


def test_removing_refused_producer_snapshots_reports_its_failed_sync(tmp_path, sync_failures, eio_syncs):
    directory = tmp_path / "p"
    directory.mkdir()
    doomed = directory / producer_snapshots.file_name(7)
    doomed.write_bytes(b"not a snapshot")
    eio_syncs(str(directory))
    with pytest.raises(OSError):
        producer_snapshots.remove_all(str(directory), [str(doomed)])
    reported(sync_failures, directory)


def test_a_failed_sync_names_the_file_not_its_descriptor(tmp_path, sync_failures, eio_syncs, monkeypatch):
    """Each site passes the path it syncs: the descriptor's /proc name says "(deleted)" for a
    cut-away segment's retired files, and names nothing where there is no /proc."""
    monkeypatch.setattr(sync_failure, "descriptor_path", lambda fd: f"file descriptor {fd}")
    log = filled(tmp_path / "p", 1)
    log.roll()
    append_batch(log, make_batch(log.end_offset, 1))
    rolled, active = log.chain.segments
    eio_syncs(str(tmp_path / "p"))
    with pytest.raises(OSError):
        active.files.sync(indexes=True)
    with pytest.raises(OSError):
        active.write_index_files()  # rewritten in place
    if rolled.idx_indexes is None:
        rolled.load_indexes()
    with pytest.raises(OSError):
        rolled.write_index_files()  # replaced through a tmp file
    store = DirectorySnapshots(str(tmp_path / "meta"))
    eio_syncs(str(tmp_path / "meta"))
    with pytest.raises(SyncFailed):
        store.save(2, b"two")
    paths = [f.path for f in sync_failures.failures]
    assert paths == [active.log_path, active.index_path, rolled.index_path + ".tmp", store.path(2) + ".tmp"]
    eio_syncs(None)
    log.close(sync=False)

"""Every write to a partition log's files reports its failure to the fail-stop handler.

A failed write may leave part of itself in the file (a torn frame in the
middle of a segment) while the log's memory is a step ahead or behind; a
later fdatasync that succeeds would then vouch for what is not on disk.  So,
like a failed sync (tests/storage/test_sync_fail_stop.py), each class of
write site below gets ENOSPC (or EIO) for one path and must tell the handler
(in a server: exit 70) with the path and the errno before any caller's
C{except} could log and go on, and must not report durable what the write
was for.  ENOSPC is no different from EIO.  (docs/operations.md, "A failed
fsync", the table of failed writes.)
"""

from __future__ import annotations

import errno
import os

import pytest
from storage_helpers import append_batch, make_batch, rolled_segments
from twisted.internet.task import Clock

from streamlog.raft.core import HardState
from streamlog.raft.log import Entry
from streamlog.storage import sync_failure
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import OutOfDescriptors, StorageFailed, WriteFailed
from streamlog.storage.hardstate import HardStateStore
from streamlog.storage.log import SegmentedLog
from streamlog.storage.segmented import SegmentedStorage
from streamlog.testing import failure_of


def told(recorder: sync_failure.Recorder, under: object, code: int = errno.ENOSPC, count: int = 1) -> list[WriteFailed]:
    """The failures told to the handler (C{count} of them: one failed write is told once), each
    checked: a write of a path under C{under}, errno C{code}, both named."""
    assert recorder.failures, "the failed write was not reported to the fail-stop handler"
    assert len(recorder.failures) == count, recorder.failures
    for failure in recorder.failures:
        assert isinstance(failure, WriteFailed), failure
        assert failure.errno == code and str(failure.path).startswith(str(under)), failure
        assert str(failure.path) in str(failure) and errno.errorcode[code] in str(failure)
    return recorder.failures  # type: ignore[return-value]


def filled(directory, entries: int = 5, **config) -> SegmentedLog:
    log = SegmentedLog(str(directory), TopicConfig(**config), index_interval_bytes=64)
    log.append([Entry(i, 1, make_batch(i - 1, 1)) for i in range(1, entries + 1)])
    return log


def segments(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".log"))


# --- the module: one road, no second report of an error told already ------------------------


def test_report_write_names_the_path_and_errno_and_tells_an_error_once(sync_failures):
    error = OSError(errno.ENOSPC, "No space left on device")
    first = sync_failure.report_write("/d/t/0/1.log", error, "append to")
    assert sync_failure.report_write("/d/t/0/1.log", error) is first  # raised on through another except
    assert sync_failures.failures == [first]
    assert str(first) == "append to /d/t/0/1.log failed: No space left on device (ENOSPC)"
    assert (first.path, first.errno) == ("/d/t/0/1.log", errno.ENOSPC)
    synced = OSError(errno.EIO, "Input/output error")
    sync_failure.report("/d/t/0", synced)
    sync_failure.report_write("/d/t/0", synced)  # a sync helper's error inside a write site: told once
    assert len(sync_failures.failures) == 2


# --- appends: the data file, the index files ----------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("cut_back_fails", [False, True])
def test_a_failed_append_is_reported_once_and_nothing_more_is_durable(
        tmp_path, sync_failures, failing_writes, code, cut_back_fails):
    log = filled(tmp_path / "p")
    assert log.sync() == 5
    calls = ("writev", "ftruncate") if cut_back_fails else ("writev",)
    failing_writes(str(tmp_path / "p"), calls=calls, error=code)
    with pytest.raises(StorageFailed) as raised:
        append_batch(log, make_batch(5, 1))
    [failure] = told(sync_failures, tmp_path / "p", code)  # once, the cut-back's failure too
    assert failure.path.endswith(".log")
    assert [call for call, _ in failing_writes.failed] == list(calls)
    if cut_back_fails:
        assert any("cutting it back" in note for note in getattr(raised.value.__cause__, "__notes__", []))
    failing_writes(None)
    assert log.failed is not None
    with pytest.raises(StorageFailed):
        log.sync()  # a later sync that would succeed vouches for nothing more
    assert log.durable_index == 5
    log.close(sync=False)


def test_a_failed_index_entry_write_during_an_append_is_reported(tmp_path, sync_failures, failing_writes):
    log = filled(tmp_path / "p", 1)
    failing_writes(lambda path: path.endswith(".index"), calls=("write",))
    with pytest.raises(StorageFailed):
        for i in range(2, 20):  # an index entry is due every 64 bytes
            log.append([Entry(i, 1, make_batch(i - 1, 1))])
    told(sync_failures, tmp_path / "p")
    failing_writes(None)
    assert log.failed is not None
    log.close(sync=False)


def test_a_roll_whose_files_cannot_be_written_is_reported(tmp_path, sync_failures, failing_writes):
    log = filled(tmp_path / "p", 1)
    failing_writes(lambda path: path.endswith(".timeindex"), calls=("write",))
    with pytest.raises(StorageFailed):
        log.roll()  # the old segment's last time-index entry
    told(sync_failures, tmp_path / "p")
    sync_failures.failures.clear()
    failing_writes(None)
    log.close(sync=False)
    log = SegmentedLog(str(tmp_path / "q"))
    append_batch(log, make_batch(0, 1))
    failing_writes(str(tmp_path / "q"), calls=("open",), error=errno.EIO)
    with pytest.raises(StorageFailed):
        log.roll()  # the new segment's files
    told(sync_failures, tmp_path / "q", errno.EIO)
    failing_writes(None)
    log.close(sync=False)


def test_a_roll_refused_for_want_of_descriptors_is_no_write_failure(tmp_path, sync_failures, failing_writes):
    """Nothing was written: the files it made are removed and the old segment stays active."""
    log = filled(tmp_path / "p", 1)
    failing_writes(str(tmp_path / "p"), calls=("open",), error=errno.EMFILE)
    with pytest.raises(OutOfDescriptors):
        log.roll()
    failing_writes(None)
    assert sync_failures.failures == [] and log.failed is None
    append_batch(log, make_batch(1, 1))
    assert log.sync() == 2
    log.close()


# --- truncations: a follower's conflicting tail, a snapshot install, retention ----------------


def test_a_failed_suffix_truncation_is_reported(tmp_path, sync_failures, failing_writes):
    log = filled(tmp_path / "p")
    log.sync()
    failing_writes(str(tmp_path / "p"), calls=("ftruncate",), error=errno.EIO)
    with pytest.raises(StorageFailed):
        log.truncate_suffix(3)
    told(sync_failures, tmp_path / "p", errno.EIO)
    failing_writes(None)
    assert log.failed is not None
    log.close(sync=False)


def test_a_failed_snapshot_install_is_reported(tmp_path, sync_failures, failing_writes):
    log = filled(tmp_path / "p")
    failing_writes(str(tmp_path / "p"), calls=("open",))
    with pytest.raises(StorageFailed):
        log.reset(10, 2, next_offset=10)  # its new segment's files
    told(sync_failures, tmp_path / "p")
    failing_writes(None)
    log.close(sync=False)


def test_a_failed_checkpoint_write_of_retention_is_reported_and_changes_nothing_in_memory(
        tmp_path, sync_failures, failing_writes):
    log = filled(tmp_path / "p", 1)
    rolled_segments(log)
    before = (log.start_index, log.start_offset, log.segment_count, log.prefix_term, log.term_at(1))
    failing_writes(lambda path: path.endswith(".tmp"), calls=("write",))
    with pytest.raises(StorageFailed):
        log.truncate_prefix(2)  # retention, or compaction after a snapshot
    told(sync_failures, tmp_path / "p")
    failing_writes(None)
    # The shorter chain never reached the disk: the memory is still the log the checkpoint names.
    assert (log.start_index, log.start_offset, log.segment_count, log.prefix_term, log.term_at(1)) == before
    assert len(segments(tmp_path / "p")) == 4  # no file deleted
    log.close(sync=False)


def test_retention_changes_its_memory_only_once_its_checkpoint_is_written(tmp_path, failing_writes, monkeypatch):
    """The checkpoint is written while the chain in memory is still the old one (a checkpoint
    worker never sees a chain the disk does not have), and names the shorter chain."""
    from streamlog.storage import checkpoint as checkpoint_module
    from streamlog.storage import durability

    log = filled(tmp_path / "p", 1)
    rolled_segments(log)
    seen = []
    real = checkpoint_module.write_atomically

    def write(path, data):
        seen.append((log.start_index, log.segment_count, checkpoint_module.Checkpoint.decode(data).start.index))
        real(path, data)

    monkeypatch.setattr(durability, "write_atomically", write)
    log.truncate_prefix(2)
    assert seen == [(1, 4, 3)] and (log.start_index, log.segment_count) == (3, 2)
    log.close()
    again = SegmentedLog(str(tmp_path / "p"))
    assert (again.start_index, again.segment_count, again.last_index) == (3, 2, 4)
    again.close()


def test_a_failed_segment_removal_after_retention_is_reported(tmp_path, sync_failures, failing_writes):
    log = filled(tmp_path / "p", 1)
    rolled_segments(log)
    failing_writes(lambda path: path.endswith(".log"), calls=("unlink",), error=errno.EIO)
    with pytest.raises(StorageFailed):
        log.truncate_prefix(2)
    told(sync_failures, tmp_path / "p", errno.EIO)
    failing_writes(None)
    log.close(sync=False)


# --- the recovery checkpoint and the indexes, written apart from appends ----------------------


def test_a_failed_checkpoint_write_is_reported(tmp_path, sync_failures, failing_writes):
    log = filled(tmp_path / "p")
    log.sync()
    failing_writes(lambda path: path.endswith("recovery-checkpoint.tmp"), calls=("write",))
    with pytest.raises(StorageFailed):
        log.checkpoint(sync=False)  # the periodic pass's, in a worker, or a clean close's
    told(sync_failures, tmp_path / "p")
    failing_writes(None)
    log.close(sync=False)


def test_a_closed_segments_index_rebuilt_on_a_read_that_cannot_be_written_is_no_write_failure(
        tmp_path, sync_failures, failing_writes):
    """The rebuilt index of a closed segment goes to a temporary file renamed over the old one:
    a failed write leaves the old file as it was and the rebuilt index right in memory, so the
    read answers from memory, nothing is told, and the log goes on serving."""
    log = filled(tmp_path / "p", 30, segment_bytes=1024)
    log.roll()
    expected = log.read(0, 10, 1 << 20)
    log.close()
    first = segments(tmp_path / "p")[0][:-4]
    os.unlink(tmp_path / "p" / (first + ".index"))  # rebuilt when the segment is first read
    log = SegmentedLog(str(tmp_path / "p"))
    failing_writes(lambda path: path.startswith(str(tmp_path / "p" / first)), calls=("write",))
    assert log.read(0, 10, 1 << 20) == expected and expected.count == 10
    assert [name for name, _ in failing_writes.failed] == ["write"]
    assert sync_failures.failures == [] and log.failed is None
    assert not [n for n in os.listdir(tmp_path / "p") if n.endswith(".tmp")]  # no leftover
    failing_writes(None)
    log.append([Entry(31, 1, make_batch(30, 1))])
    assert log.sync() == 31
    log.close()


def test_an_index_rewrite_at_recovery_that_cannot_be_written_refuses_the_open_naming_the_file(
        tmp_path, sync_failures, failing_writes):
    """Recovery rewrites indexes before any descriptor is open for appending (temporary files):
    a failure told no one (nothing is torn) but the log is not opened on a stale index."""
    log = filled(tmp_path / "p", 30)
    log.close()
    first = segments(tmp_path / "p")[0][:-4]
    os.unlink(tmp_path / "p" / (first + ".index"))
    failing_writes(lambda path: path.endswith(".tmp") and first in path, calls=("write",))
    with pytest.raises(OSError, match="index rewrite of .*" + first + r"\.index failed") as raised:
        SegmentedLog(str(tmp_path / "p"))
    assert raised.value.errno == errno.ENOSPC
    assert sync_failures.failures == []
    failing_writes(None)
    log = SegmentedLog(str(tmp_path / "p"))
    assert log.last_index == 30
    log.close()


@pytest.mark.parametrize("suffix", [".index", ".timeindex"])
def test_a_failed_index_rewrite_of_the_active_segment_is_reported_with_its_file(
        tmp_path, sync_failures, failing_writes, suffix):
    """The active segment's index files are rewritten in place (its append descriptors stay
    valid): a failure may leave one cut or half-written, a failed log write."""
    log = filled(tmp_path / "p", 30)
    active = log.chain.active
    failing_writes(lambda path: path.endswith(suffix), calls=("write",))
    with pytest.raises(OSError):
        active.write_index_files()
    [failure] = told(sync_failures, tmp_path / "p")
    assert failure.path.endswith(suffix) and failure.path.startswith(active.log_path[:-4])
    failing_writes(None)
    log.close(sync=False)


# --- the data directory: topics created and deleted ------------------------------------------


def test_a_failed_topic_creation_or_deletion_is_reported(tmp_path, sync_failures, failing_writes):
    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    storage.create_topic("kept", 1, TopicConfig())
    failing_writes(str(tmp_path / "new"), calls=("open", "write"))
    with pytest.raises(StorageFailed):
        storage.create_topic("new", 2, TopicConfig())
    told(sync_failures, tmp_path / "new")
    sync_failures.failures.clear()
    failing_writes(str(tmp_path / "kept"), calls=("rename",), error=errno.EIO)
    with pytest.raises(OSError):
        storage.delete_topic("kept")
    told(sync_failures, tmp_path / "kept", errno.EIO)
    failing_writes(None)
    storage.close()


def test_a_failed_topic_creation_is_reported_even_if_closing_its_logs_fails(
        tmp_path, sync_failures, failing_writes, monkeypatch):
    from streamlog.storage.local import LocalLog

    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    failing_writes(lambda path: path.endswith("topic.json.tmp"), calls=("write",))

    def close(self, sync=True):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(LocalLog, "close", close)
    with pytest.raises(OSError):
        storage.create_topic("new", 2, TopicConfig())
    told(sync_failures, tmp_path / "new")
    failing_writes(None)
    monkeypatch.undo()
    storage.close()


def test_a_topic_creation_out_of_descriptors_is_no_write_failure(tmp_path, sync_failures, failing_writes):
    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    failing_writes(str(tmp_path / "new"), calls=("open",), error=errno.EMFILE)
    with pytest.raises(OutOfDescriptors):
        storage.create_topic("new", 1, TopicConfig())
    failing_writes(None)
    assert sync_failures.failures == []
    storage.create_topic("new", 1, TopicConfig())
    storage.close()


# --- the hard-state file, as the storage opens it ----------------------------------------------


def opened_hard_state(data_dir, clock) -> HardStateStore:
    """The store as the node gets it: opened by SegmentedStorage.load (no on_fatal of its own)."""
    storage = SegmentedStorage(str(data_dir))
    storage.load()
    store = storage.hard_state
    assert store is not None
    store.bind(clock, lambda f, *a: _now(f, *a))
    return store


def _now(f, *args):
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


@pytest.mark.parametrize("call", ["write", "replace"])
def test_a_failed_hard_state_write_reaches_the_handler(tmp_path, sync_failures, failing_writes, call):
    clock = Clock()
    store = opened_hard_state(tmp_path, clock)
    if call == "replace":
        store.compact_bytes = 0  # once the file holds twice its live content, a round is a compaction
        for term in range(1, 4):
            store.save("g", HardState(term, None))
            clock.advance(0)
    failing_writes(lambda path: path.startswith(str(tmp_path / "hardstate")), calls=(call,))
    saved = store.save("g", HardState(5, "a"))
    clock.advance(0)
    told(sync_failures, tmp_path / "hardstate")
    assert failure_of(saved).check(StorageFailed)  # the vote is never acted on
    assert failing_writes.failed and failing_writes.failed[0][0] == call
    assert failure_of(store.save("g", HardState(6, "a"))).check(StorageFailed)
    failing_writes(None)
    store.close()


def test_a_hard_state_round_that_cannot_be_handed_to_a_worker_reaches_the_handler(tmp_path, sync_failures):
    clock = Clock()
    store = opened_hard_state(tmp_path, clock)

    def refusing(f, *args):
        raise RuntimeError("the thread pool is stopped")

    store.bind(clock, refusing)
    saved = store.save("g", HardState(2, "a"))
    clock.advance(0)
    assert failure_of(saved).check(StorageFailed)
    [failure] = sync_failures.failures
    assert isinstance(failure, StorageFailed) and str(tmp_path / "hardstate") in str(failure)
    store.close()

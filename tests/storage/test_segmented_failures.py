"""Write and fsync failures are fail-stop; what a sync makes durable, and in which order."""

from __future__ import annotations

import errno
import os

import pytest
from storage_helpers import append_batch, fill, make_batch, read_all

from streamlog.storage import appends, checkpoint
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import StorageFailed
from streamlog.storage.log import SegmentedLog


def open_log(path, **config) -> SegmentedLog:
    config.setdefault("segment_bytes", 1_100)
    return SegmentedLog(str(path), TopicConfig(**config), index_interval_bytes=256)


def test_datasync_falls_back_to_fsync_where_there_is_no_fdatasync(tmp_path, monkeypatch):
    calls = []
    monkeypatch.delattr(os, "fdatasync")
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    checkpoint.datasync(fd)
    os.close(fd)
    assert calls == [fd]


def test_fsync_error_fails_the_log_and_durability_never_advances(tmp_path, monkeypatch):
    log = open_log(tmp_path)
    fill(log, 1)
    assert log.sync() == 1 and log.durable_offset == 5

    def eio(fd):
        raise OSError(errno.EIO, "I/O error")

    fill(log, 1)
    monkeypatch.setattr(os, "fsync", eio)
    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(StorageFailed, match="fsync failed"):
        log.sync()
    monkeypatch.undo()
    assert log.durable_offset == 5
    assert isinstance(log.failed, StorageFailed)
    with pytest.raises(StorageFailed):
        log.sync()  # a retry must not "succeed" after the kernel dropped the pages
    with pytest.raises(StorageFailed):
        append_batch(log, make_batch(10, 1))
    log.close()


def test_failed_append_leaves_no_partial_frame(tmp_path, monkeypatch):
    log = open_log(tmp_path)
    fill(log, 2)
    size = log.size_bytes

    def short_then_enospc(fd, buffers):
        os.write(fd, bytes(buffers[0])[:10])  # a partial header reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", short_then_enospc)
    with pytest.raises(StorageFailed, match="append failed"):
        append_batch(log, make_batch(10, 1))
    monkeypatch.undo()
    assert log.end_offset == 10
    log.close()
    assert sum(os.path.getsize(os.path.join(tmp_path, n)) for n in os.listdir(tmp_path) if n.endswith(".log")) == size
    reopened = open_log(tmp_path)
    assert reopened.failed is None and read_all(reopened) == list(range(10))
    reopened.close()


def test_sync_syncs_a_rolled_segment_and_the_directory_before_reporting_durable(tmp_path, monkeypatch):
    from streamlog.storage import durability

    log = open_log(tmp_path)
    fill(log, 2)
    log.sync()
    synced: list[str] = []
    real_fdatasync, real_fsync_dir = os.fdatasync, durability.fsync_dir

    def fdatasync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1])
        real_fdatasync(fd)

    def fsync_dir(path):
        synced.append("<dir>")
        real_fsync_dir(path)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(durability, "fsync_dir", fsync_dir)
    fill(log, 2)  # rolls: the batch at index 3 (offset 10) goes to a new segment
    assert log.segment_count == 2
    assert log.sync() == 4 and log.durable_offset == 20
    first, second = f"{1:020d}", f"{3:020d}"
    assert {f"{first}.log", f"{first}.index", f"{first}.timeindex", f"{second}.log", "<dir>"} <= set(synced)
    assert synced.index("<dir>") > synced.index(f"{second}.log")
    assert "recovery-checkpoint.tmp" not in synced  # a sync never writes a checkpoint (one is due now)
    assert log.checkpoint_due
    log.close()


def test_a_checkpoint_is_written_apart_at_the_synced_end(tmp_path, monkeypatch):
    log = open_log(tmp_path)
    fill(log, 4)  # rolls twice
    log.sync()
    fill(log, 1)  # not synced: the checkpoint must not cover it
    assert log.checkpoint(sync=False)
    from streamlog.storage.checkpoint import CHECKPOINT_FILE, Checkpoint

    written = Checkpoint.decode((tmp_path / CHECKPOINT_FILE).read_bytes())
    assert (written.next_index, written.next_offset) == (5, 20)
    assert not log.checkpoint_due and not log.checkpoint(sync=False)  # nothing moved: nothing written
    log.close()


def test_durable_offset_lags_until_sync(tmp_path):
    log = open_log(tmp_path)
    fill(log, 3)
    assert (log.durable_offset, log.durable_index) == (0, 0)
    assert log.sync() == 3 and log.durable_offset == 15
    fill(log, 1)
    assert (log.durable_offset, log.end_offset, log.durable_index) == (15, 20, 3)
    log.close()


def test_rolls_without_syncs_keep_a_bounded_number_of_descriptors(tmp_path):
    log = open_log(tmp_path, segment_bytes=1_024)  # two batches per segment
    baseline = len(os.listdir("/proc/self/fd"))
    peak = baseline
    for _ in range(60):  # --fsync never: no sync comes
        fill(log, 1)
        peak = max(peak, len(os.listdir("/proc/self/fd")))
    assert log.segment_count == 30
    assert peak - baseline <= 3 * appends.MAX_RETIRED + 3
    assert log.sync() == 60 and read_all(log) == list(range(300))
    log.close()
    reopened = open_log(tmp_path, segment_bytes=1_024)
    assert reopened.failed is None and read_all(reopened) == list(range(300))
    reopened.close()

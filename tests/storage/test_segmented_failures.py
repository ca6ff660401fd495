"""Write and fsync failures are fail-stop; what a sync makes durable, and in which order."""

from __future__ import annotations

import errno
import os

import pytest
from storage_helpers import fill, make_batch, read_all

from streamlog.storage import log as log_module
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import StorageFailed
from streamlog.storage.log import SegmentedLog


def open_log(path, **config) -> SegmentedLog:
    config.setdefault("segment_bytes", 1_100)
    return SegmentedLog(str(path), TopicConfig(**config), index_interval_bytes=256)


def test_fsync_error_fails_the_log_and_durability_never_advances(tmp_path, monkeypatch):
    log = open_log(tmp_path)
    fill(log, 1)
    assert log.sync() == 5

    def eio(fd):
        raise OSError(errno.EIO, "I/O error")

    fill(log, 1)
    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(StorageFailed, match="fsync failed"):
        log.sync()
    monkeypatch.undo()
    assert log.durable_offset == 5
    assert isinstance(log.failed, StorageFailed)
    with pytest.raises(StorageFailed):
        log.sync()  # a retry must not "succeed" after the kernel dropped the pages
    with pytest.raises(StorageFailed):
        log.append(make_batch(10, 1))
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
        log.append(make_batch(10, 1))
    monkeypatch.undo()
    assert log.end_offset == 10
    log.close()
    assert sum(os.path.getsize(os.path.join(tmp_path, n)) for n in os.listdir(tmp_path) if n.endswith(".log")) == size
    reopened = open_log(tmp_path)
    assert reopened.failed is None and read_all(reopened) == list(range(10))
    reopened.close()


def test_sync_fsyncs_a_rolled_segment_and_the_directory_before_reporting_durable(tmp_path, monkeypatch):
    log = open_log(tmp_path)
    fill(log, 2)
    log.sync()
    synced: list[str] = []
    real_fsync, real_fsync_dir = os.fsync, log_module.fsync_dir

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1])
        real_fsync(fd)

    def fsync_dir(path):
        synced.append("<dir>")
        real_fsync_dir(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(log_module, "fsync_dir", fsync_dir)
    fill(log, 2)  # rolls: the batch at 10 goes to a new segment
    assert log.segment_count == 2
    assert log.sync() == 20
    first, second = f"{0:020d}", f"{10:020d}"
    assert {f"{first}.log", f"{first}.index", f"{first}.timeindex", f"{second}.log", "<dir>"} <= set(synced)
    assert synced.index("<dir>") > synced.index(f"{second}.log")
    log.close()


def test_durable_offset_lags_until_sync(tmp_path):
    log = open_log(tmp_path)
    fill(log, 3)
    assert log.durable_offset == 0
    assert log.sync() == 15
    fill(log, 1)
    assert (log.durable_offset, log.end_offset) == (15, 20)
    log.close()


def test_rolls_without_syncs_keep_a_bounded_number_of_descriptors(tmp_path):
    log = open_log(tmp_path, segment_bytes=1_024)  # two batches per segment
    baseline = len(os.listdir("/proc/self/fd"))
    peak = baseline
    for _ in range(60):  # --fsync never: no sync comes
        fill(log, 1)
        peak = max(peak, len(os.listdir("/proc/self/fd")))
    assert log.segment_count == 30
    assert peak - baseline <= 3 * log_module.MAX_RETIRED + 3
    assert log.sync() == 300 and read_all(log) == list(range(300))
    log.close()
    reopened = open_log(tmp_path, segment_bytes=1_024)
    assert reopened.failed is None and read_all(reopened) == list(range(300))
    reopened.close()

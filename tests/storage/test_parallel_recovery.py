"""Start-up after a crash: the recovered logs' syncs and checkpoints run on several threads at once.

Recovery reads back what lies past each log's checkpoint, then must make it
durable and checkpoint it before the log serves (docs/storage.md,
"Recovery").  One log after another that was a few thousand fsyncs in a row
at a thousand partitions (17.9 s of start-up on a busy disk): the storage now
runs them C{recovery_workers} at a time (C{--sync-workers}).
"""

from __future__ import annotations

import os
import shutil
import threading

import pytest
from storage_helpers import fill, read_all

from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import StorageFailed
from streamlog.storage.segmented import SegmentedStorage

PARTITIONS = 6


def crashed_data_dir(tmp_path) -> str:
    """A data dir as a SIGKILL leaves it: every partition has records past its last checkpoint."""
    storage = SegmentedStorage(str(tmp_path / "live"), TopicConfig(segment_bytes=600))
    logs = storage.create_topic("t", PARTITIONS, TopicConfig())
    for i, log in enumerate(logs):
        fill(log, 2 + i)
    logs[0].log.checkpoint()  # one log with a checkpoint and more after it
    fill(logs[0], 3)
    image = str(tmp_path / "image")
    shutil.copytree(storage.data_dir, image)
    storage.close()
    return image


def test_recovery_syncs_run_on_several_threads_and_every_log_is_checkpointed(tmp_path, monkeypatch):
    image = crashed_data_dir(tmp_path)
    threads: set[str] = set()
    real = os.fdatasync
    barrier = threading.Barrier(2, timeout=5)  # two workers meet inside fdatasync: they do run at once

    def fdatasync(fd: int) -> None:
        name = threading.current_thread().name
        if name.startswith("streamlog-recovery") and name not in threads:
            threads.add(name)
            if len(threads) <= 2:
                barrier.wait()
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    storage = SegmentedStorage(image, recovery_workers=3)
    _, logs = storage.load()["t"]
    assert len(threads) >= 2
    assert [log.end_offset for log in logs] == [5 * (2 + i) + (15 if i == 0 else 0) for i in range(PARTITIONS)]
    for log in logs:
        seg = log.log
        assert seg.recovery_owed is None and seg.failed is None
        assert seg.durable_index == seg.last_index  # what was read back counts as durable only once synced
        cp = seg.durability.checkpoint
        assert cp is not None and cp.next_index == seg.last_index + 1  # checkpointed at the recovered end
    assert read_all(logs[3]) == list(range(25))
    storage.close()


def test_one_recovery_worker_does_them_in_turn_on_the_caller(tmp_path, monkeypatch):
    image = crashed_data_dir(tmp_path)
    names: set[str] = set()
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (names.add(threading.current_thread().name), real(fd))[1])
    storage = SegmentedStorage(image, recovery_workers=1)
    _, logs = storage.load()["t"]
    assert names == {threading.current_thread().name}
    assert all(log.log.durability.checkpoint is not None for log in logs)
    storage.close()


def test_a_failed_recovery_sync_refuses_the_start(tmp_path, monkeypatch):
    image = crashed_data_dir(tmp_path)
    failing = os.path.join(image, "t", "4")

    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        if threading.current_thread().name.startswith("streamlog-recovery") and \
                os.readlink(f"/proc/self/fd/{fd}").startswith(failing):
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    storage = SegmentedStorage(image, recovery_workers=3)
    with pytest.raises(StorageFailed, match="fsync failed"):
        storage.load()
    assert storage.logs() == []  # every log was closed again: nothing serves


def test_recovery_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="recovery_workers"):
        SegmentedStorage(str(tmp_path), recovery_workers=0)

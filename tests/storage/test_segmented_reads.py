"""Where reads go: the index bounds the scan, the tail is served from memory."""

from __future__ import annotations

import os

import pytest
from storage_helpers import append_noop, fill, make_batch, offsets_of

from streamlog.storage import codec
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import StorageCorrupted
from streamlog.storage.log import SegmentedLog
from streamlog.storage.memory import read_batches


def test_a_read_scans_at_most_one_index_interval(tmp_path, monkeypatch):
    interval = 1_024
    log = SegmentedLog(str(tmp_path), TopicConfig(segment_bytes=10**9), index_interval_bytes=interval, cache_bytes=0)
    fill(log, 400, noops=3)  # one segment of ~200 KB, frames of ~500 bytes
    with open(os.path.join(tmp_path, f"{1:020d}.log"), "rb") as f:
        scanned = codec.scan(f.read()).frames
    frames = {fr.header.base_offset: fr.position for fr in scanned if fr.header.count}
    by_index = {fr.header.raft_index: fr.position for fr in scanned}
    reads: list[tuple[int, int]] = []
    real_pread = os.pread

    def pread(fd, length, position):
        reads.append((position, length))
        return real_pread(fd, length, position)

    monkeypatch.setattr(os, "pread", pread)
    for offset in (3, 1_003, 1_500, 1_990):  # (the newest batch is always in memory)
        reads.clear()
        assert offsets_of(log.read(offset, 1, 10_000)) == [offset]
        target = frames[offset - offset % 5]
        start = min(p for p, _ in reads)
        assert target - start <= interval + 600, (offset, target, start)
    for index in (2, 150, 301, 530):  # and by Raft index
        reads.clear()
        assert [e.index for e in log.entries(index, index + 1, 1)] == [index]
        start = min(p for p, _ in reads)
        assert by_index[index] - start <= interval + 600, (index, start)
    log.close()


def test_tailing_reads_do_not_touch_the_disk(tmp_path, monkeypatch):
    log = SegmentedLog(str(tmp_path), TopicConfig(segment_bytes=2_000), cache_bytes=64 * 1024)
    fill(log, 50, noops=2)

    def no_disk(*args):
        raise AssertionError("a tailing read went to the disk")

    monkeypatch.setattr(os, "pread", no_disk)
    for offset in (200, 230, 249):
        assert offsets_of(log.read(offset, 100, 10**6)) == list(range(offset, 250))
    fill(log, 2)
    append_noop(log)
    assert offsets_of(log.read(250, 100, 10**6)) == list(range(250, 260))
    # A leader replicating the newest entries to a follower reads them from memory too.
    tail = range(log.last_index - 20, log.last_index + 1)
    assert [e.index for e in log.entries(tail.start, tail.stop, 10**6)] == list(tail)
    assert log.next_offset_after(log.last_index - 2) == 255 and log.index_for_offset(257) == log.last_index - 1
    monkeypatch.undo()
    log.close()


def _open(path):
    return SegmentedLog(str(path), TopicConfig(segment_bytes=1_100), index_interval_bytes=256, cache_bytes=0)


@pytest.mark.parametrize("how", ["missing", "emptied"])
def test_a_hole_in_the_segments_is_refused_on_read_even_if_start_up_missed_it(tmp_path, how):
    log = _open(tmp_path)
    fill(log, 10)  # five segments of ten records (entries 1-2, 3-4, ...)
    log.close()
    middle = tmp_path / f"{5:020d}.log"
    log = _open(tmp_path)
    # The hole appears while the log runs (start-up compares files with the checkpoint's list).
    if how == "missing":
        middle.unlink()
    else:
        os.truncate(middle, 0)
    assert log.failed is None
    assert offsets_of(log.read(0, 20, 1 << 20)) == list(range(20))  # before the hole: served
    for offset in (20, 25, 29):
        with pytest.raises((StorageCorrupted, FileNotFoundError)):
            log.read(offset, 10, 1 << 20)
    log.close()
    log = _open(tmp_path)
    assert isinstance(log.failed, StorageCorrupted) and middle.name in str(log.failed)  # and start-up sees it
    log.close()


def test_read_batches_never_slices_around_a_hole():
    batches = [make_batch(0, 5), make_batch(10, 5)]  # offsets 5..9 missing
    assert read_batches(batches, 0, 5, 1 << 20).count == 5
    for offset in (0, 3, 5, 7):
        with pytest.raises(StorageCorrupted, match="missing"):
            read_batches(iter(batches), offset, 20, 1 << 20)


def test_read_descriptors_stay_within_the_node_wide_cache(tmp_path, monkeypatch):
    from streamlog.storage.segmented import SegmentedStorage

    storage = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_100), cache_bytes=0, read_files=3)
    logs = storage.create_topic("t", 2, TopicConfig())
    for log in logs:
        fill(log, 20, noops=4)  # ten segments each
    writing = len(os.listdir("/proc/self/fd"))  # the two active segments' write descriptors included
    peak = [0]
    real_pread = os.pread

    def pread(fd, length, position):
        peak[0] = max(peak[0], len(os.listdir("/proc/self/fd")))
        return real_pread(fd, length, position)

    monkeypatch.setattr(os, "pread", pread)
    for _ in range(2):  # twice over every segment of both partitions: the cache keeps evicting
        for log in logs:
            assert [o for o in range(0, 100, 3)] == [offsets_of(log.read(o, 1, 1 << 20))[0] for o in range(0, 100, 3)]
    assert len(storage.read_files) <= 3
    assert peak[0] <= writing + 3
    assert storage.read_files.opened > 20  # segments were read again after their descriptor was closed
    storage.close()
    assert len(storage.read_files) == 0

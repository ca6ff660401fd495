"""Where reads go: the index bounds the scan, the tail is served from memory."""

from __future__ import annotations

import os

import attrs
import orjson
import pytest
from storage_helpers import fill, make_batch, offsets_of

from streamlog.storage import codec
from streamlog.storage.base import TopicConfig
from streamlog.storage.checkpoint import CHECKPOINT_FILE, Checkpoint
from streamlog.storage.errors import StorageCorrupted
from streamlog.storage.log import SegmentedLog
from streamlog.storage.memory import read_batches


def test_a_read_scans_at_most_one_index_interval(tmp_path, monkeypatch):
    interval = 1_024
    log = SegmentedLog(str(tmp_path), TopicConfig(segment_bytes=10**9), index_interval_bytes=interval, cache_bytes=0)
    fill(log, 400)  # one segment of ~200 KB, frames of ~490 bytes
    with open(os.path.join(tmp_path, f"{0:020d}.log"), "rb") as f:
        frames = {fr.header.base_offset: fr.position for fr in codec.scan(f.read()).frames}
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
    log.close()


def test_tailing_reads_do_not_touch_the_disk(tmp_path, monkeypatch):
    log = SegmentedLog(str(tmp_path), TopicConfig(segment_bytes=2_000), cache_bytes=64 * 1024)
    fill(log, 50)

    def no_disk(*args):
        raise AssertionError("a tailing read went to the disk")

    monkeypatch.setattr(os, "pread", no_disk)
    for offset in (200, 230, 249):
        assert offsets_of(log.read(offset, 100, 10**6)) == list(range(offset, 250))
    fill(log, 2)
    assert offsets_of(log.read(250, 100, 10**6)) == list(range(250, 260))
    assert [b.base_offset for b in log.batches(255, 10**6)] == [255]
    monkeypatch.undo()
    log.close()


def _open(path):
    return SegmentedLog(str(path), TopicConfig(segment_bytes=1_100), index_interval_bytes=256, cache_bytes=0)


@pytest.mark.parametrize("how", ["missing", "emptied"])
def test_a_hole_in_the_segments_is_refused_on_read_even_without_the_checkpoint_list(tmp_path, how):
    log = _open(tmp_path)
    fill(log, 10)  # five segments of ten records
    log.close()
    # A checkpoint of format version 1 lists no segments: start-up cannot see the hole.
    checkpoint = Checkpoint.decode((tmp_path / CHECKPOINT_FILE).read_bytes())
    v1 = attrs.asdict(checkpoint, filter=lambda a, v: a.name != "segments")
    (tmp_path / CHECKPOINT_FILE).write_bytes(orjson.dumps({"version": 1, **v1}))
    middle = tmp_path / f"{20:020d}.log"
    if how == "missing":
        middle.unlink()
    else:
        os.truncate(middle, 0)
    log = _open(tmp_path)
    assert log.failed is None
    assert offsets_of(log.read(0, 20, 1 << 20)) == list(range(20))  # before the hole: served
    for offset in (15, 20, 25, 29):
        with pytest.raises(StorageCorrupted, match="missing"):
            log.read(offset, 10, 1 << 20)
    assert isinstance(log.failed, StorageCorrupted)  # and it stays refused
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
        fill(log, 20)  # ten segments each
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

"""Where reads go: the index bounds the scan, the tail is served from memory."""

from __future__ import annotations

import os

from storage_helpers import fill, offsets_of

from streamlog.storage import codec
from streamlog.storage.base import TopicConfig
from streamlog.storage.log import SegmentedLog


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

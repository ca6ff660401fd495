"""Retention and rolling of the segmented log: whole segments, behind the checkpoint."""

from __future__ import annotations

import os

import pytest
from storage_helpers import fill, make_batch, read_all

from streamlog.storage.base import TopicConfig
from streamlog.storage.checkpoint import CHECKPOINT_FILE, Checkpoint
from streamlog.storage.log import SegmentedLog


def open_log(path, **config) -> SegmentedLog:
    config.setdefault("segment_bytes", 1_100)  # two 5-record batches per segment
    return SegmentedLog(str(path), TopicConfig(**config), index_interval_bytes=256, cache_bytes=0)


def logs_in(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".log"))


def test_rolls_by_size(tmp_path):
    log = open_log(tmp_path)
    fill(log, 10)
    assert logs_in(tmp_path) == [f"{b:020d}.log" for b in range(0, 50, 10)]
    log.close()


def test_rolls_by_age_of_record_timestamps(tmp_path):
    log = open_log(tmp_path, segment_bytes=10**9, segment_ms=1_000)
    log.append(make_batch(0, 1, ts=10_000))
    log.append(make_batch(1, 1, ts=10_999))
    log.append(make_batch(2, 1, ts=11_000))
    assert logs_in(tmp_path) == [f"{0:020d}.log", f"{2:020d}.log"]
    log.close()


def test_size_retention_deletes_oldest_whole_segments(tmp_path):
    log = open_log(tmp_path, retention_bytes=2_500)
    fill(log, 20)
    log.sync()
    assert log.apply_retention(now_ms=0) == log.start_offset
    assert log.size_bytes <= 2_500
    assert log.start_offset % 10 == 0 and log.start_offset > 0
    assert logs_in(tmp_path)[0] == f"{log.start_offset:020d}.log"
    assert read_all(log) == list(range(log.start_offset, 100))
    log.close()
    log = open_log(tmp_path, retention_bytes=2_500)
    assert read_all(log) == list(range(log.start_offset, 100)) and log.start_offset > 0
    log.close()


def test_retention_only_deletes_behind_the_checkpoint(tmp_path):
    log = open_log(tmp_path, retention_bytes=1)
    fill(log, 20)
    assert log.apply_retention(now_ms=0) == 0  # nothing checkpointed yet
    log.sync()
    start = log.apply_retention(now_ms=0)
    assert start == 90  # everything but the active segment
    log.close()


def test_time_retention_never_deletes_the_active_segment(tmp_path):
    log = open_log(tmp_path, retention_ms=10)
    fill(log, 20)
    log.sync()
    assert log.apply_retention(now_ms=10**9) == 90
    assert read_all(log) == list(range(90, 100))
    log.close()


def test_idle_active_segment_is_rolled_so_it_can_expire(tmp_path):
    log = open_log(tmp_path, retention_ms=10, segment_ms=1_000)
    fill(log, 3)  # timestamps around 1_000
    log.sync()
    log.apply_retention(now_ms=5_000)  # rolls the idle active segment
    log.sync()
    assert log.apply_retention(now_ms=5_000) == 15
    assert (log.start_offset, log.end_offset) == (15, 15)
    assert log.read(15, 10, 1000).count == 0
    log.append(make_batch(15, 2, ts=6_000))
    assert read_all(log) == [15, 16]
    log.close()
    log = open_log(tmp_path, retention_ms=10, segment_ms=1_000)
    assert (log.start_offset, log.end_offset) == (15, 17)
    log.close()


def test_recent_segments_are_kept(tmp_path):
    log = open_log(tmp_path, retention_ms=1_000)
    fill(log, 20, ts=0)  # record o has timestamp o
    for base in range(100, 150, 5):
        log.append(make_batch(base, 5, ts=50_000 + base))
    log.sync()
    assert log.apply_retention(now_ms=50_500) == 100
    assert read_all(log) == list(range(100, 150))
    log.close()


def test_retention_checkpoints_the_shorter_chain_before_it_deletes_anything(tmp_path, monkeypatch):
    log = open_log(tmp_path, retention_bytes=2_500)
    fill(log, 20)
    log.sync()
    real_unlink = os.unlink

    class Crash(Exception):
        pass

    def crash_on_the_first_unlink(path, *args, **kwargs):
        checkpoint = Checkpoint.decode((tmp_path / CHECKPOINT_FILE).read_bytes())
        assert checkpoint.segments and checkpoint.segments[0][0] > 0  # the deleted segments are no longer listed
        raise Crash(path)

    monkeypatch.setattr(os, "unlink", crash_on_the_first_unlink)
    with pytest.raises(Crash):
        log.apply_retention(now_ms=0)
    monkeypatch.setattr(os, "unlink", real_unlink)
    start = log.start_offset
    log._release()  # the process died here: no clean close
    assert logs_in(tmp_path)[0] == f"{0:020d}.log"  # every file still there

    log = open_log(tmp_path, retention_bytes=2_500)
    assert log.failed is None and log.start_offset == start  # the deletion is finished, not taken for damage
    assert logs_in(tmp_path)[0] == f"{start:020d}.log"
    assert read_all(log) == list(range(start, 100))
    log.close()

"""Retention, rolling and resets of the segmented log: whole segments, behind the synced end, crash-safe."""

from __future__ import annotations

import os

import pytest
from storage_helpers import append_batch, append_config, append_noop, entry_summary, fill, make_batch, read_all

from streamlog.storage.base import TopicConfig
from streamlog.storage.checkpoint import CHECKPOINT_FILE, Checkpoint
from streamlog.storage.log import SegmentedLog


def open_log(path, **config) -> SegmentedLog:
    config.setdefault("segment_bytes", 1_100)  # two 5-record batches per segment
    return SegmentedLog(str(path), TopicConfig(**config), index_interval_bytes=256, cache_bytes=0)


def logs_in(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".log"))


def test_rolls_by_size_segments_named_by_first_index(tmp_path):
    log = open_log(tmp_path)
    fill(log, 10)
    assert logs_in(tmp_path) == [f"{i:020d}.log" for i in range(1, 11, 2)]
    log.close()


def test_rolls_by_age_of_record_timestamps(tmp_path):
    log = open_log(tmp_path, segment_bytes=10**9, segment_ms=1_000)
    append_batch(log, make_batch(0, 1, ts=10_000))
    append_noop(log)  # bookkeeping has no timestamp: it rolls nothing
    append_batch(log, make_batch(1, 1, ts=10_999))
    append_batch(log, make_batch(2, 1, ts=11_000))
    assert logs_in(tmp_path) == [f"{1:020d}.log", f"{4:020d}.log"]
    log.close()


def test_size_retention_deletes_oldest_whole_segments(tmp_path):
    log = open_log(tmp_path, retention_bytes=2_500)
    fill(log, 20)
    log.sync()
    assert log.apply_retention(now_ms=0) == log.start_offset
    assert log.size_bytes <= 2_500
    assert log.start_offset % 10 == 0 and log.start_offset > 0
    assert logs_in(tmp_path)[0] == f"{log.start_index:020d}.log"
    assert read_all(log) == list(range(log.start_offset, 100))
    log.close()
    log = open_log(tmp_path, retention_bytes=2_500)
    assert read_all(log) == list(range(log.start_offset, 100)) and log.start_offset > 0
    log.close()


def test_retention_only_deletes_behind_the_synced_end(tmp_path):
    log = open_log(tmp_path, retention_bytes=1)
    fill(log, 20)
    assert log.apply_retention(now_ms=0) == 0  # nothing synced yet
    log.sync()
    fill(log, 4)  # two more segments, not synced
    start = log.apply_retention(now_ms=0)
    assert start == 90  # everything before the segment the synced end is in
    log.sync()
    assert log.apply_retention(now_ms=0) == 110  # everything but the active segment
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
    fill(log, 3, noops=1)  # timestamps around 1_000
    log.sync()
    log.apply_retention(now_ms=5_000)  # rolls the idle active segment
    log.sync()
    assert log.apply_retention(now_ms=5_000) == 15
    assert (log.start_offset, log.end_offset, log.start_index, log.last_index) == (15, 15, 7, 6)
    assert log.read(15, 10, 1000).count == 0 and log.term_at(6) == log.prefix_term == 0
    append_batch(log, make_batch(15, 2, ts=6_000))
    assert read_all(log) == [15, 16]
    log.close()
    log = open_log(tmp_path, retention_ms=10, segment_ms=1_000)
    assert (log.start_offset, log.end_offset, log.start_index, log.last_index) == (15, 17, 7, 7)
    log.close()


def test_recent_segments_are_kept(tmp_path):
    log = open_log(tmp_path, retention_ms=1_000)
    fill(log, 20, ts=0)  # record o has timestamp o
    for base in range(100, 150, 5):
        append_batch(log, make_batch(base, 5, ts=50_000 + base))
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
        assert checkpoint.segments and checkpoint.segments[0][0] > 1  # the deleted segments are no longer listed
        assert checkpoint.start.index == checkpoint.segments[0][0]
        raise Crash(path)

    monkeypatch.setattr(os, "unlink", crash_on_the_first_unlink)
    with pytest.raises(Crash):
        log.apply_retention(now_ms=0)
    monkeypatch.setattr(os, "unlink", real_unlink)
    start, start_index = log.start_offset, log.start_index
    log._release()  # the process died here: no clean close
    assert logs_in(tmp_path)[0] == f"{1:020d}.log"  # every file still there

    log = open_log(tmp_path, retention_bytes=2_500)
    assert log.failed is None and (log.start_offset, log.start_index) == (start, start_index)  # finished, not damage
    assert logs_in(tmp_path)[0] == f"{start_index:020d}.log"
    assert read_all(log) == list(range(start, 100))
    log.close()


def test_the_log_start_survives_a_restart(tmp_path):
    log = open_log(tmp_path, retention_bytes=2_000)
    append_config(log, ("1.a",), term=1)
    fill(log, 20, noops=3)
    append_config(log, ("1.a", "2.b"))
    fill(log, 2)
    log.sync()
    log.apply_retention(now_ms=0)
    start = (log.start_index, log.prefix_term, log.start_offset, log.config_at(log.start_index - 1))
    assert log.start_index > 1
    before = entry_summary(log)
    log.close()
    log = open_log(tmp_path, retention_bytes=2_000)
    assert (log.start_index, log.prefix_term, log.start_offset, log.config_at(log.start_index - 1)) == start
    assert entry_summary(log) == before
    log.close()


class Crash(Exception):
    pass


def _crash_at(monkeypatch, n: int) -> list[str]:
    """Make the C{n}-th file-system change (create, rename, unlink, truncate, directory sync) raise Crash."""
    calls: list[str] = []
    real = {name: getattr(os, name) for name in ("open", "replace", "rename", "unlink", "truncate", "ftruncate")}

    def wrap(name):
        def step(*args, **kwargs):
            if name != "open" or (len(args) > 1 and args[1] & os.O_CREAT):
                calls.append(name)
                if len(calls) == n:
                    raise Crash(name)
            return real[name](*args, **kwargs)

        return step

    for name in real:
        monkeypatch.setattr(os, name, wrap(name))
    return calls


@pytest.mark.parametrize("where", ["after the end", "inside", "before the start"])
def test_a_reset_interrupted_at_any_step_leaves_the_old_log_or_the_new(tmp_path, monkeypatch, where):
    """A crash (the process dies: what was written stays) at each step of a reset."""
    import shutil

    def build(path):
        log = open_log(path, retention_bytes=None)
        append_config(log, ("1.a",), term=1)
        fill(log, 12, noops=3)
        log.sync()
        if where == "before the start":
            log.truncate_prefix(9)
        return log

    index = {"after the end": 40, "inside": 10, "before the start": 3}[where]
    probe = build(tmp_path / "probe")
    old = entry_summary(probe)
    old_start = probe.start_index
    probe.close()
    for n in range(1, 100):
        path = tmp_path / f"n{n}"
        log = build(path)
        calls = _crash_at(monkeypatch, n)
        try:
            log.reset(index, 5, ("9.z",), next_offset=777)
            finished = True
        except Crash:
            finished = False
        monkeypatch.undo()
        log._release()
        image = tmp_path / f"image{n}"
        shutil.copytree(path, image)
        recovered = open_log(image)
        assert recovered.failed is None, (n, calls, recovered.failed)
        if (recovered.start_index, recovered.end_offset) == (index + 1, 777):
            assert (recovered.last_index, recovered.prefix_term, recovered.config_at(index)) == (index, 5, (index, ("9.z",)))
        else:
            # Not reset yet: the old log, maybe without a tail a truncation removed first (durably).
            assert recovered.start_index == old_start, (n, calls)
            got = entry_summary(recovered)
            assert got == old[: len(got)] and (len(got) == len(old) or recovered.last_index == max(index, old_start - 1)), (n, calls)
        recovered.close()
        if finished:
            break
    else:
        raise AssertionError("the reset never finished")

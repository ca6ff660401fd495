"""Rolled segments' write descriptors: bounded node-wide, and a roll that cannot open files is a refusal.

A roll opens the new segment's three files before the old ones are closed;
those wait for the log's next sync.  Review 8 found a node at its partition
cap ran out of descriptors that way (6 per partition right after a roll, up
to 27 between syncs, where the budget said 3) and fail-stopped in C{_roll}.
In storage format 2 the roll lives in L{streamlog.storage.appends}, and a
truncation that reopens an older segment retires the cut-away one's files
into the same pool.
"""

from __future__ import annotations

import errno
import os

import pytest
from storage_helpers import append_batch, fill, make_batch, read_all

from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import OutOfDescriptors
from streamlog.storage.local import LocalLog
from streamlog.storage.log import SegmentedLog
from streamlog.storage.segmented import SegmentedStorage


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_rolls_across_many_logs_without_syncs_keep_the_node_wide_pool_bound(tmp_path):
    pool = 4
    storage = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_024), retired_segments=pool)
    before = open_fds()
    storage.load()
    baseline = open_fds()
    assert baseline - before == 1  # the hard-state file, held for the node's run (descriptors.NODE_FILES)
    logs = storage.create_topic("t", 20, TopicConfig())
    active = open_fds() - baseline
    assert active == 3 * 20
    peak = 0
    for _ in range(6):  # two batches per 1 KiB segment: every log rolls every other round; no sync comes
        for log in logs:
            fill(log, 1)
            peak = max(peak, open_fds() - baseline)
    # Each log's own bound (8 rolled segments) would allow 20 x 8 x 3 more; the node's is 4.
    assert peak <= active + 3 * pool + 3, peak
    assert storage.retired_files.settled > 0 and storage.retired_files.open_count() <= pool
    assert all(log.segment_count == 3 for log in logs)
    for log in logs:
        assert log.sync() == 30 and read_all(log) == list(range(30))
    storage.close()
    reopened = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_024))
    assert all(read_all(log) == list(range(30)) for log in reopened.load()["t"][1])
    reopened.close()


def test_a_roll_that_runs_out_of_descriptors_is_a_refusal_that_changes_nothing(tmp_path, monkeypatch):
    log = LocalLog(SegmentedLog(str(tmp_path), TopicConfig(segment_bytes=1_024)))  # the broker's view
    fill(log, 2)
    timeindex = sorted(tmp_path.glob("*.timeindex"))[0].read_bytes()
    names = sorted(os.listdir(tmp_path))
    fds = open_fds()
    real_open = os.open

    def emfile_on_a_new_index(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and str(path).endswith(".index"):  # the new .log is made, its .index cannot be
            raise OSError(errno.EMFILE, "Too many open files", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", emfile_on_a_new_index)
    batch = make_batch(log.end_offset, 5)
    with pytest.raises(OutOfDescriptors, match="cannot roll"):
        log.make_room(batch)
    with pytest.raises(OutOfDescriptors):
        log.append(batch)  # the append's own roll is refused alike
    monkeypatch.undo()
    # Not a disk fault: the log serves on, nothing was appended, nothing is left open or on disk.
    assert log.failed is None and log.end_offset == 10 and log.segment_count == 1 and log.log.last_index == 2
    assert open_fds() == fds and sorted(os.listdir(tmp_path)) == names
    assert sorted(tmp_path.glob("*.timeindex"))[0].read_bytes() == timeindex  # the old segment untouched
    log.append(batch)  # descriptors are back: the retry rolls
    assert log.segment_count == 2 and log.sync() == 15 and read_all(log) == list(range(15))
    log.close()


def test_a_raft_append_refused_at_a_roll_keeps_the_entries_before_it(tmp_path, monkeypatch):
    log = SegmentedLog(str(tmp_path), TopicConfig(segment_bytes=1_024))
    append_batch(log, make_batch(0, 5))
    real_open = os.open

    def emfile_on_create(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EMFILE, "Too many open files", path)
        return real_open(path, flags, *args, **kwargs)

    from streamlog.raft.log import Entry

    first, second = make_batch(5, 5), make_batch(10, 5)  # the second needs a new segment
    monkeypatch.setattr(os, "open", emfile_on_create)
    with pytest.raises(OutOfDescriptors):
        log.append([Entry(2, 1, first), Entry(3, 1, second)])  # type: ignore[arg-type]
    monkeypatch.undo()
    assert log.failed is None and (log.last_index, log.end_offset, log.segment_count) == (2, 10, 1)
    log.append([Entry(3, 1, second)])  # type: ignore[arg-type]
    assert log.segment_count == 2 and read_all(log) == list(range(15))
    log.close()


def test_truncations_that_reopen_a_segment_retire_the_cut_one_into_the_node_wide_pool(tmp_path):
    pool = 2
    storage = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_024), retired_segments=pool, read_files=1)
    storage.load()
    logs = [local.log for local in storage.create_topic("t", 8, TopicConfig())]
    baseline = open_fds()
    peak = 0
    for log in logs:
        for base in range(0, 15, 5):  # two batches per 1 KiB segment: the third rolls
            append_batch(log, make_batch(base, 5, ts=1_000 + base))
        peak = max(peak, open_fds() - baseline)
    assert all(log.segment_count == 2 for log in logs)
    for log in logs:
        # Back to the end of the first segment: it is reopened for appends, the cut-away
        # active segment's files wait for a sync, in the node's pool (no sync comes).
        log.truncate_suffix(3)
        assert log.segment_count == 1 and log.end_offset == 10
        peak = max(peak, open_fds() - baseline)
    assert peak <= 3 * pool + 3 + 1, peak  # (+1: the read cache's one descriptor; a truncation reads its tail)
    assert storage.retired_files.open_count() <= pool
    for log in logs:
        append_batch(log, make_batch(10, 5, ts=2_000))
        assert read_all(log) == list(range(15))
    storage.close()
    reopened = SegmentedStorage(str(tmp_path), TopicConfig(segment_bytes=1_024))
    assert all(read_all(log) == list(range(15)) for log in reopened.load()["t"][1])
    reopened.close()

"""A data directory written by storage format 1 opens, is upgraded in place, and keeps working.

The format-1 data directories are built by the format-1 code itself (the
`format1` fixture package: that release's storage modules), with what such a
directory holds in life: several topics and partitions, rolled segments, a
partition whose start retention moved, an empty partition, a cut inside a
batch, and the unsynced tail of a node that crashed.  The expectation for
each partition is what the format-1 code serves from a copy of the same
directory: the same records, byte for byte, at the same offsets.

The upgrade is then interrupted at every step it takes (the n-th change it
makes to the file system raises, as if the process died there), and the
directory reopened: every time, the same records at the same offsets.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import format1.segmented as v1
import orjson
import pytest
from format1.base import RecordBatch as V1Batch
from format1.base import TopicConfig as V1Config
from storage_helpers import make_batch, read_all

from streamlog.storage.base import TopicConfig
from streamlog.storage.segmented import TOPIC_FILE, SegmentedStorage

SETTINGS = dict(index_interval_bytes=256, cache_bytes=0)
CONFIG = TopicConfig(segment_bytes=1_100)


def v1_batch(base: int, count: int, ts: int, term: int = 0) -> V1Batch:
    records = [
        orjson.dumps({"offset": base + i, "timestamp": ts + i, "key": None, "value": "w" * 30, "headers": {}})
        for i in range(count)
    ]
    return V1Batch(base, count, term, ts, ts + count - 1, b"\n".join(records))


def v1_fill(log, batches: int, count: int = 4, ts: int = 1_000) -> None:
    for _ in range(batches):
        log.append(v1_batch(log.end_offset, count, ts + log.end_offset))


def build_format1(data: str) -> None:
    """A format-1 data directory as that release leaves it after some life and a crash."""
    storage = v1.SegmentedStorage(data, V1Config(segment_bytes=1_100), **SETTINGS)
    a0, a1, a2 = storage.create_topic("a", 3, V1Config(retention_bytes=2_000))
    v1_fill(a0, 12)
    v1_fill(a1, 20)
    a1.sync()
    assert a1.apply_retention(now_ms=0) > 0  # its start moved
    v1_fill(a2, 5)
    a2.truncate_suffix(13)  # a cut inside a batch: its head became a batch of its own
    v1_fill(a2, 2)
    storage.create_topic("empty", 1, V1Config())
    [c0] = storage.create_topic("c", 1, V1Config())
    v1_fill(c0, 6)
    storage.close()
    # The node starts again, writes more to c and crashes: c has an unsynced tail.
    storage = v1.SegmentedStorage(data, V1Config(segment_bytes=1_100), **SETTINGS)
    [c0] = storage.load()["c"][1]
    v1_fill(c0, 5, ts=50_000)
    image = data + ".crash"
    shutil.copytree(data, image)
    storage.close()
    shutil.rmtree(data)
    os.rename(image, data)
    with open(os.path.join(data, "c", "0", f"{c0.end_offset - 4:020d}.log"), "ab") as f:
        f.write(b"SL\x01torn")  # (a torn frame after the last whole one)


def served_by_format1(data: str) -> dict[tuple[str, int], tuple[int, int, bytes]]:
    """(start offset, end offset, every record joined) of each partition, as format 1 serves them."""
    copy = tempfile.mkdtemp(dir=os.path.dirname(data))
    shutil.rmtree(copy)
    shutil.copytree(data, copy)
    storage = v1.SegmentedStorage(copy, V1Config(segment_bytes=1_100), **SETTINGS)
    out = {}
    for name, (_, logs) in storage.load().items():
        for p, log in enumerate(logs):
            out[(name, p)] = (log.start_offset, log.end_offset, _everything(log))
    storage.close()
    shutil.rmtree(copy)
    return out


def _everything(log) -> bytes:
    parts = []
    offset = log.start_offset
    while offset < log.end_offset:
        result = log.read(offset, 1_000, 1 << 30)
        assert result.count
        parts.extend(result.fragments)
        offset = result.next_offset
    return b",".join(parts)


def served(data: str) -> dict[tuple[str, int], tuple[int, int, bytes]]:
    storage = SegmentedStorage(data, CONFIG, **SETTINGS)
    out = {}
    try:
        for name, (_, logs) in storage.load().items():
            for p, log in enumerate(logs):
                assert log.failed is None, (name, p, log.failed)
                out[(name, p)] = (log.start_offset, log.end_offset, _everything(log))
    finally:
        storage.close()
    return out


@pytest.fixture(scope="module")
def format1_image():
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(prefix="streamlog-v1-", dir=base)
    data = os.path.join(root, "data")
    build_format1(data)
    yield data, served_by_format1(data)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch():
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="streamlog-up-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def layout_is_format2(data: str) -> None:
    assert os.path.exists(os.path.join(data, "hardstate"))
    for topic in ("a", "c", "empty"):
        meta = orjson.loads(open(os.path.join(data, topic, TOPIC_FILE), "rb").read())
        assert meta["version"] == 2
        assert not [n for n in os.listdir(os.path.join(data, topic)) if n.startswith(".")]


def test_a_format1_data_directory_is_upgraded_and_serves_the_same_records(format1_image, scratch):
    image, expected = format1_image
    assert expected[("a", 1)][0] > 0 and expected[("empty", 0)] == (0, 0, b"")
    data = os.path.join(scratch, "data")
    shutil.copytree(image, data)
    assert served(data) == expected
    layout_is_format2(data)
    # ... and keeps working: appends continue densely, a restart keeps everything.
    storage = SegmentedStorage(data, CONFIG, **SETTINGS)
    logs = storage.load()
    for _, partitions in logs.values():
        for log in partitions:
            end = log.end_offset
            log.append(make_batch(end, 3, ts=90_000))
            assert read_all(log)[-3:] == [end, end + 1, end + 2]
            raw = log.log
            assert raw.start_index == 1 and raw.last_term == 0 and raw.term_at(raw.last_index) == 0
    storage.close()
    again = served(data)
    for key, (start, end, records) in expected.items():
        assert again[key][:2] == (start, end + 3)
        assert again[key][2].startswith(records)


def test_an_upgrade_interrupted_at_any_step_finishes_at_the_next_start(format1_image, scratch, monkeypatch):
    image, expected = format1_image
    real = {name: getattr(os, name) for name in ("open", "replace", "rename", "unlink", "mkdir", "rmdir", "truncate")}
    real_rmtree = shutil.rmtree

    class Crash(BaseException):
        pass

    steps: list[str] = []
    crash_at = [0]

    def counted(name, fn):
        def step(*args, **kwargs):
            creates = name != "open" or (len(args) > 1 and args[1] & os.O_CREAT)
            if creates and not (name == "mkdir" and os.path.exists(args[0])):
                steps.append(f"{name} {os.path.basename(os.fsdecode(args[0]))}")
                if len(steps) == crash_at[0]:
                    raise Crash(steps[-1])
            return fn(*args, **kwargs)

        return step

    n = 0
    while True:
        n += 1
        data = os.path.join(scratch, f"data{n}")
        shutil.copytree(image, data)
        storage = SegmentedStorage(data, CONFIG, **SETTINGS)
        steps.clear()
        crash_at[0] = n
        for name, fn in real.items():
            monkeypatch.setattr(os, name, counted(name, fn))
        monkeypatch.setattr(shutil, "rmtree", counted("rmtree", real_rmtree))
        try:
            storage.load()
            finished = True
        except Crash:
            finished = False
        finally:
            monkeypatch.undo()
            for log in storage.logs():  # the process died: nothing is synced or checkpointed
                log._release()
            if storage.hard_state is not None:
                storage.hard_state.close()
        assert served(data) == expected, (n, steps[-1])
        layout_is_format2(data)
        real_rmtree(data)
        if finished:
            break
    assert n > 20, "the upgrade should take many steps"


def test_a_format1_partition_damaged_where_it_was_synced_is_left_as_it_is(format1_image, scratch, clock):
    from streamlog.testing import BrokerHarness

    image, expected = format1_image
    data = os.path.join(scratch, "data")
    shutil.copytree(image, data)
    victim = os.path.join(data, "a", "0")
    first = sorted(n for n in os.listdir(victim) if n.endswith(".log"))[0]
    with open(os.path.join(victim, first), "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 8)
    before = {n: open(os.path.join(victim, n), "rb").read() for n in os.listdir(victim)}
    h = BrokerHarness(storage=SegmentedStorage(data, CONFIG, **SETTINGS), clock=clock)
    try:
        conn = h.connect()
        assert conn.call("Poll", {"topic": "a", "partition": 0, "offset": 0})["error"]["code"] == "PARTITION_UNAVAILABLE"
        answer = conn.call("Poll", {"topic": "a", "partition": 2, "offset": 0, "max_messages": 1000})["result"]
        assert len(answer["messages"]) == expected[("a", 2)][1]
    finally:
        h.stop()
        h.broker.close()
    after = {n: open(os.path.join(victim, n), "rb").read() for n in os.listdir(victim)}
    assert after == before  # the evidence is untouched


def test_a_format1_batch_of_no_records_becomes_a_no_op(scratch):
    """Format 1 could store a batch of no records (the bug that format 2 fixes rolled badly on it)."""
    data = os.path.join(scratch, "data")
    storage = v1.SegmentedStorage(data, V1Config(segment_bytes=1_100), **SETTINGS)
    [log] = storage.create_topic("t", 1, V1Config())
    v1_fill(log, 2)
    log.append(V1Batch(log.end_offset, 0, 0, 0, 0, b""))
    v1_fill(log, 2)
    storage.close()
    expected = served_by_format1(data)
    assert served(data) == expected
    storage = SegmentedStorage(data, CONFIG, **SETTINGS)
    [log] = storage.load()["t"][1]
    assert [e.data for e in log.log.entries(3, 4, 100)] == [b""] and log.log.last_index == 5
    storage.close()


def test_an_empty_upgraded_partition_keeps_its_moved_start_without_its_checkpoint(scratch):
    """Review finding 6: a format-1 partition whose retention removed every record (its start
    moved, its active segment empty) became an empty format-2 log whose start offset only its
    checkpoint knew; with the checkpoint lost, recovery (repaired: every segment validated)
    started it again at offset 0, reusing offsets consumers had already read.  The upgrade
    now records the start in a frame of its own (a no-op at that offset)."""
    data = os.path.join(scratch, "data")
    storage = v1.SegmentedStorage(data, V1Config(segment_bytes=1_100), **SETTINGS)
    [log] = storage.create_topic("t", 1, V1Config(retention_ms=1_000))
    v1_fill(log, 6)
    log.roll()
    log.checkpoint()
    start = log.apply_retention(now_ms=10**9)
    assert start == log.end_offset == 24  # every record expired; the start moved past them
    storage.close()
    storage = SegmentedStorage(data, CONFIG, **SETTINGS)
    [log] = storage.load()["t"][1]
    assert (log.start_offset, log.end_offset) == (24, 24)
    storage.close()
    os.unlink(os.path.join(data, "t", "0", "recovery-checkpoint"))
    storage = SegmentedStorage(data, CONFIG, **SETTINGS)
    [log] = storage.load()["t"][1]
    assert log.failed is None
    assert (log.start_offset, log.end_offset) == (24, 24)
    log.append(make_batch(log.end_offset, 2))
    assert log.end_offset == 26 and read_all(log) == [24, 25]  # offsets continue, never reused
    storage.close()

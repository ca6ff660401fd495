"""Recovery of the segmented log (format 2): restarts, torn tails, bit flips, damaged indexes.

The logs here interleave bookkeeping entries (no-ops) with record batches,
so rolls happen at entries that hold no records, and Raft indexes and record
offsets differ everywhere.
"""

from __future__ import annotations

import os
import shutil
import threading

import pytest
from storage_helpers import append_batch, append_config, append_noop, entry_summary, fill, make_batch, read_all
from twisted.logger import globalLogPublisher

from streamlog.storage import codec, recovery, truncation
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import StorageCorrupted
from streamlog.storage.log import CHECKPOINT_FILE, SegmentedLog


def open_log(path, segment_bytes=1_000_000, retention_bytes=None, **kw) -> SegmentedLog:
    kw.setdefault("index_interval_bytes", 256)
    kw.setdefault("cache_bytes", 0)
    return SegmentedLog(str(path), TopicConfig(segment_bytes=segment_bytes, retention_bytes=retention_bytes), **kw)


def segment_files(path, ext=".log") -> list[str]:
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(ext))


def frame_positions(path: str) -> list[int]:
    with open(path, "rb") as f:
        data = f.read()
    return [frame.position for frame in codec.scan(data).frames] + [len(data)]


def frame_headers(path: str) -> list[codec.Header]:
    with open(path, "rb") as f:
        return [frame.header for frame in codec.scan(f.read()).frames]


def no_fsyncs(monkeypatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)


@pytest.fixture
def repairs():
    events = []

    def observer(event):
        if "recovery" in event.get("log_format", ""):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def test_restart_preserves_everything(tmp_path):
    log = open_log(tmp_path, segment_bytes=2_000)
    append_config(log, ("1.a",), term=1)
    fill(log, 50, noops=4)
    append_config(log, ("1.a", "2.b"))
    append_noop(log, term=9)
    before = entry_summary(log)
    terms = [log.term_at(i) for i in range(log.last_index + 1)]
    log.close()
    log = open_log(tmp_path, segment_bytes=2_000)
    assert log.segment_count > 5
    assert (log.start_offset, log.end_offset, log.durable_offset) == (0, 250, 250)
    assert (log.last_index, log.last_term, log.durable_index) == (65, 9, 65)
    assert entry_summary(log) == before
    assert [log.term_at(i) for i in range(log.last_index + 1)] == terms
    assert log.config_at(10) == (1, ("1.a",)) and log.config_at(65) == (64, ("1.a", "2.b"))
    assert read_all(log) == list(range(250))
    assert log.offset_for_timestamp(1_100) == 100
    fill(log, 2)
    assert read_all(log) == list(range(260))
    log.close()


def test_bookkeeping_entries_across_rolls_never_reuse_a_segment_name(tmp_path):
    """The bug of format 1: a batch of no records at a roll named the new segment after the
    record offset, which the previous segment already had, and reopened that file."""
    log = open_log(tmp_path, segment_bytes=600)  # one record batch per segment
    for _ in range(6):
        fill(log, 1)
        for _ in range(8):  # a roll happens among these no-ops: they fill a segment too
            append_noop(log, term=log.last_term + 1)
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".log"))
    assert len(names) == log.segment_count > 6
    firsts = [int(n[:-4]) for n in names]
    offsets = [frame_headers(os.path.join(tmp_path, n))[0].base_offset for n in names]
    assert len(set(firsts)) == len(firsts)
    assert sorted(offsets) == offsets and len(set(offsets)) < len(offsets)  # several segments start at one offset
    for name, first in zip(names, firsts):
        assert frame_headers(os.path.join(tmp_path, name))[0].raft_index == first
    before = entry_summary(log)
    log.close()
    log = open_log(tmp_path, segment_bytes=600)
    assert log.failed is None and entry_summary(log) == before and read_all(log) == list(range(30))
    log.close()


def test_clean_restart_reads_no_data_back(tmp_path, monkeypatch):
    log = open_log(tmp_path, segment_bytes=2_000)
    fill(log, 50)
    log.close()

    def no_scan(*args, **kwargs):
        raise AssertionError("a clean start must not validate data")

    monkeypatch.setattr(recovery, "_scan_segment", no_scan)
    monkeypatch.setattr(codec, "scan", no_scan)
    log = open_log(tmp_path, segment_bytes=2_000)
    assert log.end_offset == 250 and log.failed is None
    log.close()


def crash_image(log: SegmentedLog, dest) -> str:
    """What a machine would find after the process died now (appends are in the OS)."""
    shutil.copytree(log.directory, dest)
    return str(dest)


@pytest.fixture
def no_fsync(monkeypatch):
    """For loops of hundreds of recoveries: what they test is logic, not the disk's flush."""
    no_fsyncs(monkeypatch)


@pytest.fixture
def scratch(tmp_path):
    """A directory for loops of recoveries: on tmpfs when there is one (metadata
    operations on the test machine's disk cost milliseconds each)."""
    import tempfile

    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(tmp_path)
    path = tempfile.mkdtemp(prefix="streamlog-test-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def snapshot(directory) -> dict[str, bytes]:
    return {n: open(os.path.join(directory, n), "rb").read() for n in os.listdir(directory)}


def restore(files: dict[str, bytes], directory: str) -> None:
    """Make C{directory} hold exactly C{files} (faster than copytree and rmtree)."""
    os.makedirs(directory, exist_ok=True)
    for n in os.listdir(directory):
        if n not in files:
            os.unlink(os.path.join(directory, n))
    for n, data in files.items():
        with open(os.path.join(directory, n), "wb") as f:
            f.write(data)


# 1_000_000: one segment; 1_100: two record batches per segment (with the no-ops between
# them), so the tail after the checkpoint (in the first segment) spans more segments read back whole.
@pytest.mark.parametrize("segment_bytes", [1_000_000, 1_100])
def test_torn_tail_at_every_byte_of_the_last_three_batches(tmp_path, scratch, repairs, no_fsync, segment_bytes):
    log = open_log(tmp_path / "live", segment_bytes=segment_bytes)
    fill(log, 4, count=2, size=5, noops=2)
    log.checkpoint()
    fill(log, 8, count=2, size=5, noops=3)
    image = crash_image(log, tmp_path / "image")
    log.close()
    files = snapshot(image)
    last = segment_files(image)[-1]
    positions = frame_positions(last)
    headers = frame_headers(last)
    assert len(positions) >= 4, "the last three batches should be in the last segment"
    first_cut = positions[-4]
    work = os.path.join(scratch, "work")
    for cut in range(first_cut, positions[-1]):
        whole = [h for h, end in zip(headers, positions[1:]) if end <= cut]
        expected_end = whole[-1].next_offset if whole else headers[0].base_offset
        expected_index = whole[-1].raft_index if whole else headers[0].raft_index - 1
        restore(files, work)
        os.truncate(os.path.join(work, os.path.basename(last)), cut)
        recovered = open_log(work, segment_bytes=segment_bytes)
        assert recovered.failed is None
        assert (recovered.end_offset, recovered.last_index) == (expected_end, expected_index), cut
        assert read_all(recovered) == list(range(expected_end))
        append_noop(recovered, term=7)
        append_batch(recovered, make_batch(expected_end, 3, ts=5_000))
        recovered.close()
        again = open_log(work, segment_bytes=segment_bytes)
        assert read_all(again) == list(range(expected_end + 3))
        assert (again.last_index, again.term_at(expected_index + 1)) == (expected_index + 2, 7)
        again.close()
    assert any(e.get("bytes") for e in repairs)


def test_garbage_after_the_tail_is_cut(tmp_path, repairs):
    log = open_log(tmp_path / "live")
    fill(log, 3)
    log.checkpoint()
    fill(log, 3)
    image = crash_image(log, tmp_path / "image")
    log.close()
    with open(segment_files(image)[-1], "ab") as f:
        f.write(b"\0" * 4096)
    recovered = open_log(image)
    assert recovered.end_offset == 30
    assert read_all(recovered) == list(range(30))
    cut = [e for e in repairs if e.get("bytes") == 4096]
    assert cut and cut[0]["offset"] == 30 and cut[0]["index"] == 7
    recovered.close()


def test_damage_in_an_unsynced_segment_drops_the_segments_after_it(tmp_path, repairs):
    log = open_log(tmp_path / "live", segment_bytes=1_100)  # two batches per segment
    fill(log, 2)
    log.checkpoint()
    fill(log, 12, noops=3)
    image = crash_image(log, tmp_path / "image")
    log.close()
    logs = segment_files(image)
    assert len(logs) >= 4
    victim = logs[-3]
    positions = frame_positions(victim)
    headers = frame_headers(victim)
    with open(victim, "r+b") as f:
        f.seek(positions[1] + 90)
        byte = f.read(1)
        f.seek(positions[1] + 90)
        f.write(bytes([byte[0] ^ 0x10]))
    recovered = open_log(image, segment_bytes=1_100)
    assert recovered.end_offset == headers[0].next_offset
    assert recovered.last_index == headers[0].raft_index
    assert read_all(recovered) == list(range(headers[0].next_offset))
    assert len(segment_files(image)) == len(logs) - 2
    assert any("removed segment" in e["log_format"] for e in repairs)
    recovered.close()


def test_no_checkpoint_yet_validates_everything(tmp_path):
    log = open_log(tmp_path / "live", segment_bytes=700)
    fill(log, 10, noops=2)
    image = crash_image(log, tmp_path / "image")
    log.close()
    assert not os.path.exists(os.path.join(image, CHECKPOINT_FILE))
    recovered = open_log(image, segment_bytes=700)
    assert read_all(recovered) == list(range(50)) and recovered.last_index == 15
    recovered.close()


def test_no_checkpoint_and_a_log_that_starts_after_index_1_refuses(tmp_path):
    log = open_log(tmp_path, segment_bytes=1_100, retention_bytes=None)
    fill(log, 20, noops=2)
    log.sync()
    log.truncate_prefix(12)
    assert log.start_index > 1
    log.close()
    os.unlink(os.path.join(tmp_path, CHECKPOINT_FILE))
    damaged = open_log(tmp_path, segment_bytes=1_100)
    assert isinstance(damaged.failed, StorageCorrupted)
    assert CHECKPOINT_FILE in str(damaged.failed) and "before its start are unknown" in str(damaged.failed)
    damaged.close()


def flip(path: str, position: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ mask]))


@pytest.mark.parametrize("which", ["closed", "active"])
def test_bit_flips_in_synced_data_are_detected_never_served(tmp_path, scratch, no_fsync, which):
    source = tmp_path / "source"
    log = open_log(source, segment_bytes=1_100)
    fill(log, 20, noops=3)
    log.close()
    files = snapshot(source)
    logs = segment_files(str(source))
    victim = logs[1] if which == "closed" else logs[-1]
    positions = frame_positions(victim)
    start, end = positions[1], positions[2]  # every byte of the second batch
    work = os.path.join(scratch, "work")
    for position in range(start, end):
        restore(files, work)
        flip(os.path.join(work, os.path.basename(victim)), position, 1 << (position % 8))
        damaged = open_log(work, segment_bytes=1_100)
        if damaged.failed is None:
            with pytest.raises(StorageCorrupted):
                read_all(damaged)
        assert isinstance(damaged.failed, StorageCorrupted)
        with pytest.raises(StorageCorrupted):
            damaged.read(0, 1, 100)
        with pytest.raises(StorageCorrupted):
            append_batch(damaged, make_batch(damaged.end_offset, 1))
        with pytest.raises(StorageCorrupted):
            damaged.entries(1, 100, 1 << 20)
        damaged.close()


def test_synced_data_missing_refuses(tmp_path):
    log = open_log(tmp_path)
    fill(log, 5)
    log.close()
    last = segment_files(str(tmp_path))[-1]
    os.truncate(last, os.path.getsize(last) - 10)
    damaged = open_log(tmp_path)
    assert isinstance(damaged.failed, StorageCorrupted)
    assert "synced data missing" in str(damaged.failed)
    with pytest.raises(StorageCorrupted):
        damaged.read(0, 1, 100)
    assert damaged.apply_retention(10**12) == 0  # deletes nothing, does not raise
    assert len(segment_files(str(tmp_path))) == 1
    damaged.close()


@pytest.mark.parametrize("damage", ["missing", "garbage", "shifted", "torn"])
def test_damaged_index_is_rebuilt(tmp_path, damage):
    log = open_log(tmp_path, segment_bytes=3_000)
    fill(log, 30, noops=2)
    log.close()
    index = segment_files(str(tmp_path), ".index")[0]
    original = open(index, "rb").read()
    assert len(original) >= 40
    if damage == "missing":
        os.unlink(index)
    elif damage == "garbage":
        open(index, "wb").write(os.urandom(len(original)))
    elif damage == "shifted":
        # Still monotonic, but the second entry points one byte past its frame.
        data = bytearray(original)
        data[39] += 1
        open(index, "wb").write(bytes(data))
    else:
        open(index, "wb").write(original[:-3])
    log = open_log(tmp_path, segment_bytes=3_000)
    for offset in range(0, 150, 7):
        assert log.read(offset, 1, 1000).count == 1
    for i in range(1, log.last_index + 1, 5):
        assert log.entries(i, i + 1, 1)[0].index == i
    assert read_all(log) == list(range(150))
    assert log.failed is None
    assert open(index, "rb").read() == original
    log.close()


def test_leftover_files_are_cleaned_up(tmp_path):
    log = open_log(tmp_path, segment_bytes=700)
    fill(log, 10)
    log.close()
    open(os.path.join(tmp_path, "00000000000009999999.index"), "wb").write(b"x")
    open(os.path.join(tmp_path, "recovery-checkpoint.tmp"), "wb").write(b"x")
    log = open_log(tmp_path, segment_bytes=700)
    assert read_all(log) == list(range(50))
    names = os.listdir(tmp_path)
    assert "00000000000009999999.index" not in names and "recovery-checkpoint.tmp" not in names
    log.close()


def test_sync_in_a_thread_while_appending_and_rolling(tmp_path):
    log = open_log(tmp_path, segment_bytes=2_000, cache_bytes=1_000)
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def syncer():
        try:
            while not stop.is_set():
                seen.append(log.sync())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        fill(log, 400, noops=3)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert seen == sorted(seen)
    assert log.sync() == 533 and log.durable_offset == 2_000
    assert read_all(log) == list(range(2_000))
    log.close()
    log = open_log(tmp_path, segment_bytes=2_000)
    assert log.end_offset == 2_000
    log.close()


def test_truncation_survives_restart_and_moves_the_checkpoint_back(tmp_path):
    log = open_log(tmp_path, segment_bytes=700)
    fill(log, 20, noops=2)
    log.checkpoint()
    assert log.durability.checkpoint.next_index == 31
    cut = 14  # a no-op, in the middle of the log
    offset = log.next_offset_after(cut - 1)
    log.truncate_suffix(cut)
    assert log.durability.checkpoint.next_index == cut
    append_batch(log, make_batch(offset, 2, ts=7_000), term=3)
    image = crash_image(log, tmp_path / "image")  # no clean close
    log.close()
    recovered = open_log(image, segment_bytes=700)
    assert recovered.failed is None
    assert read_all(recovered) == list(range(offset + 2))
    assert (recovered.last_index, recovered.term_at(cut), recovered.term_at(cut - 1)) == (cut, 3, 0)
    recovered.close()


@pytest.mark.parametrize("append_after_cut", [False, True])
def test_a_cut_at_a_segment_boundary_moves_a_synced_mark_at_its_first_byte_back(tmp_path, append_after_cut):
    """Review finding 3: after a roll and a sync, the synced mark sits at byte 0 of the new
    segment, where the next entry (the cut index) would start.  A truncation from that index
    deletes the segment; the mark must move back to the end of the one before, or the next
    checkpoint names a segment that is gone and a crash before the next sync leaves a
    partition that refuses to start ("segment file missing")."""
    log = open_log(tmp_path, segment_bytes=600)
    for _ in range(4):
        append_batch(log, make_batch(log.end_offset, 3), term=1)
    log.roll()  # the active segment is empty, named last_index + 1
    boundary = log.last_index + 1
    log.sync()  # the mark: (segment `boundary`, byte 0)
    assert (log.durability.mark.segment, log.durability.mark.position) == (boundary, 0)
    append_batch(log, make_batch(log.end_offset, 3), term=1)  # entry `boundary`, not synced
    log.truncate_suffix(boundary)  # a new leader's conflicting tail
    assert [s.first_index for s in log.chain.segments][-1] < boundary
    assert log.durability.mark.segment in [s.first_index for s in log.chain.segments]
    if append_after_cut:
        append_noop(log, term=2)  # the new leader's entry, not synced
    log.checkpoint(sync=False)  # what the committer's checkpoint worker does next
    image = crash_image(log, tmp_path / "image")  # power loss before the next sync
    log.close()
    recovered = open_log(image, segment_bytes=600)
    assert recovered.failed is None
    assert recovered.last_index >= boundary - 1
    assert read_all(recovered) == list(range(12))
    recovered.close()


@pytest.mark.parametrize("cut", [1, 2, 12, 20, 29])
def test_crash_in_the_middle_of_a_truncation_is_not_corruption(tmp_path, monkeypatch, cut):
    """The checkpoint moves back before any file is cut: a crash after that step
    (simulated by stopping at the first unlink or ftruncate) recovers cleanly."""
    log = open_log(tmp_path / "live", segment_bytes=1_100)
    fill(log, 20, noops=2)
    log.checkpoint()

    class Crash(Exception):
        pass

    def crash(*args):
        raise Crash()

    monkeypatch.setattr(os, "unlink", crash)
    monkeypatch.setattr(os, "ftruncate", crash)
    with pytest.raises(Crash):
        truncation._cut(log, cut)
    monkeypatch.undo()
    image = crash_image(log, tmp_path / "image")
    recovered = open_log(image, segment_bytes=1_100)
    assert recovered.failed is None
    assert recovered.last_index >= cut - 1
    assert read_all(recovered) == list(range(recovered.end_offset))
    recovered.close()


def test_tail_validation_in_chunks_smaller_than_a_frame(tmp_path, monkeypatch):
    monkeypatch.setattr(recovery, "SCAN_CHUNK", 100)  # frames are ~500 bytes
    log = open_log(tmp_path / "live")
    fill(log, 12, noops=2)
    image = crash_image(log, tmp_path / "image")
    log.close()
    with open(segment_files(image)[-1], "ab") as f:
        f.write(b"SL\x02")  # a torn header after the last frame
    recovered = open_log(image)
    assert recovered.end_offset == 60
    assert read_all(recovered) == list(range(60))
    recovered.close()


@pytest.mark.parametrize("content", [b"", b"[]", b"{not json", b'{"version": 99}'])
def test_unreadable_checkpoint_refuses(tmp_path, content):
    log = open_log(tmp_path)
    fill(log, 2)
    log.close()
    with open(os.path.join(tmp_path, CHECKPOINT_FILE), "wb") as f:
        f.write(content)
    damaged = open_log(tmp_path)
    assert isinstance(damaged.failed, StorageCorrupted)
    assert "checkpoint" in str(damaged.failed)
    damaged.close()


def test_the_checkpoint_lists_the_chain_the_start_and_the_history(tmp_path):
    import orjson

    from streamlog.storage.checkpoint import Checkpoint

    log = open_log(tmp_path, segment_bytes=1_100)
    append_config(log, ("1.a",))
    fill(log, 10, noops=2)
    log.close()
    checkpoint = Checkpoint.decode(open(os.path.join(tmp_path, CHECKPOINT_FILE), "rb").read())
    sizes = {int(n[:-4]): os.path.getsize(os.path.join(tmp_path, n)) for n in os.listdir(tmp_path) if n.endswith(".log")}
    assert [(first, size) for first, _, size in checkpoint.segments] == sorted(sizes.items())[:-1]
    assert (checkpoint.next_index, checkpoint.next_offset, checkpoint.last_term) == (17, 50, 0)
    assert checkpoint.start.index == 1 and checkpoint.configs == ((1, ("1.a",)),) and checkpoint.terms == ((1, 0),)
    # A checkpoint of storage format 1 in a format-2 log is refused, not misread.
    v1 = {"version": 2, "segment": 0, "position": 0, "next_offset": 0, "max_timestamp": None, "segments": []}
    open(os.path.join(tmp_path, CHECKPOINT_FILE), "wb").write(orjson.dumps(v1))
    damaged = open_log(tmp_path, segment_bytes=1_100)
    assert isinstance(damaged.failed, StorageCorrupted) and "storage format 1" in str(damaged.failed)
    damaged.close()


def test_a_checkpoint_changed_in_a_way_that_still_parses_is_refused(tmp_path):
    import orjson

    log = open_log(tmp_path)
    fill(log, 2)
    log.close()
    path = os.path.join(tmp_path, CHECKPOINT_FILE)
    content = orjson.loads(open(path, "rb").read())
    content["next_offset"] += 1  # would make the next append reuse or skip an offset
    open(path, "wb").write(orjson.dumps(content))
    damaged = open_log(tmp_path)
    assert isinstance(damaged.failed, StorageCorrupted) and "checksum" in str(damaged.failed)
    damaged.close()

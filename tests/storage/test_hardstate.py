"""The hard-state store: every group's term and vote in one file, synced in shared rounds."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from twisted.internet.task import Clock

from streamlog.raft.core import HardState
from streamlog.storage.errors import StorageFailed
from streamlog.storage.hardstate import HEADER_SIZE, HardStateCorrupted, HardStateStore, encode_frame, read_states
from streamlog.storage.in_flight import SyncsInFlight
from streamlog.testing import ManualThreads, result_of


class Counted:
    """An injected fsync that counts its calls (and really syncs)."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: OSError | None = None

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        os.fsync(fd)


@pytest.fixture
def store(tmp_path):
    clock, threads, fsync = Clock(), ManualThreads(), Counted()
    made = []

    def make(**kw):
        s = HardStateStore(str(tmp_path / "hardstate"), clock=clock, run_in_thread=threads, fsync=fsync, **kw)
        made.append(s)
        return s

    yield make, clock, threads, fsync
    for s in made:
        s.close()


def run_round(clock, threads) -> None:
    clock.advance(0)
    threads.run_all()


def test_saves_survive_a_restart(store):
    make, clock, threads, _ = store
    s = make()
    assert s.load_all() == {}
    d1 = s.save("t1-0", HardState(3, "1.abc"))
    d2 = s.save("__meta", HardState(7, None))
    assert not d1.called
    run_round(clock, threads)
    assert result_of(d1) is None and result_of(d2) is None
    s.save("t1-0", HardState(4, None))
    run_round(clock, threads)
    s.close()
    again = make()
    assert again.load_all() == {"t1-0": HardState(4, None), "__meta": HardState(7, None)}
    assert again.get("never") == HardState()


def test_a_thousand_groups_electing_at_once_cost_one_fsync(store):
    make, clock, threads, fsync = store
    s = make()
    before = fsync.calls
    waits = [s.save(f"{i:032x}-0", HardState(2, f"{i % 3 + 1}.00000000000000ab")) for i in range(1_000)]
    clock.advance(0)
    assert len(threads.jobs) == 1  # one round for all of them
    threads.run_all()
    assert all(result_of(d) is None for d in waits)
    assert fsync.calls - before == 1
    # Votes granted while a round is being written share the next one.
    first = [s.save(f"{i:032x}-0", HardState(3, None)) for i in range(500)]
    clock.advance(0)
    later = [s.save(f"{i:032x}-0", HardState(3, "2.00000000000000ab")) for i in range(500, 1_000)]
    clock.advance(0)
    assert len(threads.jobs) == 1
    threads.run_one()
    assert all(d.called for d in first) and not any(d.called for d in later)
    threads.run_all()
    assert all(d.called for d in later)
    assert fsync.calls - before <= 3  # (a compaction, when due, also syncs its new file; the directory takes os.fsync)
    s.close()
    assert len(make().load_all()) == 1_000


def rounds_file(tmp_path, store, rounds: int = 4) -> tuple[bytes, list[dict]]:
    """A file of several rounds; returns its bytes and the state after each round."""
    make, clock, threads, _ = store
    s = make()
    states = []
    for r in range(rounds):
        for g in range(3):
            s.save(f"g{g}", HardState(r * 10 + g, f"{g}.x" if r % 2 else None))
        run_round(clock, threads)
        states.append(s.load_all())
    s.close()
    return (tmp_path / "hardstate").read_bytes(), states


def test_a_torn_last_round_is_cut_at_every_byte(tmp_path, store):
    data, states = rounds_file(tmp_path, store)
    frame = len(encode_frame(4, {f"g{g}": HardState(30 + g, f"{g}.x") for g in range(3)}))
    last_start = len(data) - 2 * frame
    path = str(tmp_path / "hardstate")
    for cut in range(last_start, len(data)):
        got, last_round, valid, warnings = read_states(path, data[:cut])
        # The first copy whole: the round is kept (remembering a vote never acknowledged is harmless).
        expected = states[-1] if cut >= last_start + frame else states[-2]
        assert got == expected, cut
        assert valid <= cut and (valid == cut or warnings)
    make, *_ = store
    with open(path, "r+b") as f:
        f.truncate(last_start + 7)
    s = make()
    assert s.load_all() == states[-2]
    assert os.path.getsize(path) == last_start  # the torn end is cut on disk
    s.close()


def test_one_damaged_copy_of_a_round_is_repaired_from_the_other(tmp_path, store):
    data, states = rounds_file(tmp_path, store)
    path = str(tmp_path / "hardstate")
    first = data.index(b"SH", 1)  # round 1's first copy (round 0 is the file's empty first frame, twice)
    first = data.index(b"SH", first + 1)
    size = HEADER_SIZE + len(encode_frame(1, {f"g{g}": HardState(g, None) for g in range(3)})) - HEADER_SIZE
    for position in range(first, first + size, 3):
        damaged = bytearray(data)
        damaged[position] ^= 0x40
        got, _, valid, warnings = read_states(path, bytes(damaged))
        assert got == states[-1] and valid == len(data) and warnings, position


def test_damage_that_could_lose_an_acknowledged_vote_refuses(tmp_path, store):
    data, _ = rounds_file(tmp_path, store)
    path = str(tmp_path / "hardstate")
    starts = [i for i in range(len(data)) if data.startswith(b"SH\x01", i)]
    assert len(starts) == 10  # rounds 0-4, each twice
    # Both copies of a middle round damaged: a round is missing.
    damaged = bytearray(data)
    for s in starts[4:6]:
        damaged[s + HEADER_SIZE] ^= 0xFF
    with pytest.raises(HardStateCorrupted, match="round 3 after round 1"):
        read_states(path, bytes(damaged))
    # The first frame (written before a rename, never torn): one copy damaged is repaired, both refuse.
    damaged = bytearray(data)
    damaged[5] ^= 0x01
    got, _, _, warnings = read_states(path, bytes(damaged))
    assert got == read_states(path, data)[0] and "first frame" in warnings[0]
    damaged[starts[1] + 5] ^= 0x01
    with pytest.raises(HardStateCorrupted, match="first round"):
        read_states(path, bytes(damaged))
    with pytest.raises(HardStateCorrupted, match="empty"):
        read_states(path, b"")
    # Rounds out of order.
    with pytest.raises(HardStateCorrupted, match="after round"):
        read_states(path, data[: starts[2]] + data[starts[6] :])


def test_a_missing_file_is_created_or_refused(tmp_path, store):
    make, *_ = store
    with pytest.raises(HardStateCorrupted, match="missing"):
        make(must_exist=True)
    s = make()
    s.close()
    assert os.path.exists(tmp_path / "hardstate")
    assert make(must_exist=True).load_all() == {}


def test_the_file_is_compacted_and_stays_small(tmp_path, store):
    make, clock, threads, fsync = store
    s = make(compact_bytes=4_096)
    for r in range(300):
        s.save(f"g{r % 5}", HardState(r, None))
        run_round(clock, threads)
    assert os.path.getsize(tmp_path / "hardstate") <= 4_096 + 200
    assert s.load_all() == {f"g{g}": HardState(295 + g, None) for g in range(5)}
    s.close()
    assert make().load_all() == {f"g{g}": HardState(295 + g, None) for g in range(5)}


def test_an_interrupted_compaction_leaves_the_old_file(tmp_path, store):
    make, clock, threads, _ = store
    s = make()
    s.save("g", HardState(5, "1.a"))
    run_round(clock, threads)
    s.close()
    (tmp_path / "hardstate.tmp").write_bytes(b"half a compaction")
    again = make()
    assert again.load_all() == {"g": HardState(5, "1.a")}
    assert not os.path.exists(tmp_path / "hardstate.tmp")


def test_a_removed_group_is_forgotten(store):
    make, clock, threads, _ = store
    s = make()
    s.save("a", HardState(1, None))
    s.save("b", HardState(2, None))
    run_round(clock, threads)
    s.remove("a")
    run_round(clock, threads)
    s.close()
    assert make().load_all() == {"b": HardState(2, None)}


def test_a_failed_sync_is_fail_stop(store):
    make, clock, threads, fsync = store
    fatal = []
    s = make(on_fatal=fatal.append)
    d = s.save("g", HardState(1, "1.a"))
    fsync.error = OSError(errno.EIO, "I/O error")
    run_round(clock, threads)
    with pytest.raises(StorageFailed, match="hard state"):
        result_of(d)
    assert len(fatal) == 1
    fsync.error = None
    with pytest.raises(StorageFailed):
        result_of(s.save("g", HardState(2, None)))
    assert threads.jobs == []


def refusing_worker(f, *args):
    """A run_in_thread whose hand-off fails at once (a worker pool that refuses work)."""
    raise RuntimeError("the pool refuses work")


def test_a_round_whose_hand_off_to_a_worker_raises_is_fail_stop_and_not_left_in_flight(tmp_path):
    """Read-only review of ready-metrics: the round was counted in flight before run() was called,
    so a run() that raised left it there for ever (/ready's disk check and the hard_state gauge
    climbing), the store running, and its saves never answered."""
    clock, fatal = Clock(), []
    tracker = SyncsInFlight(clock)
    s = HardStateStore(str(tmp_path / "hardstate"), clock=clock, run_in_thread=refusing_worker,
                       on_fatal=fatal.append)
    s.bind(clock, in_flight=tracker)
    try:
        d = s.save("g", HardState(1, "1.a"))
        clock.advance(0)
        with pytest.raises(StorageFailed, match="hard state.*the pool refuses work"):
            result_of(d)
        assert len(fatal) == 1
        clock.advance(3600)
        assert tracker.oldest() is None
        with pytest.raises(StorageFailed):
            result_of(s.save("g", HardState(2, None)))  # fail-stop, as a failed sync is
    finally:
        s.close()


def test_the_data_directory_is_synced_with_fsync_after_a_rename(tmp_path, monkeypatch):
    """Review finding 5: creating the file and each compaction rename hardstate.tmp over hardstate;
    the rename is durable only once the directory is synced, with fsync (docs/storage.md: names
    in directories are synced with fsync; fdatasync of a directory is not what POSIX promises)."""
    calls: list[tuple[str, str]] = []

    def recording(name, real):
        def sync(fd):
            calls.append((name, "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
            real(fd)

        return sync

    monkeypatch.setattr(os, "fdatasync", recording("fdatasync", os.fdatasync))
    monkeypatch.setattr(os, "fsync", recording("fsync", os.fsync))
    clock, threads = Clock(), ManualThreads()
    s = HardStateStore(str(tmp_path / "hardstate"), clock=clock, run_in_thread=threads, compact_bytes=200)
    assert ("fsync", "dir") in calls  # the creation's rename
    calls.clear()
    for i in range(20):
        s.save(f"g{i % 3}", HardState(i, "n1"))
        run_round(clock, threads)
    assert ("fsync", "dir") in calls  # a compaction's rename
    assert ("fdatasync", "dir") not in calls
    assert s.fsyncs >= len(calls)  # the store still counts every sync it makes
    s.close()

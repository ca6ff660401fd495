"""The simulated disk's metadata snapshot files and the committer's worker (streamlog.cluster.sim.disk).

A node hands its metadata snapshot writes to C{committer.run_tracked} (a worker
thread in production): the simulated committer must run them later, step by
step in the real save's order, so that a crash, a pause or an InstallSnapshot
can land in the middle of one.
"""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet.task import Clock

from streamlog.cluster.sim.clock import NodeClock
from streamlog.cluster.sim.disk import SimDisk, SimSnapshots
from streamlog.storage import snapshot_files
from streamlog.storage.in_flight import META_SNAPSHOT
from streamlog.storage.snapshot_files import KEEP, DirectorySnapshots

STEP = 1.0  # every simulated fsync takes this long here (fsync_latency is replaced)


class Coin(random.Random):
    """An rng whose coins all fall one way (C{random()} is always C{value})."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def disk(clock: Clock | None = None) -> tuple[SimDisk, Clock, NodeClock]:
    clock = clock or Clock()
    d = SimDisk(1, clock, random.Random(7))
    d.fsync_latency = lambda: STEP  # type: ignore[method-assign]
    d.node_clock = NodeClock(clock, "n1")
    return d, clock, d.node_clock


def fired(d: Any) -> list[Any]:
    got: list[Any] = []
    d.addBoth(got.append)
    return got


def test_a_snapshot_written_in_the_worker_is_listed_at_its_rename_and_durable_after_the_directory_fsync():
    sim, clock, _ = disk()
    store = sim.snapshot_store("__meta")
    done = fired(sim.committer.run_tracked(META_SNAPSHOT, store.save, 5, b"five"))
    assert store.listing() == [] and not done  # the temporary file is being written and fdatasynced
    clock.advance(STEP)
    assert store.listing() == [5] and store.durable == {} and not done  # renamed; the directory not fsynced
    clock.advance(STEP)
    assert store.durable == {5: b"five"} and done == [None]


def test_the_worker_prunes_the_oldest_file_after_the_new_one_is_durable():
    sim, clock, _ = disk()
    store = sim.snapshot_store("__meta")
    store.save(1, b"one")
    store.save(2, b"two")
    done = fired(sim.committer.run_tracked(META_SNAPSHOT, store.save, 3, b"three"))
    clock.advance(STEP)
    assert store.listing() == [3, 2, 1]
    clock.advance(STEP)
    assert store.listing() == [3, 2] and store.durable == {1: b"one", 2: b"two", 3: b"three"} and not done
    clock.advance(STEP)
    assert store.durable == {2: b"two", 3: b"three"} and done == [None]


def test_a_crash_before_the_rename_loses_the_write_and_its_completion():
    sim, clock, _ = disk()
    store = sim.snapshot_store("__meta")
    store.save(1, b"one")
    done = fired(sim.committer.run_tracked(META_SNAPSHOT, store.save, 2, b"two"))
    sim.power_loss()
    clock.advance(10 * STEP)
    assert store.listing() == [1] and not done


def test_a_crash_between_the_rename_and_the_directory_fsync_keeps_the_file_whole_or_not_at_all():
    for coin, expected in ((0.0, [2, 1]), (0.9, [1])):
        sim, clock, _ = disk()
        sim.rng = Coin(coin)
        store = sim.snapshot_store("__meta")
        store.save(1, b"one")
        done = fired(sim.committer.run_tracked(META_SNAPSHOT, store.save, 2, b"two"))
        clock.advance(STEP)
        assert store.listing() == [2, 1]
        sim.power_loss()
        clock.advance(10 * STEP)
        assert store.listing() == expected and all(store.read(i) for i in expected) and not done
        assert store.durable == store.files


def test_an_unlink_not_yet_fsynced_may_come_back_after_a_crash():
    sim, clock, _ = disk()
    sim.rng = Coin(0.9)  # no change since the directory's last fsync reached the disk
    store = sim.snapshot_store("__meta")
    store.save(1, b"one")
    store.save(2, b"two")
    sim.committer.run_tracked(META_SNAPSHOT, store.save, 3, b"three")
    clock.pump([STEP, STEP])
    assert store.listing() == [3, 2]  # 1 unlinked, the directory not fsynced again yet
    sim.power_loss()
    assert store.listing() == [3, 2, 1]


def test_a_save_on_the_reactor_is_durable_when_it_returns_and_covers_a_rename_in_flight():
    sim, clock, _ = disk()
    store = sim.snapshot_store("__meta")
    sim.committer.run_tracked(META_SNAPSHOT, store.save, 2, b"two")
    clock.advance(STEP)  # 2 renamed, its directory fsync pending
    store.save(9, b"nine")  # an InstallSnapshot's save: its directory fsync covers 2's rename too
    sim.rng = Coin(0.9)
    sim.power_loss()
    assert store.listing() == [9, 2]


def test_a_paused_node_holds_its_worker_and_a_clean_stop_finishes_the_job_unheard():
    sim, clock, node_clock = disk()
    store = sim.snapshot_store("__meta")
    done = fired(sim.committer.run_tracked(META_SNAPSHOT, store.save, 4, b"four"))
    node_clock.pause()
    clock.advance(10 * STEP)
    assert store.listing() == [] and not done
    node_clock.resume()
    assert store.listing() == [4] and not done
    sim.clean_stop()
    clock.advance(10 * STEP)
    assert store.durable == {4: b"four"} and not done  # the next process starts afresh


def test_another_job_runs_after_one_fsync_and_gives_its_result_or_failure():
    sim, clock, _ = disk()
    ok = fired(sim.committer.run_tracked("other", lambda a, b: a + b, 2, 3))
    bad = fired(sim.committer.run_tracked("other", lambda: 1 // 0))
    assert not ok and not bad
    clock.advance(STEP)
    assert ok == [5] and bad[0].check(ZeroDivisionError)


def _sim_save_operations(store: SimSnapshots, index: int, data: bytes) -> list[str]:
    """The operations of the simulated save, step by step: what each step changed in the
    directory (a rename, unlinks) and the fsync each C{yield} stands for."""
    ops: list[str] = []
    before = set(store.files)
    for _ in store.save_steps(index, data):
        now = set(store.files)
        ops += ["rename"] * len(now - before) + ["unlink"] * len(before - now)
        before = now
        ops.append("fsync")
    now = set(store.files)
    ops += ["rename"] * len(now - before) + ["unlink"] * len(before - now)
    return ops


def test_the_simulated_save_steps_are_the_real_saves_operations_in_order(tmp_path, monkeypatch):
    """SimSnapshots.save_steps models DirectorySnapshots.save (the file the node's metadata
    snapshots go to): its fsyncs, rename and unlinks in the same order, so the crash points
    the simulator explores are the real ones. The real save's calls are recorded here."""
    real_ops: list[str] = []

    def recording(name: str, f: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            real_ops.append(name)
            return f(*args, **kwargs)
        return call

    monkeypatch.setattr(snapshot_files, "datasync", recording("fsync", snapshot_files.datasync))
    monkeypatch.setattr(snapshot_files, "fsync_dir", recording("fsync", snapshot_files.fsync_dir))
    monkeypatch.setattr(snapshot_files.os, "replace", recording("rename", os.replace))
    monkeypatch.setattr(snapshot_files.os, "unlink", recording("unlink", os.unlink))
    for older in range(KEEP + 1):  # with none to prune, KEEP to keep, and one to prune
        real = DirectorySnapshots(str(tmp_path / f"d{older}"))
        sim = SimSnapshots()
        for i in range(1, older + 1):
            real.save(i, b"old")
            sim.save(i, b"old")
        real_ops.clear()
        real.save(older + 1, b"new")
        assert real_ops == _sim_save_operations(sim, older + 1, b"new"), older
        assert real.listing() == sim.listing()
    assert real_ops == ["fsync", "rename", "fsync", "unlink", "fsync"]  # the last round pruned one


def test_the_worker_runs_a_save_step_by_step_by_its_kind_not_its_name():
    """Only a metadata snapshot job (META_SNAPSHOT) is the stepwise file save; a job of
    another kind runs whole after one fsync, whatever its function is called."""
    sim, clock, _ = disk()
    store = sim.snapshot_store("__meta")
    done = fired(sim.committer.run_tracked("checkpoint", store.save, 5, b"five"))
    clock.advance(STEP)
    assert store.durable == {5: b"five"} and done == [None]


def test_a_job_that_fails_during_a_clean_stop_does_not_stop_the_stop():
    """The real committer's stop waits for its jobs, whatever their outcome (the caller hears
    of a failure, never the stop): a job's exception must not escape clean_stop and leave the
    node half stopped."""
    sim, clock, _ = disk()
    store = sim.snapshot_store("__meta")
    bad = fired(sim.committer.run_tracked("other", lambda: 1 // 0))
    saved = fired(sim.committer.run_tracked(META_SNAPSHOT, store.save, 3, b"three"))
    generation = sim.generation
    sim.clean_stop()
    assert sim.generation == generation + 1 and store.durable == {3: b"three"}
    clock.advance(10 * STEP)
    assert not bad and not saved  # the next process starts afresh: nobody hears of them

"""The simulated disk: partition logs, terms and votes that survive a crash only once fsynced.

One L{SimDisk} per node holds everything the node stores: a L{SimLog} per
Raft group (the storage contract's memory log, C{streamlog.storage.memory.MemoryLog},
not "always durable": an append is durable only after a sync, a truncation
or a reset when it returns, as docs/storage.md says of the segmented log),
the hard-state store (L{SimHardState}: a term or vote becomes durable a
write latency after it was saved) and the group committer the node's Raft
groups sync through (L{SimCommitter}: one fsync in flight per log, each
taking a latency drawn from the seed, now and then a slow one).

The metadata snapshot files (L{SimSnapshots}) follow the real save's order
(L{streamlog.storage.snapshot_files.DirectorySnapshots.save}: the temporary
file written and fdatasynced, renamed, the directory fsynced, the oldest
file unlinked and the directory fsynced again).  A save the node runs on its
reactor (an InstallSnapshot's) is done when it returns, as the real one is;
one the node hands to the committer's worker (C{run_tracked}: its own
snapshots) takes a seeded fsync latency per step, the steps held while the
node is paused (a stopped process's threads stop too) and cut off by a crash.

L{SimDisk.power_loss} is a crash: whatever was not durable is gone (an
unsynced log tail is cut at a random point, as a disk may persist part of
it; a snapshot file renamed, or unlinked, since its directory's last fsync is
there or not, whole, by a coin: its data was fdatasynced before the rename),
fsyncs and snapshot writes in flight never complete, and the node is
rebuilt from what is left.  Completions are delivered as the node (through
its L{NodeClock}), so a paused node hears of them only when resumed, and a
dead one never.  A clean stop (SIGTERM) finishes the snapshot writes in
flight first, as the committer's C{stop} waits for its C{run_tracked} jobs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger

from streamlog.cluster.metadata import METADATA_GROUP
from streamlog.cluster.sim.clock import NodeClock
from streamlog.raft.core import HardState
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import StorageFailed
from streamlog.storage.group_commit import ALWAYS, FsyncPolicy
from streamlog.storage.in_flight import META_SNAPSHOT
from streamlog.storage.local import LocalLog
from streamlog.storage.memory import MemoryLog
from streamlog.storage.snapshot_files import KEEP, MemorySnapshots

_log = Logger()


class LogObserver(Protocol):
    """Told of every suffix truncation that is not a crash (the checker's cheap invariant),
    and of the prefix truncations and snapshot installs (counted in the seed's summary)."""

    def truncating(self, node: int, group: str, log: SimLog, from_index: int) -> None: ...

    def count(self, what: str) -> None: ...


class _Sync:
    """One fsync in flight: it makes the log durable up to C{upto} (clamped if the log is cut meanwhile)."""

    def __init__(self, upto: int) -> None:
        self.upto = upto


class SimLog(MemoryLog):
    """A partition's (or the metadata group's) Raft log on the simulated disk."""

    def __init__(self, node: int, group: str, config: TopicConfig, observer: LogObserver | None) -> None:
        super().__init__(config)
        self.node = node
        self.group = group
        self.observer = observer
        self.sync_in_flight: _Sync | None = None
        self._crashing = False

    def truncate_suffix(self, from_index: int) -> None:
        if from_index <= self.last_index:
            if not self._crashing and self.observer is not None:
                self.observer.truncating(self.node, self.group, self, from_index)
            if self.sync_in_flight is not None:
                self.sync_in_flight.upto = min(self.sync_in_flight.upto, from_index - 1)
        super().truncate_suffix(from_index)

    def reset(self, index: int, term: int, config: Any = None, *, next_offset: int | None = None,
              producer_state: bytes = b"") -> None:
        if self.sync_in_flight is not None:
            self.sync_in_flight.upto = min(self.sync_in_flight.upto, index)
        if self.observer is not None:
            self.observer.count("meta_installs" if self.group == METADATA_GROUP else "snapshots")
        super().reset(index, term, config, next_offset=next_offset, producer_state=producer_state)

    def truncate_prefix(self, upto_index: int, producer_state: Any = None) -> None:
        if upto_index >= self.start_index and self.observer is not None:
            self.observer.count("meta_compactions" if self.group == METADATA_GROUP else "retained")
        super().truncate_prefix(upto_index, producer_state)

    def synced_to(self, upto: int) -> None:
        """An fsync that began when the log ended at C{upto} completed."""
        upto = min(upto, self.last_index)
        if upto > self._durable:
            self._durable = upto

    def flush(self) -> None:
        """A clean stop's final sync: everything written is durable."""
        self.sync_in_flight = None
        if self.last_index > self._durable:
            self._durable = self.last_index

    def power_loss(self, rng: random.Random) -> None:
        self._crashing = True
        try:
            self.crash(rng)
        finally:
            self._crashing = False
        self.sync_in_flight = None
        self.closed = False


class SimHardState:
    """The node's terms and votes (a C{HardStateStore}): a save is durable a write latency later."""

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk
        self.durable: dict[str, HardState] = {}
        self.latest: dict[str, HardState] = {}
        self._last_write = 0.0

    def get(self, group: str) -> HardState:
        return self.latest.get(group) or self.durable.get(group) or HardState()

    def save(self, group: str, state: HardState) -> Deferred:
        self.latest[group] = state
        d: Deferred = Deferred()
        now = self.disk.clock.seconds()
        at = self._last_write = max(self._last_write, now + self.disk.write_latency())
        generation = self.disk.generation

        def written() -> None:
            if self.disk.generation != generation:
                return  # the power went first
            self.durable[group] = state
            self.disk.as_node(d.callback, None)

        self.disk.clock.callLater(at - now, written)
        return d

    def remove(self, group: str) -> Deferred:
        self.latest.pop(group, None)
        self.durable.pop(group, None)
        return succeed(None)

    def bind(self, clock: Any, run_in_thread: Any = None) -> None:
        pass

    def power_loss(self) -> None:
        self.latest = {}
        self._last_write = 0.0


class SimSnapshots(MemorySnapshots):
    """One group's snapshot files on the simulated disk: C{files} is the directory as the node
    sees it, C{durable} what a power loss leaves of it (as of the directory's last fsync)."""

    def __init__(self) -> None:
        super().__init__()
        self.durable: dict[int, bytes] = {}

    def save(self, index: int, data: bytes) -> None:
        """The whole save at once (durable when it returns): what the node does on its reactor."""
        for _ in self.save_steps(index, data):
            pass

    def save_steps(self, index: int, data: bytes) -> Iterator[None]:
        """The real save's steps (C{DirectorySnapshots.save}); each C{yield} is one fsync."""
        yield  # the temporary file written and fdatasynced: nothing the directory shows yet
        self.files[index] = bytes(data)  # renamed into place: listed, not yet durable
        self.saves += 1
        yield  # the directory's fsync
        self._dir_synced()
        old = self.listing()[KEEP:]
        for i in old:
            del self.files[i]
        if old:
            yield  # the directory's fsync after the unlinks
            self._dir_synced()

    def refuse(self, index: int) -> None:
        super().refuse(index)
        self._dir_synced()  # renamed aside, then the directory fsynced

    def _dir_synced(self) -> None:
        self.durable = dict(self.files)

    def power_loss(self, rng: random.Random) -> None:
        """What the directory's last fsync did not cover is there or not, by a coin each."""
        kept = dict(self.durable)
        for index in sorted(set(self.files) | set(self.durable)):
            if self.files.get(index) != self.durable.get(index) and rng.random() < 0.5:
                if index in self.files:
                    kept[index] = self.files[index]  # the rename (or the file) reached the disk
                else:
                    kept.pop(index, None)  # the unlink did
        self.files = kept
        self.durable = dict(kept)


def _after_one_fsync(f: Callable[..., Any], *args: Any) -> Iterator[None]:
    """A job other than a snapshot save: C{f(*args)} after one fsync's latency (its result is
    the generator's)."""
    yield
    return f(*args)


class SimCommitter:
    """The node's group committer (C{wait_index}, C{forget}, C{policy}, C{run_tracked}) over the
    simulated disk."""

    policy = FsyncPolicy(ALWAYS)

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk
        self._waiters: dict[int, list[tuple[int, Deferred]]] = {}
        self._logs: dict[int, SimLog] = {}
        self.syncs = 0
        #: The C{run_tracked} jobs in flight (their steps left) and the Deferreds they fire.
        self._jobs: dict[Iterator[Any], Deferred] = {}

    def wait_index(self, log: SimLog, index: int) -> Deferred:
        if log.durable_index >= min(index, log.last_index):
            return succeed(True)
        key = id(log)
        self._logs[key] = log
        d: Deferred = Deferred()
        self._waiters.setdefault(key, []).append((index, d))
        if log.sync_in_flight is None:
            self._start(key, log)
        return d

    def wait(self, log: Any, offset: int) -> Deferred:
        raw = getattr(log, "log", log)
        return self.wait_index(raw, raw.last_index)

    def _start(self, key: int, log: SimLog) -> None:
        job = log.sync_in_flight = _Sync(log.last_index)
        generation = self.disk.generation
        self.syncs += 1

        def done() -> None:
            if self.disk.generation != generation or log.sync_in_flight is not job:
                return
            log.sync_in_flight = None
            log.synced_to(job.upto)
            waiting = self._waiters.pop(key, [])
            ready = [d for target, d in waiting if log.durable_index >= min(target, log.last_index)]
            rest = [(t, d) for t, d in waiting if log.durable_index < min(t, log.last_index)]
            if rest:
                self._waiters[key] = rest
                self._start(key, log)
            for d in ready:
                self.disk.as_node(d.callback, True)

        self.disk.clock.callLater(self.disk.fsync_latency(), done)

    def run_tracked(self, kind: str, f: Callable[..., Any], *args: Any) -> Deferred:
        """C{f(*args)} as the committer's worker runs it: later, off the node's reactor.

        A metadata snapshot's save (kind C{META_SNAPSHOT}: C{SimSnapshots.save}) goes step by step, one seeded fsync
        latency per step (L{SimSnapshots.save_steps}); anything else runs after one latency.
        The steps are held while the node is paused and never run once it crashed (a clean
        stop finishes them: L{finish_jobs}); the Deferred fires as the node once the job is
        done, with C{f}'s result or failure."""
        if kind == META_SNAPSHOT:  # the node's metadata snapshot: C{store.save} of a SimSnapshots
            store = getattr(f, "__self__", None)
            if not isinstance(store, SimSnapshots):
                raise TypeError(f"a {kind} job must be a SimSnapshots' save, not {f!r}")
            job = store.save_steps(*args)
        else:
            job = _after_one_fsync(f, *args)
        d: Deferred = Deferred()
        self._jobs[job] = d
        self._advance(job, self.disk.generation)
        return d

    def _advance(self, job: Iterator[None], generation: int) -> None:
        """Run C{job} up to its next fsync, and on after that fsync's latency (or fire its Deferred)."""
        if self.disk.generation != generation or job not in self._jobs:
            return  # the power went first (or a clean stop finished it): the rest never happens here
        try:
            next(job)
        except StopIteration as done:
            self._jobs.pop(job).callback(done.value)
            return
        except Exception:
            self._jobs.pop(job).errback()
            return
        self.disk.clock.callLater(self.disk.fsync_latency(), self.disk.as_node, self._advance, job, generation)

    def finish_jobs(self) -> None:
        """A clean stop: the committer's C{stop} waits for the jobs in flight, whatever their
        outcome (nobody hears of them: a job's failure is dropped, as the real stop takes none)."""
        jobs, self._jobs = self._jobs, {}
        for job in jobs:
            try:
                for _ in job:
                    pass
            except Exception as e:
                _log.info("a job in the committer's worker failed during the clean stop: {error!r}", error=e)

    def forget(self, log: Any, error: Exception | None = None) -> None:
        raw = getattr(log, "log", log)
        for _, d in self._waiters.pop(id(raw), []):
            self.disk.as_node(d.errback, error or StorageFailed("the log was closed"))

    def stop(self) -> Deferred:
        return succeed(None)

    def power_loss(self) -> None:
        if self._jobs and self.disk.observer is not None:
            self.disk.observer.count("writes_cut")  # a snapshot write (or another job) cut off
        self._waiters = {}
        self._logs = {}
        self._jobs = {}


class SimDisk:
    """Everything one node stores, and its crash model (the C{Storage} ClusterNode is given)."""

    def __init__(self, node: int, clock: Clock, rng: random.Random, observer: LogObserver | None = None,
                 slow_fsync: float = 0.03) -> None:
        self.node = node
        self.clock = clock
        self.rng = rng
        self.observer = observer
        self.slow_fsync = slow_fsync
        self.generation = 0
        self.node_clock: NodeClock | None = None
        self.groups: dict[str, tuple[TopicConfig, SimLog]] = {}
        self.hard_state = SimHardState(self)
        self.committer = SimCommitter(self)
        #: State-machine snapshot files (the metadata group's): a save on the node's reactor is
        #: durable when it returns, one in the committer's worker step by step (L{SimSnapshots}).
        self.snapshots: dict[str, SimSnapshots] = {}

    def fsync_latency(self) -> float:
        if self.rng.random() < self.slow_fsync:
            return self.rng.uniform(0.02, 0.15)
        return self.rng.uniform(0.0003, 0.004)

    def write_latency(self) -> float:
        return self.rng.uniform(0.0002, 0.003)

    def as_node(self, f: Callable[..., Any], *args: Any) -> None:
        """Run a completion as the node (held while paused, dropped if it died)."""
        if self.node_clock is None:
            f(*args)
        else:
            self.node_clock.run(f, *args)

    # --- the Storage interface ClusterNode uses

    def load(self) -> dict[str, tuple[TopicConfig, Sequence[LocalLog]]]:
        return {name: (config, [LocalLog(log)]) for name, (config, log) in self.groups.items()}

    def create_topic(self, name: str, partitions: int, config: TopicConfig) -> list[LocalLog]:
        assert partitions == 1, "a node's storage holds one log per Raft group"
        found = self.groups.get(name)
        if found is not None:
            return [LocalLog(found[1])]
        log = SimLog(self.node, name, config, self.observer)
        self.groups[name] = (config, log)
        return [LocalLog(log)]

    def delete_topic(self, name: str) -> None:
        self.groups.pop(name, None)
        self.snapshots.pop(name, None)

    def snapshot_store(self, name: str) -> SimSnapshots:
        return self.snapshots.setdefault(name, SimSnapshots())

    def close(self) -> None:
        pass

    # --- faults

    def power_loss(self) -> None:
        """The node lost power: what was not durable is gone; what was in flight never completes."""
        self.generation += 1
        for _, log in self.groups.values():
            log.power_loss(self.rng)
        for _, store in sorted(self.snapshots.items()):
            store.power_loss(self.rng)
        self.hard_state.power_loss()
        self.committer.power_loss()

    def clean_stop(self) -> None:
        """The node stopped cleanly (SIGTERM): its final sync made everything durable, and
        nothing it had in flight completes (the next process starts afresh), but the snapshot
        writes in its worker are finished first."""
        self.committer.finish_jobs()
        self.generation += 1
        for _, log in self.groups.values():
            log.flush()
        self.hard_state.durable.update(self.hard_state.latest)
        self.hard_state.power_loss()
        self.committer.power_loss()

    def logs(self) -> dict[str, SimLog]:
        return {name: log for name, (_, log) in self.groups.items()}

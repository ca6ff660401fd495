"""Group commit: many concurrent appends share one sync per log, off the reactor thread.

The broker appends a batch (fast: the bytes go to the OS) and then asks
L{GroupCommitter.wait} when those records are durable.  With the C{always}
policy the first waiter schedules a I{round} on the next reactor turn: every
log with waiters and no sync in flight gets one sync job, and the jobs run
on several sync workers at once (C{--sync-workers}), so a hundred active
partitions cost about the time of their syncs divided among the workers,
not their sum on one thread.  Each log is synced by one job at a time; its
waiters that arrive while that job runs form its next one, and fire as soon
as their own log's sync is done.  So under load one sync per log covers
every Send that arrived during the previous one, and the reactor never
blocks on the disk.

Checkpoints never run inside a round: after a log's sync, if a checkpoint
is due (the log rolled, or grew by C{checkpoint_interval_bytes}), it is
written by a separate worker while that log's next syncs go on.  Whatever
the policy, every log seen is also synced and checkpointed every
C{checkpoint_interval} seconds: that bounds how much recovery reads after a
crash and lets retention delete (it only deletes behind the synced end),
even with C{never}.

An fsync error is fail-stop: after a failed fsync the kernel may have dropped
the dirty pages and marked them clean, so a retry could "succeed" without the
data ever reaching the disk.  The committer calls C{on_fatal} (the server
stops the process), errbacks every waiter and never reports durable again.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog.metrics.histogram import BATCH_BUCKETS, SYNC_BUCKETS, Histogram
from streamlog.storage.errors import StorageCorrupted, StorageError, StorageFailed
from streamlog.storage.in_flight import CHECKPOINT, LOG, SyncsInFlight

#: Sync workers by default (C{--sync-workers}).
DEFAULT_SYNC_WORKERS = 4

ALWAYS = "always"
INTERVAL = "interval"
NEVER = "never"


@attrs.frozen
class FsyncPolicy:
    """When appended records are fsynced: C{always} (before acknowledging),
    every C{interval_ms}, or C{never} (left to the OS; see docs/storage.md for the loss window)."""

    mode: str
    interval_ms: int | None = None

    @classmethod
    def parse(cls, text: str) -> FsyncPolicy:
        """Parse C{always}, C{interval:<ms>} or C{never}; raise C{ValueError} with a usable message."""
        value = text.strip().lower()
        if value in (ALWAYS, NEVER):
            return cls(value)
        if value.startswith(INTERVAL + ":"):
            number = value[len(INTERVAL) + 1 :]
            if number.isdigit() and int(number) > 0:
                return cls(INTERVAL, int(number))
        raise ValueError(f"invalid fsync policy {text!r}: use 'always', 'interval:<milliseconds>' (e.g. interval:100) or 'never'")

    def __str__(self) -> str:
        return f"{INTERVAL}:{self.interval_ms}" if self.mode == INTERVAL else self.mode


class CommitterStopped(StorageError):
    """L{GroupCommitter.wait} was called after L{GroupCommitter.stop}."""


class SyncPool:
    """Long-lived threads that run sync jobs from one queue, for the group commit.

    A job goes in through a C{queue.SimpleQueue} and its result comes back
    with C{callFromThread}: fewer hand-offs than the reactor's thread pool, on
    the path every C{acks=all} answer waits on.  Jobs start in order; with
    several workers, jobs for different logs run at once (the committer never
    gives two jobs for one log at a time).  The threads are daemons: at exit,
    the committer's final sync has already run through them.
    """

    _log = Logger()

    def __init__(self, reactor: Any, workers: int = 1) -> None:
        import queue
        import threading

        if workers < 1:
            raise ValueError(f"a sync pool needs at least one worker, not {workers}")
        self._reactor = reactor
        self._jobs: Any = queue.SimpleQueue()
        self.workers = workers
        self._threads = [
            threading.Thread(target=self._work, name=f"streamlog-sync-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self._jobs.put((d, f, args))
        return d

    def stop(self) -> None:
        """End the threads once the jobs already queued have run."""
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            d, f, args = job
            try:
                outcome: Any = f(*args)
                deliver = d.callback
            except BaseException:
                outcome, deliver = Failure(), d.errback
            try:
                self._reactor.callFromThread(deliver, outcome)
            except Exception:  # the reactor is gone: nobody is left to answer
                self._log.failure("a sync result could not be handed back to the reactor")


#: The name this had when there was one sync thread.
SyncThread = SyncPool

_OFFSET = "durable_offset"
_INDEX = "durable_index"


class GroupCommitter:
    """Makes appended records durable per an L{FsyncPolicy}.

    @param policy: the fsync policy.
    @param clock: an C{IReactorTime} (the global reactor if C{None}).
    @param run_in_thread: C{f(callable, *args) -> Deferred} running the blocking
        jobs.  Tests pass a fake.  If C{None}, syncs run on a L{SyncPool} of
        C{sync_workers} threads (one thread measured append+fsync answered in
        241 us p50 / 402 us p99 against 331 / 770 us through Twisted's thread
        pool) and checkpoints on C{deferToThread}, so a long checkpoint never
        holds up a sync.
    @param on_fatal: called once with the L{Failure} of a failed fsync; the
        server stops the process (fail-stop).
    @param checkpoint_interval: seconds between background syncs and
        checkpoints of every log seen (C{None}: none; the server should keep the default).
    @param sync_workers: how many logs may be synced at once (C{--sync-workers}).
    @param in_flight: where its syncs and checkpoints are tracked while in a worker (a new one
        if None); the node shares it with its hard-state store (L{SyncsInFlight}).
    """

    _log = Logger()

    def __init__(
        self,
        policy: FsyncPolicy,
        clock: Any = None,
        run_in_thread: Callable[..., Deferred] | None = None,
        on_fatal: Callable[[Failure], object] | None = None,
        checkpoint_interval: float | None = 60.0,
        sync_workers: int = DEFAULT_SYNC_WORKERS,
        in_flight: SyncsInFlight | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        if sync_workers < 1:
            raise ValueError(f"sync_workers must be at least 1, not {sync_workers}")
        self._pool: SyncPool | None = None
        if run_in_thread is None:
            from twisted.internet.interfaces import IReactorThreads
            from twisted.internet.threads import deferToThread

            self._run_in_thread: Callable[..., Deferred] = deferToThread
            self._run_sync: Callable[..., Deferred] = deferToThread
            if IReactorThreads.providedBy(clock):  # results come back through callFromThread
                self._run_sync = self._pool = SyncPool(clock, sync_workers)
        else:
            self._run_in_thread = self._run_sync = run_in_thread
        self.policy = policy
        self.sync_workers = sync_workers
        self._clock = clock
        self._on_fatal = on_fatal
        self._waiters: dict[Hashable, list[tuple[str, int, Deferred]]] = {}
        self._logs: dict[Hashable, Any] = {}  # every log seen (synced by interval ticks, checkpoints and at stop)
        self._dirty: set[Hashable] = set()
        self._syncing: dict[Hashable, Deferred] = {}  # the one sync in flight per log
        self._checkpointing: dict[Hashable, Deferred] = {}  # due checkpoints being written
        self._jobs: set[Deferred] = set()  # fire as the run_tracked jobs in a worker now end
        self._scheduled: Any = None
        self._failure: Failure | None = None
        self._stopped = False
        self._loop: Any = None
        self._checkpoint_interval = checkpoint_interval
        self._checkpoint_loop: Any = None
        #: What the periodic pass waits on now (its job, or a commit sync of its next log).
        self._background: Deferred | None = None
        #: The logs the running periodic pass has still to do, or C{None} between passes.
        self._pass: collections.deque[Hashable] | None = None
        self.passes = 0  # periodic passes started (for tests and metrics)
        self.pass_jobs = 0  # logs those passes synced or checkpointed (idle logs are skipped)
        self.rounds = 0  # sync jobs run, one log each (for tests and metrics)
        #: Seconds from a sync job's hand-off to a worker until its result is back (/metrics).
        self.sync_seconds = Histogram(SYNC_BUCKETS)
        #: Raft entries each sync made durable: how many appends one fsync covered (/metrics).
        self.sync_entries = Histogram(BATCH_BUCKETS)
        self.checkpoints = 0  # due checkpoints written outside syncs
        #: Why forgotten logs went away, for waiters of a sync already running.
        self._forgotten: dict[Hashable, Exception | None] = {}
        #: When each sync and checkpoint job in a worker now was handed off (a hung fsync never
        #: finishes, so only this shows it: /ready and streamlog_fsync_oldest_in_flight_seconds).
        self.in_flight = in_flight if in_flight is not None else SyncsInFlight(clock)

    # -- public API -----------------------------------------------------------

    def oldest_sync_seconds(self) -> float:
        """Seconds the oldest sync of any kind in L{in_flight} has been there (0.0: none is)."""
        return self.in_flight.oldest_seconds()

    def run_tracked(self, kind: str, f: Callable[..., Any], *args: Any) -> Deferred:
        """C{f(*args)} in a worker (the checkpoints' threads, not the sync pool: it never waits
        behind or holds up a commit sync), counted in L{in_flight} as a sync of C{kind} until
        it is back: for the node's other blocking writes, such as its metadata snapshots.
        L{stop} waits for those still running (the data directory is released after it)."""
        d = self._tracked(kind, self._run_in_thread(f, *args))
        finished: Deferred = Deferred()  # for stop, which must not take the job's result
        self._jobs.add(finished)

        def done(result: object) -> object:
            self._jobs.discard(finished)
            finished.callback(None)
            return result

        return d.addBoth(done)

    def _tracked(self, kind: str, d: Deferred) -> Deferred:
        """C{d}, a job of C{kind} just handed to a worker, counted in L{in_flight} until it fires."""
        token = self.in_flight.begin(kind)

        def ended(result: object) -> object:
            self.in_flight.end(token)
            return result

        return d.addBoth(ended)

    def wait(self, log: Any, offset: int) -> Deferred:
        """A Deferred firing once records below C{offset} of C{log} are as durable as the policy makes them.

        C{True}: they were fsynced.  C{False}: the policy does not wait for the
        disk (C{interval}, C{never}); the answer says which durability the
        client got.  Errback: fsync failed (fail-stop) or the log failed.
        """
        return self._wait(log, _OFFSET, offset)

    def wait_index(self, log: Any, index: int) -> Deferred:
        """Like L{wait}, for entries up to Raft index C{index} of a Raft log (a driver's C{SyncLog}).

        Entries the log no longer holds when the sync ends (cut by
        C{truncate_suffix} or C{reset} meanwhile) are not waited for: it fires
        C{True} once everything up to C{min(index, log.last_index)} is
        durable, and errbacks only on an fsync error or a failed log.
        """
        return self._wait(log, _INDEX, index)

    def _wait(self, log: Any, attr: str, target: int) -> Deferred:
        if self._failure is not None:
            return fail(self._failure)
        if self._stopped:
            return fail(CommitterStopped("the group committer is stopped"))
        key = id(log)
        self._logs[key] = log
        self._start_checkpoints()
        if self.policy.mode != ALWAYS:
            self._dirty.add(key)
            if self.policy.mode == INTERVAL:
                self._start_loop()
            return succeed(False)
        if _reached(log, attr, target):
            return succeed(True)
        d: Deferred = Deferred()
        self._waiters.setdefault(key, []).append((attr, target, d))
        self._schedule()
        return d

    def forget(self, log: Any, error: Exception | None = None) -> None:
        """Stop tracking C{log} (its topic was deleted); its waiters fail with C{error}."""
        key = id(log)
        self._logs.pop(key, None)
        self._dirty.discard(key)
        if key in self._syncing:  # its waiters in that sync learn why when it ends
            self._forgotten[key] = error
        for _, _, d in self._waiters.pop(key, []):
            d.errback(error or StorageFailed("the log was closed before its records became durable"))

    def stop(self) -> Deferred:
        """Stop the timers and do a final sync of every log seen; fires when done."""
        self._stopped = True
        for loop in (self._loop, self._checkpoint_loop):
            if loop is not None and loop.running:
                loop.stop()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._failure is not None:
            if self._pool is not None:
                self._pool.stop()
            return succeed(None)
        running = [*self._syncing.values(), *self._checkpointing.values(), *self._jobs]
        if self._background is not None:
            running.append(self._background)
        pending = DeferredList(running)

        def final(_: object) -> Deferred:
            if self._failure is not None:
                return succeed(None)
            return DeferredList([self._sync_job(key, log) for key, log in list(self._logs.items())]).addCallback(settle)

        def end_threads(result: object) -> object:
            if self._pool is not None:
                self._pool.stop()
            return result

        def settle(_: object) -> None:
            # Answer every send still waiting: the final sync covered what was appended.
            waiting, self._waiters = self._waiters, {}
            for key, waiters in waiting.items():
                log = self._logs.get(key)
                for attr, target, w in waiters:
                    if self._failure is None and log is not None and _reached(log, attr, target):
                        w.callback(True)
                    else:
                        w.errback(self._failure or CommitterStopped("stopped before these records were synced"))

        return pending.addBoth(lambda _: None).addCallback(final).addBoth(end_threads)

    # -- always: rounds ------------------------------------------------------------

    def _schedule(self) -> None:
        if self._scheduled is None:
            # Next reactor turn, so every Send handled in this turn joins the round.
            self._scheduled = self._clock.callLater(0, self._round)

    def _round(self) -> None:
        self._scheduled = None
        if self._failure is not None:
            return
        for key in [k for k in self._waiters if k not in self._syncing]:
            self._start_sync(key)

    def _start_sync(self, key: Hashable) -> None:
        log = self._logs.get(key)
        waiters = self._waiters.pop(key, [])
        if log is None:
            return
        d = self._sync_job(key, log)

        def done(outcome: BaseException | None | bool) -> None:
            if outcome is False:  # fatal: waiters were failed by _fatal
                for _, _, w in waiters:
                    w.errback(self._failure)
                return
            live = self._logs.get(key)
            for attr, target, w in waiters:
                if live is None:  # forgotten (its topic deleted) while the sync ran
                    w.errback(self._forgotten.get(key) or StorageFailed("the log was closed before its records became durable"))
                elif isinstance(outcome, BaseException):
                    w.errback(outcome)
                elif _reached(log, attr, target):
                    w.callback(True)
                elif attr == _OFFSET and target > log.end_offset:
                    w.errback(StorageError(f"offsets below {target} were truncated before they became durable"))
                else:  # appended after the sync took its snapshot, or a truncation straddled the sync
                    self._waiters.setdefault(key, []).append((attr, target, w))
            self._forgotten.pop(key, None)
            if live is not None and outcome is None:
                self._checkpoint_if_due(key, live)
            self._forget_if_closed(key)
            if key in self._waiters and not self._stopped:
                self._schedule()

        d.addCallback(done)

    # -- interval: ticks ---------------------------------------------------------------

    def _start_loop(self) -> None:
        if self._loop is None:
            from twisted.internet.task import LoopingCall

            self._loop = LoopingCall(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self.policy.interval_ms / 1000.0, now=False)  # type: ignore[operator]

    def _tick(self) -> None:
        if self._failure is not None:
            return
        for key in [k for k in self._dirty if k not in self._syncing]:
            self._dirty.discard(key)
            log = self._logs.get(key)
            if log is not None:
                self._sync_job(key, log).addCallback(
                    lambda outcome, key=key, log=log: self._checkpoint_if_due(key, log) if outcome is None else None
                )

    # -- checkpoints -----------------------------------------------------------------------

    def _checkpoint_if_due(self, key: Hashable, log: Any) -> None:
        """A checkpoint the last sync made due, written by a worker of its own (never inside a sync)."""
        if key in self._checkpointing or not getattr(log, "checkpoint_due", False) or self._failure is not None:
            return
        d = self._tracked(CHECKPOINT, self._run_in_thread(_checkpoint_one, log))
        self._checkpointing[key] = d
        d.addErrback(self._fatal)

        def done(_: object) -> None:
            self._checkpointing.pop(key, None)
            self.checkpoints += 1

        d.addCallback(done)

    def _start_checkpoints(self) -> None:
        if self._checkpoint_loop is None and self._checkpoint_interval:
            from twisted.internet.task import LoopingCall

            self._checkpoint_loop = LoopingCall(self._checkpoint_tick)
            self._checkpoint_loop.clock = self._clock
            self._checkpoint_loop.start(self._checkpoint_interval, now=False)

    def _checkpoint_tick(self) -> None:
        """Start the periodic pass: every log with something unsynced or a stale checkpoint, one at a time.

        Only those logs: an idle one costs a look at two marks on the reactor,
        no job and no fsync.  One log at a time, each as a job on the sync
        workers, and never while a commit sync of that log runs (the pass
        waits for it): at most one background job is ever queued before a
        commit's, so the pass cannot hold commit rounds up, and its Python
        work comes in small pieces rather than one thread walking every log.
        A pass still running when the next tick comes is left to finish.
        """
        if self._pass is not None or self._failure is not None or self._stopped or not self._logs:
            return
        self._forget_closed()
        self._pass = collections.deque(key for key, log in self._logs.items() if _background_due(log))
        self.passes += 1
        self._pass_next()

    def _pass_next(self) -> None:
        """Hand the pass's next log to a sync worker (see L{_checkpoint_tick})."""
        queue = self._pass
        if queue is None or self._background is not None:
            return
        while queue and self._failure is None and not self._stopped:
            key = queue.popleft()
            log = self._logs.get(key)
            if log is None or getattr(log, "closed", False) or getattr(log, "failed", None) is not None:
                continue
            busy = self._syncing.get(key)
            if busy is not None:  # a commit sync of this log runs: after it
                queue.appendleft(key)
                self._background = busy
                busy.addBoth(self._pass_resumed)
                return
            d = self._tracked(CHECKPOINT, self._run_sync(_background_one, log))
            self._background = self._syncing[key] = d
            self.pass_jobs += 1
            d.addErrback(self._fatal)
            d.addBoth(self._pass_job_done, key, d)
            return
        self._pass = None
        self._forget_closed()

    def _pass_resumed(self, result: object) -> object:
        """The commit sync the pass waited for ended (its result passes on untouched).

        Its log's pass job starts now, in this callback: the next commit round
        for that log comes a reactor turn later, so even a log that is never
        idle gets its turn (and the round then waits for the job, not the
        other way round)."""
        self._background = None
        self._pass_next()
        return result

    def _pass_job_done(self, _: object, key: Hashable, d: Deferred) -> None:
        if self._syncing.get(key) is d:
            del self._syncing[key]
        self._background = None
        self._forget_if_closed(key)
        if key in self._waiters and not self._stopped:
            self._schedule()  # sends that came while the pass held the log get their round now
        self._pass_next()

    def _forget_closed(self) -> None:
        """Forget every closed log (the periodic pass: a walk over every log seen)."""
        for key in list(self._logs):
            self._forget_if_closed(key)

    def _forget_if_closed(self, key: Hashable) -> None:
        """Forget C{key}'s log if it was closed and nothing waits on it.  After each sync only the
        synced log is looked at: walking every log there cost a 1,000-partition node a walk of
        1,000 logs per sync, 5 % of its reactor thread in a restart under load."""
        log = self._logs.get(key)
        if log is not None and getattr(log, "closed", False) and key not in self._waiters and key not in self._syncing:
            del self._logs[key]
            self._dirty.discard(key)

    # -- the job -------------------------------------------------------------------------

    def _sync_job(self, key: Hashable, log: Any) -> Deferred:
        """Sync one log in a worker thread; at most one per log at a time (callers check C{_syncing}).

        Fires with C{None} (synced), the log's own error (it is corrupt or was
        closed), or C{False} after a fatal error (already reported).  Never errbacks.
        """
        self.rounds += 1
        began = self._clock.seconds()
        durable_before = getattr(log, "durable_index", None)
        d = self._tracked(LOG, self._run_sync(_sync_one, log))
        d.addErrback(self._fatal)
        self._syncing[key] = d

        def finished(outcome: object) -> object:
            if self._syncing.get(key) is d:
                del self._syncing[key]
            if outcome is None:
                self.sync_seconds.observe(self._clock.seconds() - began)
                durable_after = getattr(log, "durable_index", None)
                if durable_before is not None and durable_after is not None and durable_after > durable_before:
                    self.sync_entries.observe(durable_after - durable_before)
            return False if outcome is None and self._failure is not None else outcome

        d.addBoth(finished)
        return d

    def _fatal(self, failure: Failure) -> bool:
        first = self._failure is None
        if first:
            self._failure = failure
            self._log.failure("fsync failed: stopping (fail-stop); nothing more is reported durable", failure)
        for waiters in self._waiters.values():
            for _, _, d in waiters:
                d.errback(failure)
        self._waiters = {}
        for loop in (self._loop, self._checkpoint_loop):
            if loop is not None and loop.running:
                loop.stop()
        if first and self._on_fatal is not None:
            self._on_fatal(failure)
        return False


def _reached(log: Any, attr: str, target: int) -> bool:
    """Whether a waiter for C{target} (an offset or a Raft index) is durable.

    An index waiter is a Raft sync barrier (C{SyncLog}): the core may cut
    the log's tail (a new leader's entries) or reset it (a snapshot) while
    the barrier waits, so what it asks for is everything the log I{still}
    holds up to C{target}.  It never fails because entries went away: the
    driver would take that for a failed fsync and stop the group for good.
    (An answer the core made before the cut and queued behind the barrier
    vouches for entries of an older term; docs/raft.md explains why that is
    harmless.)  An offset waiter is a Send waiting for its own records, and
    their truncation is an error its client must see.
    """
    if attr == _INDEX:
        target = min(target, getattr(log, "last_index", target))
    return bool(target <= getattr(log, attr))


def _sync_one(log: Any) -> BaseException | None:
    """Runs in a worker thread: sync one log.

    A log that refuses because its data is corrupt (or that was closed) fails
    only its own waiters; any other error (an fsync failure) fails the job.
    """
    if getattr(log, "closed", False):
        return StorageFailed("the log was closed before its records became durable")
    try:
        log.sync()
    except StorageCorrupted as e:
        return e
    except StorageFailed as e:
        if not getattr(log, "closed", False):
            raise  # an fsync failure: fatal
        return e  # closed meanwhile (its topic was deleted)
    return None


def _checkpoint_one(log: Any) -> None:
    """Runs in a worker thread: write the checkpoint a sync made due (no sync of its own)."""
    if getattr(log, "closed", False) or getattr(log, "failed", None) is not None:
        return
    try:
        log.checkpoint(sync=False)
    except StorageCorrupted:
        pass
    except StorageFailed:
        if not getattr(log, "closed", False):
            raise


def _background_due(log: Any) -> bool:
    """Whether the periodic pass has work for C{log} (a log that cannot tell: yes)."""
    if getattr(log, "closed", False) or getattr(log, "failed", None) is not None:
        return False
    return bool(getattr(log, "background_due", True))


def _background_one(log: Any) -> None:
    """Runs on a sync worker: the periodic pass for one log (sync if unsynced, checkpoint if changed)."""
    if getattr(log, "closed", False) or getattr(log, "failed", None) is not None:
        return
    try:
        job = getattr(log, "background_checkpoint", None) or getattr(log, "checkpoint", None) or log.sync
        job()
    except StorageCorrupted:
        pass  # that log refuses to serve; its own callers see why
    except StorageFailed:
        if not getattr(log, "closed", False):  # closed meanwhile (topic deleted): nothing to do
            raise

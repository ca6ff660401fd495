"""Group commit: many concurrent appends share one fsync, off the reactor thread.

The broker appends a batch (fast: the bytes go to the OS) and then asks
L{GroupCommitter.wait} when those records are durable.  With the C{always}
policy the first waiter schedules a I{round} on the next reactor turn; the
round syncs every log that has waiters in one worker-thread job, and waiters
that arrive while it runs form the next round.  So under load one fsync per
log covers every Send that arrived during the previous fsync, and the reactor
never blocks on the disk.

Whatever the policy, every log seen is also checkpointed every
C{checkpoint_interval} seconds in a worker thread (L{SegmentedLog.checkpoint}):
that bounds how much recovery reads after a crash and lets retention delete
segments (it only deletes behind a checkpoint), even with C{never}.

An fsync error is fail-stop: after a failed fsync the kernel may have dropped
the dirty pages and marked them clean, so a retry could "succeed" without the
data ever reaching the disk.  The committer calls C{on_fatal} (the server
stops the process), errbacks every waiter and never reports durable again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog.storage.errors import StorageCorrupted, StorageError, StorageFailed

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


class SyncThread:
    """One long-lived thread that runs sync jobs in order, for the group commit.

    A job goes in through a C{queue.SimpleQueue} and its result comes back
    with C{callFromThread}: fewer hand-offs than the reactor's thread pool, on
    the path every C{acks=all} answer waits on.  The thread is a daemon: at
    exit, the committer's final sync has already run through it.
    """

    _log = Logger()

    def __init__(self, reactor: Any) -> None:
        import queue
        import threading

        self._reactor = reactor
        self._jobs: Any = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="streamlog-sync", daemon=True)
        self._thread.start()

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self._jobs.put((d, f, args))
        return d

    def stop(self) -> None:
        """End the thread once the jobs already queued have run."""
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


class GroupCommitter:
    """Makes appended records durable per an L{FsyncPolicy}.

    @param policy: the fsync policy.
    @param clock: an C{IReactorTime} (the global reactor if C{None}).
    @param run_in_thread: C{f(callable, *args) -> Deferred} running the blocking
        jobs.  Tests pass a fake.  If C{None}, sync rounds run on a dedicated
        L{SyncThread} (measured: append+fsync answered in 241 us p50 / 402 us
        p99 against 331 / 770 us through Twisted's thread pool) and background
        checkpoints on C{deferToThread}, so a long checkpoint never holds up a
        round.
    @param on_fatal: called once with the L{Failure} of a failed fsync; the
        server stops the process (fail-stop).
    @param checkpoint_interval: seconds between background checkpoints of every
        log seen (C{None}: none; the server should keep the default).
    """

    _log = Logger()

    def __init__(
        self,
        policy: FsyncPolicy,
        clock: Any = None,
        run_in_thread: Callable[..., Deferred] | None = None,
        on_fatal: Callable[[Failure], object] | None = None,
        checkpoint_interval: float | None = 60.0,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        self._sync_thread: SyncThread | None = None
        if run_in_thread is None:
            from twisted.internet.interfaces import IReactorThreads
            from twisted.internet.threads import deferToThread

            self._run_in_thread: Callable[..., Deferred] = deferToThread
            self._run_sync: Callable[..., Deferred] = deferToThread
            if IReactorThreads.providedBy(clock):  # results come back through callFromThread
                self._run_sync = self._sync_thread = SyncThread(clock)
        else:
            self._run_in_thread = self._run_sync = run_in_thread
        self.policy = policy
        self._clock = clock
        self._on_fatal = on_fatal
        self._waiters: dict[Hashable, list[tuple[int, Deferred]]] = {}
        self._logs: dict[Hashable, Any] = {}  # every log seen (synced by interval ticks and at stop)
        self._dirty: set[Hashable] = set()
        self._scheduled: Any = None
        self._running: Deferred | None = None
        self._failure: Failure | None = None
        self._stopped = False
        self._loop: Any = None
        self._checkpoint_interval = checkpoint_interval
        self._checkpoint_loop: Any = None
        self._checkpointing: Deferred | None = None
        self.rounds = 0  # sync jobs run (for tests and metrics)
        #: Why forgotten logs went away, for waiters of a round already running.
        self._forgotten: dict[Hashable, Exception | None] = {}

    # -- public API -----------------------------------------------------------

    def wait(self, log: Any, offset: int) -> Deferred:
        """A Deferred firing once records below C{offset} of C{log} are as durable as the policy makes them.

        C{True}: they were fsynced.  C{False}: the policy does not wait for the
        disk (C{interval}, C{never}); the answer says which durability the
        client got.  Errback: fsync failed (fail-stop) or the log failed.
        """
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
        if offset <= log.durable_offset:
            return succeed(True)
        d: Deferred = Deferred()
        self._waiters.setdefault(key, []).append((offset, d))
        self._schedule()
        return d

    def forget(self, log: Any, error: Exception | None = None) -> None:
        """Stop tracking C{log} (its topic was deleted); its waiters fail with C{error}."""
        key = id(log)
        self._logs.pop(key, None)
        self._dirty.discard(key)
        if self._running is not None:  # its waiters in that round learn why when it ends
            self._forgotten[key] = error
        for _, d in self._waiters.pop(key, []):
            d.errback(error or StorageFailed("the log was closed before its records became durable"))

    def stop(self) -> Deferred:
        """Stop the interval timer and do a final sync of every log seen; fires when done."""
        self._stopped = True
        for loop in (self._loop, self._checkpoint_loop):
            if loop is not None and loop.running:
                loop.stop()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._failure is not None:
            if self._sync_thread is not None:
                self._sync_thread.stop()
            return succeed(None)
        pending = DeferredList([d for d in (self._running, self._checkpointing) if d is not None])

        def final(_: object) -> Deferred:
            if self._failure is not None:
                return succeed(None)
            keys = list(self._logs)
            return self._sync_job(keys).addCallback(settle)

        def end_thread(result: object) -> object:
            if self._sync_thread is not None:
                self._sync_thread.stop()
            return result

        def settle(_: object) -> None:
            # Answer every send still waiting: the final sync covered what was appended.
            waiting, self._waiters = self._waiters, {}
            for key, waiters in waiting.items():
                log = self._logs.get(key)
                for offset, w in waiters:
                    if self._failure is None and log is not None and offset <= log.durable_offset:
                        w.callback(True)
                    else:
                        w.errback(self._failure or CommitterStopped("stopped before these records were synced"))

        return pending.addBoth(lambda _: None).addCallback(final).addBoth(end_thread)

    # -- always: rounds ------------------------------------------------------------

    def _schedule(self) -> None:
        if self._running is None and self._scheduled is None:
            # Next reactor turn, so every Send handled in this turn joins the round.
            self._scheduled = self._clock.callLater(0, self._round)

    def _round(self) -> None:
        self._scheduled = None
        if self._failure is not None or not self._waiters:
            return
        batch, self._waiters = self._waiters, {}
        d = self._sync_job(list(batch))
        self._running = d

        def done(results: dict[Hashable, BaseException | int] | None) -> None:
            self._running = None
            if results is None:  # fatal: waiters were failed by _fatal
                for waiters in batch.values():
                    for _, w in waiters:
                        w.errback(self._failure)
                return
            for key, waiters in batch.items():
                outcome = results.get(key)
                log = self._logs.get(key)
                for offset, w in waiters:
                    if log is None:  # forgotten (its topic deleted) while the round ran
                        w.errback(self._forgotten.get(key) or StorageFailed("the log was closed before its records became durable"))
                    elif isinstance(outcome, BaseException):
                        w.errback(outcome)
                    elif offset <= log.durable_offset:
                        w.callback(True)
                    elif offset > log.end_offset:
                        w.errback(StorageError(f"records below {offset} were truncated before they became durable"))
                    else:  # appended after the sync took its snapshot
                        self._waiters.setdefault(key, []).append((offset, w))
            self._forgotten.clear()
            self._forget_closed()
            if self._waiters and not self._stopped:
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
        if self._running is not None or self._failure is not None or not self._dirty:
            return
        keys, self._dirty = list(self._dirty), set()
        d = self._sync_job(keys)
        self._running = d
        d.addCallback(lambda _: setattr(self, "_running", None))

    # -- background checkpoints -----------------------------------------------------------

    def _start_checkpoints(self) -> None:
        if self._checkpoint_loop is None and self._checkpoint_interval:
            from twisted.internet.task import LoopingCall

            self._checkpoint_loop = LoopingCall(self._checkpoint_tick)
            self._checkpoint_loop.clock = self._clock
            self._checkpoint_loop.start(self._checkpoint_interval, now=False)

    def _checkpoint_tick(self) -> None:
        if self._checkpointing is not None or self._failure is not None or not self._logs:
            return
        d = self._run_in_thread(_checkpoint_logs, list(self._logs.items()))
        self._checkpointing = d
        d.addErrback(self._fatal)

        def done(_: object) -> None:
            self._checkpointing = None
            self._forget_closed()

        d.addCallback(done)

    def _forget_closed(self) -> None:
        for key, log in list(self._logs.items()):
            if getattr(log, "closed", False) and key not in self._waiters:
                del self._logs[key]
                self._dirty.discard(key)

    # -- the job -------------------------------------------------------------------------

    def _sync_job(self, keys: list[Hashable]) -> Deferred:
        """Sync C{keys}' logs in a worker thread.

        Fires with {key: durable offset or the log's own error}, or with
        C{None} after a fatal error (already reported).  Never errbacks.
        """
        logs = [(key, self._logs[key]) for key in keys if key in self._logs]
        self.rounds += 1
        d = self._run_sync(_sync_logs, logs)
        d.addErrback(self._fatal)
        return d

    def _fatal(self, failure: Failure) -> None:
        first = self._failure is None
        if first:
            self._failure = failure
            self._log.failure("fsync failed: stopping (fail-stop); nothing more is reported durable", failure)
        for waiters in self._waiters.values():
            for _, d in waiters:
                d.errback(failure)
        self._waiters = {}
        for loop in (self._loop, self._checkpoint_loop):
            if loop is not None and loop.running:
                loop.stop()
        if first and self._on_fatal is not None:
            self._on_fatal(failure)
        return None


def _checkpoint_logs(logs: list[tuple[Hashable, Any]]) -> None:
    """Runs in a worker thread: checkpoint (or at least sync) each healthy, open log."""
    for _, log in logs:
        if getattr(log, "closed", False) or getattr(log, "failed", None) is not None:
            continue
        try:
            checkpoint = getattr(log, "checkpoint", None)
            if checkpoint is not None:
                checkpoint()
            else:
                log.sync()
        except StorageCorrupted:
            pass  # that log refuses to serve; its own callers see why
        except StorageFailed:
            if not getattr(log, "closed", False):  # closed meanwhile (topic deleted): nothing to do
                raise


def _sync_logs(logs: list[tuple[Hashable, Any]]) -> dict[Hashable, BaseException | int]:
    """Runs in a worker thread: sync each log.

    A log that refuses because its data is corrupt (or that was closed) fails
    only its own waiters; any other error (an fsync failure) fails the job.
    """
    results: dict[Hashable, BaseException | int] = {}
    for key, log in logs:
        if getattr(log, "closed", False):
            results[key] = StorageFailed("the log was closed before its records became durable")
            continue
        try:
            results[key] = log.sync()
        except StorageCorrupted as e:
            results[key] = e
        except StorageFailed as e:
            if not getattr(log, "closed", False):
                raise  # an fsync failure: fatal
            results[key] = e  # closed meanwhile (its topic was deleted)
    return results

"""One partition as the broker sees it: its log, its high watermark, its waiting polls.

The high watermark is the end of what consumers may see: on a single node it
is the end of what the fsync policy has made durable (with C{--fsync always},
what has been fsynced).  Long polls park here until it moves or they time out.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from streamlog.storage.base import PartitionLog


class Partition:
    def __init__(self, topic: str, index: int, log: PartitionLog) -> None:
        self.topic = topic
        self.index = index
        self.log = log
        # Recovered data was durable before the restart (recovery keeps only what is whole).
        self.high_watermark = log.end_offset
        self._waiters: list[_Waiter] = []

    @property
    def failed(self) -> Exception | None:
        """Why the log refuses to serve (corruption found in synced data), or None."""
        return getattr(self.log, "failed", None)

    @property
    def start_offset(self) -> int:
        return self.log.start_offset

    @property
    def end_offset(self) -> int:
        return self.log.end_offset

    def advance(self, offset: int) -> None:
        """Records below C{offset} are committed: wake the polls waiting for them.

        Only polls whose offset is now below the high watermark wake; a poll
        further ahead (at an offset an C{acks=leader} answer revealed) waits on.
        """
        if offset <= self.high_watermark:
            return
        hw = self.high_watermark = min(offset, self.log.end_offset)
        ready = [w for w in self._waiters if w.offset < hw]
        if ready:
            self._waiters = [w for w in self._waiters if w.offset >= hw]
            for waiter in ready:
                waiter.wake()

    def wait(self, clock: IReactorTime, offset: int, timeout: float, on_wake: Callable[[], object]) -> Deferred:
        """A Deferred that fires with C{on_wake()} once data below the high
        watermark exists at C{offset}, or when C{timeout} passes.

        Cancelling it (the connection went away) forgets the waiter.
        """
        waiter = _Waiter(self, offset, on_wake)
        waiter.deferred = Deferred(waiter.cancel)
        waiter.timer = clock.callLater(timeout, waiter.wake)
        self._waiters.append(waiter)
        return waiter.deferred

    def fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.fail(error)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _forget(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass


class _Waiter:
    deferred: Deferred
    timer: IDelayedCall

    def __init__(self, partition: Partition, offset: int, on_wake: Callable[[], object]) -> None:
        self.partition = partition
        self.offset = offset
        self.on_wake = on_wake
        self.done = False

    def _finish(self) -> bool:
        if self.done:
            return False
        self.done = True
        if self.timer.active():
            self.timer.cancel()
        self.partition._forget(self)
        return True

    def wake(self) -> None:
        if self._finish():
            try:
                result = self.on_wake()
            except Exception as e:  # answered as an error, never lost
                self.deferred.errback(e)
            else:
                self.deferred.callback(result)

    def fail(self, error: Exception) -> None:
        if self._finish():
            self.deferred.errback(error)

    def cancel(self, _: Deferred) -> None:
        self._finish()

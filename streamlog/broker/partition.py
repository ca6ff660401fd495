"""One partition as the broker sees it: its log, its high watermark, its waiting polls.

The high watermark is the end of what consumers may see: on a single node it
is the end of what the fsync policy has made durable (with C{--fsync always},
what has been fsynced).  Long polls park here until it moves or they time out.

Parked polls are kept by offset, in a dict of buckets (each a dict in arrival
order) plus a min-heap of the bucketed offsets: parking and forgetting a poll
(its connection went away) are O(1), and moving the high watermark pops only
the offsets it passes, so tens of thousands of parked polls cost nothing to
the requests that do not touch them.  How many may park is bounded per
connection and per node (L{WaitQuota}).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from streamlog import errors
from streamlog.storage.base import PartitionLog


class WaitQuota:
    """How many long polls may be parked at once in one scope: a connection, a client address, or the node.

    A poll that would wait past the limit is refused with
    C{TOO_MANY_WAITING_POLLS}; a poll that can answer at once never asks.
    """

    #: The server option that sets the limit of each scope, for the error message.
    OPTIONS = {
        "connection": "--max-waiting-polls-per-connection",
        "address": "--max-waiting-polls-per-address",
        "node": "--max-waiting-polls",
    }

    def __init__(self, limit: int, scope: str) -> None:
        self.limit = limit
        self.scope = scope
        self.waiting = 0

    def check(self) -> None:
        if self.waiting >= self.limit:
            raise errors.TooManyWaitingPolls(
                f"this {self.scope} already has {self.waiting} polls waiting, its limit "
                f"({self.OPTIONS.get(self.scope, 'limit')}); retry later, or poll without max_wait_ms",
                limit=self.limit, scope=self.scope,
            )


class Partition:
    def __init__(self, topic: str, index: int, log: PartitionLog) -> None:
        self.topic = topic
        self.index = index
        self.log = log
        # Recovered data was durable before the restart (recovery keeps only what is whole).
        self.high_watermark = log.end_offset
        #: offset -> the polls parked there, in arrival order (a dict used as an ordered set).
        #: A bucket that empties stays until the high watermark passes its offset, so each
        #: offset is in the heap once however often polls come and go there.
        self._buckets: dict[int, dict[_Waiter, None]] = {}
        self._offsets: list[int] = []  # heap of the keys of _buckets
        self._waiting = 0

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
        offsets = self._offsets
        ready: list[_Waiter] = []
        while offsets and offsets[0] < hw:
            bucket = self._buckets.pop(heapq.heappop(offsets))
            self._waiting -= len(bucket)
            ready.extend(bucket)
        for waiter in ready:
            waiter.wake()

    def wait(self, clock: IReactorTime, offset: int, timeout: float, on_wake: Callable[[], object],
             quotas: Sequence[WaitQuota] = ()) -> Deferred:
        """A Deferred that fires with C{on_wake()} once data below the high
        watermark exists at C{offset}, or when C{timeout} passes.

        Each of C{quotas} counts the poll while it waits; one that is full
        refuses it with C{TOO_MANY_WAITING_POLLS} (raised here, nothing parked).
        Cancelling the Deferred (the connection went away) forgets the waiter.
        """
        for quota in quotas:
            quota.check()
        waiter = _Waiter(self, offset, on_wake, quotas)
        waiter.deferred = Deferred(waiter.cancel)
        waiter.timer = clock.callLater(timeout, waiter.wake)
        bucket = self._buckets.get(offset)
        if bucket is None:
            bucket = self._buckets[offset] = {}
            heapq.heappush(self._offsets, offset)
        bucket[waiter] = None
        self._waiting += 1
        for quota in quotas:
            quota.waiting += 1
        return waiter.deferred

    def fail_waiters(self, error: Exception) -> None:
        buckets, self._buckets, self._offsets, self._waiting = self._buckets, {}, [], 0
        for bucket in buckets.values():
            for waiter in bucket:
                waiter.fail(error)

    @property
    def waiting(self) -> int:
        return self._waiting

    def _forget(self, waiter: _Waiter) -> None:
        bucket = self._buckets.get(waiter.offset)
        if bucket is not None and waiter in bucket:
            del bucket[waiter]
            self._waiting -= 1


class _Waiter:
    deferred: Deferred
    timer: IDelayedCall

    def __init__(self, partition: Partition, offset: int, on_wake: Callable[[], object],
                 quotas: Sequence[WaitQuota]) -> None:
        self.partition = partition
        self.offset = offset
        self.on_wake = on_wake
        self.quotas = quotas
        self.done = False

    def _finish(self) -> bool:
        if self.done:
            return False
        self.done = True
        if self.timer.active():
            self.timer.cancel()
        self.partition._forget(self)
        for quota in self.quotas:
            quota.waiting -= 1
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

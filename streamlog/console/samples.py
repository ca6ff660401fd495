"""Throughput and lag history for the console's live charts.

L{SampleHistory} is pure: each sample is a time and, per topic, the sum of its
partitions' high watermarks (what this node knows of them) and, per group, its
total lag; rates come from two consecutive samples.  L{Sampler} takes a sample
every C{--console-sample-interval} seconds on the node's clock, so the charts
show the last minutes as soon as the page opens, without the page polling
every partition itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure


@attrs.frozen
class Sample:
    time_ms: int
    #: topic -> {partition: high watermark}, of the partitions this node holds (a rate is taken
    #: over the partitions of both samples, so a replica moving here or away makes no jump)
    topics: Mapping[str, Mapping[int, int]]
    #: group -> total lag (None where a committed partition's lag was unknown)
    groups: Mapping[str, int | None]


class SampleHistory:
    """The last C{capacity} samples, and the series the charts draw from them."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("a history needs at least 2 samples (a rate needs two)")
        self._samples: deque[Sample] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: Sample) -> None:
        if self._samples and sample.time_ms <= self._samples[-1].time_ms:
            return  # the clock went back (or two samples in one ms): keep rates meaningful
        self._samples.append(sample)

    def series(self) -> dict[str, Any]:
        """C{{times_ms, topics: {name: [messages/s]}, groups: {name: [lag]}}}: one point per sample
        (a topic's first point, and any point across which its offsets went back, is null)."""
        samples = list(self._samples)
        topics = sorted({name for s in samples for name in s.topics})
        groups = sorted({name for s in samples for name in s.groups})
        rates: dict[str, list[float | None]] = {name: [] for name in topics}
        for i, s in enumerate(samples):
            before = samples[i - 1] if i else None
            for name in topics:
                rates[name].append(_rate(before, s, name))
        lags = {name: [s.groups.get(name) for s in samples] for name in groups}
        return {"times_ms": [s.time_ms for s in samples], "topics": rates, "groups": lags}


def _rate(before: Sample | None, now: Sample, topic: str) -> float | None:
    if before is None or topic not in before.topics or topic not in now.topics:
        return None
    then, marks = before.topics[topic], now.topics[topic]
    both = set(then) & set(marks)
    if not both:
        return None
    moves = [marks[p] - then[p] for p in both]
    if min(moves) < 0:  # deleted and created again
        return None
    moved = sum(moves)
    return round(moved * 1000.0 / (now.time_ms - before.time_ms), 3)


class Sampler:
    """Takes a sample every C{interval} seconds with C{take} (a Deferred of a L{Sample}), while a
    page asks for samples: L{wanted} (each C{GET /api/samples}) starts it, and it stops itself
    C{idle} seconds after the last one, so a node whose console nobody opens does no work.

    A sample still being taken when the next is due is not doubled: that tick is skipped.
    A failure is logged and the next tick tries again.
    """

    _log = Logger()

    def __init__(self, history: SampleHistory, take: Callable[[], Deferred[Sample]], interval: float,
                 clock: IReactorTime, idle: float = 600.0) -> None:
        self.history = history
        self.interval = interval
        self.idle = idle
        self._clock: Any = clock  # IReactorTime (typed loosely: mypy-zope trips on .seconds here)
        self._take = take
        self._busy = False
        self._stopped = False
        self._last_wanted: float | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        #: Ticks skipped because the previous sample was still being taken.
        self.skipped = 0

    @property
    def running(self) -> bool:
        return bool(self._loop.running)

    def start(self) -> None:
        """The node runs: sampling may start (on the first L{wanted})."""
        self._stopped = False

    def wanted(self) -> None:
        """A page asked for samples: sample (from now) for the next C{idle} seconds."""
        self._last_wanted = self._clock.seconds()
        if self.interval > 0 and not self._stopped and not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        self._stopped = True
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        if self._last_wanted is None or self._clock.seconds() - self._last_wanted > self.idle:
            self._loop.stop()  # nobody asked for a while
            return
        if self._busy:
            self.skipped += 1
            return
        self._busy = True
        try:
            d = self._take()
        except Exception:
            self._busy = False
            self._log.failure("console sample failed")
            return
        d.addCallbacks(self.history.add, self._failed)
        d.addBoth(self._done)

    def _failed(self, failure: Failure) -> None:
        self._log.warn("console sample failed: {error}", error=failure.getErrorMessage())

    def _done(self, _: Any) -> None:
        self._busy = False

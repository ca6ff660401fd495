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
    #: topic -> sum of its partitions' high watermarks (those known to this node)
    topics: Mapping[str, int]
    #: group -> total lag (None where a partition's lag was unknown)
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
    moved = now.topics[topic] - before.topics[topic]
    if moved < 0:  # deleted and created again, or a partition this node stopped holding
        return None
    return round(moved * 1000.0 / (now.time_ms - before.time_ms), 3)


class Sampler:
    """Takes a sample every C{interval} seconds with C{take} (a Deferred of a L{Sample}).

    A sample still being taken when the next is due is not doubled: that tick is skipped.
    A failure is logged and the next tick tries again.
    """

    _log = Logger()

    def __init__(self, history: SampleHistory, take: Callable[[], Deferred[Sample]], interval: float,
                 clock: IReactorTime) -> None:
        self.history = history
        self.interval = interval
        self._take = take
        self._busy = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        #: Ticks skipped because the previous sample was still being taken.
        self.skipped = 0

    def start(self) -> None:
        if self.interval > 0 and not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
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

"""A fixed-bucket histogram cheap enough for the request path.

C{prometheus_client.Histogram} takes a lock and walks its buckets on every
observation; this one is a binary search and two additions, kept on the
reactor thread (every caller is), and is turned into a Prometheus histogram
only when scraped (L{streamlog.metrics.collector}).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

#: Request latency (seconds): 100 us to a minute (a long Poll waits up to its max_wait_ms).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: One log sync (seconds): 50 us (a page-cache flush) to 5 s (a disk in trouble).
SYNC_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0)
#: Raft entries one sync made durable.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Counts of observations per bucket (upper bounds inclusive, as Prometheus's C{le}), and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"bucket bounds must be increasing and distinct: {bounds!r}")
        self.bounds = tuple(bounds)
        #: One count per bound, and the last for observations above every bound (+Inf).
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """C{[(le, observations <= le)]} ending with C{("+Inf", count)}, as the exposition wants."""
        out = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))

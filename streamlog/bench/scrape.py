"""C{streamlog bench ... --scrape-metrics SECONDS}: scrape the server's /metrics while the load runs.

What the metrics cost the hot path is measured as Prometheus would cause it:
the server the bench starts gets its HTTP listener (on a free port of
127.0.0.1), and a thread of the bench process GETs C{/metrics} every
C{interval} seconds until the workload ends (bounded by a count and the
workload's own time cap).  Run the same workload without the option (no
HTTP listener at all) to compare, interleaved, as docs/benchmarks.md shows.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any


class Scraper:
    """GETs C{http://127.0.0.1:PORT/metrics} every C{interval} seconds on a thread of its own."""

    def __init__(self, port: int, interval: float, max_scrapes: int = 100_000, timeout: float = 5.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.max_scrapes = max_scrapes
        self.timeout = timeout
        self.scrapes = 0
        self.failures = 0
        self.seconds: list[float] = []
        self.last_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamlog-bench-scrape", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(self.timeout + 1.0)
        took = sorted(self.seconds)
        return {"interval_s": self.interval, "scrapes": self.scrapes, "failures": self.failures,
                "median_ms": round(took[len(took) // 2] * 1000, 2) if took else None,
                "max_ms": round(took[-1] * 1000, 2) if took else None, "bytes": self.last_bytes}

    def _run(self) -> None:
        while not self._stop.is_set() and self.scrapes + self.failures < self.max_scrapes:
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                    self.last_bytes = len(response.read())
                self.scrapes += 1
                self.seconds.append(time.perf_counter() - began)
            except OSError:
                self.failures += 1
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - began)))

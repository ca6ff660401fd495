#!/usr/bin/env python
"""Summarise a benchmarks/metrics_cost.sh run: per workload and configuration (base, off, on),
the median throughput and the median server CPU time per message, and on/off vs base.

    .venv/bin/python benchmarks/metrics_cost_summary.py OUT.jsonl

Server CPU per message (the server's CPU share over the measured phase times its length,
over the messages) is the figure to trust on a shared machine: throughput there follows
whatever else the cores are doing, CPU time per message much less.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def main(path: str) -> None:
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    loads = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            config = (r.get("label") or "?").split()[0]
            rows[r["workload"], config].append(r)
            loads.append(r.get("loadavg_1m_before") or 0.0)
    print(f"{len(loads)} runs; 1-minute load average before each: min {min(loads):.1f}, "
          f"median {statistics.median(loads):.1f}, max {max(loads):.1f} (2 cores)")
    for workload in ("produce", "consume"):
        base = None
        for config in ("base", "off", "on"):
            runs = rows.get((workload, config), [])
            if not runs:
                continue
            rate = statistics.median(r["msgs_per_s"] for r in runs)
            cpu_us = statistics.median(r["cpu_pct_of_one_core"]["server"] / 100 * r["elapsed_s"] / r["messages"] * 1e6
                                       for r in runs if r["cpu_pct_of_one_core"].get("server") is not None)
            scrapes = [r["metrics_scrape"]["scrapes"] for r in runs if r.get("metrics_scrape")]
            if base is None:
                base = (rate, cpu_us)
            note = "" if config == "base" else (f"  throughput {100 * (rate / base[0] - 1):+.1f} %, "
                                                f"server CPU/msg {100 * (cpu_us / base[1] - 1):+.1f} %")
            extra = f", {sum(scrapes)} scrapes" if scrapes else ""
            print(f"{workload:8} {config:5} n={len(runs)}: {rate:10,.0f} msgs/s, server {cpu_us:6.2f} us CPU/msg"
                  f"{extra}{note}")


if __name__ == "__main__":
    main(sys.argv[1])

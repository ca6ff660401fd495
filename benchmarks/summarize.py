#!/usr/bin/env python
"""Medians of repeated `streamlog bench --json-out` results, as a Markdown table.

    .venv/bin/python benchmarks/summarize.py benchmarks/results/side_by_side.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+")
    args = ap.parse_args()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in args.inputs:
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    client = r["client"] if r["workload"] == "produce" else (
                        "Consumer" if r["workload"] == "consume" else "Producer+Consumer")
                    srv = r["server"]
                    groups[(r["workload"], r["size"], r["batch"], client, srv["storage"], srv["fsync"],
                            r["acks"], r.get("durability"))].append(r)
    print("| workload | size | batch | client | storage / fsync / acks (answered durability) | runs | "
          "msgs/s (median; all runs) | MB/s | latency p50 / p99 / p99.9 / max ms (median run) |")
    print("|---|---:|---:|---|---|---:|---|---:|---|")
    for key in sorted(groups, key=lambda k: (["produce", "consume", "e2e"].index(k[0]), k[1], k[2], k[3])):
        rs = groups[key]
        workload, size, batch, client, storage, fsync, acks, durability = key
        if workload == "e2e":
            ordered = sorted(rs, key=lambda r: r["latency_ms"]["p50"])
        else:
            ordered = sorted(rs, key=lambda r: r["msgs_per_s"])
        mid = ordered[len(ordered) // 2]
        rates = ", ".join(f"{r['msgs_per_s'] / 1000:.0f}k" for r in rs)
        lat = mid["latency_ms"]
        med = statistics.median(r["msgs_per_s"] for r in rs)
        mb = statistics.median(r["mb_per_s"] for r in rs)
        print(f"| {workload} | {size} | {batch if workload != 'e2e' else '-'} | {client} | {storage} / {fsync} / "
              f"{acks} ({durability}) | {len(rs)} | {med / 1000:.0f}k ({rates}) | {mb:.1f} | "
              f"{lat['p50']:.3f} / {lat['p99']:.3f} / {lat['p99.9']:.3f} / {lat['max']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

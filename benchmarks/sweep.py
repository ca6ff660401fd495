#!/usr/bin/env python
"""Run `streamlog bench` over message sizes and batch sizes; append JSON lines for plot.py.

    .venv/bin/python benchmarks/sweep.py --out benchmarks/results/sweep.jsonl
    .venv/bin/python benchmarks/plot.py benchmarks/results/sweep.jsonl -o docs/benchmark-throughput.png

Each point is one `python -m streamlog.bench` run with its own fresh server
(--storage/--fsync as given, default the durable segmented log with fsync always).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.jsonl"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[16, 100, 512, 1024, 4096])
    ap.add_argument("--batches", type=int, nargs="*", default=[10, 100, 1000, 5000])
    ap.add_argument("--size-for-batches", type=int, default=100)
    ap.add_argument("--batch-for-sizes", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--line-cap", type=int, default=900_000,
                    help="batch x size kept under this (the server's request line limit is 1 MiB)")
    ap.add_argument("--bytes-cap", type=int, default=400_000_000, help="fewer messages for big sizes")
    ap.add_argument("--workloads", nargs="*", default=["produce", "consume"])
    ap.add_argument("--clients", nargs="*", default=["producer", "batch"])
    ap.add_argument("--storage", default="segmented")
    ap.add_argument("--fsync", default="always")
    ap.add_argument("--max-seconds", type=float, default=40.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per point (plot.py keeps the best: least disturbed)")
    args = ap.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    points = [(s, args.batch_for_sizes, "size") for s in args.sizes]
    points += [(args.size_for_batches, b, "batch") for b in args.batches]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for workload in args.workloads:
        clients = args.clients if workload == "produce" else ["batch"]
        for client in clients:
            for size, batch, sweep in [p for p in points for _ in range(args.repeat)]:
                batch = max(1, min(batch, args.line_cap // (size + 16)))
                n = max(1000, min(args.messages, args.bytes_cap // max(1, size)))
                cmd = [sys.executable, "-m", "streamlog.bench", workload, "--messages", str(n), "--size", str(size),
                       "--batch", str(batch), "--client", client, "--storage", args.storage, "--fsync", args.fsync,
                       "--max-seconds", str(args.max_seconds), "--quiet", "--json-out", args.out, "--label", f"{sweep}-sweep"]
                print(f"[{sweep}] {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
                proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                                      timeout=args.max_seconds * 3 + 60)
                if proc.returncode != 0:
                    print(f"  failed with {proc.returncode}", file=sys.stderr)
                else:
                    print("  " + proc.stdout.strip().splitlines()[2], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

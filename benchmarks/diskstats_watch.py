#!/usr/bin/env python
"""Print a block device's write rate and busy share every --interval seconds (from /proc/diskstats).

    python benchmarks/diskstats_watch.py --device vda --seconds 9 &  streamlog bench produce ...

"util" is the share of the interval the device had I/O in flight (field io_ticks), as iostat's
%util: on a multi-queue virtual disk 100 % does not mean saturated, but well under it means the
disk was idle part of the time.
"""

from __future__ import annotations

import argparse
import time


def read(device: str) -> tuple[int, int, int]:
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            if fields[2] == device:
                return int(fields[9]), int(fields[12]), int(fields[7])  # sectors written, io ms, writes
    raise SystemExit(f"no device {device!r} in /proc/diskstats")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="vda")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=0.25)
    args = ap.parse_args()
    before, end = read(args.device), time.monotonic() + args.seconds
    while time.monotonic() < end:
        time.sleep(args.interval)
        now = read(args.device)
        mbs = (now[0] - before[0]) * 512 / args.interval / 1e6
        util = (now[1] - before[1]) / (args.interval * 1000) * 100
        print(f"{mbs:.0f} MB/s  util {util:.0f}%  writes/s {(now[2] - before[2]) / args.interval:.0f}", flush=True)
        before = now


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):  # | head, Ctrl-C
        pass

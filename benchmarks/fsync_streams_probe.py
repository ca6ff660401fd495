#!/usr/bin/env python
"""How fast this machine's disk takes appends that are each followed by an fdatasync.

    python benchmarks/fsync_streams_probe.py --chunk-kib 512 --streams 3 --dir /path/on/the/disk

Each stream (a process) appends --chunk-kib at a time to a file of its own and fdatasyncs after
every append, --total-mib in all; all streams run at once, as the three replicas of an RF=3
cluster on one machine do.  Prints each stream's MB/s and its fdatasync p50/p90, and the sum.
The files are removed at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time


def stream(path: str, chunk: int, total: int, out: multiprocessing.Queue) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data, waits = b"x" * chunk, []
    start = time.perf_counter()
    try:
        for _ in range(total // chunk):
            os.write(fd, data)
            t = time.perf_counter()
            os.fdatasync(fd)
            waits.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    waits.sort()
    out.put((total / elapsed / 1e6, waits[len(waits) // 2] * 1e3, waits[int(len(waits) * 0.9)] * 1e3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk-kib", type=int, default=512)
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--total-mib", type=int, default=300, help="per stream")
    ap.add_argument("--dir", default=".", help="a directory on the disk to measure")
    args = ap.parse_args()
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=stream, args=(os.path.join(args.dir, f".fsync-probe-{os.getpid()}-{i}"),
                                                         args.chunk_kib * 1024, args.total_mib * 1024 * 1024, out))
             for i in range(args.streams)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    for mbs, p50, p90 in results:
        print(f"stream: {mbs:.0f} MB/s, fdatasync p50 {p50:.2f} ms p90 {p90:.2f} ms")
    print(f"{args.streams} stream(s) of {args.chunk_kib} KiB appends: {sum(r[0] for r in results):.0f} MB/s in all")


if __name__ == "__main__":
    main()

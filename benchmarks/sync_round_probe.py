#!/usr/bin/env python
"""By-hand probe: how long one group-commit round takes with N active partitions.

    PYTHONPATH=. .venv/bin/python benchmarks/sync_round_probe.py --dir /var/tmp/slprobe --partitions 1 10 100

Each round appends one batch to every one of N partitions, then waits on the
committer (C{--fsync always}) for all of them; the round time is from the first
C{wait} to the last waiter firing, on the real reactor and the real sync
thread(s). It uses only C{SegmentedStorage.create_topic}, C{log.append(batch)}
and C{GroupCommitter.wait}, so the same file measures older code too (run it
with C{PYTHONPATH} pointing at that checkout). Not a test; the machine is
shared, so say what else was running when you quote it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import statistics
import sys
import time

import orjson

from streamlog.storage.base import RecordBatch, TopicConfig
from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
from streamlog.storage.segmented import SegmentedStorage


def payload(records: int, value_bytes: int) -> bytes:
    return b"\n".join(
        orjson.dumps({"offset": i, "timestamp": 0, "key": None, "value": "x" * value_bytes, "headers": {}})
        for i in range(records)
    )


def run(directory: str, partitions: int, rounds: int, seconds: float, workers: int | None, body: bytes, count: int) -> list[float]:
    from twisted.internet import reactor
    from twisted.internet.defer import DeferredList, ensureDeferred

    shutil.rmtree(directory, ignore_errors=True)
    storage = SegmentedStorage(directory, TopicConfig())
    logs = storage.create_topic("probe", partitions, TopicConfig())
    kwargs = {}
    if workers is not None and "sync_workers" in inspect.signature(GroupCommitter).parameters:
        kwargs["sync_workers"] = workers
    committer = GroupCommitter(FsyncPolicy.parse("always"), checkpoint_interval=None, **kwargs)
    times: list[float] = []

    async def main() -> None:
        start = time.perf_counter()
        for _ in range(rounds):
            if time.perf_counter() - start > seconds:
                break
            for log in logs:
                log.append(RecordBatch(log.end_offset, count, 0, 0, 0, body))
            t0 = time.perf_counter()
            await DeferredList([committer.wait(log, log.end_offset) for log in logs], fireOnOneErrback=True)
            times.append((time.perf_counter() - t0) * 1000)
        await committer.stop()

    def go() -> None:
        d = ensureDeferred(main())
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    storage.close()
    shutil.rmtree(directory, ignore_errors=True)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="scratch directory on the disk to measure")
    p.add_argument("--partitions", type=int, default=10, help="active partitions (one run per process: the reactor runs once)")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--seconds", type=float, default=20.0, help="stop early after this long")
    p.add_argument("--workers", type=int, default=None, help="sync workers (code that has them)")
    p.add_argument("--records", type=int, default=10)
    p.add_argument("--value-bytes", type=int, default=100)
    args = p.parse_args()
    body = payload(args.records, args.value_bytes)
    times = run(args.dir, args.partitions, args.rounds, args.seconds, args.workers, body, args.records)
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) >= 10 else [float("nan")] * 9
    print(orjson.dumps({
        "code": os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["streamlog"].__file__))),
        "partitions": args.partitions, "workers": args.workers, "rounds": len(times),
        "median_ms": round(statistics.median(times), 3), "p10_ms": round(q[0], 3), "p90_ms": round(q[-1], 3),
        "max_ms": round(times[-1], 3),
    }).decode())


if __name__ == "__main__":
    main()

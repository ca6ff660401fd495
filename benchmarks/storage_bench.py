"""Storage benchmarks: append throughput under each fsync policy, and recovery time.

Not a test: run it by hand and copy the figures into docs/storage.md.

    .venv/bin/python benchmarks/storage_bench.py --dir /var/tmp/slbench
    .venv/bin/python benchmarks/storage_bench.py --only recovery --recovery-mib 1024

Append: batches of C{--records} records of C{--value-bytes} bytes each (as the
broker stores them: encoded JSON joined by newlines).
  - C{always, 1 appender}: append then sync, one batch at a time (the worst case).
  - C{always, group commit}: C{--appenders} concurrent producers on the real
    reactor, each appending a batch and waiting on L{GroupCommitter.wait}
    before the next; fsyncs run in the reactor's thread pool.
  - C{never}: append only (what the OS page cache absorbs).
Recovery: a partition of C{--recovery-mib} MiB is written, then opened three ways:
after a clean close; after a crash (the checkpoint left where the last automatic
checkpoint was, so the tail after it is validated); and with no checkpoint at all
(everything is validated: the worst case, e.g. a crash before the first checkpoint).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import orjson  # noqa: E402

from streamlog.storage import codec  # noqa: E402
from streamlog.storage.base import RecordBatch, TopicConfig  # noqa: E402
from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter  # noqa: E402
from streamlog.storage.local import LocalLog  # noqa: E402
from streamlog.storage.log import CHECKPOINT_FILE, SegmentedLog  # noqa: E402


def open_log(directory: str, config: TopicConfig | None = None) -> LocalLog:
    """A partition log as the broker appends to it (one Raft entry per batch)."""
    return LocalLog(SegmentedLog(directory, config))


def make_payload(records: int, value_bytes: int) -> tuple[bytes, int]:
    value = "x" * value_bytes
    encoded = [
        orjson.dumps({"offset": i, "timestamp": 1_700_000_000_000 + i, "key": None, "value": value, "headers": {}})
        for i in range(records)
    ]
    return b"\n".join(encoded), records


def batch_at(base: int, payload: bytes, count: int, ts: int) -> RecordBatch:
    # The payload's offsets are not rewritten per batch: storage never parses
    # records on this path, and a fresh encode per batch would measure orjson.
    return RecordBatch(base, count, 1, ts, ts, payload)


def bench_sequential(directory: str, payload: bytes, count: int, seconds: float, sync: bool) -> dict:
    log = open_log(directory)
    start = time.perf_counter()
    batches = 0
    ts = int(time.time() * 1000)
    while time.perf_counter() - start < seconds:
        log.append(batch_at(log.end_offset, payload, count, ts))
        if sync:
            log.sync()
        batches += 1
    elapsed = time.perf_counter() - start
    log.close()
    shutil.rmtree(directory)
    return {
        "batches/s": batches / elapsed,
        "records/s": batches * count / elapsed,
        "MB/s": batches * len(payload) / elapsed / 1e6,
        "fsyncs/s": (batches if sync else 0) / elapsed,
    }


def bench_group_commit(directory: str, payload: bytes, count: int, seconds: float, appenders: int) -> dict:
    from twisted.internet import reactor
    from twisted.internet.defer import DeferredList, ensureDeferred

    log = open_log(directory)
    committer = GroupCommitter(FsyncPolicy.parse("always"))
    ts = int(time.time() * 1000)
    state = {"batches": 0, "start": 0.0, "elapsed": 0.0}

    async def producer() -> None:
        while time.perf_counter() - state["start"] < seconds:
            log.append(batch_at(log.end_offset, payload, count, ts))
            durable = await committer.wait(log, log.end_offset)
            assert durable is True
            state["batches"] += 1

    async def main() -> None:
        state["start"] = time.perf_counter()
        await DeferredList([ensureDeferred(producer()) for _ in range(appenders)], fireOnOneErrback=True)
        state["elapsed"] = time.perf_counter() - state["start"]
        await committer.stop()

    def run() -> None:
        d = ensureDeferred(main())
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    log.close()
    shutil.rmtree(directory)
    elapsed = state["elapsed"]
    return {
        "batches/s": state["batches"] / elapsed,
        "records/s": state["batches"] * count / elapsed,
        "MB/s": state["batches"] * len(payload) / elapsed / 1e6,
        "fsyncs/s": committer.rounds / elapsed,
    }


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def bench_recovery(
    directory: str, mib: int, payload: bytes, count: int, segment_bytes: int, tail_mib: int
) -> list[tuple[str, float, bool, int]]:
    config = TopicConfig(segment_bytes=segment_bytes)
    log = open_log(directory, config)
    target = mib * 1024 * 1024
    ts = int(time.time() * 1000)
    written = 0
    saved_checkpoint = None
    path = os.path.join(directory, CHECKPOINT_FILE)
    last_sync = 0
    while written < target:
        log.append(batch_at(log.end_offset, payload, count, ts))
        written += len(payload) + codec.HEADER_SIZE
        # A sync every 16 MiB (as interval:<ms> would), and the checkpoint the
        # committer writes when one is due, except in the last tail_mib: the
        # crash case then has that much after its checkpoint.
        if written - last_sync >= 16 * 1024 * 1024 and written < target - tail_mib * 1024 * 1024:
            log.sync()
            if log.checkpoint_due:
                log.checkpoint(sync=False)
            last_sync = written
            with open(path, "rb") as f:
                saved_checkpoint = f.read()
    end = log.end_offset
    log.close()
    results = []
    for label in ("clean close", "crash (tail after last checkpoint)", "no checkpoint (validate all)"):
        if label.startswith("crash"):
            with open(path, "wb") as f:
                f.write(saved_checkpoint or b"")
        elif label.startswith("no checkpoint"):
            os.unlink(path)
        cold = drop_caches()
        start = time.perf_counter()
        log = open_log(directory, config)
        elapsed = time.perf_counter() - start
        assert log.end_offset == end and log.failed is None, (log.end_offset, end, log.failed)
        log.close()  # writes a fresh checkpoint (not timed)
        results.append((label, elapsed, cold, log.segment_count))
    shutil.rmtree(directory)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="scratch directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--appenders", type=int, default=64)
    parser.add_argument("--recovery-mib", type=int, default=1024)
    parser.add_argument("--segment-mib", type=int, default=128)
    parser.add_argument("--crash-tail-mib", type=int, default=64, help="data after the last checkpoint in the crash case")
    parser.add_argument("--only", choices=["append", "recovery"], default=None)
    args = parser.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="streamlog-bench-")
    os.makedirs(base, exist_ok=True)
    payload, count = make_payload(args.records, args.value_bytes)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"directory: {base}; batch: {count} records, {len(payload)} bytes")
    if args.only in (None, "append"):
        rows = [
            ("always, 1 appender (append+fsync)", bench_sequential(os.path.join(base, "seq"), payload, count, args.seconds, True)),
            ("never (append only)", bench_sequential(os.path.join(base, "never"), payload, count, args.seconds, False)),
            (
                f"always, group commit, {args.appenders} appenders",
                bench_group_commit(os.path.join(base, "group"), payload, count, args.seconds, args.appenders),
            ),
        ]
        print("\n| policy | batches/s | records/s | MB/s | fsyncs/s |\n|---|---:|---:|---:|---:|")
        for name, r in rows:
            print(f"| {name} | {r['batches/s']:,.0f} | {r['records/s']:,.0f} | {r['MB/s']:,.1f} | {r['fsyncs/s']:,.0f} |")
    if args.only in (None, "recovery"):
        results = bench_recovery(
            os.path.join(base, "recovery"), args.recovery_mib, payload, count, args.segment_mib * 1024 * 1024, args.crash_tail_mib
        )
        print(
            f"\nrecovery of a {args.recovery_mib} MiB partition ({args.segment_mib} MiB segments, "
            f"crash case: {args.crash_tail_mib} MiB after the last checkpoint):\n"
        )
        print("| start after | seconds | page cache dropped | segments |\n|---|---:|---|---:|")
        for label, seconds, cold, segments in results:
            print(f"| {label} | {seconds:.3f} | {'yes' if cold else 'no (not permitted)'} | {segments} |")
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

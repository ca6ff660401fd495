"""CPU probes for many partitions (docs/benchmarks.md, "Many partitions"): counts and CPU time, not
wall clock, because the machine is shared.

    python benchmarks/many_partitions_probe.py plan [--partitions 1000] [--led]
        CPU per reconciliation plan of node 1 of 3 (RF=3, converged), the planner alone.
        --led passes the groups node 1 leads, as the node does.
    python benchmarks/many_partitions_probe.py metadata --port P --pid PID [--answers 100]
        Server CPU (utime+stime of PID, from /proc) per Metadata answer of the node on P.
    python benchmarks/many_partitions_probe.py idle --seconds 20 PID [PID ...]
        CPU seconds each process used over --seconds.
    python benchmarks/many_partitions_probe.py checkpoint-pass [--logs 1000] [--changed 0]
        The group committer's periodic pass over --logs real segmented logs (in a temp dir, each
        written, synced and checkpointed), --changed of them written and synced by a commit
        since: CPU time of the pass (jobs run inline) and the fsync calls it makes.
    python benchmarks/many_partitions_probe.py recovery --data-dir DIR [--workers 1,4] [--rounds 2]
        Start-up recovery of a node's data dir (a copy of DIR, fresh each time, the page cache
        written back first): CPU and wall time of SegmentedStorage.load with each number of
        recovery workers, interleaved. DIR: a node's data dir after a SIGKILL, e.g. one that
        benchmarks/restart_probe.py --crash-at-end kept.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plan(partitions: int, led: bool, rounds: int = 200) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "cluster"))
    import attrs
    from cluster_support import cluster, create, inc, member

    from streamlog.cluster.metadata import METADATA_GROUP, partition_group
    from streamlog.cluster.reconcile import GroupView, NodeView, Planner
    from streamlog.raft.core import FOLLOWER, LEADER

    log = cluster(3)
    replicas = [[(p + i) % 3 + 1 for i in range(3)] for p in range(partitions)]
    topic_id = create(log, "t", replicas).value["topic_id"]
    voters = frozenset(member(n) for n in (1, 2, 3))
    groups = {}
    for p, r in enumerate(replicas):
        preferred = member(r[0])
        if preferred == member(1):
            groups[partition_group(topic_id, p)] = GroupView(LEADER, preferred, voters, frozenset(),
                                                             voters - {preferred}, 10, True)
        else:
            groups[partition_group(topic_id, p)] = GroupView(FOLLOWER, preferred, voters, commit_index=10)
    groups[METADATA_GROUP] = GroupView(FOLLOWER, member(2), voters, commit_index=log.index)
    view = NodeView(1, inc(1), "127.0.0.1:7001", "127.0.0.1:8001", groups, {n: inc(n) for n in (1, 2, 3)})
    if led:
        view = attrs.evolve(view, led=frozenset(g for g, gv in groups.items() if gv.role == LEADER))
    planner = Planner()
    assert planner.plan(log.state, view, 0.0) == []  # converged: a plan finds nothing to do
    started = time.process_time()
    for i in range(rounds):
        planner.plan(log.state, view, float(i))
    took = (time.process_time() - started) / rounds
    print(f"{partitions} partitions{' (led given)' if led else ''}: {took * 1000:.3f} ms CPU per plan")


def metadata(port: int, pid: int, answers: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s, s.makefile("rb") as lines:
        def ask(i: int) -> bytes:
            s.sendall(json.dumps({"id": i, "method": "Metadata", "params": {}}).encode() + b"\n")
            return lines.readline()

        size = len(ask(0))
        before = _cpu_of(pid)
        for i in range(1, answers + 1):
            ask(i)
        per = (_cpu_of(pid) - before) / answers
    print(f"{answers} Metadata answers of {size} bytes: server CPU {per * 1000:.1f} ms per answer "
          f"(load {os.getloadavg()[0]:.1f})")


def idle(seconds: float, pids: list[int]) -> None:
    before = {pid: _cpu_of(pid) for pid in pids}
    time.sleep(seconds)
    for pid in pids:
        print(f"pid {pid}: {_cpu_of(pid) - before[pid]:.2f} s CPU in {seconds:g} s")
    print(f"load {os.getloadavg()[0]:.1f}")


def checkpoint_pass(logs_wanted: int, changed: int) -> None:
    import shutil
    import tempfile

    from twisted.internet.task import Clock

    from streamlog.storage.base import RecordBatch
    from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
    from streamlog.storage.local import LocalLog
    from streamlog.storage.log import SegmentedLog
    from streamlog.testing import ManualThreads

    scratch = tempfile.mkdtemp(prefix="pass-probe-")
    clock, threads = Clock(), ManualThreads()
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, checkpoint_interval=60)
    fsyncs = [0]
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def write(log: LocalLog) -> None:
        value = b'{"offset":%d,"timestamp":1,"key":null,"value":"x","headers":{}}' % log.end_offset
        log.append(RecordBatch(base_offset=log.end_offset, count=1, term=1, first_timestamp=1, max_timestamp=1,
                               payload=value))
        committer.wait(log, log.end_offset)

    try:
        logs = [LocalLog(SegmentedLog(os.path.join(scratch, str(i)))) for i in range(logs_wanted)]
        for log in logs:
            write(log)
        clock.advance(0)
        threads.run_all()  # the commits' syncs, then each log's first checkpoint
        for log in logs[:changed]:
            write(log)
        clock.advance(0)
        threads.run_all()
        os.fdatasync = lambda fd: (fsyncs.__setitem__(0, fsyncs[0] + 1), real_fdatasync(fd))[1]  # type: ignore[assignment]
        os.fsync = lambda fd: (fsyncs.__setitem__(0, fsyncs[0] + 1), real_fsync(fd))[1]  # type: ignore[assignment]
        cpu = time.process_time()
        clock.advance(60)
        while threads.jobs:
            threads.run_one()
            clock.advance(0)
        cpu = time.process_time() - cpu
        print(f"periodic pass over {logs_wanted} logs ({changed} changed since their checkpoint): "
              f"CPU {cpu * 1000:.1f} ms, {fsyncs[0]} fsync/fdatasync calls (load {os.getloadavg()[0]:.1f})")
    finally:
        os.fdatasync, os.fsync = real_fdatasync, real_fsync
        shutil.rmtree(scratch, ignore_errors=True)


def recovery(data_dir: str, workers: list[int], rounds: int) -> None:
    import shutil
    import tempfile

    from streamlog.storage.segmented import SegmentedStorage

    scratch = tempfile.mkdtemp(prefix="recovery-probe-")
    try:
        for _ in range(rounds):
            for n in workers:
                copy = os.path.join(scratch, "data")
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(data_dir, copy)
                os.sync()
                cpu, wall = time.process_time(), time.monotonic()
                storage = SegmentedStorage(copy, hard_state_required=True, recovery_workers=n)
                logs = sum(len(part) for _, part in storage.load().values())
                cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                storage.close()
                print(f"{logs} logs, {n} recovery worker(s): CPU {cpu:.3f} s, wall {wall:.3f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="probe", required=True)
    pl = sub.add_parser("plan")
    pl.add_argument("--partitions", type=int, default=1000)
    pl.add_argument("--led", action="store_true")
    md = sub.add_parser("metadata")
    md.add_argument("--port", type=int, required=True)
    md.add_argument("--pid", type=int, required=True)
    md.add_argument("--answers", type=int, default=100)
    il = sub.add_parser("idle")
    il.add_argument("--seconds", type=float, default=20.0)
    il.add_argument("pids", type=int, nargs="+")
    rc = sub.add_parser("recovery")
    rc.add_argument("--data-dir", required=True)
    rc.add_argument("--workers", default="1,4", help="comma-separated recovery worker counts")
    rc.add_argument("--rounds", type=int, default=2)
    cp = sub.add_parser("checkpoint-pass")
    cp.add_argument("--logs", type=int, default=1000)
    cp.add_argument("--changed", type=int, default=0)
    args = p.parse_args()
    if args.probe == "checkpoint-pass":
        checkpoint_pass(args.logs, args.changed)
        return
    if args.probe == "recovery":
        recovery(args.data_dir, [int(w) for w in args.workers.split(",")], args.rounds)
        return
    if args.probe == "plan":
        plan(args.partitions, args.led)
    elif args.probe == "metadata":
        metadata(args.port, args.pid, args.answers)
    else:
        idle(args.seconds, args.pids)


if __name__ == "__main__":
    main()

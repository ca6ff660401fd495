"""CPU probes for many partitions (docs/benchmarks.md, "Many partitions"): counts and CPU time, not
wall clock, because the machine is shared.

    python benchmarks/many_partitions_probe.py plan [--partitions 1000] [--led]
        CPU per reconciliation plan of node 1 of 3 (RF=3, converged), the planner alone.
        --led passes the groups node 1 leads, as the node does.
    python benchmarks/many_partitions_probe.py metadata --port P --pid PID [--answers 100]
        Server CPU (utime+stime of PID, from /proc) per Metadata answer of the node on P.
    python benchmarks/many_partitions_probe.py idle --seconds 20 PID [PID ...]
        CPU seconds each process used over --seconds.
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
    args = p.parse_args()
    if args.probe == "plan":
        plan(args.partitions, args.led)
    elif args.probe == "metadata":
        metadata(args.port, args.pid, args.answers)
    else:
        idle(args.seconds, args.pids)


if __name__ == "__main__":
    main()

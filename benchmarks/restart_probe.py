"""Restart of a node of a many-partition cluster under load (docs/benchmarks.md, "Many partitions").

    python benchmarks/restart_probe.py [--partitions 1000] [--rate 100] [--down 5] [--watch 120]
        [--duty SHARE [--period S]] [--server-arg=OPTION ...] [--keep-data] [--crash-at-end]
    python benchmarks/restart_probe.py --idle SECONDS [--partitions 1000]

Starts 3 real nodes on 127.0.0.1 (the plan of C{streamlog cluster up}),
creates a topic of C{--partitions} partitions at RF=3, runs a producer
thread (a L{BlockingClient}, acks=all, round robin over the partitions,
C{--rate} messages/s), waits until every partition is led with all replicas
in sync, SIGKILLs node 3, starts it again C{--down} seconds later, and
prints once a second until everything is led and in sync again (or
C{--watch} seconds pass): how many partitions have no leader that claims
them in its own Metadata, how many are not fully in sync, the highest
leader term, and the CPU each node used in that second.  At the end it reads
every partition back and counts acknowledged messages lost or changed.

C{--duty} emulates a machine busy with other work (the load of 19-25 the
first 1,000-partition restart met): a thread of this probe SIGSTOPs and
SIGCONTs the nodes it started, so that each runs only that share of every
C{--period} (0.12: about 12 % of a core at most, all its threads alike).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--partitions", type=int, default=1000)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--down", type=float, default=5.0)
    p.add_argument("--watch", type=float, default=120.0)
    p.add_argument("--victim", type=int, default=3)
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--keep-data", action="store_true")
    p.add_argument("--duty", type=float, default=None,
                   help="emulate a busy machine: let each node run only this share of every --period "
                        "(SIGSTOP/SIGCONT of the nodes this probe started, by pid)")
    p.add_argument("--period", type=float, default=0.05)
    p.add_argument("--idle", type=float, default=None, metavar="SECONDS",
                   help="instead of the restart: once every partition is in sync, print the CPU each node "
                        "uses over SECONDS with no load (the 60-s checkpoint pass included), and stop")
    p.add_argument("--crash-at-end", action="store_true",
                   help="SIGKILL every node at the end (a crashed data dir for a recovery profile; implies --keep-data)")
    args = p.parse_args()

    from streamlog import errors
    from streamlog.bench.cluster import Nodes
    from streamlog.client.blocking import BlockingClient

    root = Path(tempfile.mkdtemp(prefix="streamlog-restart-"))
    nodes = Nodes.plan(3, root, args.server_arg, seed=random.randrange(1 << 30))
    print(f"data in {root}, load {os.getloadavg()[0]:.1f}", flush=True)
    acked: dict[int, dict[int, str]] = {}
    stop = threading.Event()
    failures: list[str] = []
    topic = "restart"

    def produce() -> None:
        with BlockingClient(nodes.bootstrap, timeout=5.0) as c:
            seq, started = 0, time.monotonic()
            while not stop.is_set():
                due = started + seq / args.rate
                if due > time.monotonic():
                    time.sleep(due - time.monotonic())
                value = f"v{seq}"
                try:
                    got = c.send(topic, value, partition=seq % args.partitions)
                except errors.StreamlogError as e:
                    failures.append(f"{seq}: {e}")
                else:
                    if got is not None:
                        acked.setdefault(got["partition"], {})[got["offset"]] = value
                seq += 1

    def metadata(node: int) -> dict[str, Any] | None:
        if not nodes.alive(node):
            return None
        try:
            with BlockingClient(nodes.address(node), timeout=3.0) as c:
                return c.call("Metadata", {"topics": [topic]})  # type: ignore[no-any-return]
        except (errors.StreamlogError, OSError):
            return None

    def census() -> tuple[int, int, int]:
        """(partitions with no self-claimed leader, partitions not all in sync, highest term)."""
        led: dict[int, dict[str, Any]] = {}
        for node in sorted(nodes.plans):
            answer = metadata(node)
            for t in (answer or {}).get("topics", []):
                for e in t.get("partitions", []):
                    if e.get("leader") == node and e.get("leader_term", 0) >= led.get(e["partition"], {}).get("leader_term", -1):
                        led[e["partition"]] = e
        unled = args.partitions - len(led)
        unsynced = unled + sum(1 for e in led.values() if set(e.get("isr", [])) != set(e.get("replicas", [])))
        term = max((e.get("leader_term", 0) for e in led.values()), default=0)
        return unled, unsynced, term

    def starve() -> None:
        import signal

        on, off = args.period * args.duty, args.period * (1 - args.duty)
        while not stop.is_set():
            time.sleep(on)
            pids = [nodes.pid(n) for n in nodes.plans if nodes.alive(n)]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass  # the victim was just killed
            time.sleep(off)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    if args.crash_at_end:
        args.keep_data = True
    try:
        nodes.start_all()
        nodes.wait_formed(120)
        deadline = time.monotonic() + 120
        while True:
            try:
                with BlockingClient(nodes.bootstrap, timeout=60.0) as c:
                    c.call("CreateTopic", {"topic": topic, "partitions": args.partitions, "replication_factor": 3},
                           timeout=60)
                break
            except errors.TopicExists:
                break
            except errors.StreamlogError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        nodes.wait_topic_in_sync(topic, 300)
        print(f"topic in sync; load {os.getloadavg()[0]:.1f}", flush=True)
        if args.idle is not None:
            before = {n: _cpu_of(nodes.pid(n)) for n in nodes.plans}
            time.sleep(args.idle)
            used = " ".join(f"n{n}:{_cpu_of(nodes.pid(n)) - before[n]:.2f}" for n in sorted(nodes.plans))
            print(f"idle {args.idle:g} s: CPU {used} s; load {os.getloadavg()[0]:.1f}", flush=True)
            return 0
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        if args.duty is not None:
            threading.Thread(target=starve, daemon=True).start()
        time.sleep(3)
        cpu = {n: _cpu_of(nodes.pid(n)) for n in nodes.plans}
        killed = time.monotonic()
        nodes.kill(args.victim)
        nodes.reap(args.victim)
        print(f"killed node {args.victim}", flush=True)
        restarted = None
        leaders_back = None
        while time.monotonic() - killed < args.watch:
            t0 = time.monotonic()
            if restarted is None and t0 - killed >= args.down:
                nodes.start(args.victim)
                restarted = time.monotonic()
                cpu[args.victim] = 0.0
                print(f"+{restarted - killed:.1f}s restarted node {args.victim}", flush=True)
            unled, unsynced, term = census()
            now = {n: _cpu_of(nodes.pid(n)) if nodes.alive(n) else cpu[n] for n in nodes.plans}
            used = " ".join(f"n{n}:{now[n] - cpu[n]:.2f}" for n in sorted(now))
            cpu = now
            print(f"+{time.monotonic() - killed:6.1f}s unled {unled:4d} unsynced {unsynced:4d} max term {term:3d} "
                  f"cpu {used} acked {sum(len(v) for v in acked.values())} load {os.getloadavg()[0]:.1f}", flush=True)
            if restarted is not None and unled == 0 and leaders_back is None:
                leaders_back = time.monotonic() - restarted
            if restarted is not None and unsynced == 0:
                print(f"every partition led {leaders_back:.1f}s and in sync {time.monotonic() - restarted:.1f}s "
                      f"after the restart", flush=True)
                break
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        stop.set()
        producer.join(30)
        time.sleep(2 * args.period)
        for n in nodes.plans:  # the starver may have left one stopped
            if nodes.alive(n):
                nodes.resume(n)
        lost = changed = 0
        with BlockingClient(nodes.bootstrap, timeout=30.0) as c:
            for partition, want in acked.items():
                got: dict[int, str] = {}
                offset = 0
                while True:
                    answer = c.poll(topic, partition, offset, max_messages=5000)
                    for m in answer["messages"]:
                        got[m["offset"]] = m["value"]
                    if not answer["messages"]:
                        break
                    offset = answer["next_offset"]
                for off, value in want.items():
                    if off not in got:
                        lost += 1
                    elif got[off] != value:
                        changed += 1
        print(f"acknowledged {sum(len(v) for v in acked.values())}, lost {lost}, changed {changed}, "
              f"failed sends {len(failures)} {failures[:3]}", flush=True)
        return 0 if lost == changed == 0 else 1
    finally:
        stop.set()
        if args.crash_at_end:
            for n in nodes.plans:
                if nodes.alive(n):
                    nodes.kill(n)
                    nodes.reap(n)
        nodes.stop_all()
        if not args.keep_data:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

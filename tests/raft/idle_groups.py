"""Measure by hand what idle Raft groups cost: N RaftHosts in N processes on 127.0.0.1, each a
member of every one of G groups (in-memory logs: the cost measured is Raft's and the
transport's, not storage's), TCP between them. Not a test (it takes a minute):

    python tests/raft/idle_groups.py --groups 1000 --seconds 30 [--no-quiesce] [--election-timeout 0.5]
    python tests/raft/idle_groups.py --groups 1000 --kill   # SIGKILL a node, time the failover

The parent picks free ports, starts the nodes, waits until every group has a leader and (with
quiescence) every group is quiet, then has each node report its CPU time (user + system) over
the measuring window, and prints one JSON line per node and a summary. Every child is stopped
by its pid, and each child exits by itself after a deadline in any case.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
    from twisted.internet.task import LoopingCall
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner, textFileLogObserver

    level = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(sys.stderr), [level])],
                                    redirectStandardIO=False)

    from streamlog.raft.core import LEADER, RaftConfig
    from streamlog.raft.driver import MemoryGroupStorage, RaftHost
    from streamlog.raft.log import MemoryRaftLog

    ports = dict(p.split("=") for p in args.peers.split(","))
    ids = sorted(ports)
    config = RaftConfig(election_timeout=args.election_timeout, heartbeat_interval=0.05, quiesce=not args.no_quiesce)
    host = RaftHost(args.node, ids, config, rng=random.Random(args.node), incarnation=f"inc{args.node}",
                    cluster_id="measure")
    members = [f"{i}.inc{i}" for i in ids]
    for g in range(args.groups):
        host.add_group(f"g{g}", members, MemoryGroupStorage(MemoryRaftLog()))
    TCP4ServerEndpoint(reactor, int(ports[args.node]), interface="127.0.0.1").listen(host.peer_factory())
    for peer in ids:
        if peer > args.node:
            host.dial(peer, TCP4ClientEndpoint(reactor, "127.0.0.1", int(ports[peer])))
    host.start()
    started = time.monotonic()
    state: dict[str, float] = {}

    def report() -> None:
        led = sum(1 for r in host.groups.values() if r.node.role == LEADER)
        known = sum(1 for r in host.groups.values() if r.node.leader_id is not None)
        line = {"node": args.node, "t": round(time.monotonic() - started, 2), "wall": time.time(), "led": led,
                "known_leader": known,
                "awake": len(host.awake_groups()), "connections": len(host.connections), "stats": dict(host.stats)}
        if "cpu0" in state:
            line["cpu_s"] = round(cpu_seconds() - state["cpu0"], 3)
            line["window_s"] = round(time.monotonic() - state["wall0"], 3)
        print(json.dumps(line), flush=True)

    def on_measure(signum: int, frame: object) -> None:
        reactor.callFromThread(start_window)

    def start_window() -> None:
        state["cpu0"], state["wall0"] = cpu_seconds(), time.monotonic()

    signal.signal(signal.SIGUSR1, on_measure)
    LoopingCall(report).start(args.report_interval)
    reactor.callLater(args.deadline, reactor.stop)
    reactor.run()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def parent(args: argparse.Namespace) -> int:
    ids = [str(i + 1) for i in range(args.nodes)]
    peers = ",".join(f"{i}={p}" for i, p in zip(ids, free_ports(args.nodes)))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    deadline = args.seconds + 120
    procs = {i: subprocess.Popen([sys.executable, __file__, "--child", "--node", i, "--peers", peers,
                                  "--groups", str(args.groups), "--deadline", str(deadline),
                                  "--election-timeout", str(args.election_timeout),
                                  "--report-interval", "0.05" if args.kill else "1.0"]
                                 + (["--no-quiesce"] if args.no_quiesce else []),
                                 stdout=subprocess.PIPE, text=True, env=env) for i in ids}
    last: dict[str, dict] = {}
    try:
        os.set_blocking(procs[ids[0]].stdout.fileno(), True)

        def read_round() -> None:
            for i, p in procs.items():
                out = p.stdout.readline()
                if not out:
                    raise SystemExit(f"node {i} exited (status {p.poll()})")
                last[i] = json.loads(out)

        settle_until = time.monotonic() + 60
        while time.monotonic() < settle_until:
            read_round()
            leaders = sum(v["led"] for v in last.values())
            quiet = all(v["awake"] == 0 for v in last.values()) or args.no_quiesce
            if leaders == args.groups and all(v["known_leader"] == args.groups for v in last.values()) and quiet:
                break
        else:
            print(json.dumps({"error": "did not settle within 60 s", "last": last}))
            if not args.measure_anyway:
                return 1
        settled = {i: dict(v) for i, v in last.items()}
        if args.kill:
            return failover(args, procs, ids, settled)
        for p in procs.values():
            p.send_signal(signal.SIGUSR1)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            read_round()
        read_round()
        for v in last.values():
            print(json.dumps(v))
        total = sum(v.get("cpu_s", 0.0) for v in last.values())
        window = min(v.get("window_s", args.seconds) for v in last.values())
        print(json.dumps({"groups": args.groups, "nodes": args.nodes, "quiesce": not args.no_quiesce,
                          "election_timeout": args.election_timeout,
                          "settled_at_s": max(v["t"] for v in settled.values()),
                          "window_s": window, "cpu_s_all_nodes": round(total, 3),
                          "cpu_percent_per_node": round(100 * total / window / args.nodes, 2)}))
        return 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def failover(args: argparse.Namespace, procs: dict, ids: list[str], settled: dict) -> int:
    """SIGKILL the node leading the most groups; time until the survivors lead every group."""
    victim = max(settled, key=lambda i: settled[i]["led"])
    survivors = [i for i in ids if i != victim]
    for i in survivors:  # drop what is buffered: only reports made after the kill count
        os.set_blocking(procs[i].stdout.fileno(), False)
        while procs[i].stdout.readline():
            pass
        os.set_blocking(procs[i].stdout.fileno(), True)
    killed_at = time.time()
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait(10)
    last: dict[str, dict] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for i in survivors:
            out = procs[i].stdout.readline()
            if not out:
                raise SystemExit(f"node {i} exited")
            last[i] = json.loads(out)
        if len(last) == len(survivors) and sum(v["led"] for v in last.values()) == args.groups:
            done_at = max(v["wall"] for v in last.values())
            print(json.dumps({"groups": args.groups, "killed": victim, "it_led": settled[victim]["led"],
                              "all_groups_led_again_after_s": round(done_at - killed_at, 3),
                              "report_interval_s": 0.05}))
            return 0
    print(json.dumps({"error": "groups without a leader 30 s after the kill", "last": last}))
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-quiesce", action="store_true")
    parser.add_argument("--measure-anyway", action="store_true", help="measure even if the groups did not settle")
    parser.add_argument("--kill", action="store_true",
                        help="instead of measuring CPU: SIGKILL the busiest leader, time the failover")
    parser.add_argument("--report-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--election-timeout", type=float, default=0.5,
                        help="seconds (default 0.5, the server's); a loaded machine may need more to settle")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--peers", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=300.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())

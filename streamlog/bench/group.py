"""C{streamlog bench group}: consumer-group rebalance times and group consume throughput.

Starts its own server (one node, or C{--nodes 3}: a local cluster, replication factor 3),
fills a topic of C{--partitions} partitions with C{--messages} messages, then:

- **rebalance**, C{--rounds} times, each in a fresh group: two members hold every partition;
  a third joins: the time from its C{start_consuming()} until the three hold disjoint shares
  that cover every partition, each holding some (the join's rebalance: the others revoke,
  commit, release; the new one is granted and fetches its offsets).  Then one member dies
  (its timers stop and its connections close, with no LeaveGroup, as a SIGKILL looks to the
  coordinator): the time until the two others hold every partition.  That one is about the
  session timeout (C{--session-timeout-ms}, default 3000) plus a heartbeat, by design: the
  coordinator cannot tell a dead member from a slow one before.  Medians and maxima.  The
  members run in this process, each with its own client, reading what they are given.
- **throughput**: C{--members} member processes (spawned interpreters, one reactor each) in
  one group read the whole topic; against one member process alone.  Each member reports what
  it holds; once the group is stable (every partition held, each member holding some) all are
  told to go at once, and each reads its partitions to their end: the rate is the messages
  over the time from the go to the last member's last message.  The two configurations
  alternate C{--throughput-rounds} times (the machine may be shared: interleaving keeps a load
  change from favouring one), each round in a fresh group.

Every wait has a deadline (C{--max-seconds}); processes are stopped by their own pids.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HELP = ("consumer groups: rebalance time when a member joins and when one dies (median over --rounds), and "
        "consume throughput of a --members group vs one consumer")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partitions", "-p", type=int, default=6, help="partitions of the bench topic")
    p.add_argument("--messages", "-n", type=int, default=60_000, help="messages written first (all partitions)")
    p.add_argument("--size", "-s", type=int, default=100, help="message value size in bytes (about)")
    p.add_argument("--members", type=int, default=3, help="member processes of the throughput group")
    p.add_argument("--rounds", type=int, default=5, help="rebalance rounds (a join and a death each)")
    p.add_argument("--throughput-rounds", type=int, default=2,
                   help="rounds of the throughput comparison (one member, then the group, alternating)")
    p.add_argument("--session-timeout-ms", type=int, default=3000, help="the members' session timeout")
    p.add_argument("--max-messages", type=int, default=1000, help="most messages per Poll of a member")
    p.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                   help="1: one server; 3: a local cluster (replication factor 3)")
    p.add_argument("--fsync", default="always", help="fsync policy of the server(s) started")
    p.add_argument("--max-seconds", type=float, default=120.0, help="deadline of each wait and each read")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
    p.add_argument("--json-out", default=None, help="append the JSON result as one line to this file")
    p.add_argument("--label", default=None, help="free text stored in the JSON result")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _median_max(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None, "min": None}
    return {"median": round(statistics.median(values), 4), "max": round(max(values), 4),
            "min": round(min(values), 4)}


# --- the member processes of the throughput phase --------------------------------------------


def member_process(cfg: dict[str, Any], index: int, holdings: Any, go: Any, stop: Any, results: Any) -> None:
    """One member (a spawned interpreter): join, report what it holds, read on C{go} until its
    partitions reach their ends, report, wait for C{stop}."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    out: dict[str, Any] = {"index": index}

    async def body() -> None:
        from twisted.internet.task import deferLater

        from streamlog.client import ClusterClient, GroupConsumer

        client = ClusterClient(cfg["bootstrap"], reactor=reactor, request_timeout=10.0)
        report = lambda tps: holdings.put((index, len(member.consumers) + len(member.granting)))  # noqa: E731
        member = GroupConsumer(client, cfg["group"], [cfg["topic"]], session_timeout_ms=cfg["session_timeout_ms"],
                               auto_commit_interval=1.0, max_messages=cfg["max_messages"], max_wait_ms=200,
                               on_assigned=report, on_revoked=report)
        await member.start_consuming()
        report([])
        deadline = time.monotonic() + cfg["max_seconds"]
        while not go.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("no go within the deadline")
            await deferLater(reactor, 0.005, lambda: None)
        cpu0, count, first, last = _cpu(), 0, None, None
        ends = {tuple(k): v for k, v in cfg["ends"]}
        while time.monotonic() < deadline:
            mine = set(member.consumers)
            if mine and all(member.positions.get(tp, 0) >= ends[tp] for tp in mine):
                break
            batch = await member.poll()
            if batch:
                now = time.monotonic()
                first = now if first is None else first
                last = now
                count += len(batch)
        out.update(count=count, first=first, last=last, cpu=_cpu() - cpu0, held=len(member.consumers))
        results.put(dict(out))
        while not stop.is_set() and time.monotonic() < deadline + 30:
            await deferLater(reactor, 0.02, lambda: None)
        await member.close()
        await client.close()

    def go_run() -> None:
        d = ensureDeferred(body())
        d.addErrback(lambda f: results.put({"index": index, "error": f.getTraceback()}))
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(go_run)  # type: ignore[attr-defined]
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]


# --- the run, on this process's reactor ------------------------------------------------------


class GroupBench:
    def __init__(self, reactor: Any, args: Any, bootstrap: str, say: Any) -> None:
        self.reactor = reactor
        self.args = args
        self.bootstrap = bootstrap
        self.say = say
        self.topic = f"bench-group-{os.getpid()}-{int(time.time())}"
        self.ends: dict[tuple[str, int], int] = {}

    async def sleep(self, seconds: float) -> None:
        from twisted.internet.task import deferLater

        await deferLater(self.reactor, seconds, lambda: None)

    async def until(self, what: str, check: Any, step: float = 0.002) -> None:
        deadline = time.monotonic() + self.args.max_seconds
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await self.sleep(step)

    def client(self) -> Any:
        from streamlog.client import ClusterClient

        return ClusterClient(self.bootstrap, reactor=self.reactor, request_timeout=10.0)

    async def fill(self) -> None:
        from streamlog.client import Producer

        client = self.client()
        params: dict[str, Any] = {"topic": self.topic, "partitions": self.args.partitions}
        if self.args.nodes > 1:
            params["replication_factor"] = 3
        await client.call("CreateTopic", params, timeout=30)
        producer = Producer(client, linger_ms=5, acks="all")
        value = "x" * max(1, self.args.size - 10)
        for i in range(self.args.messages):
            producer.send(self.topic, value, partition=i % self.args.partitions)
            if i % 5000 == 4999:
                await producer.flush()
        await producer.flush()
        for p in range(self.args.partitions):
            self.ends[(self.topic, p)] = int(await client.list_offsets(self.topic, p, "latest"))
        await client.close()
        self.say(f"bench group: wrote {self.args.messages:,} messages to {self.topic} ({self.args.partitions} partitions)")

    # rebalance

    def member(self, group: str) -> tuple[Any, Any]:
        from streamlog.client import GroupConsumer

        client = self.client()
        m = GroupConsumer(client, group, [self.topic], session_timeout_ms=self.args.session_timeout_ms,
                          auto_commit_interval=0.5, max_messages=self.args.max_messages, max_wait_ms=200)
        return m, client

    def read(self, m: Any) -> None:
        """Keep a member reading (and dropping) what it is given, as an application would."""
        def again(_: Any) -> None:
            if not m._closed:
                m.poll().addBoth(again)
        m.poll().addBoth(again)

    @staticmethod
    def held(m: Any) -> set[tuple[str, int]]:
        return set(m.consumers)

    def stable(self, members: list[Any]) -> bool:
        shares = [self.held(m) for m in members]
        union = set().union(*shares)
        return (all(shares) and sum(len(s) for s in shares) == len(union) == self.args.partitions
                and not any(m.pending or m.granting for m in members))

    async def crash(self, m: Any, client: Any) -> None:
        """As a SIGKILL looks to the coordinator: no more heartbeats or commits, connections closed."""
        m._closed = True
        for timer in (m._heartbeat_timer, m._commit_timer):
            if timer is not None and timer.active():
                timer.cancel()
        for c in m.consumers.values():
            c.close()
        await client.close()

    async def rebalance_round(self, number: int) -> dict[str, float]:
        group = f"{self.topic}-rebalance-{number}"
        a, ca = self.member(group)
        b, cb = self.member(group)
        for m in (a, b):
            self.read(m)
        await self.until("two members to share the partitions", lambda: self.stable([a, b]))
        await self.sleep(0.5)
        c, cc = self.member(group)
        t0 = time.monotonic()
        self.read(c)
        await self.until("the third member's share", lambda: self.stable([a, b, c]))
        joined = time.monotonic() - t0
        await self.sleep(0.5)
        await self.crash(b, cb)
        t0 = time.monotonic()
        await self.until("the survivors to hold every partition", lambda: self.stable([a, c]))
        died = time.monotonic() - t0
        for m, client in ((a, ca), (c, cc)):
            await m.close()
            await client.close()
        self.say(f"bench group: round {number}: join {joined * 1000:.0f} ms, death {died * 1000:.0f} ms")
        return {"join": joined, "death": died}

    # throughput

    async def throughput_round(self, members: int, number: int) -> dict[str, Any]:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        holdings, results = ctx.Queue(), ctx.Queue()
        go, stop = ctx.Event(), ctx.Event()
        cfg = {"bootstrap": self.bootstrap, "topic": self.topic, "group": f"{self.topic}-read-{members}-{number}",
               "session_timeout_ms": max(self.args.session_timeout_ms, 6000), "max_messages": self.args.max_messages,
               "max_seconds": self.args.max_seconds, "ends": [[list(k), v] for k, v in self.ends.items()]}
        procs = [ctx.Process(target=member_process, args=(cfg, i, holdings, go, stop, results), daemon=True)
                 for i in range(members)]
        for p in procs:
            p.start()
        held: dict[int, int] = {}
        out: list[dict[str, Any]] = []
        try:
            def stable() -> bool:
                while not holdings.empty():
                    i, n = holdings.get_nowait()
                    held[i] = n
                want = min(members, self.args.partitions)
                return (len([n for n in held.values() if n]) == want
                        and sum(held.values()) == self.args.partitions)

            await self.until(f"{members} member process(es) to share the partitions", stable, step=0.02)
            await self.sleep(1.0)  # stays stable: no rebalance pending
            if not stable():
                await self.until("the group to settle", stable, step=0.02)
            began = time.monotonic()
            go.set()

            def collected() -> bool:
                while not results.empty():
                    out.append(results.get_nowait())
                return len(out) == members

            await self.until("every member to read its partitions to their end", collected, step=0.01)
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
        errors = [r["error"] for r in out if "error" in r]
        if errors:
            raise RuntimeError(f"a member process failed:\n{errors[0]}")
        count = sum(r["count"] for r in out)
        ended = max(r["last"] for r in out if r["last"] is not None)
        seconds = ended - began
        return {"members": members, "messages": count, "seconds": round(seconds, 4),
                "msgs_per_s": round(count / seconds, 1) if seconds > 0 else None,
                "member_cpu_s": [round(r["cpu"], 3) for r in sorted(out, key=lambda r: r["index"])],
                "load": round(os.getloadavg()[0], 2)}

    async def run(self) -> dict[str, Any]:
        await self.fill()
        rounds = [await self.rebalance_round(i + 1) for i in range(self.args.rounds)]
        reads: list[dict[str, Any]] = []
        for r in range(self.args.throughput_rounds):
            for members in (1, self.args.members):
                reads.append(await self.throughput_round(members, r + 1))
                self.say(f"bench group: {members} member(s) read {reads[-1]['messages']:,} messages at "
                         f"{reads[-1]['msgs_per_s']:,} msgs/s (load {reads[-1]['load']})")
        single = [x["msgs_per_s"] for x in reads if x["members"] == 1]
        group = [x["msgs_per_s"] for x in reads if x["members"] == self.args.members]
        return {
            "rebalance": {"join_s": _median_max([r["join"] for r in rounds]),
                          "death_s": _median_max([r["death"] for r in rounds]),
                          "rounds": [{k: round(v, 4) for k, v in r.items()} for r in rounds],
                          "session_timeout_ms": self.args.session_timeout_ms},
            "throughput": {"rounds": reads, "single_msgs_per_s": _median_max(single),
                           "group_msgs_per_s": _median_max(group),
                           "ratio": round(statistics.median(group) / statistics.median(single), 3)
                           if single and group else None},
        }


def _text(result: dict[str, Any]) -> str:
    rb, tp = result["rebalance"], result["throughput"]
    lines = [f"rebalance ({len(rb['rounds'])} rounds, session timeout {rb['session_timeout_ms']} ms):",
             f"  a member joins: median {rb['join_s']['median'] * 1000:.0f} ms, max {rb['join_s']['max'] * 1000:.0f} ms",
             f"  a member dies:  median {rb['death_s']['median'] * 1000:.0f} ms, max {rb['death_s']['max'] * 1000:.0f} ms",
             f"consume throughput ({result['messages']:,} messages, {result['partitions']} partitions):",
             f"  1 member:  median {tp['single_msgs_per_s']['median']:,.0f} msgs/s",
             f"  {result['members']} members: median {tp['group_msgs_per_s']['median']:,.0f} msgs/s "
             f"(x{tp['ratio']})",
             f"load average {result['load_before']} before, {result['load_after']} after"]
    return "\n".join(lines)


def main_with_args(args: Any) -> int:
    args.json = getattr(args, "json", False)
    if args.partitions < 1 or args.messages < 1 or args.members < 2 or args.rounds < 1 \
            or args.throughput_rounds < 1 or args.session_timeout_ms < 1000:
        print("bench group: --partitions, --messages, --rounds and --throughput-rounds must be at least 1, "
              "--members at least 2, --session-timeout-ms at least 1000", file=sys.stderr)
        return 2
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from streamlog.bench.cluster import Nodes
    from streamlog.bench.server import ServerProcess

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    load_before = round(os.getloadavg()[0], 2)
    server: ServerProcess | None = None
    nodes: Nodes | None = None
    root: Path | None = None
    if args.nodes == 1:
        server = ServerProcess(fsync=args.fsync)
        bootstrap = f"127.0.0.1:{server.start()}"
    else:
        root = Path(tempfile.mkdtemp(prefix="streamlog-bench-group-"))
        nodes = Nodes.plan(args.nodes, root, ["--fsync", args.fsync])
        nodes.start_all()
        nodes.wait_formed()
        bootstrap = nodes.bootstrap
    outcome: dict[str, Any] = {}

    async def body() -> None:
        outcome.update(await GroupBench(reactor, args, bootstrap, say).run())

    def start() -> None:
        d = ensureDeferred(body())
        d.addErrback(lambda f: outcome.update(error=f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    try:
        reactor.callWhenRunning(start)  # type: ignore[attr-defined]
        reactor.run()  # type: ignore[attr-defined]
    finally:
        if server is not None:
            server.stop()
        if nodes is not None:
            nodes.stop_all()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    if "error" in outcome:
        print(f"bench group failed:\n{outcome['error']}", file=sys.stderr)
        return 1
    result = {"workload": "group", "label": args.label, "nodes": args.nodes, "partitions": args.partitions,
              "messages": args.messages, "size": args.size, "members": args.members, "fsync": args.fsync,
              "load_before": load_before, "load_after": round(os.getloadavg()[0], 2), **outcome}
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2) if args.json else _text(result))
    return 0

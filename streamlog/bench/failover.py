"""C{streamlog bench failover}: fault a partition's leader again and again under a steady producer.

Starts a local cluster of real C{twistd} nodes (the plan of C{streamlog
cluster up}: L{streamlog.cli_cluster_up.plan_cluster}, on free ports of
127.0.0.1, in a fresh data directory), creates a topic of C{--partitions}
partitions at replication factor 3, and runs a L{streamlog.client.Producer}
(acks=all) in this process at a steady C{--rate}: every tick one message to
the watched partition 0 and one to the next of the others in turn.  Then
C{--kills} times: fault the node leading partition 0 (C{--fault}), measure

- fault -> a surviving node's C{Metadata} names a new leader of partition 0,
- fault -> the first acknowledged Send to partition 0 sent after the fault
  (the failover time an application sees),
- fault -> every partition the faulted node led had an acknowledged Send,

end the fault and wait until the node is back in the in-sync replicas of
all its partitions (then the next fault).  At the end everything is read
back and compared with what was acknowledged: lost, changed and reordered
acknowledged messages are counted (each must be 0).

The faults (C{--fault}):

- C{kill}: SIGKILL; the node is started again on its data afterwards.
- C{stop}: SIGSTOP, SIGCONT afterwards: a paused process, whose sockets stay
  open and silent (a long GC pause, a frozen VM; not a stuck disk, under
  which the reactor and its heartbeats go on: docs/operations.md).
- C{partition}: the node is cut off from its peers and from the bench's
  producer: the nodes meet through the chaos proxy
  (L{streamlog.chaos.proxy.PeerProxies}, which aborts the node's peer
  connections and refuses new ones), and the producer reaches every node
  through a L{streamlog.bench.silent_proxy.SilentProxy}, which for the
  faulted node stops passing bytes either way while its connections stay up,
  as a network partition looks to a client.  Healed afterwards.
- C{peers}: cut off from its peers only; the producer still reaches it.

Everything waits on conditions with deadlines; the nodes are stopped by
their own pids (SIGTERM, then SIGKILL) and die with this process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamlog.bench.cluster import Nodes
from streamlog.bench.failover_stats import AckLedger, KillRecord, leadership_balanced, summary

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

# Twisted is imported where the run starts: "streamlog --help" (which builds this parser) loads none.

#: The faults of --fault, and how the text output names them.
FAULTS = ("kill", "stop", "partition", "peers")
FAULT_NAMES = {"kill": "SIGKILL(s)", "stop": "SIGSTOP(s) (SIGCONT after)",
               "partition": "cut(s) from peers and clients (healed after)",
               "peers": "cut(s) from peers only (healed after)"}

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kills", "--faults", dest="kills", type=int, default=10,
                   help="how many times the leader of partition 0 is faulted")
    p.add_argument("--fault", choices=FAULTS, default="kill",
                   help="kill: SIGKILL (restarted after); stop: SIGSTOP (SIGCONT after); partition: cut off from "
                        "its peers and the producer (healed after); peers: cut off from its peers only")
    p.add_argument("--stall-timeout", type=float, default=None,
                   help="the client's stall_timeout (s; default the client's, 0.5); 0 turns stall detection off")
    p.add_argument("--partitions", "-p", type=int, default=1, help="partitions of the bench topic (RF=3)")
    p.add_argument("--nodes", type=int, default=3, choices=(3, 5), help="nodes of the local cluster")
    p.add_argument("--rate", type=float, default=500.0,
                   help="ticks per second; each tick sends one message to partition 0 and one to another partition")
    p.add_argument("--size", "-s", type=int, default=100, help="message value size in bytes (about)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds of steady sending before each kill (after the restarted node is back in sync)")
    p.add_argument("--kill-timeout", type=float, default=30.0,
                   help="seconds a failover may take before the bench gives up on it")
    p.add_argument("--balance-timeout", type=float, default=120.0,
                   help="seconds to wait before each fault for balanced leadership (every partition led by its "
                        "preferred leader, or the nodes' counts within one); on timeout the fault goes ahead, "
                        "marked unbalanced")
    p.add_argument("--isr-timeout", type=float, default=60.0,
                   help="seconds the restarted node may take to be back in the in-sync replicas")
    p.add_argument("--linger-ms", type=float, default=1.0, help="Producer linger")
    p.add_argument("--request-timeout", type=float, default=5.0, help="the client's per-request timeout (s)")
    p.add_argument("--base-port", type=int, default=None,
                   help="node 1's client port (default: a free range is chosen); peers at +100")
    p.add_argument("--data-dir", default=None, help="where the nodes keep their data (default: a fresh temp dir)")
    p.add_argument("--keep-data", action="store_true", help="keep the data dir (and the nodes' logs) afterwards")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra option for every node (repeatable), e.g. --server-arg=--election-timeout-ms=300")
    p.add_argument("--seed", type=int, default=None, help="seed of the waits between kills")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
    p.add_argument("--json-out", default=None, help="append the JSON result as one line to this file")
    p.add_argument("--label", default=None, help="free text stored in the JSON result")
    p.add_argument("--quiet", "-q", action="store_true", help="no line per kill on stderr")


# --- the run, on the reactor ----------------------------------------------------------------


def _sleep(reactor: Any, seconds: float) -> Deferred:
    from twisted.internet.defer import Deferred

    d: Deferred = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class FailoverRun:
    """One run: the producer, the metadata watcher and the kills, on one reactor."""

    def __init__(self, reactor: Any, args: Any, nodes: Nodes, say: Callable[[str], None],
                 peer_proxies: Any = None, client_proxies: dict[int, Any] | None = None) -> None:
        from twisted.internet.task import LoopingCall

        from streamlog.client import ClusterClient, Producer
        from streamlog.client.addresses import parse_address
        from streamlog.client.connection import StreamlogClient, endpoint_for

        self.reactor = reactor
        self.args = args
        self.nodes = nodes
        self.say = say
        self.rng = random.Random(args.seed)
        self.peer_proxies = peer_proxies
        self.client_proxies = client_proxies or {}
        #: The node under a fault now (the watcher does not ask it).
        self.faulted: int | None = None
        bootstrap = ",".join(nodes.address(n) for n in sorted(nodes.plans))
        through = {nodes.plans[n].port: proxy.port for n, proxy in self.client_proxies.items()}

        def endpoint(address: Any) -> Any:
            # The producer reaches each node through its silent proxy (when there are proxies).
            host, port = parse_address(address)
            return endpoint_for((host, through.get(port, port)), reactor)

        client_options: dict[str, Any] = {}
        if args.stall_timeout is not None:
            client_options["stall_timeout"] = args.stall_timeout or None
        self.client = ClusterClient(bootstrap, reactor=reactor, request_timeout=args.request_timeout,
                                    endpoint_factory=endpoint, **client_options)
        self.producer = Producer(self.client, linger_ms=args.linger_ms, acks="all", max_in_flight=64)
        # The watcher's own connection to every node: Metadata answers, not the producer's view.
        self.watch = {n: StreamlogClient(endpoint_for(nodes.address(n), reactor), reactor=reactor,
                                         request_timeout=1.0, reconnect_min=0.02, reconnect_max=0.2)
                      for n in nodes.plans}
        self.topic = f"failover-{os.getpid()}-{int(time.time())}"
        self.ledger = AckLedger()
        self.padding = "x" * max(0, args.size - 16)
        self.seq = 0
        self.sent = 0
        self.failed: list[str] = []
        self.other = 1
        self.killed_at: float | None = None
        self.record: KillRecord | None = None
        self.records: list[KillRecord] = []
        self.refused_mark = 0
        self.ticker = LoopingCall(self._tick)
        self.ticker.clock = reactor

    def now(self) -> float:
        return float(self.reactor.seconds())

    # --- metadata --------------------------------------------------------------------------

    async def metadata(self, node: int) -> dict[str, Any] | None:
        if not self.nodes.alive(node) or node == self.faulted:
            return None
        try:
            answer = await self.watch[node].call("Metadata", {"topics": [self.topic]}, timeout=1.0)
        except Exception:
            return None
        return answer if isinstance(answer, dict) else None

    async def partitions(self) -> dict[int, dict[str, Any]]:
        """Partition -> its entry from the node that leads it (the highest term claimed), live nodes only."""
        best: dict[int, dict[str, Any]] = {}
        for node in sorted(self.nodes.plans):
            answer = await self.metadata(node)
            if answer is None:
                continue
            for t in answer.get("topics", []):
                if t.get("topic") != self.topic or "partitions" not in t:
                    continue
                for entry in t["partitions"]:
                    p = entry["partition"]
                    if entry.get("leader") != node:
                        continue
                    if p not in best or entry.get("leader_term", 0) > best[p].get("leader_term", 0):
                        best[p] = entry
        return best

    async def until(self, what: str, timeout: float, check: Callable[[], Any], step: float = 0.02) -> Any:
        deadline = self.now() + timeout
        while True:
            value = await check()
            if value:
                return value
            if self.now() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            await _sleep(self.reactor, step)

    async def formed(self) -> bool:
        for node in self.nodes.plans:
            answer = await self.metadata(node)
            if answer is None or answer.get("controller") is None or not all(x["up"] for x in answer["nodes"]):
                return False
        return True

    async def all_led_in_sync(self) -> dict[int, dict[str, Any]] | None:
        parts = await self.partitions()
        if len(parts) < self.args.partitions:
            return None
        everyone = set(self.nodes.plans)
        if any(set(e.get("isr", [])) != everyone & set(e.get("replicas", [])) for e in parts.values()):
            return None
        return parts

    # --- producing -------------------------------------------------------------------------

    def _tick(self) -> None:
        self._send(0)
        if self.args.partitions > 1:
            self._send(self.other)
            self.other = self.other + 1 if self.other + 1 < self.args.partitions else 1

    def _send(self, partition: int) -> None:
        value = f"m{self.seq:012d}{self.padding}"
        self.seq += 1
        sent_at = self.now()
        d = self.producer.send(self.topic, value, partition=partition)
        self.sent += 1
        d.addCallbacks(self._acked, self._failed, callbackArgs=(value, sent_at))

    def _acked(self, placed: Any, value: str, sent_at: float) -> None:
        partition, offset = placed
        self.ledger.add(partition, offset, value)
        if self.record is not None and self.killed_at is not None:
            self.record.saw_ack(partition, sent_at, self.now(), self.killed_at)

    def _failed(self, failure: Any) -> None:
        if len(self.failed) < 20:
            self.failed.append(str(failure.value))

    # --- the kills ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        await self.until("the cluster to form", 60, self.formed, step=0.1)
        await self.create_topic()
        await self.until("every partition to have a leader with all replicas in sync", 60,
                         self.all_led_in_sync, step=0.1)
        self.ticker.start(1.0 / args.rate, now=True)
        await _sleep(self.reactor, args.settle)
        for kill in range(1, args.kills + 1):
            await self.one_fault(kill)
            await _sleep(self.reactor, args.settle * (0.5 + self.rng.random()))
        self.ticker.stop()
        await self.producer.flush()
        readback = await self.read_back()
        return {"readback": self.ledger.check(readback), "sent": self.sent,
                "send_failures": len(self.failed), "send_failure_examples": self.failed[:5],
                "refused_unsent": getattr(self.client, "refused_unsent", None),
                "news_dials": getattr(self.client, "news_dials", None)}

    async def create_topic(self) -> None:
        params = {"topic": self.topic, "partitions": self.args.partitions, "replication_factor": 3}
        deadline = self.now() + 30
        while True:
            try:
                await self.client.call("CreateTopic", params, timeout=10)
                return
            except Exception as e:
                if self.now() > deadline:
                    raise RuntimeError(f"CreateTopic failed: {e}") from e
                await _sleep(self.reactor, 0.2)

    def start_fault(self, victim: int) -> None:
        fault = self.args.fault
        self.faulted = victim
        if fault == "kill":
            self.nodes.kill(victim)
            self.nodes.reap(victim)
        elif fault == "stop":
            self.nodes.pause(victim)
        else:
            assert self.peer_proxies is not None
            self.peer_proxies.cut(victim)
            if fault == "partition":
                self.client_proxies[victim].silence()

    def end_fault(self, victim: int) -> None:
        fault = self.args.fault
        if fault == "kill":
            self.nodes.start(victim)
        elif fault == "stop":
            self.nodes.resume(victim)
        else:
            assert self.peer_proxies is not None
            self.peer_proxies.heal(victim)
            if fault == "partition":
                self.client_proxies[victim].restore()
        self.faulted = None

    async def balanced(self) -> dict[int, dict[str, Any]] | None:
        """The partitions' entries once leadership is balanced (`leadership_balanced`), else None."""
        parts = await self.partitions()
        leaders = {p: int(e["leader"]) for p, e in parts.items()}
        preferred = {p: int(e["replicas"][0]) for p, e in parts.items() if e.get("replicas")}
        if 0 in parts and leadership_balanced(leaders, preferred, self.nodes.plans, self.args.partitions):
            return parts
        return None

    async def one_fault(self, kill: int) -> None:
        waited_from = self.now()
        try:
            parts = await self.until("balanced leadership", self.args.balance_timeout, self.balanced,
                                     step=0.1 if self.args.partitions < 50 else 0.5)
            balanced = True
        except TimeoutError:
            parts = await self.until("a leader of partition 0", self.args.kill_timeout, self.partitions)
            balanced = False
            self.say(f"fault {kill}: leadership not balanced after {self.args.balance_timeout:g}s; faulting anyway")
        victim = parts[0]["leader"]
        led = tuple([0] + sorted(p for p, e in parts.items() if e["leader"] == victim and p != 0))
        record = KillRecord(kill=kill, node=victim, led=led, balanced=balanced,
                            balance_wait_s=self.now() - waited_from)
        refused = getattr(self.client, "refused_unsent", None)
        if refused is not None:
            record.refused_unsent, self.refused_mark = refused - self.refused_mark, refused
        self.records.append(record)  # kept with what it measured even if this fault times out
        self.killed_at = killed_at = self.now()
        self.record = record
        self.start_fault(victim)

        survivors = [n for n in sorted(self.nodes.plans) if n != victim]
        asked = [0]

        async def new_leader() -> int | None:
            # One survivor per step, in turn: the watcher must not load the nodes it watches.
            node = survivors[asked[0] % len(survivors)]
            asked[0] += 1
            answer = await self.metadata(node)
            for t in (answer or {}).get("topics", []):
                for entry in t.get("partitions", []) if t.get("topic") == self.topic else []:
                    if entry["partition"] == 0 and entry.get("leader") in survivors:
                        return int(entry["leader"])
            return None

        record.new_leader = await self.until(f"a new leader of partition 0 after killing node {victim}",
                                             self.args.kill_timeout, new_leader, step=0.01)
        record.leader_seen_s = self.now() - killed_at

        async def all_led() -> bool:
            got = await self.partitions()
            return all(p in got and got[p]["leader"] != victim for p in led)

        await self.until(f"new leaders of the {len(led)} partition(s) node {victim} led", self.args.kill_timeout,
                         all_led, step=0.02 if len(led) < 50 else 0.05)
        record.all_led_s = self.now() - killed_at

        async def acked() -> bool:
            return record.all_acked_s is not None

        await self.until("an acknowledged Send on every partition the killed node led",
                         self.args.kill_timeout, acked, step=0.01)
        restarted = self.now()
        self.end_fault(victim)
        await self.until(f"node {victim} back in the in-sync replicas", self.args.isr_timeout,
                         self.all_led_in_sync, step=0.05)
        record.back_in_isr_s = self.now() - restarted
        self.refused_mark = getattr(self.client, "refused_unsent", 0)  # from here to the next fault
        self.record = None
        self.killed_at = None
        if not self.args.quiet:
            self.say(f"{self.args.fault} {kill}: node {victim} (led {len(led)} partition(s)); new leader {record.new_leader} "
                     f"seen in Metadata after {record.leader_seen_s:.3f}s (all {len(led)} after "
                     f"{record.all_led_s:.3f}s); first ack after {record.first_ack_s:.3f}s; "
                     f"all its partitions acked after {record.all_acked_s:.3f}s; back in sync "
                     f"{record.back_in_isr_s:.2f}s after the fault ended; requests refused unsent between "
                     f"the last fault's end and this one {record.refused_unsent}")

    async def read_back(self) -> dict[int, dict[int, Any]]:
        stored: dict[int, dict[int, Any]] = {}
        for partition in range(self.args.partitions):
            got = stored[partition] = {}
            offset = 0
            while True:
                answer = await self.client.poll(self.topic, partition, offset, max_messages=5000, timeout=30)
                for m in answer["messages"]:
                    got[m["offset"]] = m["value"]
                if answer["next_offset"] == offset or not answer["messages"]:
                    break
                offset = answer["next_offset"]
        return stored

    async def close(self) -> None:
        if self.ticker.running:
            self.ticker.stop()
        for conn in self.watch.values():
            conn.close()
        await self.client.close()


def _print_text(result: dict[str, Any]) -> None:
    s = result["summary"]

    def fmt(stat: dict[str, Any]) -> str:
        if not stat["n"]:
            return "not measured"
        return f"median {stat['median_s'] * 1000:.0f} ms, max {stat['max_s'] * 1000:.0f} ms (n={stat['n']})"

    fault = result.get("fault", "kill")
    print(f"failover of a {result['nodes']}-node cluster, RF=3, {result['partitions']} partition(s), "
          f"{result['kills']} {FAULT_NAMES[fault]} of partition 0's leader, producer at {result['rate']:g} ticks/s "
          f"acks=all")
    print(f"  fault -> first acknowledged Send (partition 0): {fmt(s['first_ack'])}")
    print(f"  fault -> new leader seen in Metadata:           {fmt(s['leader_seen'])}")
    print(f"  fault -> every partition it led has a leader:   {fmt(s['all_led'])}")
    print(f"  fault -> every partition it led acknowledged:   {fmt(s['all_acked'])}")
    print(f"  fault ended -> back in the in-sync replicas:   {fmt(s['back_in_isr'])}")
    unbalanced = sum(1 for b in s["balanced"] if b is False)
    print(f"  partitions the faulted node led: {', '.join(str(n) for n in s['led'])}"
          + (f" ({unbalanced} fault(s) struck before leadership was balanced)" if unbalanced else ""))
    rb = result.get("readback")
    if rb is None:
        print("  not read back: the run stopped early")
        return
    print(f"  acknowledged {rb['acknowledged']} of {result['sent']} sent; lost {rb['lost']}, changed {rb['changed']}, "
          f"out of order {rb['out_of_order']}, stored twice {rb['duplicates']}; failed sends {result['send_failures']}")
    if result.get("refused_unsent") is not None:
        print(f"  requests refused unsent (their node's connection backing off): {result['refused_unsent']}; "
              f"early dials on news of a node: {result.get('news_dials')}")


def main_with_args(args: Any) -> int:
    args.json = getattr(args, "json", False)
    if args.kills < 1 or args.partitions < 1 or args.rate <= 0:
        print("bench failover: --kills and --partitions must be at least 1, --rate more than 0", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    load_before = round(os.getloadavg()[0], 2)  # the machine may be shared: how busy it was
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="streamlog-failover-"))
    root.mkdir(parents=True, exist_ok=True)
    proxied = args.fault in ("partition", "peers")
    nodes = Nodes.plan(args.nodes, root, args.server_arg, args.base_port, rng.randrange(1 << 30), proxied=proxied)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred, maybeDeferred

    outcome: dict[str, Any] = {}

    peer_proxies: Any = None
    client_proxies: dict[int, Any] = {}
    if proxied:
        from streamlog.bench.cluster import HOST
        from streamlog.chaos.proxy import PeerProxies

        peer_proxies = PeerProxies(HOST, nodes.peer_ports, dict(nodes.proxy_ports), reactor)
        peer_proxies.start()
        if args.fault == "partition":
            from streamlog.bench.silent_proxy import SilentProxy

            for n, plan in sorted(nodes.plans.items()):
                client_proxies[n] = SilentProxy(HOST, plan.port, reactor)
                client_proxies[n].listen(0)

    async def body() -> None:
        run = FailoverRun(reactor, args, nodes, say, peer_proxies, client_proxies)
        try:
            outcome.update(await run.run())
        finally:
            outcome["records"] = [r.to_json() for r in run.records]
            outcome["summary"] = summary(run.records)
            await run.close()
            for proxy in client_proxies.values():
                await maybeDeferred(proxy.stop)
            if peer_proxies is not None:
                await peer_proxies.stop()

    def go() -> None:
        d = ensureDeferred(body())
        d.addErrback(lambda f: outcome.__setitem__("error", f.getErrorMessage() or repr(f.value)))
        d.addBoth(lambda _: reactor.stop())

    cap = args.kills * (args.kill_timeout + args.isr_timeout + 3 * args.settle) + 300
    reactor.callLater(cap, lambda: (outcome.setdefault("error", f"the run passed its cap of {cap:g}s"),
                                    reactor.stop()))
    if not args.quiet:
        say(f"bench failover: {args.nodes} nodes at {nodes.bootstrap}, data in {root}")
    try:
        nodes.start_all()
        reactor.callWhenRunning(go)
        reactor.run(installSignalHandlers=False)
    finally:
        nodes.stop_all()
        if not args.keep_data and not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)
    result = {"workload": "failover", "fault": args.fault, "loadavg_1m_before": load_before,
              "loadavg_1m_after": round(os.getloadavg()[0], 2),
              "nodes": args.nodes, "partitions": args.partitions, "kills": args.kills,
              "rate": args.rate, "label": args.label, "server_args": list(args.server_arg),
              "stall_timeout": args.stall_timeout, **outcome}
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    elif "summary" in result:
        _print_text(result)
    if "error" in result:
        print(f"bench failover: {result['error']}", file=sys.stderr)
        return 1
    rb = result.get("readback", {})
    return 0 if rb.get("lost", 1) == 0 and rb.get("changed", 1) == 0 else 1


__all__ = ["FailoverRun", "add_arguments", "main_with_args"]

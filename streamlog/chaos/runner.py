"""The edge of C{streamlog chaos}: real node processes, the peer proxy, clients and faults.

One Twisted reactor in this process runs everything the run does besides the nodes: the
peer-link proxy (L{streamlog.chaos.proxy}), the producers and consumers (through
L{streamlog.client}, recorded with L{streamlog.chaos.history.Recorder}), probes that
write straight to a faulted node, and the fault loop that follows the seeded schedule
(L{streamlog.chaos.schedule}).  The nodes are C{twistd streamlog-server} processes on
127.0.0.x started like C{streamlog cluster up} starts them, except that each node's
C{--peers} points at the proxy.  They die with this process (the parent-death signal).

What a run does, in order (docs/reliability.md, "The chaos runner"):

 1. start the proxy and the nodes; wait until they form a cluster; create the topic
    (replication factor min(3, nodes)); wait until every partition has a leader;
 2. with C{wipe} among the faults, check first that a wiped node rejoins (it fails fast
    with L{WipeUnsupported} otherwise, rather than report what is not an anomaly);
 3. run producers (unique values, acks=all) and consumers (each reading every partition
    in one forward sweep) while the fault loop injects one fault at a time, heals it and
    waits until the cluster recovered, until the duration is over;
 4. heal everything, stop the producers (their pending sends settle or are written as
    unknown), stop the consumers, drain every partition to its high watermark, and check
    that the replicas converged (every node's log end and high watermark alike);
 5. stop the nodes and compare the replicas' stored records byte for byte; the caller
    checks the history (L{streamlog.cli_chaos}).

Probes: while a node is stopped or cut off, a connection straight to it (not through the
client library, which would go elsewhere) sends acks=all writes to every partition it
led when the fault began.  A node cut off from the majority, or stopped long enough to
be replaced, must acknowledge none of them: an acknowledgement is a "stale-ack" finding
(a safety anomaly of the run, beside the checker's).  The probes are recorded as sends
of their own process, so the checker also follows their values.
"""

from __future__ import annotations

import inspect
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from twisted.internet import defer, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.chaos.group_workload import FETCH_INTERVAL, GroupWorkload
from streamlog.chaos.history import Recorder
from streamlog.chaos.proxy import PeerProxies
from streamlog.chaos.schedule import FaultSchedule, FaultStep, roll_order
from streamlog.cli_cluster_up import NodePlan, _die_with_parent, _node_env, _port_in_use, plan_cluster

#: Ports of a run, from its base port B: clients B.., peers B+100.., proxy links B+200...
PEER_OFFSET = 100
PROXY_OFFSET = 200
#: Seconds the cluster gets to form, to recover after a fault, to drain.
FORM_TIMEOUT = 60.0
RECOVER_TIMEOUT = 60.0
DRAIN_TIMEOUT = 60.0
#: Seconds a node gets to exit after SIGTERM before SIGKILL (a rolling restart).
STOP_TIMEOUT = 30.0
#: A producer stops invoking sends while this many of its sends are unanswered.
MAX_PENDING = 500
#: acks=all writes sent straight to a stopped or cut-off node, per partition it led.
PROBES_PER_PARTITION = 3


class RunAborted(Exception):
    """The run could not go on (the cluster did not form or recover, a node would not start);
    the message is the one line to show.  Exit status 3: not a finding about safety."""


class WipeUnsupported(RunAborted):
    """A node restarted on a wiped data directory does not rejoin: this streamlog cannot
    take the C{wipe} fault yet.  Exit status 2."""


@dataclass
class RunConfig:
    nodes: int = 3
    duration: float = 60.0
    kinds: tuple[str, ...] = ("kill", "stop", "partition", "restart")
    seed: int = 0
    partitions: int = 3
    rate: float = 200.0
    producers: int = 3
    consumers: int = 2
    #: Group consumer daemons in one group (0: no group workload; streamlog.chaos.group_workload).
    group_consumers: int = 0
    data_dir: Path = Path("chaos")
    base_port: int = 0
    host: str = "127.0.0.1"
    topic: str = "chaos"
    server_options: tuple[str, ...] = ()
    #: A fixed list of steps instead of the seeded schedule (tests of one scenario).
    steps: list[FaultStep] | None = None
    #: Seconds of calm before the first fault, and after the last one before stopping.
    warmup: float = 2.0
    cooldown: float = 2.0
    request_timeout: float = 5.0
    delivery_timeout: float = 30.0
    progress: Callable[[str], object] | None = None


@dataclass
class Observations:
    """What the runner saw itself, besides the history: for the summary and the report."""

    started: float = 0.0
    workload_start: float = 0.0
    workload_end: float = 0.0
    ended: float = 0.0
    steps: list[dict[str, Any]] = field(default_factory=list)
    #: Probe writes a faulted node acknowledged while cut off or stopped (a safety finding).
    stale_acks: list[dict[str, Any]] = field(default_factory=list)
    probes: dict[str, int] = field(default_factory=dict)
    #: Per partition, what every node said of its log after the drain.
    convergence: dict[str, Any] = field(default_factory=dict)
    diverged: list[str] = field(default_factory=list)
    drained: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    node_exits: list[str] = field(default_factory=list)
    #: Per partition, how many records each node's stored replica holds (read after the nodes stopped).
    stored: dict[int, dict[int, int]] = field(default_factory=dict)
    #: Per node, the C{#critical} events in its log (count, first distinct ones): bugs the
    #: clients may only see as latency.
    node_errors: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "stale_acks": self.stale_acks, "probes": self.probes,
                "convergence": self.convergence, "diverged": self.diverged, "drained": self.drained,
                "notes": self.notes, "node_exits": self.node_exits, "stored": self.stored,
                "node_errors": self.node_errors,
                "workload_seconds": round(self.workload_end - self.workload_start, 2),
                "run_seconds": round(self.ended - self.started, 2)}


# --- planning (pure) -----------------------------------------------------------------------


def plan_ports(nodes: int, base: int) -> tuple[dict[int, int], dict[int, int], dict[tuple[int, int], int]]:
    """Client ports, peer ports, and the proxy port of every ordered pair of nodes."""
    client = {i: base + i - 1 for i in range(1, nodes + 1)}
    peer = {i: base + PEER_OFFSET + i - 1 for i in range(1, nodes + 1)}
    proxy = {(a, b): base + PROXY_OFFSET + (a - 1) * nodes + (b - 1)
             for a in range(1, nodes + 1) for b in range(1, nodes + 1) if a != b}
    return client, peer, proxy


def plan_nodes(config: RunConfig, base: int, command: list[str]) -> list[NodePlan]:
    """The nodes' command lines: C{cluster up}'s, each with a C{--peers} of its own whose other
    entries are the proxy's ports for the links from this node."""
    plans = plan_cluster(config.nodes, base, config.data_dir, config.host, command, config.server_options,
                         http_port_offset=None)
    _, peer, proxy = plan_ports(config.nodes, base)
    out = []
    for plan in plans:
        argv = list(plan.argv)
        i = argv.index("--peers")
        argv[i + 1] = ",".join(
            f"{n}={config.host}:{peer[n] if n == plan.node_id else proxy[(plan.node_id, n)]}"
            for n in range(1, config.nodes + 1))
        out.append(NodePlan(plan.node_id, plan.host, plan.port, plan.peer_port, plan.data_dir, tuple(argv)))
    return out


def free_base_port(host: str, nodes: int, rng: random.Random, tries: int = 200) -> int:
    """A base port whose every port of the plan is free on C{host} now."""
    for _ in range(tries):
        base = rng.randrange(20000, 60000 - PROXY_OFFSET - nodes * nodes)
        client, peer, proxy = plan_ports(nodes, base)
        if all(_port_in_use(host, p) is None for p in (*client.values(), *peer.values(), *proxy.values())):
            return base
    raise RunAborted(f"found no free ports on {host} after {tries} tries; give --base-port")


# --- node processes ------------------------------------------------------------------------


class NodeProcess:
    """One node's twistd process, restartable; its output appended to C{<data>/node-I.log}."""

    def __init__(self, plan: NodePlan, log_path: Path, env: dict[str, str]) -> None:
        self.plan = plan
        self.node_id = plan.node_id
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False  # SIGSTOPped now
        self.starts = 0

    def start(self) -> None:
        self.plan.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1} at {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.plan.argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env,
                                            preexec_fn=_die_with_parent(), process_group=0)
        self.starts += 1
        self.stopped = False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            os.kill(self.process.pid, sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False

    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def last_lines(self, n: int = 8) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  [node {self.node_id}] {line}" for line in lines[-n:])


# --- the run -------------------------------------------------------------------------------


def sleep(reactor: Any, seconds: float) -> Deferred[Any]:
    return task.deferLater(reactor, max(seconds, 0.0), lambda: None)


async def wait_exit(reactor: Any, process: Any, timeout: float) -> bool:
    """Await the exit of C{process} (a node's or a member's: its C{alive()}); False after C{timeout}."""
    deadline = time.monotonic() + timeout
    while process.alive():
        if time.monotonic() > deadline:
            return False
        await sleep(reactor, 0.02)
    return True


async def until(reactor: Any, condition: Callable[[], Any], timeout: float, what: str,
                interval: float = 0.1) -> Any:
    """Await C{condition()} (a value or a Deferred) until truthy; L{RunAborted} after C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if isinstance(value, Deferred) or inspect.iscoroutine(value):
                value = await value
        except (errors.StreamlogError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RunAborted(f"timed out after {timeout:g}s waiting for {what}")
        await sleep(reactor, interval)


class _Producer:
    def __init__(self, run: ChaosRun, name: str, index: int) -> None:
        from streamlog.client.cluster import ClusterClient
        from streamlog.client.producer import Producer

        self.run = run
        self.name = name
        self.client = ClusterClient(run.bootstrap, request_timeout=run.config.request_timeout,
                                    retry_backoff_max=0.5, reconnect_max=1.0)
        # Every other producer is idempotent (the client's default): its resends across a
        # failover must store each message once, in send order, with its window of requests
        # in flight per partition, and the checker holds it to that (`duplicate`,
        # `non-monotonic-send`). The others are not, with one request in flight per partition:
        # the Producer then never reorders a partition's messages (docs/clients.md), so send
        # order is checkable too, and a resend stored twice is counted (`retry-duplicate`).
        self.idempotent = index % 2 == 0
        self.producer = Producer(self.client, linger_ms=2, acks="all", delivery_timeout=run.config.delivery_timeout,
                                 max_in_flight_per_partition=None if self.idempotent else 1,
                                 idempotent=self.idempotent)
        self.count = 0
        self.pending = 0
        self.next_partition = index % run.config.partitions
        self.carry = 0.0

    def tick(self, interval: float) -> None:
        """Send this tick's share of the rate (bounded by L{MAX_PENDING} unanswered)."""
        self.carry += self.run.config.rate / self.run.config.producers * interval
        while self.carry >= 1 and self.pending < MAX_PENDING:
            self.carry -= 1
            self.send_one()
        self.carry = min(self.carry, 1.0)

    def send_one(self) -> None:
        rec = self.run.recorder
        self.count += 1
        value = f"{self.name}-{self.count}"
        partition = self.next_partition
        self.next_partition = (partition + 1) % self.run.config.partitions
        op = rec.invoke_send(self.name, self.run.config.topic, value, partition=partition,
                             idempotent=self.idempotent)
        self.pending += 1
        d = self.producer.send(self.run.config.topic, value, partition=partition)

        def ok(placed: tuple[int, int]) -> None:
            self.pending -= 1
            rec.send_ok(op, placed[0], placed[1])
            self.run.acks.append(rec_time(self.run))

        def failed(failure: Failure) -> None:
            self.pending -= 1
            error = failure.value
            # Only the Producer's DELIVERY_TIMEOUT says whether an earlier attempt may have
            # landed (its "sent"); any other error may follow a timed-out attempt
            # (docs/reliability.md, the caveat for runners), so it is an unknown outcome.
            landed = not isinstance(error, errors.DeliveryTimeout)
            rec.send_failed(op, error if isinstance(error, BaseException) else str(error), may_have_landed=landed)

        d.addCallbacks(ok, failed)

    async def stop(self) -> None:
        try:
            await self.producer.flush().addTimeout(self.run.config.delivery_timeout + 5, self.run.reactor)
        except Exception:
            pass
        await self.client.close()


def rec_time(run: ChaosRun) -> float:
    return time.monotonic() - run.t0


class _PartitionReader:
    """One consumer process's reader of one partition: a forward sweep from offset 0."""

    def __init__(self, run: ChaosRun, process: str, client: Any, partition: int) -> None:
        from streamlog.client.consumer import Consumer

        self.run = run
        self.process = process
        self.partition = partition
        self.consumer = Consumer(client, run.config.topic, partition, start=0, max_messages=500, max_wait_ms=300,
                                 timeout=run.config.request_timeout + 1)
        self.running = True

    async def loop(self, until_offset: int | None = None, deadline: float | None = None) -> None:
        rec = self.run.recorder
        try:
            while self.running:
                position = self.consumer.position
                assert position is not None
                if until_offset is not None and position >= until_offset:
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise RunAborted(f"the drain of partition {self.partition} did not reach offset {until_offset} "
                                     f"within {DRAIN_TIMEOUT:g}s (at {position})")
                op = rec.invoke_poll(self.process, self.run.config.topic, self.partition, position)
                try:
                    messages = await self.consumer.poll()
                except Exception as e:  # noqa: BLE001 - every failure is recorded, the sweep goes on
                    if rec.closed:
                        return
                    rec.poll_failed(op, e if isinstance(e, errors.StreamlogError) else "INTERNAL")
                    if isinstance(e, errors.OffsetOutOfRange):
                        raise RunAborted(f"{self.process} got OFFSET_OUT_OF_RANGE at {self.partition}/{position}: "
                                         f"a chaos topic has no retention, so this is not expected") from None
                    await sleep(self.run.reactor, 0.1)
                    continue
                if rec.closed:
                    return
                assert self.consumer.position is not None
                rec.poll_ok(op, messages, next_offset=self.consumer.position,
                            log_start_offset=self.consumer.log_start_offset)
                self.run.polled += 1
        finally:
            self.consumer.close()


@dataclass
class _Probe:
    """The probes of one fault: its node, why it is cut off, the leaders before it, and (set
    just before it heals) the partitions the others gave a newer leader."""

    node: int
    why: str
    before: dict[int, tuple[int, int]]
    replaced: set[int] = field(default_factory=set)
    healed: bool = False


class ChaosRun:
    """One run: call L{run} (from the reactor thread) and await it; it fires with the
    L{Observations} once the nodes are stopped, the history written to C{history}."""

    def __init__(self, config: RunConfig, history: IO[bytes], reactor: Any = None,
                 server_command: list[str] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.config = config
        self.reactor = reactor
        self.history_file = history
        self.t0 = time.monotonic()
        self.recorder = Recorder(history, clock=lambda: time.monotonic() - self.t0, meta=self._meta())
        self.obs = Observations()
        self.rng = random.Random(config.seed)
        self.server_command = server_command
        self.nodes: dict[int, NodeProcess] = {}
        self.proxies: PeerProxies | None = None
        self.probe_clients: dict[int, Any] = {}
        self.bootstrap = ""
        self.producers: list[_Producer] = []
        self.readers: list[_PartitionReader] = []
        self.reader_loops: list[Deferred[Any]] = []
        self.consumer_clients: list[Any] = []
        self.acks: list[float] = []
        #: The probes of past faults, still waiting for some answers.
        self.probing: list[Deferred[Any]] = []
        self.polled = 0
        self.current: str | None = None
        self.faults_done = 0
        self._ticker: task.LoopingCall | None = None
        self._progress: task.LoopingCall | None = None
        self.group: GroupWorkload | None = None
        #: The chaos topic's id (its partitions' storage names start with it), once known.
        self.topic_id: str | None = None
        self._fetcher: task.LoopingCall | None = None

    def _meta(self) -> dict[str, Any]:
        c = self.config
        return {"runner": "streamlog chaos", "seed": c.seed, "nodes": c.nodes, "duration": c.duration,
                "faults": list(c.kinds), "partitions": c.partitions, "rate": c.rate, "producers": c.producers,
                "consumers": c.consumers, "group_consumers": c.group_consumers, "topic": c.topic,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- the whole run -----------------------------------------------------------------------

    async def run(self) -> Observations:
        self.obs.started = self.now()
        try:
            await self._start_cluster()
            if "wipe" in self.config.kinds:
                await self._check_wipe()
            await self._workload()
        finally:
            await self._shutdown()
            self.obs.ended = self.now()
        return self.obs

    async def _start_cluster(self) -> None:
        from streamlog.cli_cluster_up import default_server_command
        from streamlog.client.connection import StreamlogClient

        c = self.config
        base = c.base_port or free_base_port(c.host, c.nodes, random.Random())
        command = self.server_command or default_server_command()
        plans = plan_nodes(c, base, command)
        for plan in plans:
            for port in (plan.port, plan.peer_port):
                if port is not None and _port_in_use(plan.host, port) is not None:
                    raise RunAborted(f"port {port} on {plan.host} is in use; choose another --base-port")
        _, peer_ports, proxy_ports = plan_ports(c.nodes, base)
        self.proxies = PeerProxies(c.host, peer_ports, proxy_ports, self.reactor)
        try:
            self.proxies.start()
        except Exception as e:
            raise RunAborted(f"cannot listen on the proxy ports {min(proxy_ports.values())}.."
                             f"{max(proxy_ports.values())}: {e}; choose another --base-port") from None
        env = _node_env()
        c.data_dir.mkdir(parents=True, exist_ok=True)
        for plan in plans:
            node = NodeProcess(plan, c.data_dir / f"node-{plan.node_id}.log", env)
            self.nodes[plan.node_id] = node
            node.start()
            self.probe_clients[plan.node_id] = StreamlogClient(plan.address, request_timeout=2.0,
                                                               reconnect_min=0.05, reconnect_max=0.5)
        self.bootstrap = ",".join(p.address for p in plans)
        self._say(f"nodes starting on {c.host}:{base}..{base + c.nodes - 1} (peers through the proxy at "
                  f"{min(proxy_ports.values())}..{max(proxy_ports.values())}), data in {c.data_dir}")
        await until(self.reactor, self._healthy_without_topic, FORM_TIMEOUT, "the nodes to form a cluster", 0.2)
        await self._create_topic()
        await until(self.reactor, self.healthy, FORM_TIMEOUT, "every partition to have a leader", 0.2)

    def _check_nodes_alive(self) -> None:
        for node in self.nodes.values():
            if not node.alive() and not getattr(node, "expected_down", False):
                raise RunAborted(f"node {node.node_id} exited ({node.returncode()}) on its own; its last output:\n"
                                 f"{node.last_lines()}")

    async def _metadata(self, node: int, topics: list[str] | None = None) -> dict[str, Any] | None:
        params = {} if topics is None else {"topics": topics}
        try:
            answer: dict[str, Any] = await self.probe_clients[node].call("Metadata", params, timeout=2.0)
            return answer
        except (errors.StreamlogError, OSError):
            return None

    async def _healthy_without_topic(self) -> bool:
        self._check_nodes_alive()
        for node in self.nodes:
            md = await self._metadata(node, [])
            if md is None or md.get("controller") is None or not all(n.get("up") for n in md["nodes"]) \
                    or len(md["nodes"]) != self.config.nodes:
                return False
        return True

    async def healthy(self) -> bool:
        """Every node answers, sees every node up and a leader for every partition of the topic."""
        self._check_nodes_alive()
        for node in self.nodes:
            md = await self._metadata(node, [self.config.topic])
            if md is None or md.get("controller") is None or len(md["nodes"]) != self.config.nodes \
                    or not all(n.get("up") for n in md["nodes"]):
                return False
            topics = md.get("topics") or []
            if not topics or "partitions" not in topics[0]:
                return False
            self.topic_id = topics[0].get("topic_id", self.topic_id)
            if any(p.get("leader") is None for p in topics[0]["partitions"]):
                return False
        return True

    async def fully_replicated(self) -> bool:
        """Every node a caught-up voter of every group: the metadata group (C{controller_isr} at
        the controller) and each partition of every topic (C{isr} at its leader).  Only then may
        a disk be wiped: a second wipe while an earlier wiped node is still a learner somewhere
        takes two of three replicas' data, which no replication factor of 3 survives."""
        everyone = list(range(1, self.config.nodes + 1))
        answers = {node: await self._metadata(node) for node in self.nodes}
        if any(md is None for md in answers.values()):
            return False
        controller = next(iter(answers.values()))["controller"]  # type: ignore[index]
        if controller not in answers or answers[controller].get("controller_isr") != everyone:  # type: ignore[union-attr]
            return False
        for node, md in answers.items():
            for topic in md.get("topics") or []:  # type: ignore[union-attr]
                for p in topic.get("partitions", []):
                    if p.get("leader") is None:
                        return False
                    if p["leader"] == node and sorted(p.get("isr", [])) != sorted(p["replicas"]):
                        return False
        return True

    async def leaders(self) -> dict[int, int]:
        """Partition -> leader node, from the nodes that answer, the newest terms winning."""
        return {p: lt[0] for p, lt in (await self.leader_terms()).items()}

    async def leader_terms(self, exclude: frozenset[int] = frozenset()) -> dict[int, tuple[int, int]]:
        """Partition -> (leader node, leader term), the newest any node but C{exclude} reports."""
        best: dict[int, tuple[int, int]] = {}
        for node in self.nodes:
            if node in exclude or not self.nodes[node].alive() or self.nodes[node].stopped:
                continue
            md = await self._metadata(node, [self.config.topic])
            for t in (md or {}).get("topics") or []:
                for p in t.get("partitions", []):
                    if p.get("leader") is not None:
                        term = p.get("leader_term", 0)
                        if p["partition"] not in best or term > best[p["partition"]][1]:
                            best[p["partition"]] = (int(p["leader"]), term)
        return best

    async def _create_topic(self) -> None:
        from streamlog.client.cluster import ClusterClient

        client = ClusterClient(self.bootstrap, request_timeout=self.config.request_timeout)
        try:
            deadline = time.monotonic() + FORM_TIMEOUT
            while True:
                try:
                    await client.call("CreateTopic", {"topic": self.config.topic, "partitions": self.config.partitions,
                                                      "replication_factor": min(3, self.config.nodes)})
                    return
                except errors.TopicExists:
                    return
                except errors.StreamlogError as e:
                    if time.monotonic() > deadline:
                        raise RunAborted(f"cannot create the topic: {e.code}: {e.message}") from None
                    await sleep(self.reactor, 0.2)
        finally:
            await client.close()

    # --- the workload ------------------------------------------------------------------------

    async def _workload(self) -> None:
        from streamlog.client.cluster import ClusterClient

        c = self.config
        self.obs.workload_start = self.now()
        for i in range(c.producers):
            self.producers.append(_Producer(self, f"p{i + 1}", i))
        for i in range(c.consumers):
            client = ClusterClient(self.bootstrap, request_timeout=c.request_timeout, retry_backoff_max=0.5,
                                   reconnect_max=1.0)
            self.consumer_clients.append(client)
            for p in range(c.partitions):
                reader = _PartitionReader(self, f"c{i + 1}", client, p)
                self.readers.append(reader)
                self.reader_loops.append(ensureDeferred(reader.loop()))
        if c.group_consumers:
            self.group = GroupWorkload(self, c.group_consumers)
            self.group.start()
            self._fetcher = task.LoopingCall(self.group.fetch_tick)
            self._fetcher.clock = self.reactor
            self._fetcher.start(FETCH_INTERVAL, now=False)
            await until(self.reactor, self.group.all_assigned, FORM_TIMEOUT, "every group consumer to get a partition",
                        0.2)
        interval = 0.05
        self._ticker = task.LoopingCall(self._tick, interval)
        self._ticker.clock = self.reactor
        self._ticker.start(interval, now=True)
        if c.progress is not None:
            self._progress = task.LoopingCall(self._show_progress)
            self._progress.clock = self.reactor
            self._progress.start(1.0, now=False)
        end = time.monotonic() + c.duration
        await sleep(self.reactor, min(c.warmup, c.duration))
        schedule = None if c.steps is not None else FaultSchedule(c.seed, c.kinds, c.nodes, c.partitions,
                                                                  members=c.group_consumers)
        fixed = list(c.steps or [])
        injected: set[str] = set()

        def more() -> bool:
            if schedule is None:
                return bool(fixed)
            # Until the duration is over, and in any case until every kind asked came once:
            # a short run on a slow machine still injects each kind.
            return time.monotonic() < end - c.cooldown or not injected >= set(c.kinds)

        while more():
            step = schedule.next() if schedule is not None else fixed.pop(0)
            await sleep(self.reactor, step.gap)
            await self._inject(step)
            injected.add(step.kind)
            self.faults_done += 1
            self.current = "recovering"
            await until(self.reactor, self.healthy, RECOVER_TIMEOUT,
                        f"the cluster to recover after fault {step.describe()}", 0.2)
            self.current = None
        remaining = end - time.monotonic()
        if remaining > 0 and c.steps is None:
            await sleep(self.reactor, remaining)
        await sleep(self.reactor, c.cooldown if c.steps is not None else 0)
        self.obs.workload_end = self.now()
        await self._finish_workload()

    def _tick(self, interval: float) -> None:
        for p in self.producers:
            p.tick(interval)

    def _show_progress(self) -> None:
        assert self.config.progress is not None
        sends = sum(p.count for p in self.producers)
        pending = sum(p.pending for p in self.producers)
        now = self.current or "calm"
        self.config.progress(f"[{self.now():6.1f}s] sends {sends:,} (acked {len(self.acks):,}, pending {pending}), "
                             f"polls {self.polled:,}, faults {self.faults_done}, now: {now}")

    async def _finish_workload(self) -> None:
        """Heal, stop producers and consumers, drain, compare the replicas."""
        self.current = "healing"
        await self._heal_all()
        await until(self.reactor, self.healthy, RECOVER_TIMEOUT, "the cluster to recover after healing", 0.2)
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self.current = "settling the producers"
        await defer.DeferredList([ensureDeferred(p.stop()) for p in self.producers])
        self.current = "stopping the consumers"
        for reader in self.readers:
            reader.running = False
            reader.consumer.close()
        await defer.DeferredList(self.reader_loops, consumeErrors=True)
        for client in self.consumer_clients:
            await client.close()
        self.current = "waiting for the probes' answers"
        await defer.DeferredList(self.probing, consumeErrors=True)
        self.current = "draining"
        await self._drain()
        if self.group is not None:
            self.current = "waiting for the group to commit every partition's end"
            if self._fetcher is not None and self._fetcher.running:
                self._fetcher.stop()
            await self.group.finish(self.obs.drained)
            self.obs.notes.extend(self.group.notes)
        self.current = "comparing the replicas"
        await self._compare_replicas()
        if self._progress is not None and self._progress.running:
            self._progress.stop()
            self._show_progress()

    async def _drain(self) -> None:
        from streamlog.client.cluster import ClusterClient

        client = ClusterClient(self.bootstrap, request_timeout=self.config.request_timeout)
        try:
            for p in range(self.config.partitions):
                async def high_watermark(p: int = p) -> tuple[int]:
                    return (int(await client.list_offsets(self.config.topic, p, "latest")),)

                (high,) = await until(self.reactor, high_watermark, DRAIN_TIMEOUT, f"the high watermark of partition {p}")
                reader = _PartitionReader(self, "drain", client, p)
                await reader.loop(until_offset=high, deadline=time.monotonic() + DRAIN_TIMEOUT)
                self.recorder.drained(self.config.topic, p, high)
                self.obs.drained[p] = high
        finally:
            await client.close()

    async def _compare_replicas(self) -> None:
        """Every node's log end offset and high watermark of every partition, until they agree."""
        async def pictures() -> dict[int, dict[int, tuple[int, int]]]:
            out: dict[int, dict[int, tuple[int, int]]] = {}
            for node in self.nodes:
                try:
                    d = await self.probe_clients[node].call("DescribeTopic", {"topic": self.config.topic},
                                                            timeout=2.0)
                except errors.StreamlogError:
                    continue
                for part in d.get("partitions", []):
                    if "log_end_offset" in part:
                        out.setdefault(part["partition"], {})[node] = (part["log_end_offset"],
                                                                         part.get("high_watermark", -1))
            return out

        deadline = time.monotonic() + 30
        while True:
            seen = await pictures()
            agreed = all(len(set(v.values())) == 1 and len(v) == min(3, self.config.nodes) for v in seen.values()) \
                and len(seen) == self.config.partitions
            if agreed or time.monotonic() > deadline:
                break
            await sleep(self.reactor, 0.3)
        self.obs.convergence = {str(p): {str(n): list(v) for n, v in nodes.items()} for p, nodes in sorted(seen.items())}
        if not agreed:
            for p, nodes in sorted(seen.items()):
                if len(set(nodes.values())) != 1 or len(nodes) != min(3, self.config.nodes):
                    self.obs.diverged.append(
                        f"partition {p}: replicas did not converge within 30 s: "
                        + ", ".join(f"node {n} log end {v[0]} high watermark {v[1]}" for n, v in sorted(nodes.items())))

    # --- faults -----------------------------------------------------------------------------

    async def _target(self, step: FaultStep) -> tuple[int, list[int]]:
        """The node to hurt, and the partitions it leads now."""
        leaders = await self.leaders()
        coordinator = await self.group.coordinator() if step.coordinator and self.group is not None else None
        if step.coordinator:
            node = coordinator if coordinator is not None else 1
        elif step.node is not None:
            node = step.node
        else:
            assert step.partition is not None
            node = leaders.get(step.partition, step.partition % self.config.nodes + 1)
        return node, sorted(p for p, n in leaders.items() if n == node)

    async def _inject(self, step: FaultStep) -> None:
        if step.member is not None:
            await self._inject_member(step)
            return
        node, led = await self._target(step)
        entry: dict[str, Any] = {"step": step.number, "kind": step.kind, "node": node, "led": led,
                                 "hold": step.hold, "start": round(self.now(), 3)}
        if step.coordinator:
            entry["coordinator"] = True
        self.current = f"{step.kind} node {node}"
        self._say(f"fault {step.number}: {step.kind} node {node} (leads {led or 'nothing'}) for {step.hold:.1f}s")
        if step.kind == "kill":
            await self._kill(node, step.hold)
        elif step.kind == "stop":
            await self._stop(node, step.hold, led, entry)
        elif step.kind == "partition":
            await self._partition(node, step.hold, led, entry)
        elif step.kind == "restart":
            await self._rolling_restart(node, step.hold)
        elif step.kind == "wipe":
            try:  # no second disk lost while the cluster has not re-replicated the first (fully_replicated)
                await until(self.reactor, self.fully_replicated, RECOVER_TIMEOUT, "every replica in sync", 0.2)
            except RunAborted as e:
                self.obs.notes.append(f"fault {step.number} (wipe node {node}) skipped: {e}")
                self._say(f"fault {step.number}: wipe skipped: not every replica in sync within "
                          f"{RECOVER_TIMEOUT:g}s")
                return
            await self._wipe(node, step.hold)
        else:
            raise RunAborted(f"unknown fault kind {step.kind!r}")
        entry["end"] = round(self.now(), 3)
        self.obs.steps.append(entry)

    async def _inject_member(self, step: FaultStep) -> None:
        if self.group is None or step.member is None or not 1 <= step.member <= len(self.group.members):
            raise RunAborted(f"fault {step.describe()}: no such group consumer")
        member = self.group.members[step.member - 1]
        entry: dict[str, Any] = {"step": step.number, "kind": step.kind, "node": member.name, "led": [],
                                 "hold": step.hold, "start": round(self.now(), 3)}
        self.current = f"{step.kind} {member.name}"
        self._say(f"fault {step.number}: {step.kind} {member.name} for {step.hold:.1f}s")
        if step.kind == "member-kill":
            await self.group.kill(step.member, step.hold)
        else:
            await self.group.stop(step.member, step.hold)
        entry["end"] = round(self.now(), 3)
        self.obs.steps.append(entry)

    async def _wait_exit(self, node: NodeProcess, timeout: float) -> bool:
        return await wait_exit(self.reactor, node, timeout)

    async def _kill(self, n: int, hold: float) -> None:
        node = self.nodes[n]
        fault = self.recorder.fault_started("kill", f"n{n}", "SIGKILL, restart")
        node.expected_down = True  # type: ignore[attr-defined]
        node.signal(signal.SIGKILL)
        await self._wait_exit(node, 10)
        await sleep(self.reactor, hold)
        node.start()
        node.expected_down = False  # type: ignore[attr-defined]
        self.recorder.fault_healed(fault)

    async def _stop(self, n: int, hold: float, led: list[int], entry: dict[str, Any]) -> None:
        node = self.nodes[n]
        before = await self.leader_terms()
        fault = self.recorder.fault_started("stop", f"n{n}", f"SIGSTOP for {hold:.1f}s, SIGCONT")
        node.signal(signal.SIGSTOP)
        probe = _Probe(n, f"stopped node {n}", before)
        probes = self._probe(probe, led)
        await sleep(self.reactor, hold)
        await self._replaced(probe, led)
        node.signal(signal.SIGCONT)
        self.recorder.fault_healed(fault)
        self._probed(probes, entry, probe)

    async def _partition(self, n: int, hold: float, led: list[int], entry: dict[str, Any]) -> None:
        assert self.proxies is not None
        before = await self.leader_terms()
        fault = self.recorder.fault_started("partition", f"n{n}", f"peer links of node {n} cut for {hold:.1f}s")
        self.proxies.cut(n)
        # The probes go out half-way, once the others can have elected a leader of their own.
        await sleep(self.reactor, hold / 2)
        probe = _Probe(n, f"node {n} cut off", before)
        probes = self._probe(probe, led)
        await sleep(self.reactor, hold / 2)
        await self._replaced(probe, led)
        self.proxies.heal(n)
        self.recorder.fault_healed(fault)
        self._probed(probes, entry, probe)

    async def _replaced(self, probe: _Probe, led: list[int]) -> None:
        """Before the fault heals: which partitions the other nodes know a newer leader of.
        Writes the faulted node took for those can never be committed any more."""
        after = await self.leader_terms(exclude=frozenset({probe.node}))
        for p in led:
            then, now = probe.before.get(p), after.get(p)
            if now is not None and now[0] != probe.node and (then is None or now[1] > then[1]):
                probe.replaced.add(p)
        probe.healed = True

    def _probed(self, probes: Deferred[Any], entry: dict[str, Any], probe: _Probe) -> None:
        """The probes' answers go into the step's entry when they come (awaited before the drain)."""
        def done(counts: dict[str, int]) -> None:
            entry["probes"] = counts
            entry["replaced"] = sorted(probe.replaced)

        self.probing.append(probes.addCallback(done))

    async def _rolling_restart(self, first: int, hold: float) -> None:
        for n in roll_order(first, self.config.nodes):
            node = self.nodes[n]
            fault = self.recorder.fault_started("restart", f"n{n}", "SIGTERM (leadership handed over), restart")
            node.expected_down = True  # type: ignore[attr-defined]
            self.current = f"restart node {n}"
            node.signal(signal.SIGTERM)
            if not await self._wait_exit(node, STOP_TIMEOUT):
                self.obs.notes.append(f"node {n} did not exit within {STOP_TIMEOUT:g}s of SIGTERM: killed")
                node.signal(signal.SIGKILL)
                await self._wait_exit(node, 10)
            code = node.returncode()
            if code not in (0, -signal.SIGTERM):
                self.obs.node_exits.append(f"node {n} exited with {code} after SIGTERM")
            await sleep(self.reactor, hold)
            node.start()
            node.expected_down = False  # type: ignore[attr-defined]
            await until(self.reactor, self.healthy, RECOVER_TIMEOUT, f"node {n} to rejoin in a rolling restart", 0.2)
            self.recorder.fault_healed(fault)

    async def _wipe(self, n: int, hold: float, record: bool = True) -> None:
        node = self.nodes[n]
        fault = self.recorder.fault_started("wipe", f"n{n}", "SIGKILL, data directory removed, restart") \
            if record else None
        node.expected_down = True  # type: ignore[attr-defined]
        node.signal(signal.SIGKILL)
        await self._wait_exit(node, 10)
        shutil.rmtree(node.plan.data_dir, ignore_errors=True)
        await sleep(self.reactor, hold)
        node.start()
        if fault is not None:
            self.recorder.fault_healed(fault)
        def rejoined() -> Any:
            if not node.alive():
                raise RunAborted(f"node {n} exited")
            return self.healthy()

        try:
            await until(self.reactor, rejoined, 30, f"wiped node {n} to rejoin", 0.2)
        except RunAborted:
            raise WipeUnsupported(
                f"node {n}, restarted on a wiped data directory, did not rejoin the cluster within 30 s "
                f"({'it exited: ' + str(node.returncode()) if not node.alive() else 'it runs but is not up'}); "
                f"a streamlog from before wiped-node rejoin (--server-command), or a bug: run without "
                f"the wipe fault, or report it. Its last output:\n"
                f"{node.last_lines(2)}") from None
        finally:
            node.expected_down = False  # type: ignore[attr-defined]

    async def _check_wipe(self) -> None:
        """Before any workload: a wiped node must rejoin, or the run stops here (L{WipeUnsupported})."""
        self._say(f"checking that a wiped node rejoins (node {self.config.nodes})")
        await self._wipe(self.config.nodes, 0.2, record=False)
        await until(self.reactor, self.healthy, RECOVER_TIMEOUT, "the cluster to recover from the wipe check", 0.2)

    def _probe(self, probe: _Probe, partitions: list[int]) -> Deferred[Any]:
        """acks=all writes straight to the faulted node for the partitions it led, recorded as
        sends of process C{probe-nN}; fires with how they were answered once all are.

        An acknowledgement is a stale-ack finding when it came while the fault lasted (a
        stopped node answers nothing; a node cut off has no majority), or after it healed for
        a partition the others had given a newer leader meanwhile (L{_replaced}).  One for a
        partition that no other node took over is not: with no newer leader, the old one may
        still commit what it took (a note says so)."""
        if not partitions:
            return defer.succeed({})
        n = probe.node
        client = self.probe_clients[n]
        process = f"probe-n{n}"
        counts: dict[str, int] = {}
        calls = []
        for p in partitions:
            for _ in range(PROBES_PER_PARTITION):
                self.obs.probes[process] = self.obs.probes.get(process, 0) + 1
                value = f"{process}-{self.obs.probes[process]}"
                op = self.recorder.invoke_send(process, self.config.topic, value, partition=p)
                sent_at = self.now()
                d = client.call("Send", {"topic": self.config.topic, "partition": p, "value": value, "acks": "all"},
                                timeout=self.config.request_timeout + 10)

                def ok(result: Any, op: Any = op, p: int = p, value: str = value, sent_at: float = sent_at) -> None:
                    self.recorder.send_ok(op, result["partition"], result["offset"])
                    counts["ok"] = counts.get("ok", 0) + 1
                    ack = {"node": n, "partition": p, "value": value, "offset": result["offset"],
                           "sent": round(sent_at, 3), "answered": round(self.now(), 3), "why": probe.why}
                    if not probe.healed or p in probe.replaced:
                        self.obs.stale_acks.append(ack)
                    else:
                        self.obs.notes.append(f"probe {value} to node {n} ({probe.why}) was acknowledged at "
                                              f"{p}@{result['offset']} after the fault healed; no other node had "
                                              f"elected a newer leader of partition {p} meanwhile, so this is "
                                              f"not a finding")

                def failed(failure: Failure, op: Any = op) -> None:
                    e = failure.value
                    code = e.code if isinstance(e, errors.StreamlogError) else "INTERNAL"
                    self.recorder.send_failed(op, e if isinstance(e, errors.StreamlogError) else code)
                    counts[code] = counts.get(code, 0) + 1

                calls.append(d.addCallbacks(ok, failed))
        return defer.DeferredList(calls).addCallback(lambda _: dict(counts))

    async def _heal_all(self) -> None:
        if self.group is not None:
            self.group.heal()
        if self.proxies is not None:
            self.proxies.heal()
        for node in self.nodes.values():
            if node.stopped:
                node.signal(signal.SIGCONT)
            if not node.alive():
                node.start()
                node.expected_down = False  # type: ignore[attr-defined]

    # --- the end --------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._progress is not None and self._progress.running:
            self._progress.stop()
        if self._fetcher is not None and self._fetcher.running:
            self._fetcher.stop()
        if self.group is not None:
            self.group.kill_all()
        for p in self.producers:
            if not p.client.closed:
                await p.client.close()
        for r in self.readers:
            r.running = False
            r.consumer.close()
        for client in self.consumer_clients:
            await client.close()
        self.recorder.close()
        for client in self.probe_clients.values():
            await client.close()
        for node in self.nodes.values():
            if node.stopped:
                node.signal(signal.SIGCONT)
            node.signal(signal.SIGTERM)
        for node in self.nodes.values():
            if not await self._wait_exit(node, STOP_TIMEOUT):
                node.signal(signal.SIGKILL)
                await self._wait_exit(node, 10)
        if self.proxies is not None:
            await self.proxies.stop()
        if self.obs.drained and not any(n.alive() for n in self.nodes.values()):
            self._compare_stored()
        for n, node in sorted(self.nodes.items()):
            found = critical_lines(node.log_path)
            if found[0]:
                self.obs.node_errors[n] = {"critical": found[0], "examples": found[1]}

    def _compare_stored(self) -> None:
        """Once the nodes are stopped: every replica's stored records, byte for byte."""
        stored: dict[int, dict[int, list[bytes]]] = {}
        for n, node in sorted(self.nodes.items()):
            try:
                for partition, records in stored_records(node.plan.data_dir, self.topic_id).items():
                    stored.setdefault(partition, {})[n] = records
            except Exception as e:  # noqa: BLE001 - a replica that cannot be read is said so, not hidden
                self.obs.diverged.append(f"node {n}: its stored partitions cannot be read after the run: {e}")
        self.obs.stored = {p: {n: len(r) for n, r in nodes.items()} for p, nodes in sorted(stored.items())}
        for p, nodes in sorted(stored.items()):
            first = stored_divergence(nodes)
            if first is not None:
                self.obs.diverged.append(f"partition {p}: the stored replicas differ: {first}")
            elif len(nodes) != min(3, self.config.nodes):
                self.obs.diverged.append(f"partition {p}: stored on nodes {sorted(nodes)} only")

    def _say(self, line: str) -> None:
        if self.config.progress is not None:
            self.config.progress(line)


_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def critical_lines(log_path: Path, examples: int = 3) -> tuple[int, list[str]]:
    """How many C{#critical} events a node logged (a callback that raised, a fatal error),
    and the first few distinct ones, each with the exception its traceback ended with."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, []
    count = 0
    seen: list[str] = []
    for i, line in enumerate(lines):
        if "#critical]" not in line:
            continue
        count += 1
        message = _ADDRESS.sub("", line.split("] ", 1)[-1])
        j = i + 1
        last = ""
        while j < len(lines) and lines[j].startswith("\t"):
            last = lines[j].strip() or last
            j += 1
        if last:
            message += f" -> {last}"
        if message not in seen and len(seen) < examples:
            seen.append(message)
    return count, seen


def stored_records(data_dir: Path, topic_id: str | None = None) -> dict[int, list[bytes]]:
    """The records of every partition stored in a stopped node's data directory: partition ->
    each record's JSON bytes as the storage serves it (offset, timestamp, key, value, headers).
    With C{topic_id}, of that topic only (partitions are stored by topic id: without it, a second
    topic such as C{__consumer_offsets} would overwrite the chaos topic's partitions here)."""
    from streamlog.storage.segmented import SegmentedStorage

    storage = SegmentedStorage(str(data_dir))
    try:
        out: dict[int, list[bytes]] = {}
        for group, (_, logs) in storage.load().items():
            if group.startswith("__"):
                continue  # the metadata group
            if topic_id is not None and group.rpartition("-")[0] != topic_id:
                continue  # another topic's partition
            partition = int(group.rpartition("-")[2])
            for log in logs:
                records: list[bytes] = []
                offset = log.start_offset
                while offset < log.end_offset:
                    read = log.read(offset, 5000, 1 << 24)
                    if read.count == 0:
                        break
                    records.extend(orjson.dumps(r) for r in orjson.loads(b"[" + b",".join(read.fragments) + b"]"))
                    offset = read.next_offset
                out[partition] = records
        return out
    finally:
        storage.close()


def stored_divergence(replicas: dict[int, list[bytes]]) -> str | None:
    """Where the replicas of one partition first differ (None: alike)."""
    if len({len(r) for r in replicas.values()}) > 1:
        lengths = ", ".join(f"node {n} {len(r)} records" for n, r in sorted(replicas.items()))
    else:
        lengths = ""
    shortest = min((len(r) for r in replicas.values()), default=0)
    for i in range(shortest):
        if len({r[i] for r in replicas.values()}) > 1:
            which = "; ".join(f"node {n}: {r[i].decode(errors='replace')}" for n, r in sorted(replicas.items()))
            return f"record {i}: {which}" + (f" ({lengths})" if lengths else "")
    return lengths or None


def observations_json(obs: Observations) -> bytes:
    return orjson.dumps(obs.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)

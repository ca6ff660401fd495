"""One seeded run of a whole simulated cluster: nodes, network, disks, clients, faults, checks.

L{run_seed} builds N real nodes (C{ClusterNode} with its metadata group,
planner, partition replicas and Raft host and peer transport, and the
C{Broker} with its client protocol) on one C{Clock}, over the simulated
network (L{streamlog.cluster.sim.network}) and disks
(L{streamlog.cluster.sim.disk}); forms the cluster and creates a topic
through the client protocol; runs producers and consumers (the simulator's
own, and the real C{streamlog.client} Producer, idempotent and plain, whose
answers are lost at times) while faults are injected (L{FAULTS}: crashes that
lose unsynced writes, power loss of every node, pauses, partitions both ways
and one way, connection resets, SIGTERM's clean stop, a disk wipe) and
retention cuts the logs; then heals everything, lets the cluster settle,
drains every partition and checks the history (L{streamlog.chaos.checker})
and the replicas (L{streamlog.cluster.sim.checker}).

Everything random comes from C{random.Random(seed)}, and time is simulated,
so a seed replays exactly (within one process, or across processes with the
same C{PYTHONHASHSEED}; the CLI fixes it).  L{SimResult.digest} is a hash of
the run's event trace, to prove that.
"""

from __future__ import annotations

import hashlib
import random
import traceback
from collections.abc import Callable
from typing import Any

import attrs
import orjson
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from streamlog.broker.broker import Broker
from streamlog.broker.service import NodeConfig
from streamlog.chaos import checker as chaos
from streamlog.chaos.history import OK, Drain, History, Poll
from streamlog.cluster.identity import IdentityStore, NodeIdentity
from streamlog.cluster.metadata import METADATA_GROUP, partition_group
from streamlog.cluster.node import ClusterNode, NodeHost
from streamlog.cluster.replica import PartitionReplica
from streamlog.cluster.sim.checker import Ledger
from streamlog.cluster.sim.clients import Consumer, Producer, Registrar, SimClient
from streamlog.cluster.sim.clock import NodeClock, SimClock
from streamlog.cluster.sim.disk import SimDisk
from streamlog.cluster.sim.library import LibraryProducer
from streamlog.cluster.sim.network import SimNetwork
from streamlog.protocol import BrokerFactory
from streamlog.raft.core import LEADER, RaftNode

TOPIC = "t"


@attrs.frozen
class SimConfig:
    """The shape of one run (every field is a knob of the CLI or of a test)."""

    nodes: int = 3
    partitions: int = 2
    producers: int = 2  # per partition
    consumers: int = 1  # per partition
    #: Processes running the real C{streamlog.client} Producer over every partition
    #: (L{streamlog.cluster.sim.library}): idempotent ones, and plain ones for contrast.
    idempotent_producers: int = 2
    plain_producers: int = 1
    #: Probability that an answer to such a process is lost (its connection reset as it goes out).
    drop_answer: float = 0.02
    #: Simulated seconds of load and faults (after the cluster formed and the topic exists).
    duration: float = 3.0
    #: Seconds between one fault's start and the next's (uniform in this range).
    fault_gap: tuple[float, float] = (0.15, 0.6)
    #: How long a crash, pause or partition lasts (uniform).
    fault_length: tuple[float, float] = (0.1, 1.2)
    election_timeout_ms: int = 300
    heartbeat_ms: int = 50
    #: Simulated seconds the cluster may take to form, to settle after the faults, to drain.
    settle_timeout: float = 30.0
    #: Share of fsyncs that are slow (20-150 ms instead of 0.3-4 ms).
    slow_fsync: float = 0.03
    #: Relative weights of the faults, in L{FAULTS} order: crash, pause, isolate, reset, power
    #: loss of every node, one-way partition, SIGTERM (clean stop), disk wipe.
    fault_weights: tuple[int, ...] = (3, 3, 3, 3, 2, 2, 2, 2)
    #: The topic's retention.bytes (None: none): retention cuts the logs during the run, so a
    #: follower that was away catches up by InstallSnapshot.
    retention_bytes: int | None = 4_000
    #: Simulated seconds between two retention checks on each node.
    retention_interval: float = 0.1
    #: Metadata entries between two snapshots of the cluster state (--metadata-snapshot-entries):
    #: small, so that the metadata log is compacted in most runs, and a node that was away or
    #: wiped catches up on it by InstallSnapshot.
    metadata_snapshot_entries: int = 2
    #: Clients making metadata entries during the load (InitProducerId of named producers,
    #: L{streamlog.cluster.sim.clients.Registrar}), so that they meet the faults.
    registrars: int = 1
    #: Share of seeds in the long-fault regime: the real Producers run with a delivery timeout
    #: of C{long_delivery_timeout} seconds (uniform) instead of 8, and one fault of L{LONG_FAULTS}
    #: (weights C{long_fault_weights}) starts C{long_fault_start} seconds into the load and lasts
    #: that timeout plus C{long_fault_extra}: a send's delivery timeout expires (failed to the
    #: application, maybe stored), and the Producer goes on past it (a new epoch, later sends).
    long_fault: float = 0.25
    long_delivery_timeout: tuple[float, float] = (1.5, 2.5)
    long_fault_weights: tuple[int, ...] = (2, 2, 1)
    long_fault_start: tuple[float, float] = (0.1, 0.4)
    long_fault_extra: tuple[float, float] = (0.3, 1.2)
    #: Seconds a SIGTERM'd node waits for its leaderships to move before it stops anyway.
    transfer_timeout: float = 1.0
    #: A run that takes more clock events than this is stuck in a storm: a failure.
    max_events: int = 200_000
    #: ... or more bytes on the network than this.
    max_bytes: int = 50_000_000


#: Violation kinds that are not a safety finding (see SimResult.safety).
NOT_SAFETY = ("liveness", "crash")

#: The faults the simulator injects (SimConfig.fault_weights weighs them in this order).
FAULTS = ("crash", "pause", "isolate", "reset", "power", "oneway", "sigterm", "wipe")
#: The long faults (one per seed of the long-fault regime, SimConfig.long_fault): a real Producer's
#: process cut off from every node both ways (C{cut-client}), or only the nodes' bytes to it held
#: (C{mute-client}: its requests land, their answers do not come), or every node down at once
#: (C{outage}: a power loss of the whole cluster, restarted when it ends).
LONG_FAULTS = ("cut-client", "mute-client", "outage")
#: Those that take one node out of the healthy majority while they last.
NODE_FAULTS = ("crash", "pause", "isolate", "oneway", "sigterm", "wipe")


@attrs.frozen
class SimResult:
    seed: int
    ok: bool
    violations: tuple[str, ...]
    digest: str
    sim_seconds: float
    stats: dict[str, int]
    faults: tuple[str, ...]

    @property
    def safety(self) -> bool:
        """Whether a violation is a safety one: not only the run failing to settle in its
        budget (liveness) or a node's code raising (crash), which a broken variant can also
        cause without the checker having caught what it breaks."""
        return any(v.split()[1].rstrip(":") not in NOT_SAFETY for v in self.violations if len(v.split()) > 1)

    def fault_counts(self) -> dict[str, int]:
        """How many faults of each kind the seed injected (in L{FAULTS}, then L{LONG_FAULTS} order)."""
        kinds = [f.split()[1] for f in self.faults]
        return {k: kinds.count(k) for k in (*FAULTS, *LONG_FAULTS) if k in kinds}

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        counts = " ".join(f"{k}={v}" for k, v in self.stats.items())
        faults = ",".join(f"{k}:{v}" for k, v in self.fault_counts().items())
        return f"seed {self.seed}: {status} {counts} [{faults}] sim={self.sim_seconds:.1f}s digest={self.digest[:12]}"


class Liveness(Exception):
    """The cluster did not reach a state it should reach (formed, settled, drained) in time."""


#: A broken variant: a function that adjusts the world before it starts (see tests/cluster/sim_variants.py).
Variant = Callable[["SimCluster"], None]


class SimHost(NodeHost):
    """The node's Raft host, with the reconnect jitter of its dialers drawn from the seed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dial_jitter = random.Random(self.rng.random()).random


class SimNode:
    """One node's process (rebuilt at each restart) and what outlives it: its disk and identity."""

    def __init__(self, world: SimCluster, node_id: int) -> None:
        self.world = world
        self.id = node_id
        self.name = f"n{node_id}"
        self.disk = SimDisk(node_id, world.clock, random.Random(world.rng.random()), world, world.config.slow_fsync)
        self.identity = IdentityStore(None)
        self.identity.save(NodeIdentity(node_id, f"{node_id:016x}"))
        self.rng = random.Random(world.rng.random())
        self.generation = 0
        self.wipes = 0
        self.clock: NodeClock | None = None
        self.node: ClusterNode | None = None
        self.broker: Broker | None = None
        self.up = False
        #: A SIGTERM is being handled (leaderships moving away, then a clean stop).
        self.stopping = False

    @property
    def paused(self) -> bool:
        return self.clock is not None and self.clock.paused

    def start(self) -> None:
        world = self.world
        self.generation += 1
        self.clock = NodeClock(world.clock, self.name)
        self.disk.node_clock = self.clock
        world.network.add_host(self.name, f"127.0.0.{self.id}", self.clock)
        config = NodeConfig(node_id=self.id, peers=world.peers, storage="memory",
                            election_timeout_ms=world.config.election_timeout_ms,
                            heartbeat_ms=world.config.heartbeat_ms,
                            metadata_snapshot_entries=world.config.metadata_snapshot_entries)
        node = world.node_class()(config, self.disk, clock=self.clock,
                                connect=lambda address: world.network.endpoint(self.name, address),
                                identity=self.identity, client_address=world.clients[self.id],
                                rng=random.Random(self.rng.random()),
                                on_fatal=lambda line: world.trace("fatal", self.id, line))
        node.directory.replica_class = world.replica_class
        broker = Broker(self.disk, config.broker_config(), clock=self.clock, directory=node.directory,
                        committer=self.disk.committer)
        broker.cluster = node
        factory = BrokerFactory(broker, config.limits, self.clock)
        world.network.listen(world.peers[self.id], self.name, node.peer_factory())
        world.network.listen(world.clients[self.id], self.name, factory)
        self.node, self.broker, self.up = node, broker, True
        self.stopping = False
        node.start()
        factory.doStart()
        if world.config.retention_interval:
            retention = LoopingCall(broker.apply_retention)
            retention.clock = self.clock  # dies with the node: a dead NodeClock runs nothing
            retention.start(world.config.retention_interval, now=False)

    def sigterm(self, then: Callable[[], None]) -> None:
        """SIGTERM, as the server handles it: leaderships to caught-up followers (within the
        transfer timeout), writes refused, the answers owed written, the final sync, exit."""
        node, broker, generation = self.node, self.broker, self.generation
        assert node is not None and broker is not None and self.clock is not None
        self.stopping = True

        def stop_writes(_: Any) -> None:
            if self.generation == generation and self.up:
                broker.stopping = True
                assert self.clock is not None
                self.clock.callLater(0.05, exit_cleanly)

        def exit_cleanly() -> None:
            if self.generation == generation and self.up:
                self.stop_cleanly()
                then()

        node.hand_over(self.world.config.transfer_timeout).addBoth(stop_writes)

    def _exit(self, disk_stop: Callable[[], None]) -> None:
        """The process is gone: its timers never run, its connections close, its disk stops
        as C{disk_stop} says (a clean stop's final sync, or a power loss)."""
        assert self.clock is not None
        self.clock.kill()
        self.world.network.kill(self.name)
        disk_stop()
        self.node = self.broker = None
        self.up = self.stopping = False

    def stop_cleanly(self) -> None:
        """The process exits after its final sync: nothing written is lost."""
        self._exit(self.disk.clean_stop)

    def wipe(self) -> None:
        """The node dies and comes back on an empty disk: a new incarnation (docs/cluster.md)."""
        self.crash()
        self.wipes += 1
        world = self.world
        self.disk = SimDisk(self.id, world.clock, random.Random(self.rng.random()), world, world.config.slow_fsync)
        self.identity = IdentityStore(None)
        self.identity.save(NodeIdentity(self.id, f"{self.id:08x}{self.wipes:08x}"))

    def crash(self) -> None:
        """SIGKILL plus the loss of whatever the disk had not made durable (power loss)."""
        self._exit(self.disk.power_loss)


class SimCluster:
    """The whole simulated world of one seed."""

    def __init__(self, seed: int, config: SimConfig = SimConfig(), variant: Variant | None = None) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.clock = SimClock()
        self.network = SimNetwork(self.clock, random.Random(self.rng.random()))
        self.fault_rng = random.Random(self.rng.random())
        self.client_rng = random.Random(self.rng.random())
        self.ledger = Ledger()
        self.history = History()
        self._ids = 0
        self._trace = hashlib.sha256()
        self.events = 0
        self.faults: list[str] = []
        #: What the disks counted: prefix truncations (retention), snapshot installs, and crashes
        #: that cut off a metadata snapshot write in the committer's worker (C{writes_cut}).
        self.counts: dict[str, int] = {"retained": 0, "snapshots": 0, "meta_compactions": 0, "meta_installs": 0,
                                       "writes_cut": 0}
        #: Faults may start (the load phase); False once everything is healed.
        self.faulting = False
        #: What a broken variant may replace (see tests/cluster/sim_variants.py).
        self.raft_node_class: type[RaftNode] = RaftNode
        self.replica_class: type[PartitionReplica] = PartitionReplica
        self._node_class: type[ClusterNode] | None = None
        #: Methods of ClusterNode a broken variant replaces (name -> function).
        self.node_overrides: dict[str, Any] = {}
        #: Attributes of the nodes' Raft host a broken variant replaces (e.g. its runner_class).
        self.host_overrides: dict[str, Any] = {}
        #: Methods of the real Producer (streamlog.client.producer) a broken variant replaces.
        self.producer_overrides: dict[str, Any] = {}
        n = config.nodes
        self.peers = {i: f"127.0.0.{i}:9000" for i in range(1, n + 1)}
        self.clients = {i: f"127.0.0.{i}:7000" for i in range(1, n + 1)}
        if variant is not None:
            variant(self)
        self.nodes = {i: SimNode(self, i) for i in range(1, n + 1)}
        # The long-fault regime (drawn last, so that the streams above are as without it).
        regime = random.Random(self.rng.random())
        #: The real Producers' delivery timeout, and this seed's long fault: (kind, start, length).
        self.delivery_timeout = 8.0
        self.long_fault: tuple[str, float, float] | None = None
        if regime.random() < config.long_fault:
            self.delivery_timeout = regime.uniform(*config.long_delivery_timeout)
            kind = regime.choices(LONG_FAULTS, config.long_fault_weights)[0]
            self.long_fault = (kind, regime.uniform(*config.long_fault_start),
                               self.delivery_timeout + regime.uniform(*config.long_fault_extra))
        self._long_rng = random.Random(regime.random())
        #: While a long fault lasts: the cut-off producer's blocks (re-applied after every heal),
        #: or the outage (no node restarts until it ends).
        self._long_blocks: list[tuple[str, str, bool]] = []
        self._outage = False
        #: The long fault is scheduled and has not ended yet (it may not have started: in a
        #: run shorter than its start it starts during the settling, which waits for its end).
        self._long_pending = False
        self.producers: list[Producer] = []
        self.consumers: list[Consumer] = []
        self.library: list[LibraryProducer] = []
        self.registrars: list[Registrar] = []
        self.groups: dict[int, str] = {}

    def producer_class(self) -> type[Any]:
        """The real Producer the library processes run, with a broken variant's C{producer_overrides}."""
        from streamlog.client.producer import Producer as RealProducer

        if not self.producer_overrides:
            return RealProducer
        return type("SimVariantProducer", (RealProducer,), dict(self.producer_overrides))

    def node_class(self) -> type[ClusterNode]:
        """ClusterNode whose Raft host draws its dial jitter from the seed and runs
        C{raft_node_class} nodes."""
        if self._node_class is None:
            host = type("SimHost", (SimHost,), {"node_class": self.raft_node_class, **self.host_overrides})
            self._node_class = type("SimClusterNode", (ClusterNode,), {"host_class": host, **self.node_overrides})
        return self._node_class

    # --- bookkeeping

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def trace(self, *event: Any) -> None:
        self._trace.update(orjson.dumps([round(self.clock.seconds(), 6), *event], default=str))
        self._trace.update(b"\n")

    def truncating(self, node: int, group: str, log: Any, from_index: int) -> None:
        """(The disks' observer) a log is cut: never the committed entries."""
        self.ledger.now = self.clock.seconds()
        sim = self.nodes[node]
        core = sim.node.cores.get(group) if sim.up and sim.node is not None else None
        self.ledger.truncating(node, group, log, from_index, core.commit_index if core is not None else 0)

    def count(self, what: str) -> None:
        """(The disks' observer) one more of C{what}."""
        self.counts[what] = self.counts.get(what, 0) + 1

    def served(self, client: str, node: int, partition: int, high_watermark: int) -> None:
        self.ledger.served(node, self.groups.get(partition, str(partition)), high_watermark, f"Poll answers to {client}")

    def sample(self) -> None:
        """The cheap invariants, on every live (and unpaused) node."""
        self.ledger.now = self.clock.seconds()
        for sim in self.nodes.values():
            node = sim.node
            if not sim.up or node is None or sim.paused:
                continue
            for group, core in node.cores.items():
                self.ledger.observe(sim.id, sim.generation, group, core.log, core.commit_index)
            if node.state is not None:
                self.ledger.metadata(sim.id, sim.generation, node.state)
            for group, replica in node.directory.by_group.items():
                if replica.leads:
                    self.ledger.served(sim.id, group, replica.high_watermark, "its leading replica")

    # --- running

    def run_until(self, condition: Callable[[], bool], timeout: float, what: str, check_every: float = 0.005) -> None:
        """Run events in time order until C{condition} holds (checked every C{check_every}
        simulated seconds, when the invariants are sampled too), or raise L{Liveness}."""
        clock = self.clock
        deadline = clock.seconds() + timeout
        next_check = clock.seconds()
        while True:
            now = clock.seconds()
            if now >= next_check:
                self.sample()
                if condition():
                    return
                next_check = now + check_every
            if now >= deadline:
                raise Liveness(f"{what}: not reached in {timeout} simulated seconds")
            at = clock.next_time()
            at = deadline if at is None else at
            step = min(at, next_check, deadline) - now
            clock.advance(max(step, 0.0))
            self.events += 1
            if self.events > self.config.max_events or self.network.bytes_sent > self.config.max_bytes:
                raise Liveness(f"{what}: a storm: {self.events} clock steps, {self.network.bytes_sent} bytes sent "
                               f"(the budget: {self.config.max_events}, {self.config.max_bytes})")

    def run_for(self, seconds: float) -> None:
        end = self.clock.seconds() + seconds
        self.run_until(lambda: self.clock.seconds() >= end, seconds + 1.0, "time")

    def live_nodes(self) -> list[SimNode]:
        return [s for s in self.nodes.values() if s.up and not s.paused]

    def formed(self) -> bool:
        nodes = [s.node for s in self.nodes.values()]
        if any(n is None or n.state is None for n in nodes):
            return False
        leaders = [n for n in nodes if n is not None and META in n.cores and n.cores[META].role == LEADER]
        return len(leaders) == 1 and all(len(n.state.nodes) == len(nodes) for n in nodes if n is not None
                                         and n.state is not None)

    def leader(self, partition: int, ready: bool = True) -> SimNode | None:
        group = self.groups[partition]
        found = [s for s in self.live_nodes() if s.node is not None and group in s.node.directory.by_group
                 and (s.node.directory.by_group[group].leads if ready else s.node.directory.by_group[group].writable)]
        if len(found) != 1:
            return None
        return found[0]

    def admin(self, method: str, params: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        """Ask nodes (following hints) until one answers with a result."""
        client = SimClient("admin", self.network, self.clock, random.Random(self.client_rng.random()),
                           self.clients, self.history, self.next_id)
        self.network.add_host("admin", "127.0.1.1")
        got: list[dict[str, Any]] = []
        state = {"node": 1, "busy": False}

        def ask() -> None:
            state["busy"] = True
            client.call(state["node"], method, params).addCallback(answered)

        def answered(answer: dict[str, Any]) -> None:
            state["busy"] = False
            if "result" in answer or answer.get("error", {}).get("code") == "TOPIC_EXISTS":
                got.append(answer)
                return
            hint = answer["error"].get("controller") or answer["error"].get("leader")
            state["node"] = hint if isinstance(hint, int) else state["node"] % len(self.nodes) + 1
            self.clock.callLater(0.05, ask)

        ask()
        self.run_until(lambda: bool(got), timeout, f"{method} answered")
        return got[0]

    # --- faults

    def schedule_faults(self, until: float) -> None:
        rng = self.fault_rng
        at = self.clock.seconds() + rng.uniform(*self.config.fault_gap)
        while at < until:
            self.clock.callLater(at - self.clock.seconds(), self._fault)
            at += rng.uniform(*self.config.fault_gap)

    def _unhealthy(self) -> int:
        return sum(1 for s in self.nodes.values() if not s.up or s.paused or s.stopping) + len(self._isolated)

    def wipe_safe(self) -> bool:
        """A disk may be wiped only while every node is up and a caught-up voter of every group
        (as C{streamlog chaos} waits for): then the other copies are a majority that holds
        everything committed, and the wiped node's replacement can be added back."""
        sims = list(self.nodes.values())
        if self._isolated or any(not s.up or s.paused or s.stopping or s.node is None for s in sims):
            return False
        for group in [META, *self.groups.values()]:
            leaders = [s.node.cores[group] for s in sims if s.node is not None and group in s.node.cores
                       and s.node.cores[group].role == LEADER]
            if len(leaders) != 1:
                return False
            core = leaders[0]
            wanted = len(sims) if group == META else min(3, len(sims))
            if core.learners or len(core.voters) != wanted or not all(core.caught_up(p) for p in core.peers):
                return False
        return True

    def _fault(self) -> None:
        rng = self.fault_rng
        kind = rng.choices(FAULTS, self.config.fault_weights)[0]
        length = rng.uniform(*self.config.fault_length)
        budget = (len(self.nodes) - 1) // 2  # faults at once that leave a majority healthy
        candidates = [s for s in self.nodes.values() if s.up and not s.paused and not s.stopping
                      and s.id not in self._isolated]
        if kind in NODE_FAULTS and (self._unhealthy() >= budget or not candidates):
            kind = "reset"
        if kind == "wipe" and not self.wipe_safe():
            # Wait (a little) for the cluster to be whole and caught up, as streamlog chaos does.
            self.clock.callLater(0.1, self._wipe_when_safe, length, 5)
            return
        self._start_fault(kind, length, candidates)

    def _wipe_when_safe(self, length: float, tries: int) -> None:
        if not self.faulting:
            return  # the load and its faults are over
        if self.wipe_safe():
            candidates = [s for s in self.nodes.values() if s.up and not s.paused and not s.stopping]
            self._start_fault("wipe", length, candidates)
        elif tries > 1:
            self.clock.callLater(0.1, self._wipe_when_safe, length, tries - 1)
        elif self._unhealthy() < (len(self.nodes) - 1) // 2:
            candidates = [s for s in self.nodes.values() if s.up and not s.paused and not s.stopping
                          and s.id not in self._isolated]
            self._start_fault("crash" if candidates else "reset", length, candidates)
        else:
            self._start_fault("reset", length, [])

    def _start_fault(self, kind: str, length: float, candidates: list[SimNode]) -> None:
        rng = self.fault_rng
        self.faults.append(f"{self.clock.seconds():.3f} {kind}")
        if kind == "reset":
            link = self.network.reset_one(rng)
            self.trace("reset", link.number if link is not None else None)
            return
        if kind == "power":
            self.trace("power-loss")
            for s in self.nodes.values():
                if s.up:
                    s.crash()
            self._isolated.clear()
            self.network.unblock_all()
            self._block_long()  # a long fault (a cut-off Producer) runs to its own end
            self.clock.callLater(rng.uniform(0.05, 0.5), self._restart_all)
            return
        target = candidates[rng.randrange(len(candidates))]
        self.trace(kind, target.id)
        if kind == "crash":
            target.crash()
            self.clock.callLater(length, self._restart, target)
        elif kind == "wipe":
            target.wipe()
            self.clock.callLater(length, self._restart, target)
        elif kind == "sigterm":
            target.sigterm(lambda: self.clock.callLater(length, self._restart, target))
        elif kind == "oneway":
            outgoing = rng.random() < 0.5  # it cannot reach the others, or they cannot reach it
            self._isolated.add(target.id)
            for other in self.nodes.values():
                if other is not target:
                    if outgoing:
                        self.network.block_one_way(target.name, other.name)
                    else:
                        self.network.block_one_way(other.name, target.name)
            self.clock.callLater(length, self._heal, target.id)
        elif kind == "pause":
            assert target.clock is not None
            target.clock.pause()
            self.clock.callLater(length, self._resume, target, target.generation)
        else:
            self._isolated.add(target.id)
            for other in self.nodes.values():
                if other is not target:
                    self.network.block(target.name, other.name)
            self.clock.callLater(length, self._heal, target.id)

    _isolated: set[int] = set()

    def _restart(self, sim: SimNode) -> None:
        if not sim.up and not self._outage:  # an outage's end restarts every node
            self.trace("restart", sim.id)
            sim.start()

    def _restart_all(self) -> None:
        for sim in self.nodes.values():
            self._restart(sim)

    def _resume(self, sim: SimNode, generation: int) -> None:
        if sim.up and sim.generation == generation and sim.clock is not None:
            self.trace("resume", sim.id)
            sim.clock.resume()

    def _heal(self, node: int) -> None:
        self._isolated.discard(node)
        self.trace("heal", node)
        self.network.heal_host(f"n{node}")
        self._block_long()

    # --- the long fault (one per seed of the long-fault regime)

    def _start_long_fault(self) -> None:
        assert self.long_fault is not None
        kind, _, length = self.long_fault
        self.faults.append(f"{self.clock.seconds():.3f} {kind}")
        if kind == "outage":
            self.trace("outage")
            self._outage = True
            for s in self.nodes.values():
                if s.up:
                    s.crash()
            self._isolated.clear()
            self.network.unblock_all()
        else:
            target = self.library[self._long_rng.randrange(len(self.library))].name
            self.trace(kind, target)
            for s in self.nodes.values():
                # cut-client: nothing either way; mute-client: the nodes' bytes to it are held
                self._long_blocks.append((s.name, target, kind == "cut-client"))
            self._block_long()
        self.clock.callLater(length, self._end_long_fault)

    def _block_long(self) -> None:
        """(Re-)apply the long fault's blocks: healing a node or everything must not end it."""
        for frm, to, both in self._long_blocks:
            if both:
                self.network.block(frm, to)
            else:
                self.network.block_one_way(frm, to)

    def _end_long_fault(self) -> None:
        assert self.long_fault is not None
        self.trace("long-fault-end", self.long_fault[0])
        self._long_pending = False
        if self._outage:
            self._outage = False
            self._restart_all()
        hosts = {to for _, to, _ in self._long_blocks}
        self._long_blocks = []
        for host in sorted(hosts):
            self.network.heal_host(host)

    def heal_all(self) -> None:
        """Every fault of L{FAULTS} ends (a long one runs to its own end, into the settling)."""
        self._isolated.clear()
        self.network.unblock_all()
        self._block_long()
        for sim in self.nodes.values():
            if sim.up and sim.paused and sim.clock is not None:
                sim.clock.resume()
            elif not sim.up and not sim.stopping and not self._outage:
                sim.start()

    # --- the run

    def settled(self) -> bool:
        if any(c.busy for c in self.producers) or any(p.busy for p in self.library):
            return False
        if self._long_pending or self._long_blocks or self._outage:
            return False  # a long fault runs to its end (into the settling, in a short run)
        for p in self.groups:
            leader = self.leader(p)
            if leader is None or leader.node is None:
                return False
            group = self.groups[p]
            replica = leader.node.directory.by_group[group]
            if replica.commit_index != replica.log.last_index:
                return False
            for s in self.live_nodes():
                assert s.node is not None
                other = s.node.directory.by_group.get(group)
                if other is not None and other.commit_index != replica.commit_index:
                    return False
        return self._metadata_settled()

    def _metadata_settled(self) -> bool:
        """The metadata group's leader has committed all it holds, and so has every live member.

        A member that is behind may still hold an uncommitted tail from an old term (Raft lets a
        follower keep one until its leader's append replaces it), and the final check compares
        every log with the ledger: it must not run before that tail is replaced."""
        nodes = [s.node for s in self.live_nodes() if s.node is not None and META in s.node.cores]
        leaders = [n.cores[META] for n in nodes if n.cores[META].role == LEADER]
        if len(leaders) != 1:
            return False
        leader = leaders[0]
        if leader.commit_index != leader.log.last_index:
            return False
        members = leader.voters | set(leader.learners)
        return all(n.cores[META].commit_index == leader.commit_index for n in nodes if n.cores[META].id in members)

    def drain(self) -> dict[int, int]:
        """Read every partition from offset 0 to its high watermark through the broker."""
        ends: dict[int, int] = {}
        self.network.add_host("drain", "127.0.2.1")
        for p in sorted(self.groups):
            consumer = Consumer("drain", self.network, self.clock, random.Random(self.client_rng.random()),
                                self.clients, self.history, self.next_id, topic=TOPIC, partition=p,
                                served=self.served)
            consumer.timeout = 2.0
            self.run_until(lambda p=p: self.leader(p) is not None, 10.0, f"partition {p} led for the drain")
            leader = self.leader(p)
            assert leader is not None and leader.node is not None
            replica = leader.node.directory.by_group[self.groups[p]]
            end = replica.high_watermark
            consumer.leader = leader.id
            deadline = self.clock.seconds() + 10.0
            while consumer.offset < end:
                if self.clock.seconds() > deadline:
                    raise Liveness(f"the drain of partition {p} did not reach offset {end}")
                answers: list[dict[str, Any]] = []
                consumer.poll(max_wait_ms=0).addCallback(answers.append)
                self.run_until(lambda got=answers: bool(got), 10.0, f"the drain of partition {p} answered")
                if "result" not in answers[0]:  # leadership moved (the planner's preferred leader): follow it
                    self.run_for(0.02)
            ends[p] = end
            self.history.drains.append(Drain(TOPIC, p, end, self.clock.seconds()))
        return ends

    def run(self) -> SimResult:
        config = self.config
        for sim in self.nodes.values():
            sim.start()
        self.run_until(self.formed, config.settle_timeout, "the cluster formed")
        factor = min(3, config.nodes)
        answer = self.admin("CreateTopic", {"topic": TOPIC, "partitions": config.partitions,
                                            "replication_factor": factor,
                                            "config": {"retention_bytes": config.retention_bytes}})
        assert "result" in answer, answer
        info = self.nodes[1].node.state.topics[TOPIC] if self.nodes[1].node and self.nodes[1].node.state else None
        assert info is not None
        self.groups = {p: partition_group(info.topic_id, p) for p in range(config.partitions)}
        self.run_until(lambda: all(self.leader(p) is not None for p in self.groups), config.settle_timeout,
                       "every partition led")
        for p in self.groups:
            for k in range(config.producers):
                name = f"p{p}.{k}"
                self.network.add_host(name, f"127.0.{10 + p}.{k + 1}")
                self.producers.append(Producer(name, self.network, self.clock, random.Random(self.client_rng.random()),
                                               self.clients, self.history, self.next_id, topic=TOPIC, partition=p))
            for k in range(config.consumers):
                name = f"c{p}.{k}"
                self.network.add_host(name, f"127.0.{100 + p}.{k + 1}")
                self.consumers.append(Consumer(name, self.network, self.clock, random.Random(self.client_rng.random()),
                                               self.clients, self.history, self.next_id, topic=TOPIC, partition=p,
                                               served=self.served))
        for k in range(config.idempotent_producers + config.plain_producers):
            idempotent = k < config.idempotent_producers
            name = f"{'ip' if idempotent else 'pp'}{k}"
            self.network.add_host(name, f"127.0.50.{k + 1}")
            self.network.drop_answers[name] = config.drop_answer
            self.library.append(LibraryProducer(name, self.network, self.clock, random.Random(self.client_rng.random()),
                                                self.clients, self.history, self.next_id, topic=TOPIC,
                                                partitions=config.partitions, idempotent=idempotent,
                                                delivery_timeout=self.delivery_timeout,
                                                producer_class=self.producer_class()))
        for k in range(config.registrars):
            name = f"reg{k}"
            self.network.add_host(name, f"127.0.60.{k + 1}")
            self.registrars.append(Registrar(name, self.network, self.clock, random.Random(self.client_rng.random()),
                                             self.clients, self.history, self.next_id))
        for client in [*self.producers, *self.consumers, *self.library, *self.registrars]:
            client.start()
        self.trace("load")
        self.faulting = True
        self.schedule_faults(self.clock.seconds() + config.duration)
        if self.long_fault is not None:
            self._long_pending = True
            self.clock.callLater(self.long_fault[1], self._start_long_fault)
        self.run_for(config.duration)
        self.faulting = False
        self.trace("heal")
        self.heal_all()
        self.network.drop_answers.clear()
        for client in [*self.producers, *self.library, *self.registrars]:
            client.running = False
        self.run_until(self.settled, config.settle_timeout, "the cluster settled")
        for consumer in self.consumers:
            consumer.running = False
        self.run_until(lambda: not any(c.busy for c in self.consumers), 5.0, "the consumers stopped")
        self.drain()
        return self.check()

    def check(self) -> SimResult:
        self.sample()
        ledger = self.ledger
        result = chaos.check(self.history)
        for kind in chaos.SAFETY:
            for anomaly in result.anomalies.get(kind, ()):
                ledger.violation(f"history {kind}: {anomaly.detail}")
        # The topic lives from before the load to the end: no client may ever be told it is unknown
        # (a node whose metadata is behind must say LEADER_NOT_AVAILABLE: docs/protocol.md).
        for registrar in self.registrars:
            for text in registrar.violations:
                ledger.violation(f"producer-epoch-back: {text}")
        told = [op for op in [*self.history.sends, *self.history.polls] if op.error == "UNKNOWN_TOPIC"]
        if told:
            ledger.violation(f"unknown-topic: {len(told)} answers to clients called the live topic unknown "
                             f"(the first to {told[0].process} at t={told[0].complete:.3f})")
        logs = [(s.id, group, log) for s in self.nodes.values() for group, log in s.disk.logs().items()]
        leaders: dict[str, Any] = {}
        for p, group in self.groups.items():
            leader = self.leader(p)
            if leader is not None and leader.node is not None:
                leaders[group] = leader.node.directory.by_group[group].log
        ledger.final(logs, leaders)
        for producer in [*self.producers, *self.library]:
            for p, offset, value in producer.acked:
                log = leaders.get(self.groups[p])
                if log is None or offset < log.start_offset:  # none, or removed by retention
                    continue
                read = log.read(offset, 1, 1 << 20)
                found = orjson.loads(read.fragments[0]).get("value") if read.fragments else None
                if found != value:
                    ledger.violation(f"lost: {value!r} was acknowledged at {p}@{offset}, which holds {found!r}")
        sends = self.history.sends
        stats = {
            "acked": sum(1 for s in sends if s.outcome == OK),
            "sends": len(sends),
            "idem_acked": sum(1 for s in sends if s.outcome == OK and s.idempotent),
            "read": sum(len(p.messages) for p in self.history.polls if isinstance(p, Poll)),
            # The idempotent producers' promise (each a safety violation too) and, for
            # contrast, a plain producer's resends stored twice (counted, not a violation).
            "dups": result.count(chaos.DUPLICATE),
            "reorders": result.count(chaos.NON_MONOTONIC_SEND),
            "retry_dups": result.count(chaos.RETRY_DUPLICATE),
            "dropped": self.network.answers_dropped,
            "retained": self.counts["retained"],
            "snapshots": self.counts["snapshots"],
            "meta_compactions": self.counts["meta_compactions"],
            "meta_installs": self.counts["meta_installs"],
            "writes_cut": self.counts["writes_cut"],
            "registered": sum(r.granted for r in self.registrars),
            # The real Producers' messages failed by their delivery timeout (the long faults).
            "expired": sum(1 for s in sends if s.error == "DELIVERY_TIMEOUT"),
            # ... and the new epochs the idempotent ones took past a gap that left.
            "epoch_bumps": sum(p.producer.epoch_bumps for p in self.library),
            "faults": len(self.faults),
            "events": self.events,
        }
        for op in [*sends, *self.history.polls, *self.history.drains]:
            self._trace.update(orjson.dumps(op))
        self.trace("end", stats, ledger.violations)
        return SimResult(self.seed, not ledger.violations, tuple(ledger.violations), self._trace.hexdigest(),
                         self.clock.seconds(), stats, tuple(self.faults))


META = METADATA_GROUP


class _Failures:
    """A log observer: every event logged with a failure (an exception the code caught and
    logged, a timer that raised) or at level critical is a violation of the run."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __call__(self, event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        level = event.get("log_level")
        if failure is None and level is not LogLevel.critical:
            return
        text = formatEvent(event)
        if failure is not None:
            text += f": {failure.type.__name__}: {failure.value}"
            where = failure.frames[-1] if failure.frames else None
            if where is not None:
                text += f" (at {where[1]}:{where[2]})"
        self.ledger.violation(f"logged: {text}")


def run_seed(seed: int, config: SimConfig = SimConfig(), variant: Variant | None = None) -> SimResult:
    """Run seed C{seed}; a run that cannot settle is a failure too (its reason is the violation)."""
    world = SimCluster(seed, config, variant)
    world._isolated = set()
    observer = _Failures(world.ledger)
    globalLogPublisher.addObserver(observer)
    try:
        try:
            return world.run()
        except Liveness as e:
            world.ledger.violation(f"liveness: {e}")
        except Exception as e:  # the simulator's own assumptions broke (no leader to drain, ...)
            frame = traceback.extract_tb(e.__traceback__)[-1]
            world.ledger.violation(f"crash: {type(e).__name__}: {e} (at {frame.filename}:{frame.lineno})")
        try:
            return world.check()
        except Exception as e:
            world.ledger.violation(f"crash in the check: {type(e).__name__}: {e}")
            return SimResult(seed, False, tuple(world.ledger.violations), world._trace.hexdigest(),
                             world.clock.seconds(), {}, tuple(world.faults))
    finally:
        globalLogPublisher.removeObserver(observer)

"""L{ClusterNode}: one node of a cluster (design record sections 2, 6, 7).

It opens its identity (C{node.json}), meets its peers over the peer
transport of its C{RaftHost} (L{streamlog.raft.transport}: one connection
per node pair, whose hello carries the cluster id, the node id and the
incarnation; leadership announcements and the C{fwd} channel ride on it
too), bootstraps the cluster on its first start or resumes it, runs the
metadata group (C{"__meta"}, whose leader is the controller) and every
local partition group on that host, applies the committed metadata
entries, and runs the reconciliation planner every C{plan_interval}
seconds, carrying out its actions.  The broker's handlers
reach the cluster through it: topic administration (forwarded to the
controller), the C{Metadata} answer, the leader table for C{NOT_LEADER}
hints.

Every I/O dependency is injected: the clock, the storage (one storage
"topic" of one partition per Raft group, named by the group id), the
identity store, C{connect} (a peer address -> a client endpoint), the random
source.  A test runs several nodes in one process on a Clock over in-memory
connections (L{streamlog.testing.ClusterHarness}).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors, wire
from streamlog.cluster import metadata as md
from streamlog.cluster.directory import ReplicaDirectory, Topic
from streamlog.cluster.identity import IdentityStore, NodeIdentity
from streamlog.cluster.meta_snapshots import (
    DEFAULT_SNAPSHOT_ENTRIES,
    MetadataCompactor,
    MetadataRestoreError,
)
from streamlog.cluster.placement import create_topic_command, default_replication_factor
from streamlog.cluster.reconcile import (
    AddLearner,
    CoreViews,
    CreateReplica,
    DeleteReplica,
    NodeView,
    Planner,
    PlannerConfig,
    Promote,
    ProposeMetadata,
    RemoveMember,
    TransferLeadership,
    group_view,
    metadata_group_current,
)
from streamlog.cluster.replica import PartitionReplica, RemotePartition, ReplicaStorage
from streamlog.raft.core import LEADER, RaftConfig
from streamlog.raft.driver import GroupCallbacks, NotLeaderError, RaftHost
from streamlog.raft.log import Entry
from streamlog.raft.messages import InstallSnapshot
from streamlog.raft.transport import Hello
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import StorageFailed
from streamlog.storage.in_flight import META_SNAPSHOT
from streamlog.storage.snapshot_files import MemorySnapshots
from streamlog.topic_config import internal_mark

META = md.METADATA_GROUP

#: How the planner paces itself on a node: transfers to preferred leaders at most every 5 s
#: per group, RegisterNode re-proposed every second until it shows.
PLANNER = PlannerConfig(transfer_interval=5.0, register_interval=1.0)


class ClusterStartError(Exception):
    """The node must not run: one line for a person (another cluster's peer, another node's data)."""


class NodeHost(RaftHost):
    """The node's C{RaftHost}: what its peer transport hears about peers also goes to the node.

    The transport's hello is the node's hello (cluster id, node id,
    incarnation); a connection up or down is a peer met or lost; a forwarded
    request (C{fwd}) is an admin request for the controller.
    """

    def __init__(self, node: ClusterNode, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node = node

    def peer_connected(self, node: str, hello: Hello) -> None:
        super().peer_connected(node, hello)
        self.node.peer_up(int(node), hello)

    def peer_lost(self, node: str) -> None:
        super().peer_lost(node)
        self.node.peer_down(int(node))

    def forwarded(self, node: str, request: Any) -> Any:
        return self.node.serve_forwarded(int(node), request)

    def deliver(self, node: str, group: str, to: str, frm: str, msg: Any) -> None:
        conn = self.connections.get(node)
        if node == "":  # from this node itself (ReplicaDirectory.elect_alone)
            super().deliver(node, group, to, frm, msg)
            return
        if self.node.is_retired(frm) or conn is None or conn.hello is None or \
                frm != md.member_id(int(node), conn.hello.incarnation or ""):
            # Only the incarnation that said hello speaks on a connection, and never a replaced
            # data dir's (an old disk, a restored backup): its votes and acknowledgements must
            # never count again; it is told and cut off (ClusterNode.peer_up).
            self.stats["stale_incarnation"] += 1
            return
        super().deliver(node, group, to, frm, msg)

    def cluster_mismatch(self, node: str, theirs: str) -> None:
        self.node.cluster_mismatch(int(node), theirs)


class MetadataStorage(ReplicaStorage):
    """The metadata group's storage: its InstallSnapshot carries the cluster state, which the
    node checks and stores before the log is reset (L{ClusterNode.install_metadata_snapshot})."""

    def __init__(self, node: ClusterNode, *args: Any) -> None:
        super().__init__(*args)
        self.node = node

    def install_snapshot(self, m: InstallSnapshot) -> None:
        self.node.install_metadata_snapshot(m)


#: Results of applied metadata entries kept for a waiter (L{ClusterNode.applied}) that may
#: ask after the entry applied. Only a proposer waits, moments after its entry commits; a
#: follower applies every entry and nobody asks, so without a bound they would pile up.
RESULTS_KEPT = 4096


class PeerListener(Factory):
    """The peer listener's factory: the node's transport, built when L{ClusterNode.start} runs."""

    noisy = False  # no "Starting factory <PeerListener object at 0x...>" lines

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def buildProtocol(self, addr: Any) -> Any:
        if self.node.raft is None or self.node.stopped:
            return None  # not started (or stopped): the connection is closed, the peer dials again
        return self.node.raft.peer_factory().buildProtocol(addr)


class ClusterNode(GroupCallbacks):
    """This node in its cluster.  Build, then L{start}; C{ready} fires once Raft runs."""

    _log = Logger()
    #: The C{RaftHost} class (the cluster simulator's broken variants put a subclass here).
    host_class: type[NodeHost] = NodeHost

    def __init__(self, config: Any, storage: Any, *, clock: Any, connect: Callable[[str], Any],
                 identity: IdentityStore, client_address: str, rng: random.Random | None = None,
                 on_fatal: Callable[[str], object] | None = None,
                 on_storage_failure: Callable[[Any], object] | None = None,
                 planner_config: PlannerConfig = PLANNER,
                 plan_interval: float = 0.2, forward_timeout: float = 5.0) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.connect = connect
        self.identity_store = identity
        self.client_address = client_address
        self.rng = rng or random.Random()
        self.on_fatal = on_fatal
        #: Called when a Raft group's fsync fails (the process exits 70: C{fail_stop}).
        self.on_storage_failure = on_storage_failure
        self.planner = Planner(planner_config)
        self.plan_interval = plan_interval
        #: Replicas created per reactor turn (their file work runs on the reactor thread).
        self.creates_per_turn = 8
        self.forward_timeout = forward_timeout
        self.node_id: int = config.node_id
        self.peers: dict[int, str] = {n: a for n, a in config.peers.items() if n != self.node_id}
        self.peer_address = config.peers.get(self.node_id, "")
        self.identity: NodeIdentity | None = None
        self.state: md.ClusterState | None = None
        #: The host whose transport meets the peers; made by L{start}.
        self.raft: NodeHost | None = None
        #: The same host once Raft runs (the cluster is known): None before.
        self.host: RaftHost | None = None
        self.directory = ReplicaDirectory(None, "", hard_state=getattr(storage, "hard_state", None),
                                          locate=self.locate, other=self,
                                          unsynced_durability=config.broker_config().unsynced_durability)
        self.directory.clustered = True
        self.directory.peers_fsync = self._peers_fsync
        #: node id -> the hello of its connection (the last one, while connected or not).
        self.hellos: dict[int, Hello] = {}
        #: node id -> the other cluster id its hello carried (see cluster_mismatch).
        self._foreign: dict[int, str] = {}
        self.cores: dict[str, Any] = {}
        self.meta_log: Any = None
        self.meta_applied = 0
        #: The metadata group's snapshots and log compaction (made by L{_run_raft}).
        self.compactor: MetadataCompactor | None = None
        self._results: dict[int, md.Result] = {}
        self._applied_waiters: list[tuple[int, Deferred]] = []
        self._planning = LoopingCall(self._plan)
        self._planning.clock = clock
        self._plan_soon: Any = None
        #: What the storage recovered, if it was loaded already (else L{start} loads it).
        self.loaded: Any = None
        self.ready: Deferred = Deferred()
        self.stopped = False
        self.refused: str | None = None
        #: Read-only requests peers may ask of this node over the peer link (L{ask}): method ->
        #: params -> answer or Deferred (the consumer groups' C{GroupsHere}, C{PartitionOffsets}).
        self.peer_handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}

    # --- identities -----------------------------------------------------------------

    @property
    def member(self) -> str:
        assert self.identity is not None
        return md.member_id(self.node_id, self.identity.incarnation)

    def locate(self, member: str | None) -> tuple[int | None, str | None]:
        if member is None:
            return None, None
        try:
            node = md.node_of(member)
        except ValueError:
            return None, None
        return node, self.address_of(node)

    def address_of(self, node: int | None) -> str | None:
        if node is None:
            return None
        if node == self.node_id:
            return self.client_address
        if self.state is not None and node in self.state.nodes:
            return self.state.nodes[node].client_address
        hello = self.hellos.get(node)  # not registered yet (its first moments): what its hello said
        return hello.client_address if hello is not None else None

    def _fsyncs(self) -> bool:
        """Whether this node fsyncs its logs before acknowledging (what its hellos say)."""
        fsync = getattr(self.config, "fsync", None)
        return self.config.storage != "memory" and getattr(fsync, "mode", "always") == "always"

    def _peers_fsync(self) -> bool:
        """Whether every peer heard from said it fsyncs before acknowledging (a peer never
        heard from has acknowledged nothing); one that did not say (None) is not assumed to."""
        return all(hello.fsyncs is True for hello in self.hellos.values())

    # --- starting -------------------------------------------------------------------

    def start(self) -> None:
        """Open the identity and the storage; meet the peers; run Raft once the cluster is known."""
        self.identity = self.identity_store.load(self.node_id)
        self.directory.member = self.member
        self._loaded = self.loaded if self.loaded is not None else self.storage.load()
        self.directory.hard_state = getattr(self.storage, "hard_state", None) or self.directory.hard_state
        raft = RaftConfig(election_timeout=self.config.election_timeout_ms / 1000.0,
                          heartbeat_interval=self.config.heartbeat_ms / 1000.0)
        self.raft = self.host_class(self, str(self.node_id), [str(n) for n in self.peers], raft, callbacks=self.directory,
                             clock=self.clock, rng=random.Random(self.rng.random()),
                             incarnation=self.identity.incarnation, cluster_id=self.identity.cluster_id,
                             on_fatal=self.on_storage_failure, limits=getattr(self.config, "peer_limits", None))
        self.raft.transport.client_address = self.client_address or None
        self.raft.transport.fsyncs = self._fsyncs()
        self.raft.transport.beat_metadata = self._beat_metadata
        self.directory.host = self.raft
        self.raft.start()  # node heartbeats and liveness from the first connection on
        for node, address in sorted(self.peers.items()):
            self.raft.dial(str(node), self.connect(address))  # one connection per pair: one side dials
        if self.identity.cluster_id is not None:
            self._run_raft()
        elif not self.peers:  # a cluster of one (--peers names only this node): no hello to wait for
            self._maybe_bootstrap()
        self._planning.start(self.plan_interval, now=False)

    def peer_factory(self) -> Factory:
        """The factory of the peer listener (C{--peer-listen}): the peer transport's, once
        L{start} made it (the listener is bound before; a connection until then is closed)."""
        return PeerListener(self)

    def peer_up(self, node: int, hello: Hello) -> None:
        """Peer C{node}'s connection is up: its hello passed the transport's checks (a known
        node id, our protocol version, no other cluster id than ours)."""
        if self.stopped:
            return
        self._foreign.pop(node, None)
        if hello.incarnation is not None and self.is_retired(md.member_id(node, hello.incarnation)):
            self._stale_peer(node, hello.incarnation)
            return
        self.hellos[node] = hello
        assert self.identity is not None
        if self.identity.cluster_id is None:
            self._maybe_bootstrap()
        self._schedule_plan()

    def is_retired(self, member: str) -> bool:
        """Whether C{member} is an incarnation the metadata has replaced (a wiped node's old self)."""
        return self.state is not None and self.state.is_retired(member)

    def _stale_peer(self, node: int, incarnation: str) -> None:
        """Peer C{node} said hello as an incarnation the cluster has replaced: tell it (it stops
        with STALE_INCARNATION, see L{forwarded}) and close its connection."""
        assert self.state is not None and self.raft is not None
        current = self.state.nodes[node].incarnation
        self._log.warn("peer node {node} came back as incarnation {inc}, which incarnation {current} replaced: "
                       "refusing it (STALE_INCARNATION)", node=node, inc=incarnation, current=current)
        notice = {"method": "StaleIncarnation",
                  "params": {"node_id": node, "incarnation": incarnation, "current": current}}

        def close(_: Any) -> None:
            conn = self.raft.connections.get(str(node)) if self.raft is not None else None
            if conn is not None and conn.hello is not None and conn.hello.incarnation == incarnation:
                conn.transport.loseConnection()

        self.raft.forward(str(node), notice, 1.0).addBoth(close)

    def peer_down(self, node: int) -> None:
        self._schedule_plan()

    def cluster_mismatch(self, node: int, theirs: str) -> None:
        """Peer C{node} said it belongs to cluster C{theirs}: the transport closed it. Whose
        data is wrong?  The node a majority of its peers disagree with stops; the others only
        refuse the connection (a stray node must not stop a healthy cluster)."""
        assert self.identity is not None
        ours = self.identity.cluster_id
        self._foreign[node] = theirs
        self._log.warn("peer node {node} belongs to cluster {theirs}, this node to {ours}; closing",
                       node=node, theirs=theirs, ours=ours)
        if len(self._foreign) > len(self.peers) / 2:
            self._refuse(f"peer nodes {sorted(self._foreign)} belong to cluster {theirs}, this node's "
                         f"data dir ({self.identity_store.path or 'memory'}) to cluster {ours}: check --peers, "
                         "--node-id and --data-dir")

    def _maybe_bootstrap(self) -> None:
        """This node's data dir has no cluster id yet: bootstrap a new cluster, or join one.

        A new cluster's first start: once every peer said hello, the metadata group's first
        configuration is their sorted member ids, the cluster id its hash. A node whose
        peers' hellos already carry a cluster id (its data dir was wiped, or it is new)
        joins that cluster as a new incarnation (L{_join}), once a majority of its peers
        agree on the id: a minority must not pull a node into another cluster.
        """
        assert self.identity is not None
        incarnations = {self.node_id: self.identity.incarnation}
        incarnations.update({n: h.incarnation for n, h in self.hellos.items() if h.incarnation is not None})
        theirs = Counter(h.cluster_id for h in self.hellos.values() if h.cluster_id is not None)
        everyone = set(self.hellos) == set(self.peers) and set(incarnations) == set(self.peers) | {self.node_id}
        configuration = md.bootstrap_configuration(incarnations) if everyone else ()
        cluster_id = md.cluster_id_for(configuration) if everyone else None
        if theirs and set(theirs) != {cluster_id}:
            joined, agree = theirs.most_common(1)[0]
            if agree > len(self.peers) / 2:
                self._join(joined, agree)
            elif everyone:
                self._refuse(f"peer nodes disagree on their cluster ({dict(theirs)}) and this node's data dir "
                             "is new: no majority of its peers names one cluster to join")
            return
        if not everyone:
            return
        assert cluster_id is not None
        self.identity = attrs.evolve(self.identity, cluster_id=cluster_id, members=incarnations)
        self.identity_store.save(self.identity)
        self._log.info("bootstrapped cluster {cluster} with members {members}", cluster=cluster_id,
                       members=",".join(configuration))
        self._run_raft()

    def _join(self, cluster_id: str, agree: int) -> None:
        """Join the existing cluster C{cluster_id} as this node id's new incarnation.

        The node starts its metadata group empty and without members: it does not vote,
        campaign or count towards any majority. It registers (RegisterNode through the
        controller, which retires the old incarnation), the controller adds it to the
        metadata group as a learner, and once it has the metadata it creates its partition
        replicas empty; each group's leader then replaces the old member with this one,
        as a learner first and a voter once caught up (docs/cluster.md, "Rejoining")."""
        assert self.identity is not None
        self.identity = attrs.evolve(self.identity, cluster_id=cluster_id, members={})
        self.identity_store.save(self.identity)
        self._log.info("joining cluster {cluster} ({agree} of {peers} peers name it) as incarnation {inc}, "
                       "a new empty member: it votes in no group until it has caught up there",
                       cluster=cluster_id, agree=agree, peers=len(self.peers), inc=self.identity.incarnation)
        self._run_raft()

    def _refuse(self, line: str) -> None:
        """This node must not run: say why once, stop, and tell the process (which exits 1)."""
        if self.refused is not None:
            return
        self.refused = line
        self._log.critical("{line}", line=line)
        self.clock.callLater(0, self.stop)
        if self.on_fatal is not None:
            self.on_fatal(line)

    def _run_raft(self) -> None:
        assert self.identity is not None and self.identity.cluster_id is not None
        members = self.identity.members
        # Joined (not bootstrapped) here: no first configuration; the controller adds this node.
        configuration = md.bootstrap_configuration(members) if members else ()
        assert self.raft is not None
        loaded = self._loaded
        if META in loaded:
            log = loaded[META][1][0]
        else:
            log = self.storage.create_topic(META, 1, TopicConfig())[0]
        log = getattr(log, "log", log)
        if log.last_index == 0 and configuration:
            log.append([Entry(1, 0, b"", configuration)])
        self.meta_log = log
        store = self.storage.snapshot_store(META) if hasattr(self.storage, "snapshot_store") else MemorySnapshots()
        self.compactor = MetadataCompactor(store, getattr(self.config, "metadata_snapshot_entries",
                                                          DEFAULT_SNAPSHOT_ENTRIES))
        try:
            restored = self.compactor.restore(self.identity.cluster_id, log)
        except MetadataRestoreError as e:
            self._refuse(str(e))  # before the host runs: the node serves nothing from a state it lacks
            return
        self.host = self.raft
        self.host.cluster_id = self.identity.cluster_id  # every hello from now on carries it
        self.state = md.ClusterState.empty(self.identity.cluster_id)
        if restored is not None:  # the log after it is applied as it commits (entries up to it skipped)
            self.state, self.meta_applied = restored, restored.applied_index
            self._log.info("metadata restored from its snapshot as of entry {index} (the log holds {first} to {last})",
                           index=restored.applied_index, first=log.start_index, last=log.last_index)
        storage = MetadataStorage(self, META, log, self.directory.hard_state, lambda: self.directory.committer,
                                  self._meta_sync_failed)
        self.cores[META] = self.host.add_group(META, configuration, storage)
        for name, (_, logs) in loaded.items():
            parsed = md.parse_partition_group(name)
            if parsed is not None:  # a partition group this node held: it runs again at once
                replica = self.directory.open_replica("", parsed[1], logs[0], name, ())
                self.cores[name] = replica.node
        if restored is not None:
            self._refresh_topics()
        if not self.ready.called:
            self.ready.callback(None)

    def _meta_sync_failed(self, failure: Failure) -> None:
        self._log.failure("the metadata log could not sync", failure)

    def hand_over(self, timeout: float) -> Deferred:
        """Before a graceful stop (SIGTERM): transfer every group this node leads to a caught-up
        follower, and fire once it leads none (or C{timeout} passed), so that clients meet a
        leader elsewhere at once instead of waiting out an election timeout."""
        done: Deferred = Deferred()
        if self.host is None:
            done.callback(0)
            return done
        deadline = self.clock.seconds() + timeout
        asked: dict[str, float] = {}

        def led() -> list[str]:
            return [g for g, core in self.cores.items() if core.role == LEADER and core.peers]

        def check() -> None:
            groups = led()
            now = self.clock.seconds()
            if not groups or now >= deadline:
                if groups:
                    self._log.warn("stopping while leading {count} groups: no caught-up follower took them",
                                   count=len(groups))
                done.callback(len(groups))
                return
            live = self.live()
            for group in groups:
                core = self.cores[group]
                if asked.get(group, -1.0) + core.config.election_timeout > now:
                    continue  # a transfer is under way (the core gives it an election timeout)
                targets = [p for p in core.peers if core.caught_up(p) and live.get(md.node_of(p)) == p.split(".")[1]]
                if targets:
                    asked[group] = now
                    self.host.transfer_leadership(group, sorted(targets)[0])  # type: ignore[union-attr]
            self.clock.callLater(0.02, check)

        check()
        return done

    def stop(self) -> None:
        self.stopped = True
        if self._planning.running:
            self._planning.stop()
        if self._plan_soon is not None and self._plan_soon.active():
            self._plan_soon.cancel()
        if self.raft is not None:
            self.raft.stop()  # its dialers, its ticks and every peer connection
        for _, d in self._applied_waiters:
            if not d.called:
                d.errback(errors.ShuttingDown("the node is stopping"))
        self._applied_waiters = []

    # --- the metadata group (GroupCallbacks for groups that are not partitions) ------------

    def committed(self, group: str, upto: int) -> None:
        if group != META or self.state is None:
            return
        log = self.meta_log
        while self.meta_applied < upto:
            entries = log.entries(self.meta_applied + 1, upto + 1, 1 << 22)
            if not entries:  # never: a snapshot installed or restored covers what the log lacks
                self._log.critical("the metadata log lacks entry {index} (it holds {first} to {last}) to apply "
                                   "up to {upto}", index=self.meta_applied + 1, first=log.start_index,
                                   last=log.last_index, upto=upto)
                break
            for entry in entries:
                self.state, result = md.apply_entry(self.state, entry.data, entry.index)
                if result is not None:
                    self._results[entry.index] = result
                    if len(self._results) > RESULTS_KEPT:  # nobody waits for a follower's results
                        del self._results[next(iter(self._results))]  # the oldest (indexes grow)
                self.meta_applied = entry.index
        self._snapshot_metadata()
        self._after_apply()

    def _after_apply(self) -> None:
        """The applied metadata moved: topics, a retirement of this node, waiters, the planner."""
        assert self.state is not None
        self._refresh_topics()
        if self.is_retired(self.member):
            self._told_stale({"node_id": self.node_id, "incarnation": self.identity.incarnation,  # type: ignore[union-attr]
                              "current": self.state.nodes[self.node_id].incarnation})
        waiting, self._applied_waiters = self._applied_waiters, []
        for index, d in waiting:
            if index <= self.meta_applied:
                d.callback(self._results.pop(index, None))
            else:
                self._applied_waiters.append((index, d))
        self._schedule_plan()

    def role_changed(self, group: str, role: str, term: int, leader: str | None) -> None:
        if group == META:
            self._schedule_plan()

    # --- metadata snapshots and log compaction (streamlog.cluster.meta_snapshots) ----------

    def _snapshot_metadata(self) -> None:
        """Take a snapshot of the applied state if one is due, and write it once the log is
        durable up to its index; then drop the log's prefix up to the older snapshot kept."""
        compactor, core = self.compactor, self.cores.get(META)
        if compactor is None or core is None or self.state is None:
            return
        if self.stopped or getattr(self.directory.committer, "closed", False):
            # The node is stopping (its committer stops before the connections drain and this
            # node stops): a write handed over now could outlive the storage it writes to. The
            # log keeps its entries, for a later snapshot to cover.
            return
        if compactor.due(self.meta_applied):
            term = self.meta_log.term_at(self.meta_applied)
            if term is None:  # applied entries are below the log's start only after an install
                return
            compactor.take(self.state, term)
        job = compactor.start_write(core.durable_index)
        if job is None:
            return
        # The write and its fsyncs run in the committer's worker, counted with the node's other
        # syncs in flight (/ready, streamlog_fsync_oldest_in_flight_seconds): on the reactor a
        # hung disk held the node's every connection and timer, and nothing could tell. The
        # log is compacted only once the file is durable (the callback). Without a worker (the
        # simulator's disk, memory storage) the save runs here, as it always did.
        run = getattr(self.directory.committer, "run_tracked", None)
        if run is not None:
            d = run(META_SNAPSHOT, compactor.store.save, *job)
        else:
            d = maybeDeferred(compactor.store.save, *job)
        d.addBoth(self._metadata_snapshot_saved, job)
        d.addErrback(lambda f: self._log.failure("writing the metadata snapshot, or compacting the log after it, failed", f))

    def _metadata_snapshot_saved(self, result: Any, job: tuple[int, bytes]) -> None:
        """The snapshot of C{job} is durable (or its save failed): drop the log's prefix up to
        the older snapshot kept."""
        compactor, core = self.compactor, self.cores.get(META)
        assert compactor is not None
        if isinstance(result, Failure):
            compactor.abandon_write()
            if result.check(StorageFailed) and getattr(self.directory.committer, "closed", False):
                return  # a failed fsync: the committer stops the node (fail-stop, exit 70), and said why
            if not result.check(OSError):
                result.raiseException()
            # A failed write (ENOSPC): nothing is lost, the log is not compacted, and the next
            # snapshot tries again.
            self._log.error("writing the metadata snapshot failed: {error}; the metadata log is not compacted, "
                            "and the next snapshot tries again", error=result.value)
            return
        if not compactor.finish_write(*job) or core is None or self.stopped:
            return  # a newer one was installed meanwhile (its log reset), or the node stopped
        upto = min(compactor.compaction_point(), core.commit_index, core.durable_index)
        if upto >= self.meta_log.start_index:
            core.compact(upto)
        roll = getattr(self.meta_log, "roll", None)
        if roll is not None:  # a segmented log drops whole segments only: one per snapshot, cut at the next
            roll()
        self._log.info("metadata snapshot as of entry {index} written; the metadata log holds entries {first} "
                       "to {last}", index=compactor.index, first=self.meta_log.start_index, last=self.meta_log.last_index)

    def snapshot_data(self, group: str, index: int) -> bytes:
        """The metadata group's InstallSnapshot data: the newest snapshot's file bytes."""
        if group != META or self.compactor is None:
            return b""
        data = self.compactor.snapshot_for(index)
        if data is None:
            self._log.critical("the metadata log starts after entry {index} but the newest snapshot is as of entry "
                               "{held}: a follower cannot be caught up", index=index, held=self.compactor.index)
            return b""
        return data

    def install_metadata_snapshot(self, m: InstallSnapshot) -> None:
        """The controller's log starts after C{m.last_index}, past this node's: check and store
        its snapshot (raising before anything changes if it does not check out: the message
        is dropped and sent again), reset the log there, and take the snapshot's state."""
        assert self.compactor is not None and self.identity is not None and self.identity.cluster_id is not None
        state = self.compactor.install(m.data, self.identity.cluster_id, m.last_index)
        self.meta_log.reset(m.last_index, m.last_term, m.config)
        if state.applied_index > self.meta_applied:
            self.state, self.meta_applied = state, state.applied_index
            self._log.info("installed the controller's metadata snapshot as of entry {index}",
                           index=state.applied_index)
            self._after_apply()

    def leader_of(self, group: str) -> tuple[int | None, int]:
        """(leader node id or None, term): the newest of what this node sees and its peers announced."""
        term, leader = 0, None
        core = self.cores.get(group)
        if core is not None:
            term = core.term
            if core.leader_id:
                try:
                    leader = md.node_of(core.leader_id)
                except ValueError:
                    pass
        if self.raft is not None:
            for node, table in self.raft.remote_leadership.items():  # [term, isr] of what each leads
                seen = table.get(group)
                if seen is not None and (seen[0] > term or leader is None and seen[0] >= term):
                    term, leader = int(seen[0]), int(node)
        return leader, term

    @property
    def controller(self) -> int | None:
        return self.leader_of(META)[0]

    def metadata_current(self) -> bool:
        """Whether this node's applied metadata is as new as it can know: its metadata replica
        knows a leader, its commit index is at an entry of the current term, and everything
        up to it is applied.  The term matters: after every node restarted, the new
        controller's commit index (and so what it tells its followers) is 0 until it commits
        the first entry of its term, and the state applied up to there lacks every topic."""
        core = self.cores.get(META)
        # The planner's test (reconcile.metadata_current) on this node's metadata core.
        return self.state is not None and core is not None and metadata_group_current(self.state, group_view(core))

    def unknown_topic(self, name: str) -> errors.StreamlogError:
        """The error for a topic this node's metadata lacks: C{UNKNOWN_TOPIC} only when the
        metadata is current; before that (a node that restarted, or is cut off from the
        controller) the topic may exist, and the client is told to retry
        (C{LEADER_NOT_AVAILABLE}): an C{UNKNOWN_TOPIC} there made the Producer treat a live
        topic as one to auto-create and send it unnumbered batches."""
        if self.metadata_current():
            return errors.UnknownTopic(f"unknown topic {name!r}", topic=name)
        return errors.LeaderNotAvailable(
            f"topic {name!r} is not in this node's metadata, which may be behind (no controller heard "
            "from yet, or its log not applied); retry shortly", topic=name)

    # --- topics as the metadata says -----------------------------------------------------

    def _refresh_topics(self) -> None:
        """The directory's topics: this node's replicas, and the others' partitions as remote."""
        assert self.state is not None
        topics: dict[str, Topic] = {}
        named: list[PartitionReplica] = []
        for name, info in self.state.topics.items():
            partitions: list[Any] = []
            for p, placement in enumerate(info.partitions):
                group = md.partition_group(info.topic_id, p)
                replica = self.directory.by_group.get(group)
                if replica is not None:
                    replica.topic, replica.index = name, p
                    replica.replication_factor = len(placement.replicas)
                    partitions.append(replica)
                    named.append(replica)
                else:
                    partitions.append(RemotePartition(name, p, group, self, len(placement.replicas)))
            old = self.directory.topics.get(name)
            topic = Topic(name, info.config, partitions, info.topic_id)
            if old is not None and old.topic_id == info.topic_id:
                topic._round_robin = old._round_robin
            topics[name] = topic
        self.directory.topics = topics
        for replica in named:  # one that led before the metadata named it is announced now
            self.directory.announce_leading(replica)

    # --- the planner ---------------------------------------------------------------------

    def _schedule_plan(self) -> None:
        if self.stopped or self._plan_soon is not None and self._plan_soon.active():
            return
        self._plan_soon = self.clock.callLater(0, self._plan)

    def live(self) -> dict[int, str]:
        assert self.identity is not None
        live = {self.node_id: self.identity.incarnation}
        if self.raft is not None:
            for node, conn in self.raft.connections.items():
                if conn.hello is not None and conn.hello.incarnation is not None:
                    live[int(node)] = conn.hello.incarnation
        return live

    def view(self) -> NodeView:
        assert self.identity is not None
        # Views built on access, for the groups this node leads (the host keeps that set): a
        # plan costs what this node leads, not every group it holds.
        led = self.raft.led_groups() if self.raft is not None else None
        peer_metadata = {int(node): applied for node, applied in self.raft.transport.peer_metadata.items()
                         if isinstance(applied, int) or applied is None} if self.raft is not None else {}
        return NodeView(self.node_id, self.identity.incarnation, self.client_address, self.peer_address or
                        self.client_address, CoreViews(self.cores), self.live(), led, peer_metadata)

    def _beat_metadata(self) -> int | None:
        """What this node's node heartbeats say of its metadata (the peers' planners hand it
        leadership only when it is current: see reconcile.peer_metadata_current)."""
        return self.state.applied_index if self.state is not None and self.metadata_current() else None

    def _plan(self) -> None:
        if self.host is None or self.state is None or self.stopped:
            return
        try:
            if self.compactor is not None and self.compactor.pending is not None:
                self._snapshot_metadata()  # waiting for the log's fsync to reach it
            created = 0
            for action in self.planner.plan(self.state, self.view(), self.clock.seconds()):
                if isinstance(action, CreateReplica):
                    if created >= self.creates_per_turn:
                        # The rest in later reactor turns: a 1,024-partition topic must not hold the
                        # reactor (clients, heartbeats) for the seconds its files take to make.
                        self._schedule_plan()
                        continue
                    created += 1
                self._carry_out(action)
            if created:
                self._refresh_topics()  # once a turn, not once a replica
        except Exception:
            self._log.failure("planning failed")

    def _carry_out(self, action: Any) -> None:
        host = self.host
        assert host is not None
        if isinstance(action, ProposeMetadata):
            d = self.propose(md.encode_command(action.command))
            d.addErrback(lambda f: None)  # re-proposed by the planner if it did not take
        elif isinstance(action, CreateReplica):
            self._create_replica(action)
        elif isinstance(action, DeleteReplica):
            self._delete_replica(action.group)
        elif isinstance(action, AddLearner):
            host.add_learner(action.group, action.member)
        elif isinstance(action, Promote):
            host.change_membership(action.group, add=action.member)
        elif isinstance(action, RemoveMember):
            host.change_membership(action.group, remove=action.member)
        elif isinstance(action, TransferLeadership):
            host.transfer_leadership(action.group, action.member)

    def _create_replica(self, action: CreateReplica) -> None:
        log = self.storage.create_topic(action.group, 1, action.config)[0]
        raw = getattr(log, "log", log)
        initial = tuple(action.initial_members or ())
        if initial and raw.last_index == 0:
            raw.append([Entry(1, 0, b"", tuple(sorted(initial)))])
        topic = self.state.topics.get(action.topic) if self.state is not None else None
        factor = len(topic.partitions[action.partition].replicas) if topic is not None else len(initial) or 1
        replica = self.directory.open_replica(action.topic, action.partition, log, action.group, (), factor)
        self.cores[action.group] = replica.node

    def _delete_replica(self, group: str) -> None:
        replica = self.directory.by_group.pop(group, None)
        self.cores.pop(group, None)
        if replica is None:
            return
        assert self.host is not None
        # Closed first: its waiting writes get UNKNOWN_TOPIC, not the host's NOT_LEADER.
        replica.close(errors.UnknownTopic(f"topic {replica.topic!r} was deleted", topic=replica.topic))
        self.host.remove_group(group)
        if self.directory.committer is not None:
            self.directory.committer.forget(replica.log)
        try:
            self.storage.delete_topic(group)
        except Exception:
            self._log.failure("deleting the replica of {group} failed", group=group)
        self._refresh_topics()

    # --- proposals and forwarding ------------------------------------------------------------

    def propose(self, command: bytes) -> Deferred:
        """Commit a metadata command (here if this node is the controller, else at the
        controller): fires with its result once this node has applied it."""
        if self.host is None:
            return fail(errors.LeaderNotAvailable("the cluster is not formed yet: waiting for every peer"))
        core = self.cores[META]
        if core.role == LEADER:
            d = self.host.submit(META, command)
            return d.addCallbacks(self.applied, self._not_controller)
        return self.forward("ProposeMetadata", {"command": command.decode()})

    def applied(self, index: int) -> Deferred:
        """Fires with the result of metadata entry C{index} once this node has applied it."""
        if index <= self.meta_applied:
            return succeed(self._results.pop(index, None))
        d: Deferred = Deferred()
        self._applied_waiters.append((index, d))
        return d

    def _not_controller(self, failure: Failure) -> Failure:
        if failure.check(NotLeaderError):
            raise self.not_controller()
        return failure

    def not_controller(self) -> errors.StreamlogError:
        controller = self.controller
        if controller is None:
            return errors.LeaderNotAvailable("the controller is being elected; retry shortly")
        return errors.NotController(f"node {controller} is the controller and could not be reached",
                                    controller=controller, controller_address=self.address_of(controller))

    def forward(self, method: str, params: dict[str, Any]) -> Deferred:
        """Run C{method} at the controller; its answer (or error) is ours."""
        controller = self.controller
        if controller is None or controller == self.node_id or self.raft is None \
                or str(controller) not in self.raft.connections:
            return fail(self.not_controller())
        d = self.raft.forward(str(controller), {"method": method, "params": params}, self.forward_timeout)

        def lost(failure: Failure) -> Any:
            failure.trap(ConnectionError, TimeoutError)  # the link went down, or no answer in time
            raise self.not_controller()

        def answered(answer: Any) -> Any:
            result = _peer_result(answer)
            index = result.get("index") if isinstance(result, dict) else None
            if isinstance(index, int):  # see what the controller did before answering
                return self.applied(index).addCallback(lambda _: result)
            return result

        return d.addCallbacks(answered, lost)

    def ask(self, node: int, method: str, params: dict[str, Any]) -> Deferred:
        """Run C{method} (one of the peer's L{peer_handlers}) at peer C{node} over the peer
        link: its result, or its error; C{ConnectionError} if the node is not connected,
        C{TimeoutError} if no answer comes within the forward timeout."""
        if self.raft is None or str(node) not in self.raft.connections:
            return fail(ConnectionError(f"node {node} is not connected"))
        d = self.raft.forward(str(node), {"method": method, "params": params}, self.forward_timeout)
        return d.addCallback(_peer_result)

    def serve_forwarded(self, node: int, request: Any) -> Deferred:
        """Peer C{node} forwarded C{{"method", "params"}} (L{forward} there): the answer goes
        back as C{{"result": ...}} or C{{"error": {code, message, ...}}}."""

        def ok(result: Any) -> dict[str, Any]:
            return {"result": result}

        def failed(failure: Failure) -> dict[str, Any]:
            error = failure.value
            if not isinstance(error, errors.StreamlogError):
                self._log.failure("forwarded request from node {node} failed", failure, node=node)
                error = errors.Internal("internal error at the controller")
            return {"error": error.to_wire()}

        if not (isinstance(request, dict) and isinstance(request.get("method"), str)
                and isinstance(request.get("params", {}), dict)):
            self._log.warn("node {node} forwarded a malformed request", node=node)
            return succeed(failed(Failure(errors.InvalidParams("a forwarded request is {method, params}"))))
        return maybeDeferred(self.forwarded, request["method"], dict(request.get("params") or {})).addCallbacks(ok, failed)

    def forwarded(self, method: str, params: dict[str, Any]) -> Deferred:
        """A peer forwarded C{method} to this node, the controller it believes."""
        try:
            if method == "ProposeMetadata":
                command = md.decode_command(str(params["command"]).encode())
                return self._controller_commit(command).addCallback(_result_dict)
            if method == "CreateTopic":
                return self.create_topic(params)
            if method == "DeleteTopic":
                return self.delete_topic(params)
            if method == "StaleIncarnation":
                return self._told_stale(params)
            handler = self.peer_handlers.get(method)
            if handler is not None:
                return maybeDeferred(handler, params)
            raise errors.MethodNotFound(f"cannot forward {method!r}", method=method)
        except errors.StreamlogError as e:
            return fail(e)
        except (KeyError, ValueError) as e:
            return fail(errors.InvalidParams(f"bad forwarded request: {e}"))

    def _told_stale(self, params: dict[str, Any]) -> Deferred:
        """A peer says this node's incarnation was replaced (its node id re-registered with a
        new data dir): this data dir must never run again in the cluster."""
        assert self.identity is not None
        if params.get("node_id") != self.node_id or params.get("incarnation") != self.identity.incarnation:
            raise errors.InvalidParams("StaleIncarnation names another node or incarnation")
        self._refuse(f"STALE_INCARNATION: node {self.node_id}'s data dir ({self.identity_store.path or 'memory'}, "
                     f"incarnation {self.identity.incarnation}) was replaced by incarnation {params.get('current')} "
                     "(a wiped disk rejoined): this old copy must not run; wipe it to rejoin as a new member")
        return succeed({"stopping": True})

    def _controller_commit(self, command: Any) -> Deferred:
        """Commit C{command} as the controller: fires with (index, result) once applied here."""
        if self.host is None or self.cores[META].role != LEADER:
            return fail(self.not_controller())
        d = self.host.submit(META, md.encode_command(command))

        def applied(index: int) -> Deferred:
            return self.applied(index).addCallback(lambda result: (index, result))

        return d.addCallbacks(applied, self._not_controller)

    # --- topic administration (Broker handlers in a cluster) ----------------------------------

    def create_topic(self, params: dict[str, Any]) -> Deferred:
        if self.host is None or self.cores[META].role != LEADER:
            return self.forward("CreateTopic", params)
        p = wire.parse_create_topic(params, self.config.limits)
        assert self.state is not None
        factor = p.replication_factor or self.config.replication_factor
        live = self.live()
        registered = [n for n in live if n in self.state.nodes]
        wanted = factor if factor is not None else default_replication_factor(len(self.peers) + 1)
        if len(registered) < wanted and len(self.state.nodes) <= len(self.peers):
            # A cluster still forming: its nodes register through the controller in its first moments.
            raise errors.LeaderNotAvailable(
                f"{len(registered)} of the cluster's {len(self.peers) + 1} nodes have registered; retry shortly")
        if factor is None:
            factor = default_replication_factor(len(registered))
        command = create_topic_command(
            self.state, p.topic, p.partitions, p.config, max_partitions=self.config.limits.max_partitions,
            max_partitions_per_node=self.config.limits.max_partitions_per_node, replication_factor=factor,
            live_nodes=[n for n in live if n in self.state.nodes],
        )
        return self._controller_commit(command).addCallback(self._topic_answer, p.topic)

    def delete_topic(self, params: dict[str, Any]) -> Deferred:
        if self.host is None or self.cores[META].role != LEADER:
            return self.forward("DeleteTopic", params)
        name = wire.parse_topic_only(params, self.config.limits)
        assert self.state is not None
        if name not in self.state.topics:
            return fail(errors.UnknownTopic(f"unknown topic {name!r}", topic=name))

        def answer(outcome: tuple[int, md.Result | None]) -> dict[str, Any]:
            index, result = outcome
            if result is not None and not result.ok:
                raise result.exception()  # type: ignore[union-attr]
            return {"topic": name, "deleted": True, "index": index}

        return self._controller_commit(md.DeleteTopic(name)).addCallback(answer)

    def _topic_answer(self, outcome: tuple[int, md.Result | None], name: str) -> dict[str, Any]:
        index, result = outcome
        if result is not None and not result.ok:
            raise result.exception()  # type: ignore[union-attr]
        answer = self.describe(name)
        answer["index"] = index
        return answer

    def describe(self, name: str) -> dict[str, Any]:
        """DescribeTopic in a cluster: from the metadata, with leader, replicas and isr per partition."""
        state = self.state
        if state is None or name not in state.topics:
            raise self.unknown_topic(name)
        info = state.topics[name]
        topic = self.directory.topics.get(name)
        partitions = []
        for p, placement in enumerate(info.partitions):
            entry = self._partition_metadata(info, p, placement)
            local = topic.partitions[p] if topic is not None and p < len(topic.partitions) else None
            if isinstance(local, PartitionReplica):
                entry.update(log_start_offset=local.start_offset, high_watermark=local.high_watermark,
                             log_end_offset=local.end_offset)
            partitions.append(entry)
        return {"topic": name, "topic_id": info.topic_id, **internal_mark(name), "partitions": partitions,
                "config": info.config.to_dict(), "replication_factor": info.replication_factor}

    def _partition_metadata(self, info: md.TopicInfo, p: int, placement: md.PartitionInfo,
                            live: dict[int, str] | None = None) -> dict[str, Any]:
        """One partition of a Metadata or DescribeTopic answer. `live` (L{live}) may be given
        by a caller answering many partitions: it is the same for all of them."""
        group = md.partition_group(info.topic_id, p)
        leader, term = self.leader_of(group)
        core = self.cores.get(group)
        entry = {"partition": p, "leader": leader, "leader_term": term, "replicas": list(placement.replicas),
                 "isr": self._isr(group, leader, term, live)}
        if core is not None and core.role == LEADER:  # only a leader knows its followers' logs
            replica = self.directory.by_group.get(group)
            offsets = replica.replica_offsets(md.node_of) if replica is not None else None
            if offsets is not None:
                entry["replica_offsets"] = offsets
        return entry

    def _isr(self, group: str, leader: int | None, term: int, live: dict[int, str] | None = None) -> list[int]:
        """The nodes in sync in C{group}: its voters caught up with a live incarnation, as seen at
        its leader; elsewhere as the leader last announced them."""
        core = self.cores.get(group)
        if core is not None and core.role == LEADER:
            if live is None:
                live = self.live()
            isr = set()
            for m in core.voters:
                node, incarnation = md.parse_member_id(m)
                if m == core.id or (core.caught_up(m) and live.get(node) == incarnation):
                    isr.add(node)
            return sorted(isr)
        return self._announced_isr(group, leader, term)

    def _announced_isr(self, group: str, leader: int | None, term: int) -> list[int]:
        """The in-sync replicas of a group led elsewhere, as its leader last announced them
        (its leadership announcements carry them: docs/raft.md); [] when none is known."""
        if leader is None or self.raft is None:
            return []
        seen = self.raft.remote_leadership.get(str(leader), {}).get(group)
        if seen is None or seen[0] != term:
            return []
        return sorted({md.node_of(m) for m in seen[1]})

    def metadata(self, params: dict[str, Any]) -> dict[str, Any]:
        """The C{Metadata} answer (docs/protocol.md)."""
        names = wire.parse_metadata(params, self.config.limits)
        state = self.state
        live = self.live() if self.identity is not None else {}
        nodes = [{"node_id": node, "address": self.address_of(node), "up": node == self.node_id or node in live}
                 for node in sorted({self.node_id, *self.peers})]
        topics = []
        known = state.topics if state is not None else {}
        for name in (sorted(known) if names is None else names):
            info = known.get(name)
            if info is None:
                topics.append({"topic": name, "error": self.unknown_topic(name).to_wire()})
                continue
            topics.append({"topic": name, "topic_id": info.topic_id, **internal_mark(name), "partitions": [
                self._partition_metadata(info, p, placement, live) for p, placement in enumerate(info.partitions)]})
        controller, controller_term = self.leader_of(META)
        return {"cluster_id": state.cluster_id if state is not None else None, "controller": self.controller,
                "controller_isr": self._isr(META, controller, controller_term), "nodes": nodes, "topics": topics}


def _peer_result(answer: Any) -> Any:
    """The result of a peer's answer to a forwarded request, or its error raised."""
    if not isinstance(answer, dict):
        raise errors.Internal("a peer's answer to a forwarded request is not an object")
    if "error" in answer:
        raise errors.from_wire(answer["error"])
    return answer.get("result")


def _result_dict(outcome: tuple[int, md.Result | None]) -> dict[str, Any]:
    index, result = outcome
    if result is not None and not result.ok:
        raise result.exception()  # type: ignore[union-attr]
    value = dict(result.value) if result is not None else {}  # type: ignore[union-attr]
    return {"index": index, **orjson.loads(orjson.dumps(value, default=str))}

"""A whole cluster in one process, for tests: real `RaftNode` cores for the metadata group
and every partition group of every node, the metadata state machine applied from committed
entries, and each node's `Planner` carried out, over an instant in-memory network with
instant disks.

It is the thin wiring the node will do, written as plainly as possible, so the tests can
show that the cluster package's API is enough for it: a node holds cores, applies committed
metadata entries with `apply_entry`, builds its `NodeView` with `group_view`, and turns
each planned action into one call on a core (or a proposal to the controller).
"""

from __future__ import annotations

import random
from collections import deque

from cluster_support import inc, register

from streamlog.cluster.metadata import (
    METADATA_GROUP,
    ClusterState,
    apply_entry,
    bootstrap_configuration,
    cluster_id_for,
    encode_command,
    intended_members,
    member_id,
    parse_member_id,
    parse_partition_group,
)
from streamlog.cluster.placement import create_topic_command
from streamlog.cluster.reconcile import (
    AddLearner,
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
from streamlog.raft.core import LEADER, Commit, HardState, RaftConfig, RaftNode, Send, SyncLog
from streamlog.raft.log import Entry, MemoryRaftLog
from streamlog.storage.base import TopicConfig

RAFT = RaftConfig(election_timeout=0.3, heartbeat_interval=0.05, max_inflight=4, max_batch_bytes=1 << 16)
PLANNER = PlannerConfig(transfer_interval=1.0, max_transfers=8, register_interval=0.5)


class SimNode:
    def __init__(self, node_id: int, generation: int, cluster_id: str, meta_members, seed: int):
        self.node_id = node_id
        self.generation = generation
        self.incarnation = inc(node_id, generation)
        self.member = member_id(node_id, self.incarnation)
        reg = register(node_id, generation)
        self.client_address, self.peer_address = reg.client_address, reg.peer_address
        self.rng = random.Random(seed)
        self.cores: dict[str, RaftNode] = {}
        self.applied: dict[str, int] = {}
        self.records: dict[str, list[bytes]] = {}  # applied data entries per partition group
        self.state = ClusterState.empty(cluster_id)
        self.results: dict[int, object] = {}  # metadata index -> result, as applied here
        self.planner = Planner(PLANNER)
        self.add_group(METADATA_GROUP, meta_members)

    def add_group(self, group, initial):
        entries = [Entry(1, 0, b"", tuple(sorted(initial)))] if initial else []
        self.cores[group] = RaftNode(self.member, initial or (), MemoryRaftLog(entries), HardState(), RAFT,
                                     random.Random(self.rng.random()))
        self.applied[group] = 0
        self.records[group] = []

    def view(self, live, peer_metadata=None) -> NodeView:
        groups = {g: group_view(core) for g, core in self.cores.items()}
        return NodeView(self.node_id, self.incarnation, self.client_address, self.peer_address, groups, live,
                        peer_metadata=peer_metadata or {})

    def beat_metadata(self):
        """What this node's heartbeats would say of its metadata (as ClusterNode._beat_metadata)."""
        core = self.cores.get(METADATA_GROUP)
        current = core is not None and metadata_group_current(self.state, group_view(core))
        return self.state.applied_index if current else None


class MiniCluster:
    def __init__(self, nodes: int = 3, seed: int = 0, loss: float = 0.0):
        self.now = 0.0
        self.queue: deque = deque()
        self.loss = loss  # the share of messages the network drops
        self.net = random.Random(seed)
        self.seed = seed
        self.up: dict[int, SimNode] = {}
        incarnations = {n: inc(n) for n in range(1, nodes + 1)}
        self.meta_config = bootstrap_configuration(incarnations)
        self.cluster_id = cluster_id_for(self.meta_config)
        for n in incarnations:
            self.up[n] = SimNode(n, 0, self.cluster_id, self.meta_config, seed * 100 + n)
        self.configs_seen: dict[str, list[tuple[str, ...]]] = {}  # every configuration ever appended, per group
        self.actions: list[tuple[int, object]] = []

    # ------------------------------------------------------------------ running

    def process(self, node: SimNode, group: str, effects) -> None:
        core = node.cores.get(group)
        for e in effects:
            if isinstance(e, Send):
                self.queue.append((node.member, e.to, group, e.msg))
            elif isinstance(e, Commit) and core is not None:
                self._apply(node, group, core, e.upto)
            elif isinstance(e, SyncLog) and core is not None:
                # Instant disks: the fsync is done at once, and reported back (the effects
                # contract: a leader counts itself at its durable index).
                self.process(node, group, core.log_synced(e.upto, self.now))
        if core is not None:
            seen = self.configs_seen.setdefault(group, [])
            found = core.log.config_at(core.log.last_index)
            if found is not None and (not seen or seen[-1] != found[1]) and found[1] not in seen:
                seen.append(found[1])

    def _apply(self, node: SimNode, group: str, core: RaftNode, upto: int) -> None:
        for index in range(node.applied[group] + 1, upto + 1):
            entry = core.log.entry_at(index)
            assert entry is not None, "no compaction in the mini cluster"
            if group == METADATA_GROUP:
                node.state, result = apply_entry(node.state, entry.data, index)
                if result is not None:
                    node.results[index] = result
            elif entry.data:
                node.records[group].append(entry.data)
            node.applied[group] = index

    def deliver(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            frm, to, group, msg = self.queue.popleft()
            node = self.up.get(parse_member_id(to)[0])
            # The receiving node drops messages for a group it does not hold or for a member
            # that is not its current one (an old incarnation's address).
            if node is None or node.member != to or group not in node.cores:
                continue
            if self.loss and self.net.random() < self.loss:
                continue
            self.process(node, group, node.cores[group].receive(frm, msg, self.now))
        raise AssertionError("message storm")

    def live(self) -> dict[int, str]:
        return {n: node.incarnation for n, node in self.up.items()}

    def step(self, dt: float = 0.025, plan: bool = True) -> None:
        self.now += dt
        for node in list(self.up.values()):
            for group, core in list(node.cores.items()):
                self.process(node, group, core.tick(self.now))
        self.deliver()
        if plan:
            live = self.live()
            beats = {n: node.beat_metadata() for n, node in self.up.items()}
            for node in list(self.up.values()):
                for action in node.planner.plan(node.state, node.view(live, beats), self.now):
                    self.actions.append((node.node_id, action))
                    self.carry_out(node, action)
                self.deliver()

    def run_until(self, condition, seconds: float = 30.0) -> float:
        """Step until condition() holds; the simulated time it took."""
        start = self.now
        while not condition():
            if self.now - start > seconds:
                raise AssertionError(f"not reached in {seconds} simulated seconds: {self.describe()}")
            self.step()
        return self.now - start

    def carry_out(self, node: SimNode, action) -> None:
        if isinstance(action, ProposeMetadata):
            self.propose_metadata(encode_command(action.command))
            return
        if isinstance(action, CreateReplica):
            node.add_group(action.group, action.initial_members)
            return
        if isinstance(action, DeleteReplica):
            del node.cores[action.group]
            return
        core = node.cores[action.group]
        if isinstance(action, AddLearner):
            effects = core.add_learner(action.member, self.now)
        elif isinstance(action, Promote):
            _, effects = core.change_membership(self.now, add=action.member)
        elif isinstance(action, RemoveMember):
            _, effects = core.change_membership(self.now, remove=action.member)
        elif isinstance(action, TransferLeadership):
            effects = core.transfer_leadership(action.member, self.now)
        else:
            raise AssertionError(action)
        self.process(node, action.group, effects)

    # ------------------------------------------------------------------ what clients and operators do

    def leader_of(self, group: str) -> SimNode | None:
        leaders = [n for n in self.up.values() if group in n.cores and n.cores[group].role == LEADER]
        return max(leaders, key=lambda n: n.cores[group].term) if leaders else None

    def propose_metadata(self, data: bytes) -> int | None:
        """Forward to the controller, as a node does; None if there is none right now."""
        controller = self.leader_of(METADATA_GROUP)
        if controller is None:
            return None
        index, effects = controller.cores[METADATA_GROUP].propose(data, self.now)
        self.process(controller, METADATA_GROUP, effects)
        return index if isinstance(index, int) else None

    def create_topic(self, name: str, partitions: int, replication_factor: int | None = None) -> int:
        self.run_until(lambda: self.leader_of(METADATA_GROUP) is not None)
        controller = self.leader_of(METADATA_GROUP)
        command = create_topic_command(controller.state, name, partitions, TopicConfig(), max_partitions=1024,
                                       max_partitions_per_node=10_000, replication_factor=replication_factor,
                                       live_nodes=self.up)
        index = self.propose_metadata(encode_command(command))
        assert index is not None
        return index

    def produce(self, group: str, data: bytes) -> bool:
        leader = self.leader_of(group)
        if leader is None:
            return False
        index, effects = leader.cores[group].propose(data, self.now)
        self.process(leader, group, effects)
        return isinstance(index, int)

    def stop(self, node_id: int) -> SimNode:
        return self.up.pop(node_id)

    def start(self, node: SimNode) -> None:
        self.up[node.node_id] = node

    def restart(self, node_id: int, metadata: ClusterState | None = None) -> SimNode:
        """Restart a node on its disk: its cores come back from their logs and hard state
        (commit index unknown until a leader says), its metadata from `metadata` (the
        snapshot it last kept; default: none) replayed forward by the log."""
        node = self.up[node_id]
        for group, core in node.cores.items():
            node.cores[group] = RaftNode(node.member, (), core.log, HardState(core.term, core.voted_for), RAFT,
                                         random.Random(node.rng.random()))
            node.applied[group] = 0
            node.records[group] = []
        node.state = metadata if metadata is not None else ClusterState.empty(self.cluster_id)
        node.applied[METADATA_GROUP] = node.state.applied_index
        node.planner = Planner(PLANNER)
        return node

    def wipe_and_start(self, node_id: int) -> SimNode:
        """The node's disk is gone: it comes back as a new incarnation that knows only the
        cluster id (from its peers' hellos) and joins the metadata group with no members."""
        old = self.up.pop(node_id, None)
        generation = (old.generation if old else 0) + 1
        node = SimNode(node_id, generation, self.cluster_id, None, self.seed * 100 + node_id + 50 * generation)
        self.up[node_id] = node
        return node

    # ------------------------------------------------------------------ what the tests check

    def converged(self) -> bool:
        """Every node's metadata is current; every group has a leader whose voters are the
        intended members and who is the preferred leader; every hosted replica exists."""
        states = [n.state for n in self.up.values()]
        if any(s.applied_index != states[0].applied_index for s in states):
            return False
        state = states[0]
        meta = self.leader_of(METADATA_GROUP)
        if meta is None or set(meta.cores[METADATA_GROUP].voters) != {n.member for n in state.nodes.values()}:
            return False
        for topic in state.topics.values():
            for p, info in enumerate(topic.partitions):
                group = f"{topic.topic_id}-{p}"
                for n in info.replicas:
                    if n in self.up and group not in self.up[n].cores:
                        return False
                leader = self.leader_of(group)
                wanted = intended_members(state, info.replicas)
                if leader is None or leader.cores[group].voters != frozenset(wanted):
                    return False
                if leader.member != wanted[0]:
                    return False
        for node in self.up.values():
            for group in node.cores:
                parsed = parse_partition_group(group)
                if parsed is not None and state.topic_by_id(parsed[0]) is None:
                    return False
        return True

    def describe(self) -> str:
        lines = []
        for n, node in sorted(self.up.items()):
            groups = {g[:6] + g[-2:]: (c.role[0], c.leader_id and c.leader_id[:4], sorted(v[:4] for v in c.voters))
                      for g, c in node.cores.items()}
            lines.append(f"node {n} ({node.member[:6]}): applied {node.state.applied_index} {groups}")
        return "\n".join(lines)

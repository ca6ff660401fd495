"""The reconciliation planner: what this node should do so that its Raft groups match the
metadata (docs/cluster.md, "Reconciliation").

Every node runs `Planner.plan` periodically (a LoopingCall in the node wiring) with the
applied metadata state, a `NodeView` of its own groups as its Raft cores see them, and the
time; it gets back a list of `Action`s and carries each out (create a local replica, call
`add_learner` / `change_membership` / `transfer_leadership` on a group's core, propose a
metadata command). The planner holds no truth of its own: the next call looks at the
result, so a lost or refused action is simply planned again. Its only memory is rate
limiting (when it last proposed a registration or moved a group's leadership).

The rules, and why:

* **Only a leader changes its group.** Membership steps and leadership transfers are planned
  only for groups whose core is leader here; replicas are created and deleted on every
  node, for itself.
* **One configuration change at a time per group**, and only when the group is `settled`
  (its last configuration change committed and the leader has committed an entry of its
  own term): the Raft core refuses anything else (single-server changes, Ongaro's fix).
  A learner is added only when no removal is due, and promoted only when caught up.
* **A dead incarnation leaves before its replacement joins.** A voter whose incarnation its
  node has since re-registered over (`ClusterState.is_retired`) is removed first: for an
  RF=3 group that takes it from 2 of 3 live to 2 of 2 live, still available, before the
  replacement is added as a learner, caught up and promoted. Only retired incarnations are
  removed: a voter the state does not know (metadata not yet caught up, or a node not yet
  registered) is left alone, so a lagging state can never shrink a group.
* **Learners are added only for members that are alive** (their node is connected with that
  incarnation): replicating to a dead member is wasted work.
* **Never the last voter, never this node's own member.**
* **Preferred leaders**: once a partition group has no membership work left (no retired
  voter, no live member still to add; a member that is down does not hold it up), its
  leader hands leadership to the partition's first replica when that member is a voter,
  alive and caught up, and its node's heartbeats say its metadata is current and applied as
  far as here (`NodeView.peer_metadata`: a leader whose metadata lags answers
  LEADER_NOT_AVAILABLE until it catches up); at most once per `transfer_interval` per group,
  `max_transfers` per plan and `max_transfers_in_flight` not ended yet, so a node coming
  back does not trigger a storm of elections.
* **Nothing destructive from a stale view**: no membership step or replica deletion until
  the metadata applied here has caught up with the metadata group's commit index as known
  locally, and with a known controller; a local replica whose topic is gone is deleted only
  if the state has applied the entry that created it (the index is part of the topic id).

The metadata group (`METADATA_GROUP`) is planned like a partition group whose intended
members are every registered node's current incarnation, without a preferred leader; the
wiring creates its local replica itself (every node has one), so the planner never creates
or deletes it.
"""

from __future__ import annotations

from collections.abc import Iterator, KeysView, Mapping
from typing import TypeAlias

import attrs

from streamlog.cluster.metadata import (
    METADATA_GROUP,
    ClusterState,
    RegisterNode,
    TopicInfo,
    hosted_partitions,
    intended_members,
    member_id,
    metadata_members,
    parse_member_id,
    parse_partition_group,
    topic_created_index,
)
from streamlog.raft.core import LEADER, RaftNode
from streamlog.topic_config import TopicConfig

# ---------------------------------------------------------------------------- inputs


@attrs.frozen
class GroupView:
    """One local Raft group as its core sees it (build it with `group_view(core)`).

    `learners`, `caught_up` and `settled` are meaningful on the leader only: `caught_up` are
    the peers (voters or learners) the core reports `caught_up`, `settled` says a
    configuration change would be accepted now (the latest configuration entry is committed
    and the leader has committed an entry of its term).
    """

    role: str
    leader: str | None
    voters: frozenset[str]
    learners: frozenset[str] = frozenset()
    caught_up: frozenset[str] = frozenset()
    commit_index: int = 0
    settled: bool = False
    #: Whether the entry at `commit_index` is of the core's current term: a leader has committed
    #: an entry of its term and (on a follower) said so. After every node restarted, a new
    #: leader's commit index is the log start's until it does (every role; `group_view` sets it).
    commit_in_term: bool = True


@attrs.frozen
class NodeView:
    """This node, its local groups, and which peers it sees alive.

    `live` maps node id -> the incarnation that node's connection announced in its hello,
    for every node currently reachable (connected, node heartbeats arriving), this node
    included: a member is alive when its node is live *with that incarnation*.
    """

    node_id: int
    incarnation: str
    client_address: str
    peer_address: str
    groups: Mapping[str, GroupView]
    live: Mapping[int, str]
    #: The groups whose core is leader here, if the caller knows them without looking at every
    #: group (the Raft host keeps that set): then only these are judged for membership and
    #: leadership, and `groups` may be a `CoreViews` that builds a `GroupView` only when asked.
    #: None: judged from `groups` (every view is looked at).
    led: frozenset[str] | None = None
    #: What each live peer node last said of its metadata in its node heartbeats: node id ->
    #: its applied metadata index, when that node judges its metadata current
    #: (`metadata_current` there), else None. A node missing here has said nothing yet (just
    #: connected, or older code): it is not known to be current, and is no transfer target.
    peer_metadata: Mapping[int, int | None] = attrs.field(factory=dict)

    @property
    def member(self) -> str:
        return member_id(self.node_id, self.incarnation)

    def alive(self, member: str) -> bool:
        node_id, incarnation = parse_member_id(member)
        return self.live.get(node_id) == incarnation


def group_view(core: RaftNode) -> GroupView:
    """The `GroupView` of a Raft core, from what it exposes."""
    own_term_committed = core.log.term_at(core.commit_index) == core.term
    if core.role != LEADER:
        return GroupView(core.role, core.leader_id, core.voters, commit_index=core.commit_index,
                         commit_in_term=own_term_committed)
    learners = core.learners
    caught_up = frozenset(p for p in (set(core.peers) | learners) if core.caught_up(p))
    found = core.log.config_at(core.log.last_index)
    change_pending = found is not None and found[0] > core.commit_index
    return GroupView(core.role, core.leader_id, core.voters, learners, caught_up, core.commit_index,
                     not change_pending and own_term_committed, own_term_committed)


class CoreViews(Mapping[str, GroupView]):
    """`group -> GroupView` over a node's Raft cores, built on access: a plan looks at the
    views of the groups this node leads only, so the ones it follows cost nothing (with 1,000
    groups, building every view was a third of each plan's CPU)."""

    def __init__(self, cores: Mapping[str, RaftNode]) -> None:
        self._cores = cores

    def __getitem__(self, group: str) -> GroupView:
        return group_view(self._cores[group])

    def __iter__(self) -> Iterator[str]:
        return iter(self._cores)

    def __len__(self) -> int:
        return len(self._cores)

    def __contains__(self, group: object) -> bool:
        return group in self._cores

    def keys(self) -> KeysView[str]:
        """The cores' own key view (set operations on it run in C)."""
        return self._cores.keys()


# ---------------------------------------------------------------------------- actions


@attrs.frozen
class CreateReplica:
    """Create this node's replica of a partition group. `initial_members` is the group's
    first configuration (write it as entry 1, term 0) when this node's current member is
    one of them; None for a replica that joins later (empty log, no members: its leader
    adds it)."""

    group: str
    topic: str
    topic_id: str
    partition: int
    config: TopicConfig
    initial_members: tuple[str, ...] | None


@attrs.frozen
class DeleteReplica:
    """Close and remove this node's replica of a group whose topic was deleted."""

    group: str


@attrs.frozen
class AddLearner:
    """`core.add_learner(member)` on this group's leader."""

    group: str
    member: str


@attrs.frozen
class Promote:
    """`core.change_membership(add=member)`: a caught-up learner becomes a voter."""

    group: str
    member: str


@attrs.frozen
class RemoveMember:
    """`core.change_membership(remove=member)`: a retired incarnation leaves the group."""

    group: str
    member: str


@attrs.frozen
class TransferLeadership:
    """`core.transfer_leadership(member)`: hand the group to its preferred leader."""

    group: str
    member: str


@attrs.frozen
class ProposeMetadata:
    """Propose this command to the metadata group (forward it to the controller)."""

    command: RegisterNode


Action: TypeAlias = CreateReplica | DeleteReplica | AddLearner | Promote | RemoveMember | TransferLeadership | ProposeMetadata


# ---------------------------------------------------------------------------- the planner


@attrs.frozen
class PlannerConfig:
    """Rate limits, in the units of `now` (seconds in the node).

    `transfer_interval`: the least time between two leadership transfers of one group (a
    transfer that fails is abandoned by the core after an election timeout; this is its
    retry pace). `max_transfers`: transfers started per plan. `max_transfers_in_flight`:
    transfers this node started that have not ended yet (it still leads the group, or knows
    no leader of it: the election the transfer started is still on), at most
    `transfer_interval` old; new ones wait, so transfers go at the pace the target node
    finishes its elections, not `max_transfers` per plan whatever it can take (a node back
    after a restart on a busy machine was handed hundreds of elections at once and the
    cluster never converged). `register_interval`: how often a RegisterNode is re-proposed
    until the state shows this node as it is. Negative values (and a zero register_interval
    or max_transfers_in_flight) are refused with ValueError.
    """

    transfer_interval: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    max_transfers: int = attrs.field(default=8, validator=attrs.validators.ge(0))
    register_interval: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))
    max_transfers_in_flight: int = attrs.field(default=8, validator=attrs.validators.gt(0))


@attrs.frozen
class _Hosted:
    """A partition this node should hold, with what judging its group needs (per state)."""

    topic: TopicInfo
    partition: int
    intended: tuple[str, ...]
    intended_set: frozenset[str]


class _StateIndex:
    """What a plan needs of one metadata state, computed once per state (a `ClusterState` is
    immutable and replaced by every applied entry, so the planner keeps the index of the last
    one it saw): the partitions hosted here with their intended members, and the metadata
    group's members. Plans between two metadata changes (every 0.2 s) then cost only the
    groups this node leads."""

    def __init__(self, state: ClusterState, node_id: int) -> None:
        self.state = state
        self.node_id = node_id
        self.hosted: dict[str, _Hosted] = {}
        for h in hosted_partitions(state, node_id):
            intended = intended_members(state, h.info.replicas)
            self.hosted[h.group] = _Hosted(h.topic, h.partition, intended, frozenset(intended))
        self.metadata_members = metadata_members(state)
        self.hosted_groups = self.hosted.keys()


class Planner:
    """One per node. `plan` is deterministic given its inputs and the planner's memory
    (when it last did a rate-limited thing), which only changes inside `plan`; the index of
    the last state seen (`_StateIndex`) is a cache of a pure function of the state."""

    def __init__(self, config: PlannerConfig = PlannerConfig()) -> None:
        self.config = config
        self._next_register = float("-inf")
        self._next_transfer: dict[str, float] = {}
        #: Transfers started and not seen to end yet: group -> when (see max_transfers_in_flight).
        self._in_flight: dict[str, float] = {}
        self._index: _StateIndex | None = None

    def _index_of(self, state: ClusterState, node_id: int) -> _StateIndex:
        index = self._index
        if index is None or index.state is not state or index.node_id != node_id:
            index = self._index = _StateIndex(state, node_id)
        return index

    def plan(self, state: ClusterState, view: NodeView, now: float) -> list[Action]:
        actions: list[Action] = []
        self._register(state, view, now, actions)
        me = state.nodes.get(view.node_id)
        if me is None or me.incarnation != view.incarnation or not metadata_current(state, view):
            return actions
        index = self._index_of(state, view.node_id)
        local = view.groups.keys()
        if index.hosted_groups - local:
            for group, h in index.hosted.items():  # by topic name, then partition
                if group in local:
                    continue
                info = h.topic.partitions[h.partition]
                initial = info.initial_members if view.member in info.initial_members else None
                actions.append(CreateReplica(group, h.topic.name, h.topic.topic_id, h.partition, h.topic.config, initial))
        if len(self._next_transfer) > len(local) or any(g not in local for g in self._next_transfer):
            self._next_transfer = {g: t for g, t in self._next_transfer.items() if g in local}
        # Groups not hosted by a live topic: the metadata group, replicas of deleted topics
        # (or of topics newer than this state), groups the metadata cannot judge.
        judged: dict[str, list[Action]] = {}
        for group in local - index.hosted_groups:
            if group == METADATA_GROUP:
                continue
            parsed = parse_partition_group(group)
            if parsed is None:
                continue  # not a group the metadata knows how to judge
            topic_id, partition = parsed
            topic = state.topic_by_id(topic_id)
            if topic is None or partition >= len(topic.partitions):
                if topic_created_index(topic_id) <= state.applied_index:
                    judged[group] = [DeleteReplica(group)]
            # else: hosted elsewhere; replicas never move between nodes yet: nothing to judge
        led = view.led if view.led is not None else frozenset(g for g, gv in view.groups.items() if gv.role == LEADER)
        if METADATA_GROUP in local:
            step = _membership_step(METADATA_GROUP, view.groups[METADATA_GROUP], index.metadata_members, state, view)
            if step:
                judged[METADATA_GROUP] = step
        transfers = min(self.config.max_transfers, self.config.max_transfers_in_flight - self._transfers_in_flight(view, now))
        for group in sorted(g for g in led if g in index.hosted):
            h = index.hosted[group]
            gv = view.groups[group]
            step = _membership_step(group, gv, h.intended, state, view, h.intended_set)
            if step:
                judged[group] = step
            elif transfers > 0 and now >= self._next_transfer.get(group, float("-inf")):
                target = _transfer_target(gv, h.intended, h.intended_set, view, state.applied_index)
                if target is not None:
                    judged[group] = [TransferLeadership(group, target)]
                    self._next_transfer[group] = now + self.config.transfer_interval
                    self._in_flight[group] = now
                    transfers -= 1
        for group in sorted(judged):
            actions += judged[group]
        return actions

    def _transfers_in_flight(self, view: NodeView, now: float) -> int:
        """Forget the transfers that ended (another node leads the group, or it is gone) or are
        older than `transfer_interval` (the core gave up on them long before); count the rest."""
        if self._in_flight:
            me, oldest = view.member, now - self.config.transfer_interval
            for group, started in list(self._in_flight.items()):
                gv = view.groups.get(group)
                if gv is None or started < oldest or (gv.leader is not None and gv.leader != me):
                    del self._in_flight[group]
        return len(self._in_flight)

    def _register(self, state: ClusterState, view: NodeView, now: float, actions: list[Action]) -> None:
        want = RegisterNode(view.node_id, view.incarnation, view.client_address, view.peer_address)
        node = state.nodes.get(view.node_id)
        if node is not None and (node.incarnation, node.client_address, node.peer_address) == (
                want.incarnation, want.client_address, want.peer_address):
            return
        if node is not None and view.incarnation in node.retired:
            return  # refused for good (STALE_INCARNATION): the node must not run on this data
        if now >= self._next_register:
            actions.append(ProposeMetadata(want))
            self._next_register = now + self.config.register_interval


def metadata_current(state: ClusterState, view: NodeView) -> bool:
    """Whether the applied metadata is as new as this node can know: the metadata group has
    a known leader, its commit index (as known here) is at an entry of the current term, and
    everything up to it is applied. A node that just restarted holds its last snapshot (or
    nothing) until the controller tells it the commit index; and after every node restarted,
    the new controller's commit index is its log start's until it commits an entry of its
    term, so a known leader alone proves nothing: planning from a snapshot's state there
    re-created the replicas of a topic deleted after the snapshot."""
    return metadata_group_current(state, view.groups.get(METADATA_GROUP))


def metadata_group_current(state: ClusterState, meta: GroupView | None) -> bool:
    """`metadata_current` from the metadata group's view alone (the broker asks it too)."""
    return meta is not None and meta.leader is not None and meta.commit_in_term \
        and state.applied_index >= meta.commit_index


def _membership_step(group: str, gv: GroupView, intended: tuple[str, ...], state: ClusterState,
                     view: NodeView, intended_set: frozenset[str] | None = None) -> list[Action]:
    """At most one step towards `intended` for a group this node leads (see module doc)."""
    me = view.member
    if gv.role != LEADER or gv.leader != me:
        return []
    if intended_set is not None and gv.voters == intended_set and not gv.learners:
        return []  # converged: the intended are current incarnations, never retired ones
    retired = sorted(v for v in gv.voters if v != me and state.is_retired(v))
    if retired:
        if gv.settled and len(gv.voters) > 1:
            return [RemoveMember(group, retired[0])]
        return []
    missing = [m for m in intended if m not in gv.voters]
    for m in missing:
        if m in gv.learners and m in gv.caught_up and view.alive(m):
            return [Promote(group, m)] if gv.settled else []
    for m in missing:
        if m not in gv.learners and view.alive(m):
            return [AddLearner(group, m)]
    return []


def _transfer_target(gv: GroupView, intended: tuple[str, ...], intended_set: frozenset[str],
                     view: NodeView, applied_index: int) -> str | None:
    """The preferred leader, if leadership should move to it now."""
    preferred = intended[0]
    if preferred == view.member or gv.role != LEADER or gv.leader != view.member:
        return None  # checked first: it is the common case, and needs no more of the view
    if not gv.settled:
        return None
    if not intended_set <= gv.voters and any(m not in gv.voters and view.alive(m) for m in intended):
        return None  # let a live member still to add finish first (one that is down does not hold it up)
    if not view.alive(preferred) or preferred not in gv.caught_up:
        return None
    if not peer_metadata_current(view, preferred, applied_index):
        return None  # it would answer LEADER_NOT_AVAILABLE for the group until it caught up
    return preferred


def peer_metadata_current(view: NodeView, member: str, applied_index: int) -> bool:
    """Whether the node of `member` said, in its last node heartbeat, that its metadata is
    current (`metadata_current` there) and applied at least up to `applied_index` (what this
    node has applied): a leader there knows its topics and serves them."""
    node_id, _ = parse_member_id(member)
    applied = view.peer_metadata.get(node_id)
    return applied is not None and applied >= applied_index

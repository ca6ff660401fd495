"""The consumer-group coordinator: membership, generations and incremental rebalancing.

One L{GroupCoordinator} holds every group a node coordinates.  It is a plain
object: each call takes C{now} (seconds, any monotonic origin) and returns an
answer or raises a L{streamlog.errors.StreamlogError}; L{GroupCoordinator.tick}
removes members whose session (or rebalance) timeout has passed.  The broker
calls it from the RPCs and from a timer on the node's clock.

The protocol follows Kafka's KIP-848 ("the next generation of the consumer
rebalance protocol"): the coordinator, not a group leader, computes each
member's I{target} assignment, and members move towards it one heartbeat at a
time.  The coordinator keeps, per member, the partitions it I{holds}: granted
to it and not yet released.  A partition is granted only while no other member
holds it, and a member releases a partition by leaving it out of the C{owned}
list of its next heartbeat (or by leaving, or by its session expiring).  So two
members never hold one partition at once, and a rebalance during a rebalance
needs nothing special: the targets are recomputed and members keep converging
from wherever they are.  docs/groups.md is the member's side of it.

Every change of what a member could act on (its id, generation, target,
what it holds) is also handed out as records for the offsets topic
(L{GroupCoordinator.take_records}), which the broker writes, and has
committed, before it answers; a coordinator on another node rebuilds the
groups from them (L{GroupCoordinator.restore}, L{GroupCoordinator.resume}).
L{streamlog.groups.membership} says why that is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs

from streamlog import errors
from streamlog.groups.assignors import ASSIGNORS, DEFAULT_ASSIGNOR, TopicPartition
from streamlog.groups.membership import GroupMeta, MemberGone, MemberMeta, MembershipRecord


@attrs.frozen
class GroupLimits:
    """The coordinator's bounds (server options, docs/operations.md)."""

    #: Members per group at most (C{GROUP_FULL} past it).
    max_members: int = 1000
    #: The session timeout a JoinGroup may ask for, in seconds (C{INVALID_PARAMS} outside).
    min_session_timeout: float = 1.0
    max_session_timeout: float = 1800.0
    #: The longest rebalance timeout a JoinGroup may ask for, in seconds.
    max_rebalance_timeout: float = 1800.0
    #: The heartbeat interval members are told (at most a third of their session timeout).
    heartbeat_interval: float = 3.0
    #: A coordinator that takes over groups from another one grants no partition for this long:
    #: members of the old one may still read theirs until their session timeout tells them
    #: they lost them (docs/groups.md, "When the coordinator moves").
    takeover_hold: float = 10.0


@attrs.define
class Member:
    """One member of a group, as the coordinator sees it."""

    member_id: str
    instance_id: str | None
    topics: frozenset[str]
    session_timeout: float
    rebalance_timeout: float
    last_seen: float
    #: Granted to the member and not released yet: what it may be consuming.
    held: set[TopicPartition] = attrs.field(factory=set)
    #: What the assignor wants it to hold.
    target: frozenset[TopicPartition] = frozenset()
    #: The group generation the member was last told.
    generation: int = 0
    #: When the member was first told to revoke what it still has to revoke (None: nothing to revoke).
    revoking_since: float | None = None

    def deadline(self) -> float:
        """When the member is removed if nothing is heard of it (or it keeps partitions it must revoke)."""
        expiry = self.last_seen + self.session_timeout
        if self.revoking_since is not None:
            expiry = min(expiry, self.revoking_since + self.rebalance_timeout)
        return expiry


@attrs.frozen
class MemberAnswer:
    """What JoinGroup and Heartbeat tell a member.

    C{assignment} is what the member should hold once it acted on this
    answer: it stops consuming (commits, then releases) C{revoke}, which it
    holds now but must give up, and starts on what C{assignment} has that it
    does not hold yet.  C{pending} are partitions of its target still held by
    another member: they come in a later answer, once released.
    """

    group: str
    member_id: str
    generation: int
    assignment: frozenset[TopicPartition]
    revoke: frozenset[TopicPartition]
    pending: frozenset[TopicPartition]
    heartbeat_interval: float

    def to_wire(self) -> dict[str, object]:
        return {
            "group": self.group,
            "member_id": self.member_id,
            "generation": self.generation,
            "assignment": partitions_to_wire(self.assignment),
            "revoke": partitions_to_wire(self.revoke),
            "pending": partitions_to_wire(self.pending),
            "heartbeat_interval_ms": int(self.heartbeat_interval * 1000),
        }


@attrs.frozen
class Removed:
    """A member L{GroupCoordinator.tick} removed, and why (C{"session"} or C{"rebalance"})."""

    group: str
    member_id: str
    reason: str


def partitions_to_wire(partitions: Iterable[TopicPartition]) -> list[dict[str, object]]:
    """C{[{topic, partitions: [int]}]}, topics and partitions sorted."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    return [{"topic": topic, "partitions": ps} for topic, ps in by_topic.items()]


@attrs.define
class Group:
    """One group's members and generation."""

    name: str
    assignor: str = DEFAULT_ASSIGNOR
    #: Grows by one with every change of membership, subscriptions or partition counts.
    generation: int = 0
    members: dict[str, Member] = attrs.field(factory=dict)
    #: The partition counts the targets were computed with.
    counts: dict[str, int] = attrs.field(factory=dict)

    @property
    def state(self) -> str:
        """C{empty}, C{stable} (every member holds exactly its target) or C{reconciling}."""
        if not self.members:
            return "empty"
        if all(m.held == m.target for m in self.members.values()):
            return "stable"
        return "reconciling"

    def holder(self, tp: TopicPartition) -> str | None:
        for member in self.members.values():
            if tp in member.held:
                return member.member_id
        return None


class GroupCoordinator:
    """Every group coordinated by one node.

    @param partition_counts: topic -> its number of partitions (0 if it does not exist).
    @param new_member_id: group -> a member id never given out before (the
        broker uses random ids, so that an id from before a coordinator
        failover is never handed to someone else).
    @param hold_until: grant no partition before this time (a coordinator taking
        over: see L{GroupLimits.takeover_hold}); targets and revokes go on.
    """

    def __init__(self, partition_counts: Callable[[str], int], new_member_id: Callable[[str], str],
                 limits: GroupLimits = GroupLimits(), hold_until: float = 0.0) -> None:
        self.partition_counts = partition_counts
        self.new_member_id = new_member_id
        self.limits = limits
        self.hold_until = hold_until
        self.groups: dict[str, Group] = {}
        #: Groups whose C{group} record is due, and group -> members whose C{member}
        #: (or C{member_gone}) record is due: what L{take_records} hands out next.
        self._dirty_groups: set[str] = set()
        self._dirty_members: dict[str, set[str]] = {}

    # --- the member's requests -------------------------------------------------

    def join(self, group: str, topics: Iterable[str], now: float, session_timeout: float,
             rebalance_timeout: float, instance_id: str | None = None, assignor: str | None = None) -> MemberAnswer:
        """A new member (a fresh id, holding nothing), or a static member coming back.

        A member with the C{instance_id} of one still in the group (a process
        restarted within its session timeout) takes its place: the old id is
        gone, the new one holds what the old one held, and unless its topics
        changed nothing else moves (no new generation).
        """
        self._check_timeouts(session_timeout, rebalance_timeout)
        state = self.groups.get(group)
        if state is None:
            name = assignor or DEFAULT_ASSIGNOR
            if name not in ASSIGNORS:
                raise errors.InvalidParams(f"unknown assignor {name!r}; one of {sorted(ASSIGNORS)}", field="assignor")
            state = self.groups[group] = Group(group, assignor=name)
            self._dirty_groups.add(group)
        elif assignor is not None and assignor != state.assignor and state.members:
            raise errors.InvalidParams(
                f"group {group!r} uses the {state.assignor!r} assignor, not {assignor!r}", field="assignor")
        elif assignor is not None and not state.members:
            if assignor not in ASSIGNORS:
                raise errors.InvalidParams(f"unknown assignor {assignor!r}; one of {sorted(ASSIGNORS)}", field="assignor")
            if state.assignor != assignor:
                state.assignor = assignor
                self._dirty_groups.add(group)
        subscribed = frozenset(topics)
        previous = None
        if instance_id is not None:
            previous = next((m for m in state.members.values() if m.instance_id == instance_id), None)
        if previous is None and len(state.members) >= self.limits.max_members:
            raise errors.GroupFull(f"group {group!r} has {len(state.members)} members, its limit",
                                   group=group, limit=self.limits.max_members)
        member = Member(self.new_member_id(group), instance_id, subscribed, session_timeout, rebalance_timeout, now)
        self._touch(state, member.member_id)
        if previous is not None:
            del state.members[previous.member_id]
            self._touch(state, previous.member_id)
            member.held = set(previous.held)
            member.target = previous.target
            member.revoking_since = previous.revoking_since
            state.members[member.member_id] = member
            if previous.topics != subscribed:
                self._rebalance(state)
        else:
            state.members[member.member_id] = member
            self._rebalance(state)
        return self._answer(state, member, now)

    def heartbeat(self, group: str, member_id: str, owned: Iterable[TopicPartition], now: float) -> MemberAnswer:
        """The member is alive and holds C{owned}: what it left out of what it held is
        released (partitions it was never granted are ignored); answer what to do next."""
        state, member = self._member(group, member_id)
        member.last_seen = now
        kept = member.held & set(owned)
        if kept != member.held:
            member.held = kept
            self._touch(state, member_id)
        if self._counts_changed(state):
            self._rebalance(state)
        return self._answer(state, member, now)

    def leave(self, group: str, member_id: str, now: float) -> None:
        """The member goes (it released everything it held, committing first)."""
        state, member = self._member(group, member_id)
        self._remove(state, member.member_id)

    def check_commit(self, group: str, member_id: str | None, generation: int | None,
                     partitions: Iterable[TopicPartition], now: float) -> None:
        """Raise unless a commit of C{partitions} may go ahead.

        Without a member id the commit is an outsider's (a tool, a consumer
        managing its own partitions): allowed only while the group has no
        members.  A member's commit carries the generation it was last told
        (C{STALE_GENERATION} otherwise: it heartbeats and retries), and only
        for partitions it holds (C{PARTITION_NOT_ASSIGNED}).
        """
        state = self.groups.get(group)
        if member_id is None:
            if state is not None and state.members:
                raise errors.UnknownMember(
                    f"group {group!r} has members: a commit must name its member_id and generation",
                    group=group, member_id=None)
            return
        state, member = self._member(group, member_id)
        if generation != member.generation:
            raise errors.StaleGeneration(
                f"generation {generation} is stale: member {member_id!r} is at generation {member.generation}",
                group=group, generation=member.generation)
        for tp in partitions:
            if tp not in member.held:
                raise errors.PartitionNotAssigned(
                    f"member {member_id!r} does not hold {tp[0]}/{tp[1]}", group=group, topic=tp[0], partition=tp[1])
        member.last_seen = now

    # --- time --------------------------------------------------------------------

    def tick(self, now: float) -> list[Removed]:
        """Remove every member whose session timeout passed without a word from it, or
        that kept a partition it was told to revoke past its rebalance timeout."""
        removed: list[Removed] = []
        for state in list(self.groups.values()):
            for member in sorted(state.members.values(), key=lambda m: m.member_id):
                if now >= member.deadline():
                    session = now >= member.last_seen + member.session_timeout
                    removed.append(Removed(state.name, member.member_id, "session" if session else "rebalance"))
                    self._remove(state, member.member_id)
        return removed

    def next_deadline(self) -> float | None:
        """When L{tick} next has something to do (None: no members anywhere)."""
        deadlines = [m.deadline() for state in self.groups.values() for m in state.members.values()]
        return min(deadlines, default=None)

    # --- administration --------------------------------------------------------

    def group(self, name: str) -> Group | None:
        return self.groups.get(name)

    def forget(self, name: str) -> None:
        """Drop an empty group (DeleteGroup); raise C{GROUP_NOT_EMPTY} if it has members."""
        state = self.groups.get(name)
        if state is None:
            return
        if state.members:
            raise errors.GroupNotEmpty(f"group {name!r} has {len(state.members)} members",
                                       group=name, members=len(state.members))
        del self.groups[name]
        self._dirty_groups.discard(name)
        self._dirty_members.pop(name, None)

    def require_empty(self, name: str) -> None:
        """Raise C{GROUP_NOT_EMPTY} if the group has members."""
        state = self.groups.get(name)
        if state is not None and state.members:
            raise errors.GroupNotEmpty(f"group {name!r} has {len(state.members)} members",
                                       group=name, members=len(state.members))

    # --- the offsets topic's membership records ------------------------------------

    def take_records(self) -> list[MembershipRecord]:
        """The membership records due since the last call (each group's C{group} record
        before its members'), in an order that replays to the state now.  The broker
        writes them in one batch and answers the request that caused them only once
        they are committed: a grant is never told before it is in the log."""
        records: list[MembershipRecord] = []
        for name in sorted(self._dirty_groups | set(self._dirty_members)):
            state = self.groups.get(name)
            if state is None:
                continue  # deleted: its delete record says it all
            if name in self._dirty_groups:
                records.append(GroupMeta(name, state.assignor, state.generation, dict(state.counts)))
            for member_id in sorted(self._dirty_members.get(name, ())):
                m = state.members.get(member_id)
                if m is None:
                    records.append(MemberGone(name, member_id))
                else:
                    records.append(_member_meta(name, m))
        self._dirty_groups.clear()
        self._dirty_members.clear()
        return records

    def snapshot_records(self) -> list[MembershipRecord]:
        """Every group's C{group} record and its members' (a snapshot of the offsets partition)."""
        records: list[MembershipRecord] = []
        for name in sorted(self.groups):
            state = self.groups[name]
            records.append(GroupMeta(name, state.assignor, state.generation, dict(state.counts)))
            records.extend(_member_meta(name, m) for _, m in sorted(state.members.items()))
        return records

    def restore(self, record: MembershipRecord) -> None:
        """Apply a membership record read back from the offsets topic (replay)."""
        state = self.groups.get(record.group)
        if state is None:
            if isinstance(record, MemberGone):
                return
            state = self.groups[record.group] = Group(record.group)
        if isinstance(record, GroupMeta):
            state.assignor = record.assignor if record.assignor in ASSIGNORS else DEFAULT_ASSIGNOR
            state.generation = record.generation
            state.counts = dict(record.counts)
        elif isinstance(record, MemberMeta):
            state.members[record.member_id] = Member(
                record.member_id, record.instance_id, record.topics, record.session_timeout,
                record.rebalance_timeout, last_seen=0.0, held=set(record.held), target=record.target,
                generation=record.generation)
        else:
            state.members.pop(record.member_id, None)

    def restore_delete(self, group: str) -> None:
        """A C{delete} record read back (DeleteGroup of an empty group)."""
        self.groups.pop(group, None)

    def resume(self, now: float) -> None:
        """The replay is over: every member gets a full session (and rebalance timeout) from
        C{now}, since the log does not say when it was last heard of; one that died during
        the change is removed once that runs out."""
        for state in self.groups.values():
            for member in state.members.values():
                member.last_seen = now
                member.revoking_since = now if member.held - member.target else None
        self._dirty_groups.clear()
        self._dirty_members.clear()

    # --- inside ------------------------------------------------------------------

    def _check_timeouts(self, session_timeout: float, rebalance_timeout: float) -> None:
        low, high = self.limits.min_session_timeout, self.limits.max_session_timeout
        if not low <= session_timeout <= high:
            raise errors.InvalidParams(
                f"session_timeout_ms {int(session_timeout * 1000)} is outside [{int(low * 1000)}, {int(high * 1000)}]",
                field="session_timeout_ms")
        if not 0 < rebalance_timeout <= self.limits.max_rebalance_timeout:
            raise errors.InvalidParams(
                f"rebalance_timeout_ms {int(rebalance_timeout * 1000)} is outside "
                f"[1, {int(self.limits.max_rebalance_timeout * 1000)}]", field="rebalance_timeout_ms")

    def _member(self, group: str, member_id: str) -> tuple[Group, Member]:
        state = self.groups.get(group)
        member = state.members.get(member_id) if state is not None else None
        if state is None or member is None:
            raise errors.UnknownMember(f"member {member_id!r} is not in group {group!r}; rejoin",
                                       group=group, member_id=member_id)
        return state, member

    def _remove(self, state: Group, member_id: str) -> None:
        del state.members[member_id]
        self._touch(state, member_id)
        self._rebalance(state)

    def _touch(self, state: Group, member_id: str) -> None:
        """The member's record is due (it changed, or it is gone)."""
        self._dirty_members.setdefault(state.name, set()).add(member_id)

    def _counts(self, state: Group) -> dict[str, int]:
        topics = sorted({t for m in state.members.values() for t in m.topics})
        return {t: self.partition_counts(t) for t in topics}

    def _counts_changed(self, state: Group) -> bool:
        return self._counts(state) != state.counts

    def _rebalance(self, state: Group) -> None:
        """A new generation: recompute every member's target from who holds what now."""
        state.generation += 1
        self._dirty_groups.add(state.name)
        state.counts = self._counts(state)
        subscriptions: Mapping[str, frozenset[str]] = {m.member_id: m.topics for m in state.members.values()}
        current = {m.member_id: frozenset(m.held) for m in state.members.values()}
        targets = ASSIGNORS[state.assignor](subscriptions, state.counts, current)
        for member in state.members.values():
            target = targets.get(member.member_id, frozenset())
            if target != member.target:
                member.target = target
                self._touch(state, member.member_id)

    def _answer(self, state: Group, member: Member, now: float) -> MemberAnswer:
        """Grant the member what its target has and nobody holds; say what to revoke."""
        others: set[TopicPartition] = set()
        for other in state.members.values():
            if other is not member:
                others |= other.held
        granted = member.target - member.held - others if now >= self.hold_until else frozenset()
        if granted or member.generation != state.generation:
            member.held |= granted
            self._touch(state, member.member_id)
        revoke = frozenset(member.held - member.target)
        if not revoke:
            member.revoking_since = None
        elif member.revoking_since is None:
            member.revoking_since = now
        member.generation = state.generation
        interval = min(self.limits.heartbeat_interval, member.session_timeout / 3)
        return MemberAnswer(
            group=state.name, member_id=member.member_id, generation=state.generation,
            assignment=frozenset(member.held) - revoke, revoke=revoke,
            pending=frozenset(member.target - member.held), heartbeat_interval=interval,
        )


def _member_meta(group: str, m: Member) -> MemberMeta:
    return MemberMeta(group, m.member_id, m.instance_id, m.topics, m.session_timeout, m.rebalance_timeout,
                      m.generation, frozenset(m.held), m.target)

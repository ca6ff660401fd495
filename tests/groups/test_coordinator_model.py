"""A hypothesis state machine over the coordinator: members join, leave, heartbeat
honestly, slowly or stubbornly, crash, restart as static members, and time passes.

After every step: no partition has two holders, and every member process still in
the group consumes only what the coordinator counts as its own.  After a settle
(the live members heartbeat until the crashed ones expired and nobody has anything
left to do): every partition of the subscription has exactly one holder, and the
holders are balanced within one partition.

The coordinator can also fail over at any step: a new one is rebuilt from the
membership records the old one handed out (each request's records are committed
before its answer is acted on), or from all but the last request's, whose answer
is then lost with them.  Members carry on with their next heartbeat: same ids,
same generations, and the invariants above hold across the change.
"""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamlog import errors
from streamlog.groups.coordinator import GroupCoordinator, GroupLimits
from streamlog.groups.state import ShardState

SESSION = 10.0
REBALANCE = 20.0
COUNTS = {"t": 7, "u": 3}
TOPICS = ("t", "u")


class Process:
    """One consumer process: what it consumes, whether it still runs."""

    def __init__(self, member_id, instance_id):
        self.member_id = member_id
        self.instance_id = instance_id
        self.owned = frozenset()
        self.running = True
        #: The generation of the last answer it acted on.
        self.generation = None


class GroupMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.ids = itertools.count(1)
        self.coordinator = self._new_coordinator()
        self.now = 0.0
        self.processes = []
        #: The offsets partition: the values of every membership record committed so far.
        self.log = []
        self.failovers = 0

    def _new_coordinator(self):
        return GroupCoordinator(lambda t: COUNTS.get(t, 0), lambda g: f"m{next(self.ids)}",
                                GroupLimits(min_session_timeout=1.0))

    def _committed(self):
        """The records the last request caused are committed (before its answer is acted on)."""
        self.log.extend(r.to_value() for r in self.coordinator.take_records())

    def _fail_over(self):
        before = {m: (member.generation, frozenset(member.held), member.target)
                  for m, member in self.members().items()}
        shard = ShardState(self._new_coordinator())
        for value in self.log:
            shard.apply_stored(value, 0)
        assert shard.skipped == 0
        shard.coordinator.resume(self.now)
        self.coordinator = shard.coordinator
        self.failovers += 1
        after = {m: (member.generation, frozenset(member.held), member.target)
                 for m, member in self.members().items()}
        assert after == before

    def running(self):
        return [p for p in self.processes if p.running]

    def members(self):
        state = self.coordinator.group("g")
        return state.members if state is not None else {}

    def _join(self, instance_id):
        answer = self.coordinator.join("g", TOPICS, self.now, SESSION, REBALANCE, instance_id=instance_id)
        self._committed()
        process = Process(answer.member_id, instance_id)
        process.owned = answer.assignment
        process.generation = answer.generation
        self.processes.append(process)

    @rule()
    def join(self):
        if len(self.running()) < 6:
            self._join(None)

    @rule(name=st.sampled_from(["s1", "s2", "s3"]))
    def static_join_or_restart(self, name):
        # A static member (re)starting: an earlier process of that name is gone.
        for p in self.running():
            if p.instance_id == name:
                p.running = False
        self._join(name)

    @rule(data=st.data(), style=st.sampled_from(["honest", "honest", "slow", "stubborn"]))
    @precondition(lambda self: self.running())
    def heartbeat(self, data, style):
        process = data.draw(st.sampled_from(self.running()))
        try:
            answer = self.coordinator.heartbeat("g", process.member_id, process.owned, self.now)
        except errors.UnknownMember:
            process.running = False  # fenced: it stops consuming and would rejoin as a new member
            process.owned = frozenset()
            return
        self._committed()
        process.generation = answer.generation
        if style == "honest":
            process.owned = answer.assignment
        elif style == "slow":  # revokes, but starts on its new partitions only later
            process.owned = process.owned - answer.revoke
        # stubborn: keeps consuming what it had, revoking nothing

    @rule(data=st.data())
    @precondition(lambda self: self.running())
    def leave(self, data):
        process = data.draw(st.sampled_from(self.running()))
        process.running = False
        process.owned = frozenset()
        try:
            self.coordinator.leave("g", process.member_id, self.now)
        except errors.UnknownMember:
            pass
        self._committed()

    @rule()
    def coordinator_fails_over(self):
        self._fail_over()

    @rule(data=st.data())
    @precondition(lambda self: self.running())
    def heartbeat_lost_in_a_failover(self, data):
        # The old coordinator answers, but its records never commit: the answer is lost with
        # them (the member acts on nothing) and another node takes over from the log.
        process = data.draw(st.sampled_from(self.running()))
        before = {m: (member.generation, frozenset(member.held)) for m, member in self.members().items()}
        try:
            self.coordinator.heartbeat("g", process.member_id, process.owned, self.now)
        except errors.UnknownMember:
            return
        self.coordinator.take_records()  # never committed
        shard = ShardState(self._new_coordinator())
        for value in self.log:
            shard.apply_stored(value, 0)
        shard.coordinator.resume(self.now)
        self.coordinator = shard.coordinator
        assert {m: (member.generation, frozenset(member.held)) for m, member in self.members().items()} == before

    @invariant()
    def members_keep_their_generation(self):
        members = self.members()
        for p in self.running():
            if p.member_id in members and p.generation is not None:
                assert members[p.member_id].generation >= p.generation

    @rule(data=st.data())
    @precondition(lambda self: self.running())
    def crash(self, data):
        process = data.draw(st.sampled_from(self.running()))
        process.running = False  # its member stays until its session expires

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 9.0, 11.0, 25.0]))
    def time_passes(self, dt):
        self.now += dt
        removals = self.coordinator.tick(self.now)
        self._committed()
        for removed in removals:
            for p in self.processes:
                if p.member_id == removed.member_id and p.running:
                    # Expired under its feet: it learns at its next heartbeat; until then
                    # it is a zombie, fenced from commits (UNKNOWN_MEMBER).
                    p.running = False
                    p.owned = frozenset()

    @rule()
    def settle(self):
        for _ in range(int((SESSION + REBALANCE) / 2) + 3):
            self.now += 2.0
            for p in self.running():
                try:
                    p.owned = self.coordinator.heartbeat("g", p.member_id, p.owned, self.now).assignment
                except errors.UnknownMember:
                    p.running = False
                    p.owned = frozenset()
                self._committed()
            self.coordinator.tick(self.now)
            self._committed()
        for _ in range(3):
            for p in self.running():
                p.owned = self.coordinator.heartbeat("g", p.member_id, p.owned, self.now).assignment
                self._committed()
        members = self.members()
        assert {p.member_id for p in self.running()} == set(members)
        if not members:
            return
        assert self.coordinator.group("g").state == "stable"
        every = {(t, i) for t, n in COUNTS.items() for i in range(n)}
        holders = [tp for m in members.values() for tp in m.held]
        assert sorted(holders) == sorted(every)
        sizes = [len(m.held) for m in members.values()]
        assert max(sizes) - min(sizes) <= 1
        for p in self.running():
            assert p.owned == members[p.member_id].held

    @invariant()
    def no_partition_has_two_holders(self):
        seen = {}
        for member in self.members().values():
            for tp in member.held:
                assert tp not in seen, f"{tp} held by {seen[tp]} and {member.member_id}"
                seen[tp] = member.member_id

    @invariant()
    def processes_consume_only_what_they_hold(self):
        members = self.members()
        for p in self.running():
            if p.member_id in members:
                assert p.owned <= members[p.member_id].held, (p.member_id, p.owned)


GroupMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestGroupMachine = GroupMachine.TestCase

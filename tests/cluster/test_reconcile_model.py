"""The planner against a toy model of one Raft group's membership, from random starting
states: every step keeps the rules (one uncommitted change, never the last voter, never a
live member removed, never less available than before), and planning converges to a fixed
point where the group has the members the metadata says, led by its preferred leader."""

from __future__ import annotations

import attrs
from cluster_support import cluster, create, inc, member, register
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from streamlog.cluster.metadata import METADATA_GROUP, intended_members, metadata_members, partition_group
from streamlog.cluster.reconcile import (
    AddLearner,
    GroupView,
    NodeView,
    Planner,
    PlannerConfig,
    Promote,
    RemoveMember,
    TransferLeadership,
)
from streamlog.raft.core import FOLLOWER, LEADER


@attrs.define
class ToyGroup:
    """What matters of a Raft group for membership: voters (the latest configuration),
    whether that configuration is committed, the leader-local learners and what the leader
    knows to be caught up."""

    voters: set[str]
    leader: str
    learners: set[str]
    caught: set[str]
    pending: bool
    own_term_committed: bool

    def view_for(self, me: str, commit: int) -> GroupView:
        if me == self.leader:
            return GroupView(LEADER, me, frozenset(self.voters), frozenset(self.learners),
                             frozenset(self.caught - {me}), commit, not self.pending and self.own_term_committed)
        return GroupView(FOLLOWER, self.leader, frozenset(self.voters), commit_index=commit)


def alive_count(voters, live):
    return sum(1 for v in voters if live.get(int(v.split(".")[0])) == v.split(".")[1])


def available(voters, live):
    return alive_count(voters, live) >= len(voters) // 2 + 1


scenarios = st.fixed_dictionaries({
    "nodes": st.sampled_from([3, 5]),
    "meta": st.booleans(),
    "rebirths": st.lists(st.integers(1, 5), max_size=4),
    "down": st.sets(st.integers(1, 5), max_size=2),
    "heal_at": st.one_of(st.none(), st.integers(1, 15)),
    "voter_picks": st.lists(st.integers(0, 99), min_size=1, max_size=6),
    "learner_picks": st.lists(st.integers(0, 99), max_size=3),
    "pending": st.booleans(),
    "own_term_committed": st.booleans(),
    "leader_pick": st.integers(0, 99),
    "unknown_voter": st.booleans(),
})


@settings(max_examples=200, deadline=None, derandomize=True)
@given(scenarios)
def test_planner_and_toy_membership_converge_from_random_states(s):
    n = s["nodes"]
    log = cluster(n)
    topic_id = None if s["meta"] else create(log, "t", [[2, 1, 3]]).value["topic_id"]
    generation = {i: 0 for i in range(1, n + 1)}
    for node in s["rebirths"]:
        if node <= n:
            generation[node] += 1
            log.ok(register(node, generation[node]))
    state = log.state
    group = METADATA_GROUP if s["meta"] else partition_group(topic_id, 0)
    hosts = list(range(1, n + 1)) if s["meta"] else [2, 1, 3]
    intended = metadata_members(state) if s["meta"] else intended_members(state, [2, 1, 3])

    # Members the group may hold at the start: any incarnation, old or current, of its nodes,
    # and perhaps one the state has never heard of (a newer registration not applied yet).
    pool = sorted({member(h, g) for h in hosts for g in range(generation[h] + 1)})
    voters = {pool[i % len(pool)] for i in s["voter_picks"]}
    if s["unknown_voter"]:
        voters.add(member(hosts[-1], 9))
    live = {i: inc(i, generation[i]) for i in range(1, n + 1) if i not in s["down"]}
    live_voters = sorted(v for v in voters if alive_count([v], live))
    assume(live_voters)  # a group with no live voter has no leader to plan for it
    toy = ToyGroup(
        voters=voters,
        leader=live_voters[s["leader_pick"] % len(live_voters)],
        learners={m for m in (pool[i % len(pool)] for i in s["learner_picks"]) if m not in voters},
        caught=set(),
        pending=s["pending"],
        own_term_committed=s["own_term_committed"],
    )
    planners = {i: Planner(PlannerConfig(transfer_interval=5.0)) for i in range(1, n + 1)}
    # The same planners told which groups they lead (as the node does, to skip the others):
    # every plan must come out the same.
    told = {i: Planner(PlannerConfig(transfer_interval=5.0)) for i in range(1, n + 1)}
    was_available = available(toy.voters, live)
    quiet_rounds = 0
    now = 0.0
    for round_no in range(60):
        if round_no == s["heal_at"]:
            live = {i: inc(i, generation[i]) for i in range(1, n + 1)}
        actions = []
        for node, current in sorted(live.items()):
            me = member(node, generation[node])
            groups = {group: toy.view_for(me, state.applied_index)}
            if group != METADATA_GROUP:
                groups[METADATA_GROUP] = GroupView(FOLLOWER, member(1), frozenset(), commit_index=state.applied_index)
            reg = register(node, generation[node])
            # Every live peer says, in its node heartbeats, that its metadata is current.
            peers_current = {n: state.applied_index for n in live if n != node}
            view = NodeView(node, current, reg.client_address, reg.peer_address, groups, live,
                            peer_metadata=peers_current)
            planned = planners[node].plan(state, view, now)
            led = frozenset(g for g, gv in groups.items() if gv.role == LEADER)
            assert told[node].plan(state, attrs.evolve(view, led=led), now) == planned
            for action in planned:
                actions.append((me, action))
        changes = [a for _, a in actions if isinstance(a, (Promote, RemoveMember))]
        assert len(changes) <= 1, changes  # one configuration change per group at a time
        for who, action in actions:
            assert who == toy.leader, f"{who} acted on a group led by {toy.leader}: {action}"
            assert action.group == group
            if isinstance(action, RemoveMember):
                assert not toy.pending and toy.own_term_committed
                assert action.member in toy.voters and action.member != toy.leader and len(toy.voters) > 1
                assert state.is_retired(action.member) and not alive_count([action.member], live)
                toy.voters.discard(action.member)
                toy.pending = True
            elif isinstance(action, Promote):
                assert not toy.pending and toy.own_term_committed
                assert action.member in toy.learners and action.member in toy.caught
                assert alive_count([action.member], live)
                toy.voters.add(action.member)
                toy.learners.discard(action.member)
                toy.pending = True
            elif isinstance(action, AddLearner):
                assert action.member not in toy.voters and alive_count([action.member], live)
                toy.learners.add(action.member)
            elif isinstance(action, TransferLeadership):
                assert action.member in toy.voters and alive_count([action.member], live)
                assert action.member in toy.caught and not toy.pending
                toy.leader = action.member
                toy.learners, toy.caught, toy.own_term_committed = set(), set(), False  # leader-local
            else:
                raise AssertionError(f"unexpected action {action}")
        assert toy.voters and toy.leader in toy.voters
        if was_available:
            assert available(toy.voters, live), "a change made the group unavailable"
        # The world moves: commits need a live majority; live peers catch up in one round.
        if available(toy.voters, live):
            toy.pending = False
            toy.own_term_committed = True
        toy.caught = {m for m in toy.learners | toy.voters if alive_count([m], live)}
        was_available = available(toy.voters, live)
        quiet_rounds = quiet_rounds + 1 if not actions else 0
        now += 6.0
        if quiet_rounds >= 2 and (s["heal_at"] is None or round_no > s["heal_at"]):
            break
    else:
        raise AssertionError(f"no fixed point after 60 rounds: {toy}")

    if not available(toy.voters, live):
        return  # stuck without a live majority (as a real group would be): nothing was made worse
    assert not [v for v in toy.voters if state.is_retired(v)], toy
    alive_intended = [m for m in intended if alive_count([m], live)]
    assert set(alive_intended) <= toy.voters, (toy, intended)
    if not s["meta"] and toy.voters == set(intended) and alive_count([intended[0]], live):
        assert toy.leader == intended[0], "the preferred leader should lead"

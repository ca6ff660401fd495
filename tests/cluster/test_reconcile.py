"""The planner, scenario by scenario, with hand-made views of the local Raft groups."""

from __future__ import annotations

import sys

import attrs
import pytest
from cluster_support import cluster, create, inc, member, register

from streamlog.cluster.metadata import METADATA_GROUP, DeleteTopic, partition_group, topic_id_for
from streamlog.cluster.reconcile import (
    AddLearner,
    CreateReplica,
    DeleteReplica,
    GroupView,
    NodeView,
    Planner,
    PlannerConfig,
    Promote,
    ProposeMetadata,
    RemoveMember,
    TransferLeadership,
    metadata_current,
)
from streamlog.raft.core import FOLLOWER, LEADER


def leader(me, voters, learners=(), caught_up=(), settled=True, commit=10):
    return GroupView(LEADER, me, frozenset(voters), frozenset(learners), frozenset(caught_up), commit, settled)


def follower(leader_member, voters, commit=10):
    return GroupView(FOLLOWER, leader_member, frozenset(voters), commit_index=commit)


#: What a live peer's heartbeats say by default: its metadata is current, applied further than any state here.
CURRENT = sys.maxsize


def view(node_id, groups, live, generation=0, state=None, peer_metadata=None):
    """A NodeView; the metadata group is added (followed, caught up) unless given. Every live
    peer says its metadata is current unless `peer_metadata` says otherwise."""
    groups = dict(groups)
    if METADATA_GROUP not in groups:
        commit = state.applied_index if state is not None else 0
        groups[METADATA_GROUP] = follower(member(1), [member(1), member(2), member(3)], commit)
    if peer_metadata is None:
        peer_metadata = {n: CURRENT for n in live if n != node_id}
    return NodeView(node_id, inc(node_id, generation), f"127.0.0.1:{7000 + node_id}", f"127.0.0.1:{8000 + node_id}",
                    groups, {n: inc(n, g) for n, g in live.items()}, peer_metadata=peer_metadata)


ALL = {1: 0, 2: 0, 3: 0}


def three_nodes_one_topic(partitions=1):
    log = cluster(3)
    replicas = [[1, 2, 3], [2, 3, 1], [3, 1, 2]][:partitions]
    topic_id = create(log, "t", replicas).value["topic_id"]
    return log, topic_id


def only(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


# ---------------------------------------------------------------------------- registration


def test_an_unregistered_node_proposes_its_registration_rate_limited_and_nothing_else():
    log, _ = three_nodes_one_topic()
    planner = Planner(PlannerConfig(register_interval=2.0))
    v = view(4, {}, {**ALL, 4: 0}, state=log.state)
    assert planner.plan(log.state, v, 0.0) == [ProposeMetadata(register(4))]
    assert planner.plan(log.state, v, 1.9) == []
    assert planner.plan(log.state, v, 2.0) == [ProposeMetadata(register(4))]
    log.ok(register(4))
    assert planner.plan(log.state, v, 10.0) == []


def test_a_changed_address_or_incarnation_is_registered_again_but_a_retired_one_never():
    log, _ = three_nodes_one_topic()
    moved = attrs.evolve(view(2, {}, ALL, state=log.state), client_address="10.0.0.2:7070")
    assert only(Planner().plan(log.state, moved, 0.0), ProposeMetadata) == [
        ProposeMetadata(attrs.evolve(register(2), client_address="10.0.0.2:7070"))]
    reborn = view(2, {}, {**ALL, 2: 1}, generation=1, state=log.state)
    assert Planner().plan(log.state, reborn, 0.0) == [ProposeMetadata(register(2, 1))]
    log.ok(register(2, 1))
    # The old data directory is back: the state refused it for good, so do nothing at all.
    stale = view(2, {}, ALL, generation=0, state=log.state)
    assert Planner().plan(log.state, stale, 0.0) == []


# ---------------------------------------------------------------------------- replicas


def test_a_fresh_topic_creates_its_replicas_with_their_initial_members():
    log, topic_id = three_nodes_one_topic(partitions=3)
    for node in (1, 2, 3):
        actions = Planner().plan(log.state, view(node, {}, ALL, state=log.state), 0.0)
        assert actions == [
            CreateReplica(partition_group(topic_id, p), "t", topic_id, p, log.state.topics["t"].config,
                          log.state.topics["t"].partitions[p].initial_members)
            for p in range(3)
        ]
    # A replica that exists is not created again.
    g0 = partition_group(topic_id, 0)
    actions = Planner().plan(log.state, view(1, {g0: follower(None, [])}, ALL, state=log.state), 0.0)
    assert [a.partition for a in only(actions, CreateReplica)] == [1, 2]


def test_a_reborn_node_creates_empty_replicas_to_be_added_by_their_leaders():
    log, topic_id = three_nodes_one_topic()
    log.ok(register(2, 1))
    actions = Planner().plan(log.state, view(2, {}, {**ALL, 2: 1}, generation=1, state=log.state), 0.0)
    assert actions == [CreateReplica(partition_group(topic_id, 0), "t", topic_id, 0,
                                     log.state.topics["t"].config, None)]


def test_nothing_but_registration_while_the_metadata_is_behind():
    log, topic_id = three_nodes_one_topic()
    planner = Planner()
    g = partition_group(topic_id, 0)
    behind = view(1, {METADATA_GROUP: follower(member(2), [], commit=log.index + 1)}, ALL)
    assert not metadata_current(log.state, behind)
    assert planner.plan(log.state, behind, 0.0) == []
    no_controller = view(1, {METADATA_GROUP: follower(None, [], commit=0)}, ALL)
    assert planner.plan(log.state, no_controller, 0.0) == []
    no_meta = attrs.evolve(view(1, {}, ALL), groups={})
    assert planner.plan(log.state, no_meta, 0.0) == []  # no metadata replica yet
    # ...and a stale state cannot make a leader shrink its group either.
    lead = leader(member(1), [member(1), member(2, 1), member(3)])
    assert planner.plan(log.state, view(1, {g: lead, METADATA_GROUP: behind.groups[METADATA_GROUP]}, ALL), 0.0) == []


def test_a_deleted_topic_deletes_its_replicas_on_every_node():
    log, topic_id = three_nodes_one_topic(partitions=2)
    groups = {partition_group(topic_id, p): follower(member(1), [member(1), member(2), member(3)]) for p in (0, 1)}
    log.ok(DeleteTopic("t"))
    for node in (1, 2, 3):
        actions = Planner().plan(log.state, view(node, groups, ALL, state=log.state), 0.0)
        assert actions == [DeleteReplica(partition_group(topic_id, p)) for p in (0, 1)]


def test_one_planner_follows_each_new_state():
    # The planner keeps an index of the last state it planned with: every new state (an
    # applied entry) must be planned afresh, not from that index.
    log = cluster(3)
    planner = Planner()
    assert planner.plan(log.state, view(1, {}, ALL, state=log.state), 0.0) == []
    topic_id = create(log, "t", [[1, 2, 3], [2, 3, 1]]).value["topic_id"]
    groups = {partition_group(topic_id, p): follower(member(2), [member(1), member(2), member(3)]) for p in (0, 1)}
    assert [a.partition for a in only(planner.plan(log.state, view(1, {}, ALL, state=log.state), 0.1),
                                      CreateReplica)] == [0, 1]
    assert planner.plan(log.state, view(1, groups, ALL, state=log.state), 0.2) == []
    log.ok(DeleteTopic("t"))
    assert planner.plan(log.state, view(1, groups, ALL, state=log.state), 0.3) == [
        DeleteReplica(partition_group(topic_id, p)) for p in (0, 1)]


def test_only_the_groups_said_to_be_led_here_are_looked_at():
    # A node passes the groups it leads (`led`) and views built on access: the views of the
    # groups it follows are never built.
    log, topic_id = three_nodes_one_topic(partitions=3)
    voters = [member(1), member(2), member(3)]
    g0, g1, g2 = (partition_group(topic_id, p) for p in range(3))
    views = {g0: follower(member(2), voters), g1: leader(member(1), voters, caught_up=voters[1:]),
             g2: follower(member(3), voters),
             METADATA_GROUP: follower(member(1), voters, commit=log.index)}

    class Watched(dict):
        def __getitem__(self, group):
            looked.append(group)
            return dict.__getitem__(self, group)

    looked: list[str] = []
    plain = Planner().plan(log.state, view(1, views, ALL, state=log.state), 0.0)
    told = attrs.evolve(view(1, views, ALL, state=log.state), groups=Watched(views), led=frozenset({g1}))
    assert Planner().plan(log.state, told, 0.0) == plain == [TransferLeadership(g1, member(2))]
    assert sorted(looked) == sorted([g1, METADATA_GROUP])


def test_a_replica_newer_than_the_metadata_is_left_alone():
    # After a restart, the metadata is its last snapshot until the log replays: a replica
    # of a topic created after that snapshot is unknown to the state, not deleted.
    log, _ = three_nodes_one_topic()
    future = partition_group(topic_id_for(log.state.cluster_id, log.index + 5), 0)
    actions = Planner().plan(log.state, view(1, {future: follower(None, [])}, ALL, state=log.state), 0.0)
    assert only(actions, DeleteReplica) == []
    # Once the state is past the index that would have created it, it is known to be gone.
    log.ok(register(4))
    for _ in range(5):
        log.ok(register(5))
    actions = Planner().plan(log.state, view(1, {future: follower(None, [])}, ALL, state=log.state), 0.0)
    assert only(actions, DeleteReplica) == [DeleteReplica(future)]


def test_unknown_groups_are_not_judged():
    log, _ = three_nodes_one_topic()
    actions = Planner().plan(log.state, view(1, {"some-other-group": follower(None, [])}, ALL, state=log.state), 0.0)
    assert only(actions, DeleteReplica) == []


# ---------------------------------------------------------------------------- membership


def test_wiped_node_in_a_three_node_rf3_group_step_by_step():
    """Node 2's disk is wiped; it comes back as a new incarnation. The leader (node 1) first
    removes the dead member (2 of 2 live: still available), then adds the new one as a
    learner, promotes it once caught up, and finally hands leadership to it (its preferred
    leader is node 2)."""
    log = cluster(3)
    topic_id = create(log, "t", [[2, 1, 3]]).value["topic_id"]
    g = partition_group(topic_id, 0)
    old, new = member(2), member(2, 1)
    log.ok(register(2, 1))
    live = {**ALL, 2: 1}
    planner = Planner()
    me = member(1)

    def plan(gv, now=0.0):
        return planner.plan(log.state, view(1, {g: gv}, live, state=log.state), now)

    voters = {me, old, member(3)}
    assert plan(leader(me, voters)) == [RemoveMember(g, old)]
    # While the removal is uncommitted, nothing more (one change at a time)...
    voters.discard(old)
    # ...except that a learner does not change the configuration, so it may start catching up.
    assert plan(leader(me, voters, settled=False)) == [AddLearner(g, new)]
    assert plan(leader(me, voters, learners={new}, settled=False)) == []
    # Caught up but the removal still not committed: wait.
    assert plan(leader(me, voters, learners={new}, caught_up={new}, settled=False)) == []
    # Not caught up yet: wait.
    assert plan(leader(me, voters, learners={new}, caught_up={member(3)})) == []
    assert plan(leader(me, voters, learners={new}, caught_up={new, member(3)})) == [Promote(g, new)]
    voters.add(new)
    assert plan(leader(me, voters, settled=False)) == []
    # Converged: the preferred leader (node 2) is a voter, alive and caught up.
    assert plan(leader(me, voters, caught_up={new, member(3)})) == [TransferLeadership(g, new)]
    # Node 2 leads now: on node 1 the group is followed, nothing to do.
    assert plan(follower(new, voters), now=1.0) == []


def test_removal_comes_before_adding_even_if_the_new_member_is_alive():
    log = cluster(3)
    topic_id = create(log, "t", [[1, 2, 3]]).value["topic_id"]
    g = partition_group(topic_id, 0)
    log.ok(register(2, 1))
    # Not settled (the leader has not committed its no-op yet): no removal, and no learner
    # either while the dead incarnation is still a voter.
    actions = Planner().plan(log.state, view(1, {g: leader(member(1), [member(1), member(2), member(3)], settled=False)},
                                             {**ALL, 2: 1}, state=log.state), 0.0)
    assert actions == []


def test_learners_only_for_live_members_and_promotion_only_when_alive_and_caught_up():
    log = cluster(3)
    topic_id = create(log, "t", [[1, 2, 3]]).value["topic_id"]
    g = partition_group(topic_id, 0)
    log.ok(register(2, 1))
    voters = [member(1), member(3)]
    down = {1: 0, 3: 0}  # node 2 (new incarnation) not reachable
    assert Planner().plan(log.state, view(1, {g: leader(member(1), voters)}, down, state=log.state), 0.0) == []
    lead = leader(member(1), voters, learners={member(2, 1)}, caught_up={member(2, 1)})
    assert Planner().plan(log.state, view(1, {g: lead}, down, state=log.state), 0.0) == []
    # Node 2 is reachable but still announces its old, retired incarnation: not the member.
    assert Planner().plan(log.state, view(1, {g: leader(member(1), voters)}, ALL, state=log.state), 0.0) == []


def test_a_node_that_is_only_down_is_not_removed():
    log, topic_id = three_nodes_one_topic()
    g = partition_group(topic_id, 0)
    voters = [member(1), member(2), member(3)]
    actions = Planner().plan(log.state, view(1, {g: leader(member(1), voters)}, {1: 0, 3: 0}, state=log.state), 0.0)
    assert actions == []


def test_unknown_voters_are_never_removed():
    # A voter the state does not know (a newer incarnation the state has not seen yet) stays.
    log, topic_id = three_nodes_one_topic()
    g = partition_group(topic_id, 0)
    voters = [member(1), member(2, 7), member(3)]
    actions = Planner().plan(log.state, view(1, {g: leader(member(1), voters)}, ALL, state=log.state), 0.0)
    assert only(actions, RemoveMember) == []


def test_followers_never_change_their_groups():
    log = cluster(3)
    topic_id = create(log, "t", [[2, 1, 3]]).value["topic_id"]
    g = partition_group(topic_id, 0)
    log.ok(register(3, 1))
    voters = [member(1), member(2), member(3)]
    for gv in (follower(member(2), voters), GroupView("candidate", None, frozenset(voters))):
        assert Planner().plan(log.state, view(1, {g: gv}, {**ALL, 3: 1}, state=log.state), 0.0) == []
    # A core that says "leader" with another leader id (stale view) is not trusted either.
    stale = attrs.evolve(leader(member(1), voters), leader=member(2))
    assert Planner().plan(log.state, view(1, {g: stale}, {**ALL, 3: 1}, state=log.state), 0.0) == []


def test_never_the_last_voter_and_nothing_from_a_retired_incarnation():
    log = cluster(2)
    topic_id = create(log, "t", [[1, 2]]).value["topic_id"]
    g = partition_group(topic_id, 0)
    log.ok(register(2, 1))
    # The only voter left is a retired incarnation? Impossible for a leader (it is a voter),
    # but a group of one that names only a dead member must not be emptied.
    lonely = leader(member(1), [member(2)])
    actions = Planner().plan(log.state, view(1, {g: lonely}, {1: 0, 2: 1}, state=log.state), 0.0)
    assert only(actions, RemoveMember) == []
    # A node whose own incarnation the state has retired (its data directory was replaced
    # and came back) does nothing at all, not even on a group it still leads.
    log.ok(register(1, 1))
    me_old = leader(member(1), [member(1), member(2, 1)])
    assert Planner().plan(log.state, view(1, {g: me_old}, {1: 0, 2: 1}, state=log.state), 0.0) == []


def test_metadata_group_membership_follows_registrations():
    log = cluster(3)
    log.ok(register(3, 1))
    log.ok(register(4))
    me = member(1)
    planner = Planner()
    live = {1: 0, 2: 0, 3: 1, 4: 0}

    def plan(gv):
        meta = attrs.evolve(gv, commit_index=log.index)
        return planner.plan(log.state, view(1, {METADATA_GROUP: meta}, live, state=log.state), 0.0)

    voters = {me, member(2), member(3)}
    assert plan(leader(me, voters)) == [RemoveMember(METADATA_GROUP, member(3))]
    voters.discard(member(3))
    assert plan(leader(me, voters)) == [AddLearner(METADATA_GROUP, member(3, 1))]  # then node 4
    learners = {member(3, 1)}
    assert plan(leader(me, voters, learners=learners)) == [AddLearner(METADATA_GROUP, member(4))]
    learners.add(member(4))
    assert plan(leader(me, voters, learners=learners, caught_up={member(4)})) == [Promote(METADATA_GROUP, member(4))]
    voters.add(member(4))
    learners.discard(member(4))
    assert plan(leader(me, voters, learners=learners, caught_up={member(3, 1)})) == [
        Promote(METADATA_GROUP, member(3, 1))]
    voters.add(member(3, 1))
    # No preferred leader for the metadata group: converged means no action.
    assert plan(leader(me, voters, caught_up=voters - {me})) == []


def test_bootstrap_members_not_yet_registered_are_kept():
    log = cluster(1)  # nodes 2 and 3 have not registered yet
    voters = [member(1), member(2), member(3)]
    meta = leader(member(1), voters, commit=log.index)
    actions = Planner().plan(log.state, view(1, {METADATA_GROUP: meta}, {1: 0}, state=log.state), 0.0)
    assert actions == []


# ---------------------------------------------------------------------------- leadership


def test_preferred_leader_returning_gets_its_leadership_back_rate_limited():
    log = cluster(3)
    topic_id = create(log, "t", [[2, 1, 3]]).value["topic_id"]
    g = partition_group(topic_id, 0)
    voters = [member(1), member(2), member(3)]
    planner = Planner(PlannerConfig(transfer_interval=10.0))

    def plan(gv, live, now):
        return planner.plan(log.state, view(1, {g: gv}, live, state=log.state), now)

    # Node 2 is down: node 1 leads, nothing to hand over.
    assert plan(leader(member(1), voters, caught_up={member(3)}), {1: 0, 3: 0}, 0.0) == []
    # Back, but still catching up: wait.
    assert plan(leader(member(1), voters, caught_up={member(3)}), ALL, 1.0) == []
    # Caught up: transfer.
    caught = leader(member(1), voters, caught_up={member(2), member(3)})
    assert plan(caught, ALL, 2.0) == [TransferLeadership(g, member(2))]
    # The transfer did not happen (the core gave up): not again before transfer_interval.
    assert plan(caught, ALL, 5.0) == []
    assert plan(caught, ALL, 12.0) == [TransferLeadership(g, member(2))]
    # A configuration change in flight: no transfer.
    assert plan(leader(member(1), voters, caught_up=set(voters), settled=False), ALL, 30.0) == []


def test_no_transfer_to_a_preferred_leader_whose_metadata_is_not_current():
    # Node 2 is back and caught up in the group, but its node heartbeats say its metadata is
    # not current yet (or applied less than here): as leader it would answer
    # LEADER_NOT_AVAILABLE for the group until it catches up. Wait until it says so.
    log = cluster(3)
    topic_id = create(log, "t", [[2, 1, 3]]).value["topic_id"]
    g = partition_group(topic_id, 0)
    voters = [member(1), member(2), member(3)]
    caught = leader(member(1), voters, caught_up={member(2), member(3)})
    applied = log.state.applied_index

    def plan(peer_metadata):
        return Planner().plan(log.state, view(1, {g: caught}, ALL, state=log.state, peer_metadata=peer_metadata), 0.0)

    assert plan({3: applied}) == []  # nothing heard from node 2 yet (just connected, or older code)
    assert plan({2: None, 3: applied}) == []  # it says its metadata is not current
    assert plan({2: applied - 1, 3: applied}) == []  # current as far as it knows, but behind this node
    assert plan({2: applied, 3: None}) == [TransferLeadership(g, member(2))]
    assert plan({2: applied + 5, 3: None}) == [TransferLeadership(g, member(2))]


def test_no_transfer_while_a_live_member_is_still_to_be_added_but_a_dead_one_does_not_block_it():
    log = cluster(3)
    topic_id = create(log, "t", [[2, 1, 3]]).value["topic_id"]
    g = partition_group(topic_id, 0)
    log.ok(register(3, 1))
    voters = [member(1), member(2)]  # the retired 3 is out, the new 3 not in yet
    caught = {member(2)}
    # New node 3 is alive and catching up as a learner: let it finish first.
    live = {**ALL, 3: 1}
    lead = leader(member(1), voters, learners={member(3, 1)}, caught_up=caught)
    assert Planner().plan(log.state, view(1, {g: lead}, live, state=log.state), 0.0) == []
    # New node 3 is down: nothing to wait for, the preferred leader gets its group back.
    lead = leader(member(1), voters, caught_up=caught)
    assert Planner().plan(log.state, view(1, {g: lead}, {1: 0, 2: 0}, state=log.state), 0.0) == [
        TransferLeadership(g, member(2))]
    # A retired voter still in the group: remove it first.
    lead = leader(member(1), voters + [member(3)], caught_up=caught)
    assert Planner().plan(log.state, view(1, {g: lead}, {1: 0, 2: 0}, state=log.state), 0.0) == [
        RemoveMember(g, member(3))]


def test_planner_settings_refuse_nonsense():
    for bad in ({"transfer_interval": -1}, {"max_transfers": -1}, {"register_interval": 0},
                {"max_transfers_in_flight": 0}):
        with pytest.raises(ValueError):
            PlannerConfig(**bad)
    assert PlannerConfig(transfer_interval=0, max_transfers=0).max_transfers == 0


def test_at_most_max_transfers_per_plan():
    log = cluster(3)
    topic_id = create(log, "t", [[2, 1, 3]] * 10).value["topic_id"]
    voters = [member(1), member(2), member(3)]
    groups = {partition_group(topic_id, p): leader(member(1), voters, caught_up={member(2), member(3)})
              for p in range(10)}
    planner = Planner(PlannerConfig(max_transfers=3, transfer_interval=5.0))
    first = planner.plan(log.state, view(1, groups, ALL, state=log.state), 0.0)
    assert len(first) == 3 and all(isinstance(a, TransferLeadership) for a in first)
    second = planner.plan(log.state, view(1, groups, ALL, state=log.state), 1.0)
    assert len(second) == 3 and not {a.group for a in first} & {a.group for a in second}


def test_transfers_wait_while_max_transfers_in_flight_have_not_ended():
    """Issue 9: a node back after a restart on a busy machine was handed 8 transfers per plan,
    5 plans a second, whether or not it finished the elections: the cluster never converged."""
    log = cluster(3)
    topic_id = create(log, "t", [[2, 1, 3]] * 20).value["topic_id"]
    voters = [member(1), member(2), member(3)]
    groups = {partition_group(topic_id, p): leader(member(1), voters, caught_up={member(2), member(3)})
              for p in range(20)}
    planner = Planner(PlannerConfig(max_transfers=8, max_transfers_in_flight=5, transfer_interval=5.0))
    first = planner.plan(log.state, view(1, groups, ALL, state=log.state), 0.0)
    assert len(first) == 5 and all(isinstance(a, TransferLeadership) for a in first)
    assert planner.plan(log.state, view(1, groups, ALL, state=log.state), 0.2) == []  # none ended yet
    done = [a.group for a in first]
    groups[done[0]] = follower(member(2), voters)  # node 2 won: ended
    groups[done[1]] = follower(None, voters)  # stepped down, no leader known yet: its election is still on
    second = planner.plan(log.state, view(1, groups, ALL, state=log.state), 0.4)
    assert len(second) == 1 and second[0].group not in done
    groups[done[1]] = follower(member(2), voters)
    groups[done[2]] = follower(member(3), voters)  # another node won: ended too
    assert len(planner.plan(log.state, view(1, groups, ALL, state=log.state), 0.6)) == 2
    # Transfers that never end (the core gives up after an election timeout) stop counting after
    # transfer_interval; the groups themselves may be transferred again from then on.
    later = planner.plan(log.state, view(1, groups, ALL, state=log.state), 5.7)
    assert len(later) == 5


def test_leader_that_is_preferred_does_nothing():
    log, topic_id = three_nodes_one_topic()
    g = partition_group(topic_id, 0)
    voters = [member(1), member(2), member(3)]
    gv = leader(member(1), voters, caught_up={member(2), member(3)})
    assert Planner().plan(log.state, view(1, {g: gv}, ALL, state=log.state), 0.0) == []


@pytest.mark.parametrize("node", [1, 2, 3])
def test_a_converged_cluster_is_a_fixed_point(node):
    log, topic_id = three_nodes_one_topic(partitions=3)
    voters = [member(1), member(2), member(3)]
    groups = {}
    for p, replicas in enumerate(log.state.topics["t"].partitions):
        preferred = member(replicas.replicas[0])
        groups[partition_group(topic_id, p)] = (
            leader(preferred, voters, caught_up=set(voters) - {preferred}) if preferred == member(node)
            else follower(preferred, voters))
    groups[METADATA_GROUP] = (leader(member(1), voters, caught_up=set(voters[1:]), commit=log.index) if node == 1
                              else follower(member(1), voters, commit=log.index))
    assert Planner().plan(log.state, view(node, groups, ALL, state=log.state), 0.0) == []


# ---------------------------------------------------------------------------- what the node passes


def test_core_views_are_built_on_access_and_the_host_knows_what_it_leads():
    from twisted.internet.task import Clock

    from streamlog.cluster.reconcile import CoreViews, group_view
    from streamlog.raft.core import RaftConfig
    from streamlog.raft.driver import MemoryGroupStorage, RaftHost
    from streamlog.raft.log import MemoryRaftLog

    clock = Clock()
    host = RaftHost("a", ["a"], RaftConfig(election_timeout=0.3, heartbeat_interval=0.05), clock=clock)
    cores = {g: host.add_group(g, ["a"], MemoryGroupStorage(MemoryRaftLog())) for g in ("g1", "g2")}
    assert host.led_groups() == frozenset()
    host.campaign("g1")  # a group of one is led at once
    assert host.led_groups() == frozenset({"g1"})
    views = CoreViews(cores)
    assert len(views) == 2 and set(views) == {"g1", "g2"} and "g1" in views and "g3" not in views
    assert views.keys() - {"g1"} == {"g2"}
    assert views["g1"] == group_view(cores["g1"]) and views["g1"].role == LEADER
    assert views["g2"].role == FOLLOWER
    host.remove_group("g1")
    assert host.led_groups() == frozenset()
    host.stop()

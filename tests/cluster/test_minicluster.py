"""The cluster package driving real Raft cores: bootstrap, topics, a wiped node's
replacement, a node that is only down, a deleted topic, all through the planner."""

from __future__ import annotations

from cluster_support import member
from minicluster import MiniCluster

from streamlog.cluster.metadata import METADATA_GROUP, DeleteTopic, encode_command, encode_snapshot, partition_group
from streamlog.cluster.reconcile import AddLearner, CreateReplica, Promote, RemoveMember, TransferLeadership


def boot(nodes=3, partitions=3, seed=1) -> tuple[MiniCluster, str]:
    c = MiniCluster(nodes, seed)
    c.run_until(lambda: all(len(n.state.nodes) == nodes for n in c.up.values()))
    c.create_topic("t", partitions)
    c.run_until(lambda: all("t" in n.state.topics for n in c.up.values()))
    c.run_until(c.converged)
    return c, c.up[1].state.topics["t"].topic_id


def produce_committed(c: MiniCluster, group: str, values: list[bytes]) -> None:
    for v in values:
        c.run_until(lambda v=v: c.produce(group, v))
    hosts = c.up[1].state.topics["t"].partitions[int(group.rsplit("-", 1)[1])].replicas
    c.run_until(lambda: all(c.up[n].records[group][-len(values):] == values for n in hosts if n in c.up))


def test_bootstrap_registers_every_node_and_a_topic_reaches_its_preferred_leaders():
    c, topic_id = boot()
    state = c.up[1].state
    assert sorted(state.nodes) == [1, 2, 3] and state.cluster_id == c.cluster_id
    # Three partitions, three nodes: each node is the preferred leader of one, and leads it.
    leaders = {p: c.leader_of(partition_group(topic_id, p)).node_id for p in range(3)}
    assert sorted(leaders.values()) == [1, 2, 3]
    assert all(leaders[p] == state.topics["t"].partitions[p].replicas[0] for p in range(3))
    # Every replica started from the topic's initial members; no membership change was needed.
    assert not [a for _, a in c.actions if isinstance(a, (AddLearner, Promote, RemoveMember))]
    assert sorted(a.partition for n, a in c.actions if isinstance(a, CreateReplica)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Every node applied the same metadata, byte for byte.
    assert len({encode_snapshot(n.state) for n in c.up.values()}) == 1


def test_wiped_node_is_replaced_in_every_group_removal_first_then_regains_its_leadership():
    c, topic_id = boot()
    group = partition_group(topic_id, 1)  # node 2 is its preferred leader
    assert c.leader_of(group).node_id == 2
    before = [b"r1", b"r2", b"r3"]
    produce_committed(c, group, before)
    old = member(2)

    c.stop(2)  # the disk dies with the process
    c.run_until(lambda: c.leader_of(group) is not None and c.leader_of(group).node_id != 2)
    assert c.produce(group, b"while-down")  # 2 of 3 voters live: the group still commits
    c.run_until(lambda: all(c.up[n].records[group][-1:] == [b"while-down"] for n in (1, 3)))
    first_action = len(c.actions)

    reborn = c.wipe_and_start(2)
    took = c.run_until(c.converged)
    new = reborn.member
    assert new == member(2, 1) != old

    # Every group now has the new member and not the old one; node 2 leads its preferred partition.
    state = c.up[1].state
    assert state.nodes[2].incarnation == reborn.incarnation and state.is_retired(old)
    for g in [METADATA_GROUP] + [partition_group(topic_id, p) for p in range(3)]:
        voters = c.leader_of(g).cores[g].voters
        assert new in voters and old not in voters, (g, voters)
    assert c.leader_of(group).node_id == 2
    # The new replica holds everything committed before, during and after its absence.
    assert reborn.records[group] == before + [b"while-down"]
    produce_committed(c, group, [b"after"])
    # In every group the dead member left before its replacement joined: no configuration
    # ever had four members, and the last ones went 3 -> 2 -> 3.
    for g, configs in c.configs_seen.items():
        assert all(len(config) <= 3 for config in configs), (g, configs)
        if old in configs[0]:
            assert [len(x) for x in configs] == [3, 2, 3] and new in configs[-1] and old not in configs[1], configs
    # The planner's steps for the partition, in order.
    steps = [type(a).__name__ for _, a in c.actions[first_action:] if getattr(a, "group", None) == group
             and isinstance(a, (RemoveMember, AddLearner, Promote, TransferLeadership))]
    assert steps[:3] == ["RemoveMember", "AddLearner", "Promote"] and steps[-1] == "TransferLeadership", steps
    assert took < 10.0


def test_a_node_that_is_only_down_keeps_its_membership_and_gets_its_leadership_back():
    c, topic_id = boot(seed=2)
    group = partition_group(topic_id, 2)  # node 3 is its preferred leader
    assert c.leader_of(group).node_id == 3
    node3 = c.stop(3)
    c.run_until(lambda: c.leader_of(group) is not None and c.leader_of(group).node_id != 3)
    produce_committed(c, group, [b"x"])
    first_action = len(c.actions)
    c.start(node3)  # same disk, same incarnation
    c.run_until(c.converged)
    kinds = {type(a) for _, a in c.actions[first_action:]}
    assert kinds <= {TransferLeadership}, kinds  # no membership change at all
    assert c.leader_of(group).node_id == 3 and node3.records[group][-1:] == [b"x"]


def test_a_restarted_node_with_old_metadata_keeps_its_replicas_and_its_groups():
    """After a restart a node's metadata is its last snapshot, replayed forward only once the
    controller tells it the commit index. Replicas of topics newer than that snapshot must
    not look deleted, and stale members must not look dead, meanwhile."""
    c = MiniCluster(3, seed=5)
    c.run_until(lambda: all(len(n.state.nodes) == 3 for n in c.up.values()))
    old_snapshot = c.up[3].state  # before any topic exists
    c.create_topic("t", 3)
    c.run_until(lambda: all("t" in n.state.topics for n in c.up.values()))
    c.run_until(c.converged)
    topic_id = c.up[1].state.topics["t"].topic_id
    group = partition_group(topic_id, 2)
    produce_committed(c, group, [b"kept"])
    first_action = len(c.actions)
    node = c.restart(3, metadata=old_snapshot)
    c.run_until(c.converged)
    mine = [a for n, a in c.actions[first_action:] if n == 3]
    assert not [a for a in mine if not isinstance(a, TransferLeadership)], mine
    assert not [a for _, a in c.actions[first_action:] if isinstance(a, (RemoveMember, AddLearner, Promote))]
    assert node.records[group] == [b"kept"] and c.leader_of(group).node_id == 3


def test_a_deleted_topic_leaves_no_replica_anywhere_and_a_new_one_of_its_name_starts_fresh():
    c, topic_id = boot(seed=3)
    assert c.propose_metadata(encode_command(DeleteTopic("t"))) is not None
    c.run_until(lambda: all(not any(g.startswith(topic_id) for g in n.cores) for n in c.up.values()))
    assert all(set(n.cores) == {METADATA_GROUP} for n in c.up.values())
    c.create_topic("t", 1)
    c.run_until(lambda: all("t" in n.state.topics for n in c.up.values()))
    c.run_until(c.converged)
    assert c.up[1].state.topics["t"].topic_id != topic_id


def test_five_nodes_rf3_with_a_wiped_node_converge():
    c = MiniCluster(5, seed=4)
    c.run_until(lambda: all(len(n.state.nodes) == 5 for n in c.up.values()))
    c.create_topic("t", 5)
    c.run_until(lambda: all("t" in n.state.topics for n in c.up.values()))
    c.run_until(c.converged)
    topic = c.up[1].state.topics["t"]
    assert all(len(p.replicas) == 3 for p in topic.partitions)
    assert sorted(p.replicas[0] for p in topic.partitions) == [1, 2, 3, 4, 5]
    c.stop(4)
    reborn = c.wipe_and_start(4)
    c.run_until(c.converged)
    hosted = [p for p, info in enumerate(topic.partitions) if 4 in info.replicas]
    for p in hosted:
        g = partition_group(topic.topic_id, p)
        assert reborn.member in c.leader_of(g).cores[g].voters


def test_a_cluster_of_one_runs_the_same_code():
    c = MiniCluster(1, seed=6)
    c.run_until(lambda: 1 in c.up[1].state.nodes)
    c.create_topic("t", 2)
    c.run_until(lambda: "t" in c.up[1].state.topics)
    c.run_until(c.converged)
    topic = c.up[1].state.topics["t"]
    assert [p.replicas for p in topic.partitions] == [(1,), (1,)]
    group = partition_group(topic.topic_id, 1)
    produce_committed(c, group, [b"solo"])
    assert c.leader_of(METADATA_GROUP).node_id == 1


def test_the_controller_wiped_is_replaced_by_the_next_controller():
    c, topic_id = boot(seed=7)
    controller = c.leader_of(METADATA_GROUP).node_id
    old = c.up[controller].member
    c.stop(controller)
    c.run_until(lambda: c.leader_of(METADATA_GROUP) is not None)
    assert c.leader_of(METADATA_GROUP).node_id != controller
    reborn = c.wipe_and_start(controller)
    c.run_until(c.converged)
    for g in [METADATA_GROUP] + [partition_group(topic_id, p) for p in range(3)]:
        voters = c.leader_of(g).cores[g].voters
        assert reborn.member in voters and old not in voters
    assert len({encode_snapshot(n.state) for n in c.up.values()}) == 1


def test_wiped_node_replacement_converges_on_a_lossy_network():
    """A fifth of all messages lost, 20 seeds: bootstrap, a topic, a wiped node, and the
    cluster still reaches the intended members and preferred leaders, data intact."""
    for seed in range(20):
        c = MiniCluster(3, seed, loss=0.2)
        c.run_until(lambda c=c: all(len(n.state.nodes) == 3 for n in c.up.values()))
        c.create_topic("t", 3)
        c.run_until(lambda c=c: all("t" in n.state.topics for n in c.up.values()))
        c.run_until(c.converged)
        group = partition_group(c.up[1].state.topics["t"].topic_id, 0)
        produce_committed(c, group, [b"a", b"b"])
        victim = 1 + seed % 3
        c.stop(victim)
        reborn = c.wipe_and_start(victim)
        c.run_until(c.converged)
        assert reborn.records[group] == [b"a", b"b"], seed

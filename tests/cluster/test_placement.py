"""Placement: replicas and preferred leaders spread evenly, deterministically."""

from __future__ import annotations

import random

import pytest
from cluster_support import LIMIT, cluster, register
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlog import errors
from streamlog.cluster.metadata import CreateTopic, leader_counts, replica_counts
from streamlog.cluster.placement import assign_replicas, create_topic_command, default_replication_factor
from streamlog.storage.base import TopicConfig


def spread(counts):
    return max(counts.values()) - min(counts.values())


def create_all(log, sizes, rf=None, live=None):
    for i, partitions in enumerate(sizes):
        replicas = assign_replicas(log.state, partitions, rf, live)
        assert len(replicas) == partitions
        for r in replicas:
            assert len(set(r)) == len(r), f"a node twice in {r}"
        log.ok(CreateTopic(f"t{i}", replicas, TopicConfig(), 1024, LIMIT))
        yield log.state


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from([3, 5]), st.integers(1, 3), st.lists(st.integers(1, 64), min_size=1, max_size=30))
def test_replicas_and_preferred_leaders_stay_within_one_per_node(nodes, rf, sizes):
    log = cluster(nodes)
    for state in create_all(log, sizes, rf):
        assert spread(replica_counts(state)) <= 1, dict(replica_counts(state))
        assert spread(leader_counts(state)) <= 1, dict(leader_counts(state))


def test_balance_over_many_topics_with_the_default_replication_factor():
    rng = random.Random(9)
    for nodes in (3, 5):
        log = cluster(nodes)
        for state in create_all(log, [rng.randint(1, 64) for _ in range(80)]):
            assert spread(replica_counts(state)) <= 1 and spread(leader_counts(state)) <= 1
        topic = state.topics["t0"]
        assert topic.replication_factor == 3
        total = sum(len(t.partitions) for t in state.topics.values())
        # Every node leads about total / nodes partitions, and holds 3x that many replicas.
        assert all(abs(c - total / nodes) <= 1 for c in leader_counts(state).values())
        assert all(abs(c - 3 * total / nodes) <= 1 for c in replica_counts(state).values())


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.sampled_from([3, 5]), st.lists(st.tuples(st.integers(1, 64), st.integers(1, 3)), min_size=1, max_size=20))
def test_mixed_replication_factors_keep_replicas_within_one_and_leaders_within_two(nodes, topics):
    # With RF=1 topics in the mix a replica *is* a leadership, so both counts cannot always be
    # within one; this bound is what the greedy rule achieves (checked over 2,000 random runs
    # of 2-7 nodes while writing it), pinned here so a change that does worse is noticed.
    log = cluster(nodes)
    for i, (partitions, rf) in enumerate(topics):
        log.ok(CreateTopic(f"t{i}", assign_replicas(log.state, partitions, rf), TopicConfig(), 1024, LIMIT))
        assert spread(replica_counts(log.state)) <= 1
        assert spread(leader_counts(log.state)) <= 2


def test_placement_is_deterministic_and_rotates_the_first_replica():
    log = cluster(3)
    assert assign_replicas(log.state, 3) == ((1, 2, 3), (2, 1, 3), (3, 1, 2))
    assert assign_replicas(log.state, 6) == assign_replicas(cluster(3).state, 6)
    log5 = cluster(5)
    first = assign_replicas(log5.state, 5)
    assert sorted(r[0] for r in first) == [1, 2, 3, 4, 5]
    assert all(len(r) == 3 for r in first)


def test_default_replication_factor_is_three_or_every_live_node():
    assert [default_replication_factor(n) for n in (1, 2, 3, 5)] == [1, 2, 3, 3]
    assert assign_replicas(cluster(1).state, 2) == ((1,), (1,))
    assert {len(r) for r in assign_replicas(cluster(2).state, 4)} == {2}
    assert {len(r) for r in assign_replicas(cluster(5).state, 4)} == {3}
    log = cluster(5)
    # Only live nodes get replicas; the default follows the live count.
    replicas = assign_replicas(log.state, 6, nodes=[2, 4])
    assert {frozenset(r) for r in replicas} == {frozenset({2, 4})}


def test_a_new_node_gets_the_next_replicas_until_it_catches_up():
    log = cluster(3)
    list(create_all(log, [30]))
    log.ok(register(4))
    replicas = assign_replicas(log.state, 10)
    assert all(4 in r for r in replicas)
    assert sum(r[0] == 4 for r in replicas) >= 5


def test_replication_factor_beyond_the_live_nodes_is_invalid_params_and_says_so():
    log = cluster(3)
    with pytest.raises(errors.InvalidParams) as info:
        assign_replicas(log.state, 1, 4)
    assert "replication factor 4 needs 4 live nodes; 3 are live" in info.value.message
    assert info.value.details == {"field": "replication_factor", "replication_factor": 4, "live_nodes": 3}
    with pytest.raises(errors.InvalidParams, match="1 is live"):
        assign_replicas(log.state, 1, 2, nodes=[3])
    with pytest.raises(errors.InvalidParams, match="no live registered node"):
        assign_replicas(log.state, 1, nodes=[7])
    with pytest.raises(errors.InvalidParams, match="at least 1"):
        assign_replicas(log.state, 1, 0)
    with pytest.raises(errors.InvalidParams, match="'partitions' must be at least 1"):
        assign_replicas(log.state, 0)


def test_create_topic_command_refuses_before_proposing():
    log = cluster(3)
    command = create_topic_command(log.state, "orders", 4, TopicConfig(retention_ms=1000),
                                   max_partitions=1024, max_partitions_per_node=LIMIT)
    assert command.replicas == assign_replicas(log.state, 4) and command.config.retention_ms == 1000
    log.ok(command)
    with pytest.raises(errors.TopicExists):
        create_topic_command(log.state, "orders", 1, TopicConfig(), max_partitions=1024, max_partitions_per_node=LIMIT)
    with pytest.raises(errors.InvalidTopic):
        create_topic_command(log.state, "a b", 1, TopicConfig(), max_partitions=1024, max_partitions_per_node=LIMIT)
    with pytest.raises(errors.InvalidParams, match="between 1 and 8"):
        create_topic_command(log.state, "big", 9, TopicConfig(), max_partitions=8, max_partitions_per_node=LIMIT)
    with pytest.raises(errors.InvalidParams, match="segment_bytes"):
        create_topic_command(log.state, "c", 1, TopicConfig(segment_bytes=5), max_partitions=8,
                             max_partitions_per_node=LIMIT)
    with pytest.raises(errors.StreamlogError) as info:
        create_topic_command(log.state, "d", 3, TopicConfig(), max_partitions=8, max_partitions_per_node=4)
    assert info.value.code == "TOO_MANY_PARTITIONS" and info.value.details["limit"] == 4

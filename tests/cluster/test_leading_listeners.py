"""ReplicaDirectory.leading_listeners: told once per term when a replica starts to lead."""

from __future__ import annotations

from streamlog.testing import BrokerHarness, ClusterHarness


def test_a_node_alone_announces_each_partition_once_as_it_opens_and_not_at_its_commits(clock):
    h = BrokerHarness(clock=clock)
    try:
        told = []
        h.broker.directory.leading_listeners.append(lambda r: told.append((r.topic, r.index, r.term)))
        conn = h.connect()
        assert "result" in conn.call("CreateTopic", {"topic": "t", "partitions": 2})
        h.settle()
        term = h.broker.topics["t"].partitions[0].term
        assert sorted(told) == [("t", 0, term), ("t", 1, term)]
        for i in range(3):
            assert "result" in conn.call("Send", {"topic": "t", "partition": 0, "value": i})
        h.settle()
        assert len(told) == 2
    finally:
        h.broker.groups.stop()
        h.stop()


def test_a_replica_that_leads_before_the_metadata_names_it_is_announced_once_named(clock):
    """A restarted cluster node opens its replicas with topic "" (its metadata names them later,
    ClusterNode._refresh_topics): listeners, which look for a topic by name, wait for the name."""
    h = BrokerHarness(clock=clock)
    try:
        conn = h.connect()
        assert "result" in conn.call("CreateTopic", {"topic": "t", "partitions": 1})
        h.settle()
        replica = h.broker.topics["t"].partitions[0]
        told = []
        h.broker.directory.leading_listeners.append(lambda r: told.append(r.topic))
        replica.topic, replica.announced_term = "", -1  # as opened before the metadata is applied
        h.broker.directory.announce_leading(replica)
        assert told == []
        replica.topic = "t"
        h.broker.directory.announce_leading(replica)
        h.broker.directory.announce_leading(replica)
        assert told == ["t"]
    finally:
        h.broker.groups.stop()
        h.stop()


def test_a_failover_announces_the_new_leader_in_its_term():
    cluster = ClusterHarness(3)
    try:
        cluster.run_until_formed()
        cluster.create_topics("t")
        cluster.run_until(lambda: cluster.leader_of("t") is not None)
        told = {i: [] for i in cluster.nodes}
        for i, node in cluster.nodes.items():
            node.directory.leading_listeners.append(lambda r, i=i: told[i].append((r.topic, r.term)))
        first = cluster.leader_of("t")
        cluster.kill(first)
        cluster.run_until(lambda: cluster.leader_of("t") not in (None, first))
        new = cluster.leader_of("t")
        term = cluster.brokers[new].topics["t"].partitions[0].term
        assert ("t", term) in told[new] and told[first] == []
        assert len(told[new]) == len(set(told[new]))  # once per term
    finally:
        for broker in cluster.brokers.values():
            broker.groups.stop()
        cluster.stop()

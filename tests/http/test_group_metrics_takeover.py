"""Finding 3 of the obs-metrics review: a new coordinator showed no group series until a group
request loaded its shard, so a lag alert on a group whose consumers were down resolved when the
coordinator failed over.  Three cluster nodes on a Clock (ClusterHarness)."""

from __future__ import annotations

from metrics_support import Scrape

from streamlog.groups.config import OFFSETS_TOPIC
from streamlog.partitioner import partition_for_key


def coordinator_of(cluster, group):
    """The node leading the group's offsets partition now (None: none, or two), asked of no node."""
    leading = []
    for i, node in cluster.nodes.items():
        topic = cluster.brokers[i].topics.get(OFFSETS_TOPIC)
        if node.stopped or topic is None:
            continue
        if topic.partitions[partition_for_key(group, len(topic.partitions))].leads:
            leading.append(i)
    return leading[0] if len(leading) == 1 else None


def scrape_of(cluster, i):
    return Scrape(cluster.brokers[i], cluster.factories[i], cluster=cluster.nodes[i], node_id=i)


def test_a_groups_series_are_on_the_new_coordinator_before_any_group_request(cluster):
    assert "result" in cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 1, "replication_factor": 3})
    cluster.run_until(lambda: cluster.leader_of("t") is not None, timeout=20)
    for i in range(5):
        assert "result" in cluster.call(cluster.leader_of("t"), "Send", {"topic": "t", "value": i})
    found = []

    def coordinator_found():
        answer = cluster.call(1, "FindCoordinator", {"group": "g"})
        found[:] = [answer.get("result", {}).get("coordinator")]
        return found[0] is not None

    cluster.run_until(coordinator_found, timeout=20)
    coordinator = found[0]
    member = cluster.call(coordinator, "JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 3000})
    member = member["result"]
    assert "result" in cluster.call(coordinator, "CommitOffsets", {
        "group": "g", "member_id": member["member_id"], "generation": member["generation"],
        "offsets": [{"topic": "t", "partition": 0, "offset": 2}]})
    cluster.run(0.5)
    assert scrape_of(cluster, coordinator).value("streamlog_group_members", group="g") == 1

    cluster.kill(coordinator)  # its consumer dies with it: the group's lag is what an alert watches
    cluster.run_until(lambda: coordinator_of(cluster, "g") not in (None, coordinator), timeout=20)
    cluster.run_until(lambda: cluster.leader_of("t") is not None, timeout=20)
    new = coordinator_of(cluster, "g")
    scrape = scrape_of(cluster, new)  # no group request has reached any survivor
    assert scrape.value("streamlog_group_rebalances_total", group="g") == member["generation"]
    assert scrape.value("streamlog_group_members", group="g") == 1  # resumed with a whole session
    assert scrape.value("streamlog_group_topic_lag_records", group="g", topic="t") == 3
    cluster.run(4.0)  # the dead member's session (3 s) runs out at the new coordinator, unasked
    assert scrape.value("streamlog_group_members", group="g") == 0
    assert scrape.value("streamlog_group_topic_lag_records", group="g", topic="t") == 3  # the alert's series stays

"""Cluster-wide group answers on three ClusterNodes (a Clock, in-memory peers): DescribeGroup's lag
and ResetOffsets' targets for partitions the coordinator holds no replica of (asked of their
leaders over the peer links), and ListGroups covering every node's groups."""

from __future__ import annotations

from coordinator_support import ok


def settled(cluster, at, method, params, timeout=20):
    """C{method} at node C{at}, retried in simulated time while leaders are elected or move."""
    got = []

    def ready():
        answer = cluster.call(at, method, params)
        if "result" in answer:
            got.append(answer["result"])
            return True
        assert answer["error"]["code"] in ("COORDINATOR_NOT_AVAILABLE", "LEADER_NOT_AVAILABLE", "NOT_LEADER",
                                           "NOT_COORDINATOR"), answer
        return False

    cluster.run_until(ready, timeout=timeout)
    return got[0]


def leaders(cluster, topic):
    meta = settled(cluster, 1, "Metadata", {"topics": [topic]})
    return {p["partition"]: p["leader"] for p in meta["topics"][0]["partitions"]}


def coordinator_of(cluster, group, at=1):
    found = []

    def ready():
        answer = cluster.call(at, "FindCoordinator", {"group": group})
        coordinator = answer.get("result", {}).get("coordinator")
        found[:] = [coordinator]
        return coordinator is not None

    cluster.run_until(ready, timeout=20)
    return found[0]


def test_lag_reset_and_list_groups_cover_partitions_led_elsewhere(cluster):
    ok(cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 3, "replication_factor": 1}))
    cluster.run(3.0)  # elections, and the planner's moves to preferred leaders
    led = leaders(cluster, "t")
    assert all(node is not None for node in led.values()) and len(set(led.values())) == 3
    for partition, node in led.items():
        for n in range(10 * (partition + 1)):
            settled(cluster, node, "Send", {"topic": "t", "partition": partition, "value": n})
    coordinator = coordinator_of(cluster, "g")
    elsewhere = [p for p, node in led.items() if node != coordinator]
    assert len(elsewhere) == 2  # rf 1: the coordinator holds a replica of one partition only
    settled(cluster, coordinator, "CommitOffsets", {"group": "g", "offsets": [
        {"topic": "t", "partition": p, "offset": 5} for p in range(3)]})

    described = settled(cluster, coordinator, "DescribeGroup", {"group": "g"})
    assert [(o["partition"], o["high_watermark"], o["lag"]) for o in described["offsets"]] == [
        (0, 10, 5), (1, 20, 15), (2, 30, 25)]

    latest = settled(cluster, coordinator, "ResetOffsets", {"group": "g", "topic": "t", "to": "latest",
                                                            "dry_run": True})
    assert [(o["partition"], o["offset"], o["previous"]) for o in latest["offsets"]] == [
        (0, 10, 5), (1, 20, 5), (2, 30, 5)]
    shifted = settled(cluster, coordinator, "ResetOffsets", {"group": "g", "topic": "t", "to": {"shift": 100}})
    assert [o["offset"] for o in shifted["offsets"]] == [10, 20, 30]  # within the high watermarks
    early = settled(cluster, coordinator, "ResetOffsets", {"group": "g", "topic": "t", "to": {"timestamp": 0}})
    assert [o["offset"] for o in early["offsets"]] == [0, 0, 0]
    fetched = settled(cluster, coordinator, "FetchOffsets", {"group": "g"})["offsets"]
    assert [o["offset"] for o in fetched] == [0, 0, 0]

    # A second group, coordinated wherever its name hashes; every node lists both.
    other = next(name for name in (f"h{i}" for i in range(50)) if coordinator_of(cluster, name) != coordinator)
    settled(cluster, coordinator_of(cluster, other), "CommitOffsets", {"group": other, "offsets": [
        {"topic": "t", "partition": 0, "offset": 1}]})
    for node in (1, 2, 3):
        listed = settled(cluster, node, "ListGroups", {})
        assert [g["group"] for g in listed["groups"]] == sorted(["g", other]) and listed["unreachable"] == []


def test_an_unreachable_node_is_named_and_its_partitions_are_unavailable_to_reset(cluster):
    ok(cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 3, "replication_factor": 1}))
    cluster.run(3.0)
    led = leaders(cluster, "t")
    coordinator = coordinator_of(cluster, "g")
    victim = next(node for node in led.values() if node != coordinator)
    settled(cluster, coordinator, "CommitOffsets", {"group": "g", "offsets": [
        {"topic": "t", "partition": 0, "offset": 0}]})
    cluster.kill(victim)
    cluster.run(2.0)
    assert coordinator_of(cluster, "g", at=coordinator) == coordinator  # the offsets partition had 3 replicas
    lost = [p for p, node in led.items() if node == victim]
    error = cluster.call(coordinator, "ResetOffsets", {"group": "g", "topic": "t", "to": "latest"})["error"]
    assert (error["code"], error["partition"]) == ("PARTITION_UNAVAILABLE", lost[0])
    # An explicit offset is refused too (as Kafka's tool does): nothing can check it against the
    # log, and a dry run says the same; nothing is reset.
    for dry_run in (True, False):
        error = cluster.call(coordinator, "ResetOffsets", {"group": "g", "topic": "t", "to": {"offset": 3},
                                                           "dry_run": dry_run})["error"]
        assert (error["code"], error["partition"]) == ("PARTITION_UNAVAILABLE", lost[0]), error
    fetched = settled(cluster, coordinator, "FetchOffsets", {"group": "g"})["offsets"]
    assert [(o["partition"], o["offset"]) for o in fetched] == [(0, 0)]
    # A commit is not checked against the log: an outsider's commit of 3 is stored as given.
    settled(cluster, coordinator, "CommitOffsets", {"group": "g", "offsets": [
        {"topic": "t", "partition": p, "offset": 3} for p in lost]})
    described = settled(cluster, coordinator, "DescribeGroup", {"group": "g"})
    assert [o["lag"] is None for o in described["offsets"] if o["partition"] in lost] == [True] * len(lost)
    listed = settled(cluster, coordinator, "ListGroups", {})
    assert listed["unreachable"] == [victim]

    # The victim is back: its partitions' logs are empty, so the committed offset 3 is past their
    # end. A member that read from the end commits 0 there: allowed (else never again).
    cluster.start(victim)
    cluster.run(3.0)
    coordinator = coordinator_of(cluster, "g")  # the offsets partition may have moved back to its preferred leader
    member = settled(cluster, coordinator, "JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 30000})
    held = []

    def holds_everything():
        answer = ok(cluster.call(coordinator, "Heartbeat", {"group": "g", "member_id": member["member_id"],
                                                            "owned": held or member["assignment"]}))
        held[:] = answer["assignment"]
        return sorted(p for e in held for p in e["partitions"]) == [0, 1, 2]

    cluster.run_until(holds_everything, timeout=20)  # a coordinator that just took over grants after a hold
    commit = {"group": "g", "member_id": member["member_id"], "generation": member["generation"],
              "offsets": [{"topic": "t", "partition": p, "offset": 0} for p in lost]}
    settled(cluster, coordinator, "CommitOffsets", commit)
    fetched = settled(cluster, coordinator, "FetchOffsets", {"group": "g"})["offsets"]
    assert {o["partition"]: o["offset"] for o in fetched if o["partition"] in lost} == {p: 0 for p in lost}


def test_group_reads_at_any_node_of_a_cluster_create_no_offsets_topic(cluster):
    from streamlog.groups.config import OFFSETS_TOPIC

    ok(cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 2, "replication_factor": 1}))
    cluster.run(2.0)
    for node in (1, 2, 3):
        assert ok(cluster.call(node, "FetchOffsets", {"group": "g"}))["offsets"] == []
        assert cluster.call(node, "DescribeGroup", {"group": "g"})["error"]["code"] == "UNKNOWN_GROUP"
        assert ok(cluster.call(node, "ListGroups", {})) == {"groups": [], "unreachable": []}
        dry = settled(cluster, node, "ResetOffsets", {"group": "g", "topic": "t", "to": "earliest", "dry_run": True})
        assert [o["previous"] for o in dry["offsets"]] == [None, None]
    cluster.run(2.0)
    assert all(OFFSETS_TOPIC not in broker.topics for broker in cluster.brokers.values())
    assert OFFSETS_TOPIC not in [t["topic"] for t in ok(cluster.call(1, "ListTopics", {}))["topics"]]

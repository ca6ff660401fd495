"""Consumer groups on three ClusterNodes in one process (a Clock, in-memory peers):
the coordinator is the offsets partition's leader, other nodes point to it, and the
committed offsets survive the coordinator's death (rebuilt by the new leader)."""

from __future__ import annotations

import pytest

from streamlog.groups.config import OFFSETS_TOPIC
from streamlog.testing import ClusterHarness


@pytest.fixture
def cluster():
    c = ClusterHarness(3)
    c.run_until(lambda: c.controller() is not None and all(len(n.state.nodes) == 3 for n in c.nodes.values()))
    yield c
    for broker in c.brokers.values():
        broker.groups.stop()
    c.stop()


def find(cluster, at, group="g"):
    """FindCoordinator at node C{at}, retried (simulated time) while the offsets partition elects."""
    found = []

    def ready():
        answer = cluster.call(at, "FindCoordinator", {"group": group})
        if "result" in answer and answer["result"]["coordinator"] is not None:
            found.append(answer["result"])
            return True
        assert answer.get("error", {}).get("code") in (None, "COORDINATOR_NOT_AVAILABLE", "LEADER_NOT_AVAILABLE"), answer
        return False

    cluster.run_until(ready, timeout=20)
    return found[0]


def test_the_coordinator_answers_the_others_point_to_it_and_commits_survive_its_death(cluster):
    assert "result" in cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 3})
    where = find(cluster, 2)
    coordinator = where["coordinator"]
    assert where["coordinator_address"] == f"127.0.0.1:{7000 + coordinator}"
    assert len(cluster.brokers[1].topics[OFFSETS_TOPIC].partitions) == 4
    # Every node gives the same answer.
    assert all(find(cluster, i)["coordinator"] == coordinator for i in (1, 2, 3))
    other = next(i for i in (1, 2, 3) if i != coordinator)
    refused = cluster.call(other, "JoinGroup", {"group": "g", "topics": ["t"]})["error"]
    assert refused["code"] == "NOT_COORDINATOR"
    assert (refused["coordinator"], refused["coordinator_address"]) == (coordinator, where["coordinator_address"])

    member = cluster.call(coordinator, "JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 3000})
    member = member["result"]
    assert sorted(member["assignment"][0]["partitions"]) == [0, 1, 2]
    commit = {"group": "g", "member_id": member["member_id"], "generation": member["generation"],
              "offsets": [{"topic": "t", "partition": 1, "offset": 42}]}
    assert "result" in cluster.call(coordinator, "CommitOffsets", commit)

    cluster.kill(coordinator)
    survivor = next(i for i in (1, 2, 3) if i != coordinator)
    cluster.run(5.0)  # the election, and the planner's moves to preferred leaders among the living
    moved = find(cluster, survivor)
    assert moved["coordinator"] not in (None, coordinator)
    fetched = cluster.call(moved["coordinator"], "FetchOffsets", {"group": "g"})["result"]["offsets"]
    assert [(o["topic"], o["partition"], o["offset"]) for o in fetched] == [("t", 1, 42)]
    # Membership was the old coordinator's: the member must join again; its stale commit is refused.
    stale = cluster.call(moved["coordinator"], "CommitOffsets", {**commit, "offsets": [
        {"topic": "t", "partition": 1, "offset": 50}]})["error"]
    assert stale["code"] == "UNKNOWN_MEMBER"
    joined_at = cluster.clock.seconds()
    again = cluster.call(moved["coordinator"], "JoinGroup", {"group": "g", "topics": ["t"]})["result"]
    # The new coordinator holds grants back for --group-takeover-hold-ms (10 s): the old
    # coordinator's members may still be reading until their sessions (3 s here) run out.
    assert again["assignment"] == [] and again["pending"] == [{"topic": "t", "partitions": [0, 1, 2]}]
    beat = {"group": "g", "member_id": again["member_id"], "owned": []}
    while not again["assignment"]:
        cluster.run(1.0)
        again = cluster.call(moved["coordinator"], "Heartbeat", beat)["result"]
    assert cluster.clock.seconds() - joined_at >= 9.9
    assert sorted(again["assignment"][0]["partitions"]) == [0, 1, 2]
    assert "result" in cluster.call(moved["coordinator"], "CommitOffsets", {
        "group": "g", "member_id": again["member_id"], "generation": again["generation"],
        "offsets": [{"topic": "t", "partition": 1, "offset": 50}]})
    described = cluster.call(moved["coordinator"], "DescribeGroup", {"group": "g"})["result"]
    assert [o["offset"] for o in described["offsets"] if o["partition"] == 1] == [50]

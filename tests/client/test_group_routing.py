"""The GroupConsumer's route to its coordinator on a fake three-node cluster and a Clock: a
connection failure at the cached coordinator sends the retry through FindCoordinator again."""

from __future__ import annotations

import pytest
from fake_cluster import settled

from streamlog.client import GroupConsumer


@pytest.fixture
def cluster_client_options():
    # A long request timeout: a commit that kept going to the dead node would take all of it.
    return {"seed": 5, "request_timeout": 30.0}


def test_a_commit_whose_coordinator_died_asks_find_coordinator_again_at_once(clock, cluster, client):
    cluster.create_topic("t", 2, leaders=[1])
    part = cluster.topics["t"][0]
    part.records.append({"offset": 0, "timestamp": 1000, "key": None, "value": "a", "headers": {}})
    member = GroupConsumer(client, "g", ["t"], auto_commit_interval=None)
    got = []
    while not got:  # a poll may fire with [] while the partitions are granted
        got.extend(settled(clock, cluster, member.poll()))
    assert [m["value"] for m in got] == ["a"]
    assert member.coordinator == cluster.nodes[3].address
    # The coordinator's node dies; node 2 takes over (as the offsets partition's new leader would).
    cluster.kill(3)
    cluster.coordinator = 2
    finds_before = len(cluster.sent("FindCoordinator"))
    died = clock.seconds()
    outcome = settled(clock, cluster, member.commit(), limit=40)
    assert outcome is None
    assert cluster.group_offsets == {("t", 0): 1}
    assert [n for n, p in cluster.sent("CommitOffsets")] == [2]
    # One refused connection, then FindCoordinator, then the commit at the new coordinator: within a
    # retry backoff (0.09 s here), not retrying the dead address until a failed heartbeat happens to
    # clear it (6.8 s before the fix) or the request timeout (30 s) passes.
    assert len(cluster.sent("FindCoordinator")) > finds_before
    assert clock.seconds() - died < 0.5
    assert member.coordinator == cluster.nodes[2].address
    settled(clock, cluster, member.close())

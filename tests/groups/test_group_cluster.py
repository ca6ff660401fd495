"""Consumer groups on three ClusterNodes in one process (a Clock, in-memory peers):
the coordinator is the offsets partition's leader, other nodes point to it, and the
committed offsets survive the coordinator's death (rebuilt by the new leader)."""

from __future__ import annotations

from streamlog.groups.config import OFFSETS_TOPIC


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

    # A session longer than the change takes: the new coordinator's clock runs from its take-over.
    member = cluster.call(coordinator, "JoinGroup", {"group": "g", "topics": ["t"], "session_timeout_ms": 10000})
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
    # Membership is in the offsets log too: the member carries on at the new coordinator with
    # its id, generation and partitions, no rejoin and no hold.
    beat = cluster.call(moved["coordinator"], "Heartbeat", {"group": "g", "member_id": member["member_id"],
                                                            "owned": member["assignment"]})["result"]
    assert beat["generation"] == member["generation"]
    assert beat["assignment"] == member["assignment"] and beat["revoke"] == beat["pending"] == []
    assert "result" in cluster.call(moved["coordinator"], "CommitOffsets", {**commit, "offsets": [
        {"topic": "t", "partition": 1, "offset": 50}]})
    described = cluster.call(moved["coordinator"], "DescribeGroup", {"group": "g"})["result"]
    assert [o["offset"] for o in described["offsets"] if o["partition"] == 1] == [50]
    assert described["generation"] == member["generation"]


def heartbeat(cluster, group, member, owned):
    """A Heartbeat at the group's coordinator now, following it as it moves."""
    where = find(cluster, next(i for i, n in cluster.nodes.items() if not n.stopped), group)
    return cluster.call(where["coordinator"], "Heartbeat", {"group": group, "member_id": member, "owned": owned})


def test_members_keep_their_partitions_across_a_coordinator_failover_and_a_dead_one_still_expires(cluster):
    assert "result" in cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 4})
    coordinator = find(cluster, 1)["coordinator"]
    join = {"group": "g", "topics": ["t"], "session_timeout_ms": 3000}
    a = cluster.call(coordinator, "JoinGroup", join)["result"]
    b = cluster.call(coordinator, "JoinGroup", join)["result"]
    owned = {a["member_id"]: a["assignment"], b["member_id"]: b["assignment"]}
    generation = {}
    for _ in range(3):  # a revokes half, b takes it
        for m in owned:
            answer = heartbeat(cluster, "g", m, owned[m])["result"]
            owned[m], generation[m] = answer["assignment"], answer["generation"]
    assert sorted(len(o[0]["partitions"]) for o in owned.values()) == [2, 2]
    held_before = {m: owned[m] for m in owned}

    cluster.kill(coordinator)
    # b dies with the coordinator; a goes on heartbeating, and is never told to rejoin or revoke.
    start = cluster.clock.seconds()
    while cluster.clock.seconds() - start < 8.0:
        answer = heartbeat(cluster, "g", a["member_id"], owned[a["member_id"]])
        if "error" in answer:
            assert answer["error"]["code"] in ("NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE"), answer
        else:
            result = answer["result"]
            if result["assignment"] != held_before[a["member_id"]]:
                break  # b expired: a gets b's partitions
            assert result["revoke"] == [] and result["generation"] == generation[a["member_id"]]
        cluster.run(0.5)
    new = find(cluster, next(i for i, n in cluster.nodes.items() if not n.stopped))["coordinator"]
    assert new != coordinator
    # b expired a session after the take-over (not before, not never), and only then did a get its partitions.
    assert sorted(result["assignment"][0]["partitions"]) == [0, 1, 2, 3]
    assert result["generation"] == generation[a["member_id"]] + 1
    assert cluster.clock.seconds() - start >= 3.0
    described = cluster.call(new, "DescribeGroup", {"group": "g"})["result"]
    assert [m["member_id"] for m in described["members"]] == [a["member_id"]]


def test_a_new_coordinator_loads_its_groups_at_the_take_over_and_a_silent_member_expires_from_there(cluster):
    """No group request reaches the new coordinator: it loads the partition's groups on the turn
    after it starts leading, and a member that died with the old one expires one session later."""
    from streamlog.partitioner import partition_for_key

    assert "result" in cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 2})
    coordinator = find(cluster, 1)["coordinator"]
    member = cluster.call(coordinator, "JoinGroup", {"group": "g", "topics": ["t"],
                                                     "session_timeout_ms": 10000})["result"]
    index = partition_for_key("g", 4)
    cluster.kill(coordinator)
    survivors = [i for i in (1, 2, 3) if i != coordinator]

    def replica(i):
        return cluster.brokers[i].topics[OFFSETS_TOPIC].partitions[index]

    # Step the cluster and note when each survivor started to lead the offsets partition (an
    # election, then maybe the planner's move to the preferred leader among the living).
    took_over: dict[tuple[int, int], float] = {}
    start = cluster.clock.seconds()
    while cluster.clock.seconds() - start < 5.0:
        cluster.run(0.01)
        for i in survivors:
            r = replica(i)
            if getattr(r, "leads", False) and (i, r.term) not in took_over:
                took_over[(i, r.term)] = cluster.clock.seconds()
    (leader, term), at = max(took_over.items(), key=lambda item: item[1])
    assert replica(leader).leads and replica(leader).term == term
    shard = cluster.brokers[leader].groups.shards.get(index)
    assert shard is not None and shard.term == term and shard.replay_at is None  # loaded, unasked
    gone = shard.coordinator.group("g").members[member["member_id"]]
    assert at <= gone.last_seen <= at + 0.011  # its session runs from the take-over (the next turn)
    cluster.run_until(lambda: cluster.clock.seconds() >= gone.last_seen + 10.0 - 0.02)
    assert member["member_id"] in shard.coordinator.group("g").members
    cluster.run(0.04)
    assert shard.coordinator.group("g").members == {}
    described = cluster.call(leader, "DescribeGroup", {"group": "g"})
    assert described.get("error", {}).get("code") == "UNKNOWN_GROUP", described  # no members, no offsets


def test_a_killed_coordinator_expires_no_member_and_writes_nothing_more(cluster):
    """ClusterHarness.kill is a SIGKILL: the dead node's group service stops with it (it kept its
    shard, expired the member on the shared clock and appended the record to its own log)."""
    assert "result" in cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 2})
    where = find(cluster, 1)
    coordinator = where["coordinator"]
    join = {"group": "g", "topics": ["t"], "session_timeout_ms": 3000}
    assert "result" in cluster.call(coordinator, "JoinGroup", join)
    dead = cluster.brokers[coordinator]
    replica = dead.topics[OFFSETS_TOPIC].partitions[where["partition"]]
    written = replica.log.last_index
    cluster.kill(coordinator)
    cluster.run(10.0)  # past the member's session
    assert dead.groups.shards == {} and dead.groups._timer is None
    assert replica.log.last_index == written

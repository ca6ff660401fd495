"""The idempotent producer in a cluster: three ClusterNodes on a Clock over in-memory peer connections.

InitProducerId through the metadata group at any node; every replica keeps the
same producer state from the batches it stores, so a new leader recognises a
retry of a batch the old leader wrote, committed or not; a follower caught up
by a snapshot gets the producers with it.
"""

from __future__ import annotations

from streamlog.cluster.metadata import partition_group
from streamlog.raft.core import LEADER
from streamlog.testing import ClusterHarness


def leader_of(c: ClusterHarness, topic: str = "t", partition: int = 0) -> int | None:
    group = partition_group(c.nodes[1].state.topics[topic].topic_id, partition)
    leaders = [i for i, n in c.nodes.items() if not n.stopped and group in n.cores and n.cores[group].role == LEADER
               and n.directory.by_group[group].leads]
    return leaders[0] if len(leaders) == 1 else None


def create(c: ClusterHarness, partitions: int = 1) -> None:
    answer = c.call(1, "CreateTopic", {"topic": "t", "partitions": partitions})
    assert "result" in answer, answer
    preferred = [p["replicas"][0] for p in answer["result"]["partitions"]]
    c.run_until(lambda: [leader_of(c, "t", p) for p in range(partitions)] == preferred, timeout=20)


def init(c: ClusterHarness, at: int, **params) -> tuple[int, int]:
    answer = c.call(at, "InitProducerId", params)
    assert "result" in answer, answer
    return answer["result"]["producer_id"], answer["result"]["epoch"]


def batch(pid: int, epoch: int, sequence: int, values: list) -> dict:
    return {"topic": "t", "producer_id": pid, "epoch": epoch, "messages": [{"value": v, "partition": 0} for v in values],
            "sequences": [{"partition": 0, "base_sequence": sequence}]}


def values(c: ClusterHarness, at: int) -> list:
    polled = c.call(at, "Poll", {"topic": "t", "partition": 0, "offset": 0, "max_messages": 1000})["result"]
    return [m["value"] for m in polled["messages"]]


def test_init_producer_id_at_any_node_gives_ids_unique_across_the_cluster(cluster):
    ids = [init(cluster, node) for node in (1, 2, 3, 1, 2, 3)]
    assert len({pid for pid, _ in ids}) == 6 and {epoch for _, epoch in ids} == {0}
    # Each node took a block through the metadata: no two blocks overlap.
    cluster.run(0.5)
    assert {n.state.next_producer_id for n in cluster.nodes.values()} == {3000}


def test_a_named_producer_is_fenced_through_the_metadata_whichever_node_is_asked(cluster):
    first = init(cluster, 1, producer_name="orders")
    second = init(cluster, 2, producer_name="orders")
    assert second == (first[0], first[1] + 1)
    cluster.run_until(lambda: all(n.state.producers.get("orders") == second for n in cluster.nodes.values()))
    refused = cluster.call(3, "InitProducerId", {"producer_name": "orders", "producer_id": first[0], "epoch": first[1]})
    assert refused["error"]["code"] == "PRODUCER_FENCED"


def test_a_new_leader_recognises_a_retry_of_a_committed_batch_the_old_leader_wrote(cluster):
    create(cluster)
    leader = leader_of(cluster)
    pid, epoch = init(cluster, leader)
    for seq in range(3):
        assert "result" in cluster.call(leader, "SendBatch", batch(pid, epoch, seq, [f"v{seq}"]))
    cluster.kill(leader)
    cluster.run_until(lambda: leader_of(cluster) not in (None, leader), timeout=10)
    new = leader_of(cluster)
    # The answer to the last batch was lost: the producer retries it at the new leader.
    again = cluster.call(new, "SendBatch", batch(pid, epoch, 2, ["v2"]))["result"]["partitions"]
    assert again == [{"partition": 0, "base_offset": 2, "count": 1, "duplicate": True}]
    assert cluster.call(new, "SendBatch", batch(pid, epoch, 4, ["gap"]))["error"]["code"] == "OUT_OF_ORDER_SEQUENCE"
    assert "result" in cluster.call(new, "SendBatch", batch(pid, epoch, 3, ["v3"]))
    assert values(cluster, new) == ["v0", "v1", "v2", "v3"]


def test_a_new_leader_recognises_a_batch_it_holds_uncommitted_and_answers_once_it_commits_it(cluster):
    create(cluster)
    leader = leader_of(cluster)
    pid, epoch = init(cluster, leader)
    assert "result" in cluster.call(leader, "SendBatch", batch(pid, epoch, 0, ["a"]))
    conn = cluster.connect(leader)
    conn.request("SendBatch", batch(pid, epoch, 1, ["b"]))
    cluster.network.pump(rounds=1)  # the entry reaches the followers ...
    cluster.kill(leader)  # ... and the leader dies before it can count their answers
    assert [a for a in conn.answers() if "result" in a] == []
    group = partition_group(cluster.nodes[1].state.topics["t"].topic_id, 0)
    survivors = [i for i in cluster.nodes if i != leader]
    held = [cluster.nodes[i].directory.by_group[group] for i in survivors]
    assert all(r.log.end_offset == 2 and r.commit_index < r.log.last_index for r in held)
    cluster.run_until(lambda: leader_of(cluster) not in (None, leader), timeout=10)
    new = leader_of(cluster)
    again = cluster.call(new, "SendBatch", batch(pid, epoch, 1, ["b"]))["result"]["partitions"]
    assert again == [{"partition": 0, "base_offset": 1, "count": 1, "duplicate": True}]
    assert values(cluster, new) == ["a", "b"]


def test_every_replica_holds_the_same_producer_state(cluster):
    create(cluster)
    leader = leader_of(cluster)
    producers = [init(cluster, leader) for _ in range(3)]
    for seq in range(4):
        for pid, epoch in producers:
            assert "result" in cluster.call(leader, "SendBatch", batch(pid, epoch, seq, [seq]))
    group = partition_group(cluster.nodes[1].state.topics["t"].topic_id, 0)
    cluster.run_until(lambda: all(n.directory.by_group[group].commit_index == cluster.nodes[leader].directory
                                  .by_group[group].commit_index for n in cluster.nodes.values()))
    snapshots = {n.directory.by_group[group].producers.snapshot(
        cluster.nodes[leader].directory.by_group[group].commit_index) for n in cluster.nodes.values()}
    assert len(snapshots) == 1


def test_a_follower_caught_up_by_a_snapshot_gets_the_producers_and_the_record_offsets(cluster):
    create(cluster)
    leader = leader_of(cluster)
    group = partition_group(cluster.nodes[1].state.topics["t"].topic_id, 0)
    # A follower that is not the controller either (of three nodes there is always one).
    follower = next(i for i in cluster.nodes if i not in (leader, cluster.controller()))
    cluster.kill(follower)
    pid, epoch = init(cluster, leader)
    for seq in range(10):
        assert "result" in cluster.call(leader, "SendBatch", batch(pid, epoch, seq, [seq]))
    replica = cluster.nodes[leader].directory.by_group[group]
    replica.node.compact(replica.commit_index)  # retention: the follower's missing entries are gone
    assert replica.log.start_offset == 10
    cluster.start(follower)

    def caught_up() -> bool:
        r = cluster.nodes[follower].directory.by_group.get(group)
        return r is not None and r.log.start_index == replica.log.start_index and r.commit_index >= replica.commit_index

    cluster.run_until(caught_up, timeout=10)
    mine = cluster.nodes[follower].directory.by_group[group]
    assert mine.log.start_offset == mine.log.end_offset == 10
    assert mine.producers.producer_ids() == [pid]
    assert [b.base_sequence for b in mine.producers.batches_of(pid)] == [2, 3, 4, 5, 6, 7, 8, 9]


def parse_member_node(member: str) -> int:
    return int(member.split(".")[0])


def test_a_sendbatch_part_whose_proposal_a_transfer_refuses_is_its_own_entry_the_others_stand(cluster):
    """Found in review: a part writable at the check but refused by its Raft core (a leadership
    transfer is on) failed the whole request with a plain NOT_LEADER, "nothing appended",
    while the parts before it were appended and committed: a resend stored them twice."""
    create(cluster, partitions=4)
    topic_id = cluster.nodes[1].state.topics["t"].topic_id
    led = [p for p in range(4) if leader_of(cluster, "t", p) == 1]
    assert len(led) == 2, led  # preferred leaders rotate: node 1 leads two of the four
    first, second = led
    group = partition_group(topic_id, second)
    core = cluster.nodes[1].cores[group]
    target = next(m for m in sorted(core.voters) if m != core.id)
    cluster.kill(parse_member_node(target))  # the transfer cannot finish while we send
    cluster.nodes[1].host.transfer_leadership(group, target)
    answer = cluster.call(1, "SendBatch", {"topic": "t", "messages": [
        {"value": "y", "partition": second}, {"value": "x", "partition": first}]})
    assert "result" in answer, answer
    entries = answer["result"]["partitions"]
    assert [e["partition"] for e in entries] == [second, first]  # in the request's order of first use
    assert entries[0]["error"]["code"] == "NOT_LEADER" and "maybe_appended" not in entries[0]["error"]
    # It names the transfer's target, so that a client goes straight there.
    assert entries[0]["error"]["leader"] == parse_member_node(target) and entries[0]["error"]["transfer"] is True
    assert isinstance(entries[0]["error"]["leader_address"], str) and entries[0]["error"]["leader_address"]
    assert entries[1]["base_offset"] == 0 and "error" not in entries[1]
    polled = cluster.call(1, "Poll", {"topic": "t", "partition": first, "offset": 0})["result"]["messages"]
    assert [m["value"] for m in polled] == ["x"]


def test_create_topic_auto_create_at_a_follower_creates_once_and_then_finds_it(cluster):
    # What an idempotent producer asks before its first batch to a topic nobody knows.
    follower = next(i for i in (1, 2, 3) if i != cluster.controller())
    first = cluster.call(follower, "CreateTopic", {"topic": "t", "auto_create": True})
    assert first["result"]["created"] is True
    assert len(first["result"]["partitions"]) == 1  # the node's --default-partitions
    cluster.run_until(lambda: all("t" in n.state.topics for n in cluster.nodes.values()))
    for at in (1, 2, 3):
        again = cluster.call(at, "CreateTopic", {"topic": "t", "auto_create": True})
        assert again["result"]["created"] is False and again["result"]["topic"] == "t"
    assert len(cluster.nodes[1].state.topics) == 1


def test_a_named_producers_resent_init_is_answered_the_same_at_any_node(cluster):
    first = init(cluster, 1, producer_name="orders", request_token="tok-1")
    cluster.run_until(lambda: all(n.state.producers.get("orders") == first for n in cluster.nodes.values()))
    # The answer was lost; the resend goes to another node: the metadata knows the token.
    assert init(cluster, 2, producer_name="orders", request_token="tok-1") == first
    assert init(cluster, 3, producer_name="orders", request_token="tok-2") == (first[0], first[1] + 1)

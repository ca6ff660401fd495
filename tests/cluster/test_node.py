"""Three ClusterNodes in one process on a Clock, over in-memory peer connections.

Every node runs the real RaftHost, metadata group, planner, replicas and broker
handlers; only the sockets are iosim pumps and time is a Clock.
"""

from __future__ import annotations

from streamlog.cluster.metadata import partition_group
from streamlog.raft.core import LEADER
from streamlog.testing import ClusterHarness


def leader_of(c: ClusterHarness, topic: str, partition: int) -> int | None:
    group = partition_group(c.nodes[1].state.topics[topic].topic_id, partition)
    leaders = [i for i, n in c.nodes.items() if not n.stopped and group in n.cores and n.cores[group].role == LEADER
               and n.directory.by_group[group].leads]
    return leaders[0] if len(leaders) == 1 else None


def create(c: ClusterHarness, at: int, topic: str = "t", partitions: int = 3, **extra) -> dict:
    answer = c.call(at, "CreateTopic", {"topic": topic, "partitions": partitions, **extra})
    assert "result" in answer, answer
    preferred = [p["replicas"][0] for p in answer["result"]["partitions"]]
    # Every partition led by its preferred replica (the planner's transfers), so leaders stay put.
    c.run_until(lambda: [leader_of(c, topic, p) for p in range(partitions)] == preferred, timeout=20)
    return answer["result"]


def test_three_nodes_bootstrap_one_cluster_elect_a_controller_and_register(cluster):
    ids = {n.state.cluster_id for n in cluster.nodes.values()}
    assert len(ids) == 1 and all(n.identity.cluster_id in ids for n in cluster.nodes.values())
    meta = cluster.call(3, "Metadata", {})["result"]
    assert meta["controller"] == cluster.controller()
    assert [n["node_id"] for n in meta["nodes"]] == [1, 2, 3] and all(n["up"] for n in meta["nodes"])
    assert [n["address"] for n in meta["nodes"]] == ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


def test_create_topic_at_a_follower_is_forwarded_and_placed_with_balanced_preferred_leaders(cluster):
    follower = next(i for i in cluster.nodes if i != cluster.controller())
    result = create(cluster, follower, partitions=3)
    assert [p["replicas"] for p in result["partitions"]] == [[1, 2, 3], [2, 1, 3], [3, 1, 2]]
    assert result["replication_factor"] == 3
    # The planner hands each partition to its preferred leader (the first replica).
    cluster.run_until(lambda: [leader_of(cluster, "t", p) for p in range(3)] == [1, 2, 3], timeout=20)
    again = cluster.call(follower, "CreateTopic", {"topic": "t", "partitions": 1})
    assert again["error"]["code"] == "TOPIC_EXISTS"
    listed = cluster.call(3, "ListTopics")["result"]["topics"]
    assert listed == [{"topic": "t", "partitions": 3}]


def test_send_at_a_non_leader_answers_not_leader_with_the_leaders_id_address_and_term(cluster):
    create(cluster, 1, partitions=1)
    leader = leader_of(cluster, "t", 0)
    other = next(i for i in cluster.nodes if i != leader)
    answer = cluster.call(other, "Send", {"topic": "t", "partition": 0, "value": "x"})
    error = answer["error"]
    assert error["code"] == "NOT_LEADER"
    assert error["leader"] == leader and error["leader_address"] == f"127.0.0.1:{7000 + leader}"
    assert error["leader_term"] >= 1
    poll = cluster.call(other, "Poll", {"topic": "t", "partition": 0, "offset": 0})
    assert poll["error"]["code"] == "NOT_LEADER" and poll["error"]["leader"] == leader


def test_acks_all_answers_once_a_majority_has_it_and_says_how_many(cluster):
    create(cluster, 1, partitions=1)
    leader = leader_of(cluster, "t", 0)
    conn = cluster.connect(leader)
    rid = conn.request("Send", {"topic": "t", "partition": 0, "value": "v"})
    assert conn.answers() == []  # not before the followers acknowledged
    cluster.run_until(lambda: any(a["id"] == rid for a in conn.answers(keep=True)))
    [answer] = [a for a in conn.answers() if a["id"] == rid]
    result = answer["result"]
    assert result["offset"] == 0 and result["replication_factor"] == 3 and result["replicas"] == 2
    polled = cluster.call(leader, "Poll", {"topic": "t", "partition": 0, "offset": 0})["result"]
    assert [m["value"] for m in polled["messages"]] == ["v"]


def test_acks_leader_answers_after_the_leaders_append_and_acks_none_not_at_all(cluster):
    create(cluster, 1, partitions=1)
    leader = leader_of(cluster, "t", 0)
    conn = cluster.connect(leader)
    rid = conn.request("Send", {"topic": "t", "partition": 0, "value": "a", "acks": "leader"})
    [answer] = conn.answers()  # at once: nothing replicated yet
    assert answer["id"] == rid and answer["result"]["replicas"] == 1 and answer["result"]["offset"] == 0
    replica = cluster.brokers[leader].partition("t", 0)
    assert replica.high_watermark == 0  # not committed yet: consumers do not see it
    conn.request("Send", {"topic": "t", "partition": 0, "value": "b", "acks": "none"})
    assert conn.answers() == []
    cluster.run(0.5)
    assert replica.high_watermark == 2


def test_leader_failure_elects_a_new_leader_that_serves_every_acknowledged_record(cluster):
    create(cluster, 1, partitions=1)
    leader = leader_of(cluster, "t", 0)
    acked = []
    for i in range(20):
        answer = cluster.call(leader, "Send", {"topic": "t", "partition": 0, "value": i})
        acked.append(answer["result"]["offset"])
    hw_before = cluster.brokers[leader].partition("t", 0).high_watermark
    cluster.kill(leader)
    took = cluster.run_until(lambda: leader_of(cluster, "t", 0) not in (None, leader), timeout=10)
    assert took < 3.0  # an election timeout or two (300 ms here), not more
    new = leader_of(cluster, "t", 0)
    replica = cluster.brokers[new].partition("t", 0)
    assert replica.high_watermark >= hw_before  # never goes back at the new leader
    polled = cluster.call(new, "Poll", {"topic": "t", "partition": 0, "offset": 0, "max_messages": 100})["result"]
    assert [m["value"] for m in polled["messages"]] == list(range(20))
    assert acked == list(range(20))
    more = cluster.call(new, "Send", {"topic": "t", "partition": 0, "value": "after"})
    assert more["result"]["offset"] == 20


def test_a_restarted_follower_catches_up_on_what_it_missed(cluster):
    create(cluster, 1, partitions=1)
    leader = leader_of(cluster, "t", 0)
    follower = next(i for i in cluster.nodes if i != leader and i != cluster.controller()) \
        if len(cluster.nodes) > 2 else None
    follower = follower or next(i for i in cluster.nodes if i != leader)
    cluster.kill(follower)
    for i in range(10):
        assert "result" in cluster.call(leader, "Send", {"topic": "t", "partition": 0, "value": i})
    cluster.start(follower)
    group = partition_group(cluster.nodes[leader].state.topics["t"].topic_id, 0)

    def caught_up() -> bool:
        node = cluster.nodes[follower]
        replica = node.directory.by_group.get(group)
        return replica is not None and replica.log.end_offset == 10 and replica.commit_index >= 11

    cluster.run_until(caught_up, timeout=10)


def test_a_stopping_leader_hands_its_groups_to_caught_up_followers_before_it_goes(cluster):
    create(cluster, 1, partitions=3)
    node = cluster.nodes[1]
    assert any(core.role == LEADER for g, core in node.cores.items() if g != "__meta")
    conn = cluster.connect(1)
    pending = conn.request("Send", {"topic": "t", "partition": 0, "value": "in flight"})
    handed: list[int] = []
    began = cluster.clock.seconds()
    node.hand_over(5.0).addCallback(handed.append)
    cluster.run_until(lambda: handed, timeout=6)
    took = cluster.clock.seconds() - began
    assert handed == [0] and took < 0.3  # well within one election timeout (300 ms): no election wait
    assert not any(core.role == LEADER for core in node.cores.values())
    [answer] = [a for a in conn.answers() if a["id"] == pending]
    assert answer["result"]["offset"] == 0  # the write in flight was answered, not lost
    cluster.kill(1)
    new = leader_of(cluster, "t", 0)
    assert new in (2, 3)
    polled = cluster.call(new, "Poll", {"topic": "t", "partition": 0, "offset": 0})["result"]
    assert [m["value"] for m in polled["messages"]] == ["in flight"]


def test_a_node_of_another_cluster_is_refused_and_stops_while_the_cluster_serves_on(cluster):
    create(cluster, 1, partitions=1)
    refused: list[str] = []
    node = cluster.nodes[3]
    cluster.kill(3)
    # Node 3 comes back with the data dir of another cluster (another cluster id in node.json).
    from streamlog.cluster.identity import NodeIdentity

    store = cluster.identities[3]
    other = NodeIdentity(3, node.identity.incarnation, "ab" * 16, dict(node.identity.members))
    store.save(other)
    started = cluster.start(3)
    started.on_fatal = refused.append
    cluster.run(2.0)
    assert len(refused) == 1 and "ab" * 16 in refused[0] and "\n" not in refused[0]
    assert cluster.nodes[1].refused is None and cluster.nodes[2].refused is None  # they only closed the link
    answer = cluster.call(1, "Send", {"topic": "t", "partition": 0, "value": "still"})
    assert "result" in answer or answer["error"]["code"] == "NOT_LEADER"


def test_retention_runs_over_this_nodes_replicas_only(cluster):
    create(cluster, 1, partitions=3, replication_factor=1)
    for i in cluster.nodes:
        cluster.brokers[i].apply_retention()  # partitions held elsewhere are not this node's to trim


def test_metadata_gives_every_connected_nodes_address_before_it_registered():
    """The hello carries the client address: a client asking in the cluster's first moments
    (before each node registered through the controller) gets an address for every peer."""
    c = ClusterHarness(3)
    try:
        c.run_until(lambda: all(len(n.raft.connections) == 2 for n in c.nodes.values()), timeout=5.0)
        for i, node in c.nodes.items():
            assert node.state is None or not node.state.nodes  # nobody registered yet
            nodes = node.metadata({})["nodes"]
            assert [(n["node_id"], n["address"], n["up"]) for n in nodes] == [
                (j, f"127.0.0.1:{7000 + j}", True) for j in (1, 2, 3)], i
    finally:
        c.stop()


def test_metadata_gives_the_leaders_replica_offsets_and_isr_and_send_counts_holders_exactly(cluster):
    create(cluster, 1, partitions=1)
    leader = leader_of(cluster, "t", 0)
    f1, f2 = [i for i in cluster.nodes if i != leader]
    for n in range(3):
        assert "result" in cluster.call(leader, "Send", {"topic": "t", "partition": 0, "value": n})

    def offsets(at):
        [p] = cluster.call(at, "Metadata", {"topics": ["t"]})["result"]["topics"][0]["partitions"]
        return p

    cluster.run_until(lambda: [r["log_end_offset"] for r in offsets(leader)["replica_offsets"]] == [3, 3, 3])
    assert [r["node_id"] for r in offsets(leader)["replica_offsets"]] == [1, 2, 3]
    assert "replica_offsets" not in offsets(f1)  # only the leader knows them

    cluster.kill(f2)
    answer = cluster.call(leader, "Send", {"topic": "t", "partition": 0, "value": "late"})["result"]
    assert answer["replicas"] == 2 and answer["replication_factor"] == 3  # the leader and f1, no more
    cluster.run(0.3)
    seen = {r["node_id"]: r["log_end_offset"] for r in offsets(leader)["replica_offsets"]}
    assert seen == {leader: 4, f1: 4, f2: 3}
    assert offsets(leader)["isr"] == sorted([leader, f1])
    cluster.run_until(lambda: offsets(f1)["isr"] == sorted([leader, f1]))
    # A follower's isr is what the leader announced, not a guess from its own connections.
    group = partition_group(cluster.nodes[1].state.topics["t"].topic_id, 0)
    announced = cluster.nodes[f1].raft.remote_leadership[str(leader)][group]
    announced[1] = [m for m in announced[1] if m.startswith(f"{leader}.")]
    assert offsets(f1)["isr"] == [leader]


def test_metadata_gives_the_metadata_groups_isr_as_controller_isr(cluster):
    # What the chaos runner waits for before wiping a disk: every node a caught-up voter of the
    # metadata group too, not only of the partitions.
    def controller_isr(at):
        return cluster.call(at, "Metadata", {"topics": []})["result"]["controller_isr"]

    cluster.run_until(lambda: all(controller_isr(i) == [1, 2, 3] for i in cluster.nodes))
    controller = cluster.nodes[1].controller
    other = next(i for i in cluster.nodes if i != controller)
    cluster.kill(other)
    cluster.run_until(lambda: controller_isr(controller) == sorted(set(cluster.nodes) - {other}))


def test_acks_all_says_fsync_only_if_the_leader_and_every_peer_fsync_before_acknowledging(cluster):
    import attrs
    from twisted.internet.defer import maybeDeferred

    from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter

    create(cluster, 1, partitions=1)
    leader = leader_of(cluster, "t", 0)
    for broker in cluster.brokers.values():
        broker.committer = GroupCommitter(FsyncPolicy.parse("always"), cluster.clock,
                                          lambda f, *a: maybeDeferred(f, *a), checkpoint_interval=None)
    node = cluster.nodes[leader]

    def send():
        return cluster.call(leader, "Send", {"topic": "t", "partition": 0, "value": "v"})["result"]["durability"]

    assert send() == "memory"  # what the harness's memory storage nodes say in their hellos
    node.hellos = {n: attrs.evolve(h, fsyncs=True) for n, h in node.hellos.items()}
    assert send() == "fsync"
    other = next(iter(node.hellos))
    node.hellos[other] = attrs.evolve(node.hellos[other], fsyncs=False)  # one peer runs --fsync never
    assert send() == "memory"
    node.hellos[other] = attrs.evolve(node.hellos[other], fsyncs=True)
    cluster.brokers[leader].committer = GroupCommitter(FsyncPolicy.parse("never"), cluster.clock,
                                                       lambda f, *a: maybeDeferred(f, *a), checkpoint_interval=None)
    assert send() == "memory"  # the leader itself does not fsync: not "fsync"


def test_a_leader_that_cannot_commit_an_appended_send_answers_not_leader_saying_it_may_be_appended(cluster):
    create(cluster, 1, partitions=1)
    leader = leader_of(cluster, "t", 0)
    for i in cluster.nodes:
        if i != leader:
            cluster.kill(i)  # its followers die: the entry is appended here and never committed
    conn = cluster.connect(leader)
    rid = conn.request("Send", {"topic": "t", "partition": 0, "value": "v"})
    cluster.run_until(lambda: any(a["id"] == rid for a in conn.answers(keep=True)), timeout=10)
    [answer] = [a for a in conn.answers() if a["id"] == rid]
    error = answer["error"]
    assert error["code"] == "NOT_LEADER" and error["maybe_appended"] is True
    assert "may still be committed" in error["message"]
    refused = cluster.call(leader, "Send", {"topic": "t", "partition": 0, "value": "w"})["error"]
    assert refused["code"] in ("NOT_LEADER", "LEADER_NOT_AVAILABLE") and "maybe_appended" not in refused


def test_send_batch_over_partitions_led_by_different_nodes_is_answered_per_partition(cluster):
    create(cluster, 1, partitions=3)  # leaders 1, 2, 3
    messages = [{"value": f"m{p}", "partition": p} for p in (0, 1, 2, 0)]
    for acks in ("all", "leader"):
        result = cluster.call(1, "SendBatch", {"topic": "t", "messages": messages, "acks": acks})["result"]
        by = {e["partition"]: e for e in result["partitions"]}
        assert [e["partition"] for e in result["partitions"]] == [0, 1, 2]  # in order of first use
        assert by[0]["count"] == 2 and "error" not in by[0]
        for p, leader in ((1, 2), (2, 3)):
            assert by[p]["error"]["code"] == "NOT_LEADER" and by[p]["error"]["leader"] == leader
            assert by[p]["error"]["leader_address"] == f"127.0.0.1:{7000 + leader}"
    assert result["replication_factor"] == 3 and result["replicas"] == 1  # acks=leader: the leader's append
    cluster.run(0.5)
    for p, leader in ((1, 2), (2, 3)):  # nothing of the refused parts was appended anywhere
        polled = cluster.call(leader, "Poll", {"topic": "t", "partition": p, "offset": 0})["result"]
        assert polled["messages"] == []
    values = cluster.call(1, "Poll", {"topic": "t", "partition": 0, "offset": 0})["result"]["messages"]
    assert [m["value"] for m in values] == ["m0", "m0", "m0", "m0"]
    # A request this node takes no part of is refused whole, as a one-partition request always was.
    whole = cluster.call(1, "SendBatch", {"topic": "t", "messages": [{"value": "x", "partition": 1}]})
    assert whole["error"]["code"] == "NOT_LEADER" and whole["error"]["leader"] == 2


def test_a_cluster_of_one_bootstraps_without_waiting_for_any_hello():
    # --peers naming only this node: no peer ever says hello, so bootstrapping on the first hello
    # left it without a controller for good (every request LEADER_NOT_AVAILABLE).
    c = ClusterHarness(1)
    try:
        c.run_until(lambda: c.nodes[1].controller == 1, timeout=5.0)
        assert c.nodes[1].identity.cluster_id is not None
        c.run_until(lambda: c.nodes[1].state is not None and 1 in c.nodes[1].state.nodes, timeout=5.0)
        create(c, 1, partitions=1)
        assert "result" in c.call(1, "Send", {"topic": "t", "partition": 0, "value": "v"})
    finally:
        c.stop()


def test_a_dead_replica_leaves_the_isr_every_node_answers_without_new_writes(cluster):
    # `cluster status` asks any node. A follower's isr is what the leader announced; a quiet
    # partition commits nothing after a follower dies, so the leader must announce the change
    # itself (seen: a node SIGKILLed, its quiet partitions shown in sync with it at the other
    # follower, and "0 under-replicated", until the next write).
    create(cluster, 1, partitions=1)
    leader = leader_of(cluster, "t", 0)
    f1, f2 = [i for i in cluster.nodes if i != leader]
    assert "result" in cluster.call(leader, "Send", {"topic": "t", "partition": 0, "value": "x"})

    def isr(at):
        [p] = cluster.call(at, "Metadata", {"topics": ["t"]})["result"]["topics"][0]["partitions"]
        return p["isr"]

    cluster.run_until(lambda: isr(leader) == isr(f1) == [1, 2, 3])
    cluster.run(3.0)  # the group goes quiet
    cluster.kill(f2)
    cluster.run_until(lambda: isr(leader) == sorted([leader, f1]))
    cluster.run_until(lambda: isr(f1) == sorted([leader, f1]), timeout=10.0)
    cluster.start(f2)
    cluster.run_until(lambda: isr(f1) == [1, 2, 3], timeout=10.0)

"""ClusterClient over a fake cluster (several nodes on iosim, a virtual clock) and over today's single node."""

from __future__ import annotations

import random

import pytest
from client_support import BrokerNetwork
from client_support import run_until as run_broker
from fake_cluster import FakeCluster, run_for, run_until, settled
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import ClusterClient, StreamlogClient
from streamlog.client.cluster import as_cluster_client
from streamlog.testing import result_of


@pytest.fixture
def cluster(clock):
    c = FakeCluster(clock, nodes=3)
    yield c
    c.stop()


def make_client(clock, cluster, **kw):
    kw.setdefault("request_timeout", 5.0)
    return ClusterClient(cluster.bootstrap, clock=clock, endpoint_factory=cluster.endpoint, rng=random.Random(7),
                         **kw)


def closed(cluster, client):
    d = client.close()
    cluster.pump()
    result_of(d)


@pytest.fixture
def client(clock, cluster):
    c = make_client(clock, cluster)
    yield c
    closed(cluster, c)


def ok(clock, cluster, d, limit=60.0):
    result = settled(clock, cluster, d, limit)
    if isinstance(result, Failure):
        result.raiseException()
    return result


def error_of(clock, cluster, d, limit=60.0):
    result = settled(clock, cluster, d, limit)
    assert isinstance(result, Failure), f"expected a failure, got {result!r}"
    return result.value


def nodes_asked(cluster, method):
    return [n for n, _ in cluster.sent(method)]


# --- metadata and routing ------------------------------------------------------------------


def test_the_bootstrap_list_gives_the_metadata_and_each_partition_goes_to_its_leader(clock, cluster, client):
    cluster.create_topic("t", 3)  # leaders 1, 2, 3
    for p in range(3):
        ok(clock, cluster, client.send("t", f"v{p}", partition=p))
    assert nodes_asked(cluster, "Send") == [1, 2, 3]
    assert [cluster.values("t", p) for p in range(3)] == [["v0"], ["v1"], ["v2"]]
    view = client.view
    assert view.cluster_id == "fake-cluster" and view.controller == 1
    assert sorted(view.nodes) == [1, 2, 3] and not view.single_node
    assert sorted(client.connections) == ["10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7070"]
    # one Metadata request for all of that
    assert nodes_asked(cluster, "Metadata") == [1]


def test_keys_go_to_the_murmur2_partition_chosen_by_the_client(clock, cluster, client):
    from streamlog.partitioner import partition_for_key

    cluster.create_topic("k", 5)
    for i in range(20):
        ack = ok(clock, cluster, client.send("k", i, key=f"user-{i}"))
        assert ack["partition"] == partition_for_key(f"user-{i}", 5)
    for n, params in cluster.sent("Send"):
        assert params["partition"] == partition_for_key(params["key"], 5)
        assert cluster.topics["k"][params["partition"]].leader == n  # sent to the leader


def test_not_leader_with_a_hint_is_retried_at_the_hinted_leader_at_once(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    ok(clock, cluster, client.poll("t", 0, 0))
    cluster.move_leader("t", 0, 3)
    t0 = clock.seconds()
    ack = ok(clock, cluster, client.send("t", "after the move", partition=0))
    assert ack["offset"] == 0
    assert nodes_asked(cluster, "Send") == [1, 3]
    assert clock.seconds() - t0 < 0.05  # no backoff: the hint said where
    assert client.view.topics["t"].partitions[0].leader == 3
    assert client.view.topics["t"].partitions[0].leader_term == 2


def test_not_leader_without_a_hint_refreshes_the_metadata(clock, cluster, client):
    cluster.hints = False
    cluster.create_topic("t", 1, leaders=[1])
    ok(clock, cluster, client.poll("t", 0, 0))
    metadata_before = len(cluster.sent("Metadata"))
    cluster.move_leader("t", 0, 2)
    ok(clock, cluster, client.send("t", "x", partition=0))
    assert nodes_asked(cluster, "Send") == [1, 2]
    assert len(cluster.sent("Metadata")) == metadata_before + 1


def test_a_stale_node_metadata_does_not_take_back_a_newer_hint(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    ok(clock, cluster, client.poll("t", 0, 0))
    for node in cluster.nodes.values():
        node.frozen_metadata = cluster.metadata()  # every node's view lags: leader 1, term 1
    cluster.move_leader("t", 0, 2)
    ok(clock, cluster, client.send("t", "a", partition=0))  # NOT_LEADER hint: node 2, term 2
    run_until(clock, cluster, lambda: client._fetching is None)  # the refresh the hint started came back stale
    assert client.view.topics["t"].partitions[0].leader == 2  # term 2 beats the lagging answer's term 1
    ok(clock, cluster, client.send("t", "b", partition=0))
    assert nodes_asked(cluster, "Send") == [1, 2, 2]


def test_a_topic_no_fetch_asked_for_yet_is_fetched_at_once_not_after_the_rate_limit(clock, cluster, client):
    # A client's first request for a topic used to wait out metadata_min_interval after the
    # fetch that connected it (one 100 ms stall on the first Poll of every bench consumer).
    cluster.create_topic("t", 1)
    cluster.create_topic("u", 1)
    ok(clock, cluster, client.poll("t", 0, 0))
    d = client.poll("u", 0, 0)
    cluster.pump()  # no time passes
    assert d.called and len(nodes_asked(cluster, "Metadata")) == 2
    assert ok(clock, cluster, d)["messages"] == []
    # asked once, a topic no node knows is then rate-limited like any refresh
    first = client.poll("nope", 0, 0)
    cluster.pump()
    assert isinstance(error_of(clock, cluster, first), errors.UnknownTopic)
    asked = len(cluster.sent("Metadata"))
    again = client.poll("nope", 0, 0)
    cluster.pump()
    assert len(cluster.sent("Metadata")) == asked and not again.called
    assert isinstance(error_of(clock, cluster, again), errors.UnknownTopic)


def test_leader_not_available_storm_backs_off_and_shares_metadata_fetches(clock, cluster, client):
    cluster.create_topic("t", 4, leaders=[1])
    ok(clock, cluster, client.poll("t", 0, 0))
    for p in range(4):
        cluster.move_leader("t", p, None)
    polls = [client.poll("t", p, 0) for p in range(4)]
    run_for(clock, cluster, 3.0)  # three seconds without leaders
    assert not any(d.called for d in polls)
    refused = len(cluster.sent("Poll"))
    metadata = len(cluster.sent("Metadata"))
    # backing off, not spinning: 4 partitions x a few attempts, and one Metadata fetch for all of them at a time
    assert refused <= 4 * 6, refused
    assert metadata <= 3 / client.metadata_min_interval, metadata
    for p in range(4):
        cluster.move_leader("t", p, 2)
    for d in polls:
        assert ok(clock, cluster, d)["messages"] == []
    assert set(nodes_asked(cluster, "Poll")[refused:]) == {2}


def test_a_dead_leader_is_left_for_the_new_one(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    ok(clock, cluster, client.send("t", "before", partition=0))
    cluster.kill(1)
    cluster.move_leader("t", 0, 2)
    cluster.controller = 2
    page = ok(clock, cluster, client.poll("t", 0, 0))
    assert [m["value"] for m in page["messages"]] == ["before"]
    assert nodes_asked(cluster, "Poll")[-1] == 2


def test_a_write_that_may_have_landed_is_not_resent_by_the_client(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    ok(clock, cluster, client.poll("t", 0, 0))
    cluster.nodes[1].black_hole = True  # reads the Send, answers nothing
    d = client.send("t", "maybe", partition=0)
    cluster.pump()
    cluster.kill(1)  # ...and dies: was it appended? the client cannot know
    error = error_of(clock, cluster, d)
    assert isinstance(error, errors.ConnectionLost) and error.details.get("sent", True) is True
    assert len(cluster.sent("Send")) == 1


def test_the_call_fails_with_its_last_error_once_its_timeout_passes(clock, cluster):
    client = make_client(clock, cluster, request_timeout=2.0)
    cluster.create_topic("t", 1, leaders=[1])
    ok(clock, cluster, client.poll("t", 0, 0))
    cluster.move_leader("t", 0, None)
    t0 = clock.seconds()
    error = error_of(clock, cluster, client.poll("t", 0, 0))
    assert isinstance(error, errors.LeaderNotAvailable)
    assert 1.0 <= clock.seconds() - t0 <= 2.01
    closed(cluster, client)


def test_unknown_topic_and_partition_are_final(clock, cluster, client):
    cluster.create_topic("t", 2)
    assert isinstance(error_of(clock, cluster, client.poll("nope", 0, 0)), errors.UnknownTopic)
    e = error_of(clock, cluster, client.poll("t", 5, 0))
    assert isinstance(e, errors.UnknownPartition) and e.details == {"topic": "t", "partitions": 2}
    assert cluster.sent("Poll") == []  # refused here: the metadata says so


def test_admin_goes_to_the_controller_and_follows_not_controller(clock, cluster, client):
    ok(clock, cluster, client.create_topic("a", partitions=2))
    assert nodes_asked(cluster, "CreateTopic") == [1]
    cluster.controller = 3
    ok(clock, cluster, client.delete_topic("a"))
    assert nodes_asked(cluster, "DeleteTopic") == [1, 3]
    assert client.view.controller == 3


def test_send_batch_over_partitions_is_one_request_per_partition_at_its_leader(clock, cluster, client):
    cluster.create_topic("t", 3)
    result = ok(clock, cluster, client.send_batch("t", [{"value": i, "partition": i % 3} for i in range(6)]))
    assert sorted((p["partition"], p["base_offset"], p["count"]) for p in result["partitions"]) == \
        [(0, 0, 2), (1, 0, 2), (2, 0, 2)]
    assert sorted(nodes_asked(cluster, "SendBatch")) == [1, 2, 3]
    assert result["replication_factor"] == 3 and result["durability"] == "fsync"
    assert [cluster.values("t", p) for p in range(3)] == [[0, 3], [1, 4], [2, 5]]


def test_send_batch_part_that_fails_says_which_parts_were_appended(clock, cluster, client):
    cluster.create_topic("t", 2)
    ok(clock, cluster, client.poll("t", 0, 0))

    def too_large(params):
        return errors.MessageTooLarge("too large", limit=1, size=2)

    cluster.nodes[2].faults["SendBatch"] = too_large
    e = error_of(clock, cluster, client.send_batch("t", [{"value": 1, "partition": 0}, {"value": 2, "partition": 1}]))
    assert isinstance(e, errors.MessageTooLarge)
    assert e.details["appended"] == [{"partition": 0, "base_offset": 0, "count": 1}]


def test_a_node_that_leaves_the_metadata_has_its_connection_closed(clock, cluster):
    client = make_client(clock, cluster, metadata_max_age=10.0)
    cluster.create_topic("t", 3)
    for p in range(3):
        ok(clock, cluster, client.poll("t", p, 0))
    assert "10.0.0.3:7070" in client.connections
    cluster.move_leader("t", 2, 1)
    del cluster.nodes[3]
    run_until(clock, cluster, lambda: "10.0.0.3:7070" not in client.connections, limit=15)
    assert ok(clock, cluster, client.poll("t", 2, 0))["messages"] == []
    closed(cluster, client)


def test_metadata_is_fetched_again_every_max_age(clock, cluster):
    client = make_client(clock, cluster, metadata_max_age=10.0)
    ok(clock, cluster, client.ping())
    assert len(cluster.sent("Metadata")) == 1
    for _ in range(3):
        clock.advance(10.0)
        cluster.pump()
    assert len(cluster.sent("Metadata")) == 4
    closed(cluster, client)


def test_bootstrap_nodes_that_are_down_are_skipped(clock, cluster):
    cluster.kill(1)
    client = make_client(clock, cluster)
    assert ok(clock, cluster, client.ping())["pong"] is True
    assert nodes_asked(cluster, "Metadata") == [2]
    closed(cluster, client)


def test_close_fails_calls_that_are_still_retrying(clock, cluster, client):
    cluster.create_topic("t", 1)
    ok(clock, cluster, client.poll("t", 0, 0))
    cluster.move_leader("t", 0, None)
    d = client.poll("t", 0, 0)
    run_for(clock, cluster, 0.5)
    client.close()
    cluster.pump()
    assert isinstance(error_of(clock, cluster, d), errors.ConnectionLost)


# --- a single node without Metadata (today's server) -----------------------------------------


@pytest.fixture
def network(clock):
    net = BrokerNetwork(clock)
    yield net
    net.stop()


def test_a_server_without_metadata_is_the_one_node_leading_everything(clock, network):
    node = StreamlogClient(network, clock=clock, rng=random.Random(1))
    client = as_cluster_client(node)
    d = client.create_topic("t", partitions=3)
    run_broker(clock, network, lambda: d.called)
    result_of(d)
    acks = []
    for i in range(6):
        d = client.send("t", i, key=f"k{i}")
        run_broker(clock, network, lambda d=d: d.called)
        acks.append(result_of(d))
    assert client.view.single_node and list(client.view.nodes) == [0]
    d = client.poll("t", acks[0]["partition"], 0)
    run_broker(clock, network, lambda: d.called)
    assert result_of(d)["messages"][0]["value"] == 0
    d = client.topic("t")
    run_broker(clock, network, lambda: d.called)
    assert result_of(d).count == 3  # from DescribeTopic
    assert client.connections == {node.address: node}  # no second connection
    d = node.close()  # closing the connection closes what was built over it
    network.pump()
    result_of(d)
    assert client._closed

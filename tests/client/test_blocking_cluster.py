"""The blocking client and the CLI with a bootstrap list, against a fake cluster on real sockets."""

from __future__ import annotations

import threading

import orjson
import pytest
from threaded_cluster import ThreadedCluster

from streamlog import cli, errors
from streamlog.client import BlockingClient
from streamlog.partitioner import partition_for_key


@pytest.fixture
def cluster():
    c = ThreadedCluster(nodes=3)
    yield c
    c.close()


@pytest.fixture
def client(cluster):
    with BlockingClient(cluster.bootstrap, timeout=5) as c:
        yield c


def asked(cluster, method):
    with cluster.lock:
        return [n for n, _ in cluster.fake.sent(method)]


def test_requests_go_to_each_partitions_leader(cluster, client):
    cluster.fake.create_topic("t", 3)  # leaders 1, 2, 3
    for p in range(3):
        assert client.send("t", f"v{p}", partition=p)["partition"] == p
    assert asked(cluster, "Send") == [1, 2, 3]
    assert [client.poll("t", p, 0)["messages"][0]["value"] for p in range(3)] == ["v0", "v1", "v2"]
    assert asked(cluster, "Poll") == [1, 2, 3]
    assert client.list_offsets("t", 2, "latest") == 1 and asked(cluster, "ListOffsets") == [3]
    assert asked(cluster, "Metadata") == [1]  # learnt once


def test_a_keyed_batch_is_split_by_partition_and_sent_to_each_leader(cluster, client):
    cluster.fake.create_topic("k", 3)
    messages = [{"value": i, "key": f"user-{i}"} for i in range(30)]
    result = client.send_batch("k", messages)
    assert sum(p["count"] for p in result["partitions"]) == 30
    assert sorted(asked(cluster, "SendBatch")) == sorted({cluster.fake.topics["k"][p["partition"]].leader
                                                          for p in result["partitions"]})
    for i in range(30):
        p = partition_for_key(f"user-{i}", 3)
        assert i in cluster.fake.values("k", p)


def test_not_leader_is_asked_again_where_the_hint_points(cluster, client):
    cluster.fake.create_topic("t", 1, leaders=[1])
    client.send("t", "a", partition=0)
    with cluster.lock:
        cluster.fake.move_leader("t", 0, 3)
    assert client.send("t", "b", partition=0)["offset"] == 1
    assert asked(cluster, "Send") == [1, 1, 3]


def test_not_leader_without_a_hint_fetches_the_metadata_again(cluster, client):
    cluster.fake.hints = False
    cluster.fake.create_topic("t", 1, leaders=[1])
    client.poll("t", 0, 0)
    with cluster.lock:
        cluster.fake.move_leader("t", 0, 2)
    client.poll("t", 0, 0)
    assert asked(cluster, "Poll") == [1, 1, 2]
    assert len(asked(cluster, "Metadata")) == 2


def test_a_bootstrap_node_that_is_down_is_skipped(cluster):
    cluster.kill(1)
    cluster.fake.create_topic("t", 1, leaders=[2])
    with BlockingClient(cluster.bootstrap, timeout=5) as c:
        assert c.send("t", "x", partition=0)["offset"] == 0
    assert asked(cluster, "Metadata") == [2]


def test_topic_admin_goes_to_the_controller(cluster, client):
    with cluster.lock:
        cluster.fake.controller = 2
    client.create_topic("new", partitions=2)
    assert asked(cluster, "CreateTopic") == [2]
    with cluster.lock:
        cluster.fake.controller = 3
    client.delete_topic("new")
    assert asked(cluster, "DeleteTopic") == [2, 3]  # NOT_CONTROLLER's hint


def test_topic_admin_waits_out_a_cluster_still_forming(cluster, client):
    """Right after `streamlog cluster up` the nodes register through the controller for a
    moment: CreateTopic answers LEADER_NOT_AVAILABLE, which the client retries (bounded)."""
    with cluster.lock:
        cluster.fake.forming = 5
    assert client.create_topic("new", partitions=2)["topic"] == "new"
    assert asked(cluster, "CreateTopic") == [1] * 6
    with cluster.lock:
        cluster.fake.forming = 100  # not forever: the error once the tries are spent
    with pytest.raises(errors.LeaderNotAvailable):
        client.create_topic("other", partitions=1)
    assert len(asked(cluster, "CreateTopic")) == 6 + 8


def test_submitted_polls_follow_a_leader_that_moves_under_the_same_id(cluster, client):
    cluster.fake.create_topic("t", 2)  # leaders 1, 2
    rids = {client.submit("Poll", {"topic": "t", "partition": p, "offset": 0, "max_wait_ms": 5000}): p
            for p in range(2)}
    assert client.next_answer(0.2) is None  # both parked
    with cluster.lock:
        cluster.fake.move_leader("t", 0, 3)  # node 1 answers its parked poll NOT_LEADER
    assert client.next_answer(0.3) is None  # asked again at node 3, parked there
    with cluster.lock:
        part = cluster.fake.topics["t"][0]
        part.records.append({"offset": 0, "timestamp": 1, "key": None, "value": "moved", "headers": {}})
        cluster.fake.appended("t", 0)
    rid, result = client.next_answer(5)
    assert rids[rid] == 0 and [m["value"] for m in result["messages"]] == ["moved"]
    polls = asked(cluster, "Poll")  # the first two went out on two sockets: either may arrive first
    assert sorted(polls[:2]) == [1, 2] and polls[2:] == [3]


def test_the_cli_takes_a_bootstrap_list(cluster, capsys):
    cluster.fake.create_topic("c", 3)
    connect = "127.0.0.1:1," + cluster.bootstrap  # a first address where nothing listens
    assert cli.main(["--connect", connect, "produce", "c", "a", "b", "c", "--key", "k", "--json"]) == 0
    placed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {p["partition"] for p in placed} == {partition_for_key("k", 3)}
    assert cli.main(["--connect", connect, "consume", "c", "--json"]) == 0
    got = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["value"] for m in got] == ["a", "b", "c"]
    leader = cluster.fake.topics["c"][partition_for_key("k", 3)].leader
    assert set(asked(cluster, "Poll")) == {leader}  # the empty partitions are not polled; this one at its leader


def test_the_cli_refuses_a_bad_bootstrap_entry(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--connect", "127.0.0.1:7071,,127.0.0.1:7072", "ping"])
    assert e.value.code == 2
    assert "--connect: empty address" in capsys.readouterr().err


def test_a_long_poll_and_a_send_from_two_threads(cluster):
    cluster.fake.create_topic("t", 1, leaders=[2])
    result = {}

    def wait():
        with BlockingClient(cluster.bootstrap, timeout=5) as other:
            result["poll"] = other.poll("t", 0, 0, max_wait_ms=3000)

    t = threading.Thread(target=wait)
    t.start()
    with BlockingClient(cluster.bootstrap, timeout=5) as c:
        c.send("t", "wake", partition=0)
    t.join(10)
    assert [m["value"] for m in result["poll"]["messages"]] == ["wake"]


def test_leader_not_available_is_waited_out_within_the_timeout(cluster):
    cluster.fake.create_topic("t", 1, leaders=[1])
    with cluster.lock:
        cluster.fake.move_leader("t", 0, None)
    with BlockingClient(cluster.bootstrap, timeout=1) as c, pytest.raises(errors.LeaderNotAvailable):
        c.poll("t", 0, 0)


def test_a_send_whose_leader_dies_with_it_unanswered_is_sent_again_to_the_new_leader(cluster):
    """A failover is not an error to a script: the lost answer is resent (the Producer's rule)."""
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=5) as c:
        assert c.send("t", "first", partition=0)["offset"] == 0
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = {"Send"}  # reads the next Send and never answers

        def fail_over():
            with cluster.lock:
                cluster.fake.move_leader("t", 0, 2)
            cluster.kill(1)

        threading.Timer(0.3, fail_over).start()
        assert c.send("t", "second", partition=0)["offset"] == 1
    assert asked(cluster, "Send") == [1, 1, 2]
    assert cluster.fake.values("t", 0) == ["first", "second"]


def test_a_send_that_never_gets_through_fails_with_delivery_timeout_saying_it_may_be_stored(cluster):
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=0.5, delivery_timeout=1.5) as c:
        c.send("t", "first", partition=0)
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = {"Send"}  # a stalled leader: every attempt times out
        with pytest.raises(errors.DeliveryTimeout) as e:
            c.send("t", "second", partition=0)
    assert e.value.details["sent"] is True and e.value.details["attempts"] >= 2
    assert e.value.details["last_error"]["code"] == "TIMEOUT"


def test_a_write_given_up_after_an_attempt_that_may_have_landed_says_so(cluster):
    cluster.fake.create_topic("t", 1, leaders=[1])
    calls = []

    def first_lost_then_refused(params):
        calls.append(params)
        if len(calls) == 1:
            return errors.NotLeader("stepped down after appending", topic="t", partition=0, leader=1,
                                    leader_address=cluster.fake.nodes[1].address, leader_term=1,
                                    maybe_appended=True)
        return errors.Internal("boom")

    with BlockingClient(cluster.bootstrap, timeout=5) as c:
        with cluster.lock:
            cluster.fake.nodes[1].faults["Send"] = first_lost_then_refused
        with pytest.raises(errors.Internal) as e:
            c.send("t", "x", partition=0)
    assert len(calls) == 2 and e.value.details["maybe_appended"] is True
    assert "may have stored it" in e.value.message

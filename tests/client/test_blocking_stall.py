"""The blocking client and a node that reads requests and says nothing (SIGSTOP, cut off), and
UNKNOWN_TOPIC right after a topic is made: the fake cluster on real sockets, bounded in time."""

from __future__ import annotations

import copy
import threading
import time

import pytest
from threaded_cluster import ThreadedCluster

from streamlog import errors
from streamlog.client import BlockingClient


@pytest.fixture
def cluster():
    c = ThreadedCluster(nodes=3)
    yield c
    c.close()


def asked(cluster, method):
    with cluster.lock:
        return [n for n, _ in cluster.fake.sent(method)]


def test_a_silent_leader_whose_partition_moved_is_left_after_the_stall_timeout(cluster):
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=10, stall_timeout=0.3) as c:
        assert c.send("t", "first", partition=0)["offset"] == 0
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = True  # paused: reads everything, answers nothing
            cluster.fake.move_leader("t", 0, 2)  # the others elect node 2
        start = time.monotonic()
        assert c.send("t", "second", partition=0)["offset"] == 1
        took = time.monotonic() - start
        assert c.stalls_dropped == 1
    assert took < 3.0, f"{took:.2f}s: the 10 s timeout was waited out"
    assert asked(cluster, "Send") == [1, 1, 2]
    assert cluster.fake.values("t", 0) == ["first", "second"]
    # The silent node was not asked for the metadata that judged it.
    assert asked(cluster, "Metadata")[-1] != 1


def test_a_silent_leader_that_still_leads_is_waited_for_until_the_timeout(cluster):
    """Slow is not gone: while no other node says the partition moved, the request stays where it is."""
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=1.0, delivery_timeout=1.0, stall_timeout=0.2) as c:
        c.send("t", "first", partition=0)
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = {"Send"}
        start = time.monotonic()
        with pytest.raises(errors.Timeout):
            c.send("t", "second", partition=0)
        took = time.monotonic() - start
        assert c.stalls_dropped == 0
    assert took >= 0.95
    # It asked the others where the leader is along the way (every stall_timeout), and only them.
    later = [n for n in asked(cluster, "Metadata")[1:]]
    assert len(later) >= 2 and 1 not in later


def test_a_silent_node_asked_for_the_metadata_is_left_for_the_next_bootstrap_node(cluster):
    cluster.fake.create_topic("t", 1, leaders=[2])
    with cluster.lock:
        cluster.fake.nodes[1].black_hole = {"Metadata"}
    with BlockingClient(cluster.bootstrap, timeout=10, stall_timeout=0.3) as c:
        start = time.monotonic()
        assert c.send("t", "v", partition=0)["offset"] == 0
        took = time.monotonic() - start
    assert took < 3.0, f"{took:.2f}s"
    assert asked(cluster, "Metadata")[:2] == [1, 2]


def test_stall_detection_off_waits_for_the_timeout(cluster):
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=1.0, delivery_timeout=1.0, stall_timeout=None) as c:
        c.send("t", "first", partition=0)
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = True
            cluster.fake.move_leader("t", 0, 2)
        with pytest.raises(errors.Timeout):
            c.send("t", "second", partition=0)
    assert asked(cluster, "Metadata") == [1]


def test_a_long_poll_is_not_a_stall(cluster):
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=5, stall_timeout=0.2) as c:
        start = time.monotonic()
        result = c.poll("t", 0, 0, max_wait_ms=800)
        took = time.monotonic() - start
        assert c.stalls_dropped == 0
    assert result["messages"] == [] and took >= 0.75
    assert asked(cluster, "Metadata") == [1]


def test_unknown_topic_right_after_an_auto_create_is_asked_again(cluster):
    """The idempotent sender auto-creates the topic, then every node's metadata lags for a moment:
    UNKNOWN_TOPIC for the topic it just made is retried (it failed at once before)."""
    with cluster.lock:
        lagging = copy.deepcopy(cluster.fake.metadata())  # no topic "new" in it
        for node in cluster.fake.nodes.values():
            node.frozen_metadata = lagging

    def catch_up():
        with cluster.lock:
            for node in cluster.fake.nodes.values():
                node.frozen_metadata = None

    timer = threading.Timer(0.6, catch_up)
    with BlockingClient(cluster.bootstrap, timeout=5) as c:
        sender = c.idempotent_sender()
        timer.start()
        try:
            result = sender.send_batch("new", [{"value": 1, "partition": 0}])
        finally:
            timer.cancel()
    assert result["partitions"][0]["base_offset"] == 0
    assert cluster.fake.values("new", 0) == [1]


def test_unknown_topic_of_a_topic_never_seen_fails_at_once(cluster):
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=5) as c:
        start = time.monotonic()
        with pytest.raises(errors.UnknownTopic):
            c.poll("nope", 0, 0)
        assert time.monotonic() - start < 1.0


def test_bad_stall_options_are_refused():
    with pytest.raises(ValueError):
        BlockingClient("127.0.0.1:1", stall_timeout=0)
    with pytest.raises(ValueError):
        BlockingClient("127.0.0.1:1", unknown_topic_grace=-1)


def test_a_silent_leader_is_never_asked_for_the_metadata_that_judges_it_even_when_no_other_node_answers(cluster):
    """Everyone silent (a starved machine): the verdict must not write a Metadata request behind
    the awaited Send on the same connection (its answer would be read out of step, and its own
    stall closed the connection the Send was still read from: AssertionError in receive)."""
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=1.5, delivery_timeout=1.5, stall_timeout=0.2) as c:
        c.send("t", "first", partition=0)
        metadata_before = len(asked(cluster, "Metadata"))
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = True
            cluster.fake.nodes[2].black_hole = {"Metadata"}
            cluster.fake.nodes[3].black_hole = {"Metadata"}
        with pytest.raises(errors.Timeout):  # slow is not gone: waited for, to the timeout
            c.send("t", "second", partition=0)
    assert 1 not in asked(cluster, "Metadata")[metadata_before:]


# --- admin calls, call() and submitted requests (they waited out their whole timeout) ----------


def test_a_silent_controller_that_no_longer_is_one_fails_an_admin_call_early_and_only_once(cluster):
    with BlockingClient(cluster.bootstrap, timeout=4, stall_timeout=0.3) as c:
        c.create_topic("first", 1)  # the view: node 1 is the controller
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = True  # paused, and the others chose node 2
            cluster.fake.controller = 2
        start = time.monotonic()
        with pytest.raises(errors.ConnectionLost) as failed:
            c.create_topic("new", 1)
        took = time.monotonic() - start
        assert c.stalls_dropped == 1
    assert took < 2.0, f"{took:.2f}s: the 4 s timeout was waited out"
    assert failed.value.details.get("stalled") is True and "node 2 is the controller now" in str(failed.value)
    assert asked(cluster, "CreateTopic") == [1, 1]  # not asked again: the paused node may still apply it


def test_a_silent_controller_that_still_is_one_is_waited_for_until_the_timeout(cluster):
    with BlockingClient(cluster.bootstrap, timeout=1.0, stall_timeout=0.2) as c:
        c.create_topic("first", 1)
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = {"CreateTopic"}
        start = time.monotonic()
        with pytest.raises(errors.Timeout):
            c.create_topic("new", 1)
        assert time.monotonic() - start >= 0.95 and c.stalls_dropped == 0


def test_a_call_to_a_silent_node_the_cluster_sees_down_fails_early(cluster):
    with BlockingClient(cluster.bootstrap, timeout=4, stall_timeout=0.3) as c:
        c.ping()  # connected to node 1
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = True
            cluster.fake.nodes[1].up = False  # its peers lost it; its socket stays open, silent
        start = time.monotonic()
        with pytest.raises(errors.ConnectionLost) as failed:
            c.list_topics()
        took = time.monotonic() - start
        assert failed.value.details.get("stalled") is True and c.stalls_dropped == 1
        assert c.list_topics() == []  # the next call goes to a node that answers
    assert took < 2.0, f"{took:.2f}s"


def test_a_submitted_poll_at_a_silent_leader_whose_partition_moved_is_answered_by_the_new_leader(cluster):
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=10, stall_timeout=0.3) as c:
        c.send("t", "v", partition=0)
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = True
            cluster.fake.move_leader("t", 0, 2)
        start = time.monotonic()
        rid = c.submit("Poll", {"topic": "t", "partition": 0, "offset": 0})
        answer = c.next_answer(4.0)
        took = time.monotonic() - start
        assert answer is not None, "no answer: the submitted Poll waited on the silent node"
        assert answer[0] == rid and [m["value"] for m in answer[1]["messages"]] == ["v"]
        assert c.stalls_dropped == 1
    assert took < 2.0, f"{took:.2f}s"
    assert [n for n, p in cluster.fake.sent("Poll")] == [1, 2]


def test_a_submitted_request_at_a_silent_node_the_cluster_sees_down_is_answered_with_the_stall(cluster):
    with BlockingClient(cluster.bootstrap, timeout=10, stall_timeout=0.3) as c:
        c.ping()
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = True
            cluster.fake.nodes[1].up = False
        rid = c.submit("Ping", {})
        start = time.monotonic()
        answer = c.next_answer(4.0)
        took = time.monotonic() - start
    assert answer is not None and answer[0] == rid
    assert isinstance(answer[1], errors.ConnectionLost) and answer[1].details.get("stalled") is True
    assert took < 2.0, f"{took:.2f}s"
    assert [n for n, _ in cluster.fake.sent("Ping")] == [1, 1]  # not sent again


def test_a_submitted_poll_at_a_slow_leader_that_still_leads_is_waited_for(cluster):
    cluster.fake.create_topic("t", 1, leaders=[1])
    with BlockingClient(cluster.bootstrap, timeout=10, stall_timeout=0.2) as c:
        c.send("t", "v", partition=0)
        with cluster.lock:
            cluster.fake.nodes[1].black_hole = {"Poll"}
        c.submit("Poll", {"topic": "t", "partition": 0, "offset": 0})
        assert c.next_answer(1.0) is None  # judged (asking the others) and kept: no answer yet
        assert c.stalls_dropped == 0
    assert 1 not in asked(cluster, "Metadata")[1:]


def test_an_answer_to_a_submitted_request_read_by_another_call_on_its_node_is_kept(cluster):
    # A stall's verdict asks another node for the metadata; if that node owes a submitted
    # request's answer, reading the Metadata answer must not drop it.
    cluster.fake.create_topic("t", 1, leaders=[2])
    with BlockingClient(cluster.bootstrap, timeout=5) as c:
        c.send("t", "v", partition=0)
        rid = c.submit("Poll", {"topic": "t", "partition": 0, "offset": 0})
        node = c._nodes[c.view.leader("t", 0).address]
        c._call_at(node, "Ping", {})  # reads the Poll's answer first
        answer = c.next_answer(1.0)
    assert answer is not None and answer[0] == rid and answer[1]["messages"][0]["value"] == "v"

"""Parked long polls: bounded per connection and per node, woken by offset, forgotten in O(1)."""

from __future__ import annotations

import random

import pytest

from streamlog import wire
from streamlog.testing import BrokerHarness


def poll(topic="t", offset=0, wait=60_000, **extra):
    return {"topic": topic, "offset": offset, "max_wait_ms": wait, **extra}


@pytest.fixture
def harness(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_waiting_polls_per_connection=3, max_waiting_polls=5))
    h.connect().call("CreateTopic", {"topic": "t", "partitions": 2})
    yield h
    h.stop()


def test_a_poll_past_the_connection_limit_is_refused_and_the_connection_kept(harness):
    conn = harness.connect()
    ids = [conn.request("Poll", poll()) for _ in range(3)]
    assert conn.answers() == []
    error = conn.call("Poll", poll(partition=1))["error"]
    assert error["code"] == "TOO_MANY_WAITING_POLLS"
    assert error["limit"] == 3 and error["scope"] == "connection"
    assert not conn.closed
    assert conn.call("Ping")["result"]["pong"] is True
    # Another connection still may park polls: the bound is this connection's.
    other = harness.connect()
    other_id = other.request("Poll", poll())
    assert other.answers() == []
    # Data arrives: every parked poll is answered; then this connection may wait again.
    harness.connect().call("Send", {"topic": "t", "value": "v", "partition": 0})
    assert sorted(a["id"] for a in conn.answers()) == sorted(ids)
    assert [a["id"] for a in other.answers()] == [other_id]
    conn.request("Poll", poll(offset=1))
    assert conn.answers() == [] and conn.protocol.waiting_polls.waiting == 1


def test_a_poll_with_data_to_return_is_never_refused(harness):
    conn = harness.connect()
    harness.connect().call("Send", {"topic": "t", "value": "v", "partition": 0})
    for _ in range(3):
        conn.request("Poll", poll(offset=1))
    answer = conn.call("Poll", poll(offset=0))  # data at once: answered, whatever the quota
    assert answer["result"]["messages"][0]["value"] == "v"
    answer = conn.call("Poll", poll(offset=1, wait=0))  # no wait asked: answered at once
    assert answer["result"]["messages"] == []


def test_the_node_limit_counts_the_polls_of_every_connection(harness):
    first, second = harness.connect(), harness.connect()
    for _ in range(3):
        first.request("Poll", poll())
    for _ in range(2):
        second.request("Poll", poll(partition=1))
    third = harness.connect()
    error = third.call("Poll", poll())["error"]
    assert error["code"] == "TOO_MANY_WAITING_POLLS"
    assert error["limit"] == 5 and error["scope"] == "node"
    assert harness.broker.waiting_polls.waiting == 5
    first.lose()  # its three polls are forgotten, and free the node's slots
    assert harness.broker.waiting_polls.waiting == 2
    third.request("Poll", poll())
    assert third.answers() == []
    assert harness.broker.waiting_polls.waiting == 3


def test_timed_out_and_answered_polls_free_their_slots(harness):
    conn = harness.connect()
    for _ in range(3):
        conn.request("Poll", poll(wait=100))
    harness.clock.advance(0.1)
    assert len(conn.answers()) == 3
    assert conn.protocol.waiting_polls.waiting == 0 and harness.broker.waiting_polls.waiting == 0
    for _ in range(3):
        conn.request("Poll", poll(wait=100))
    assert conn.answers() == []
    harness.clock.advance(0.1)
    assert len(conn.answers()) == 3


def test_deleting_the_topic_frees_the_slots_of_its_polls(harness):
    conn = harness.connect()
    for _ in range(3):
        conn.request("Poll", poll())
    harness.connect().call("DeleteTopic", {"topic": "t"})
    assert [a["error"]["code"] for a in conn.answers()] == ["UNKNOWN_TOPIC"] * 3
    assert conn.protocol.waiting_polls.waiting == 0 and harness.broker.waiting_polls.waiting == 0


def test_advancing_wakes_only_the_polls_below_the_new_high_watermark_in_offset_order(clock):
    h = BrokerHarness(clock=clock)
    try:
        conn = h.connect()
        conn.call("SendBatch", {"topic": "t", "messages": [{"value": i} for i in range(3)]})
        partition = h.broker.partition("t", 0)
        # Park polls ahead of the high watermark (as an acks=leader answer lets a client do),
        # in a scrambled order of offsets.
        partition.high_watermark = 0
        order = [2, 0, 1, 2, 0, 3]
        rids = {conn.request("Poll", poll(offset=o, max_messages=1)): o for o in order}
        assert conn.answers() == [] and partition.waiting == 6
        partition.advance(2)  # offsets 0 and 1 now have data
        answered = conn.answers()
        assert [rids[a["id"]] for a in answered] == [0, 0, 1]
        assert [a["result"]["messages"][0]["value"] for a in answered] == [0, 0, 1]
        assert partition.waiting == 3
        partition.advance(3)
        assert [rids[a["id"]] for a in conn.answers()] == [2, 2]
        assert partition.waiting == 1  # the poll at offset 3 waits on
    finally:
        h.stop()
        clock.advance(60)


def test_many_parked_polls_dropped_in_any_order_are_all_forgotten(clock):
    # (task.Clock keeps its calls in a sorted list: the scale is the real-process test's job.)
    h = BrokerHarness(clock=clock)
    try:
        h.connect().call("CreateTopic", {"topic": "t"})
        conns = [h.connect() for _ in range(20)]
        for conn in conns:
            conn.protocol.dataReceived(b"".join(
                wire.encode_request(i, "Poll", poll(offset=0)) for i in range(50)))
        partition = h.broker.partition("t", 0)
        assert partition.waiting == 1000 and h.broker.waiting_polls.waiting == 1000
        random.Random(7).shuffle(conns)
        for i, conn in enumerate(conns):
            conn.lose()
            assert partition.waiting == 1000 - 50 * (i + 1)
        assert h.broker.waiting_polls.waiting == 0
        assert not [c for c in clock.getDelayedCalls() if "wake" in repr(c.func)]
    finally:
        h.stop()


def test_polls_coming_and_going_at_one_offset_do_not_grow_the_index(clock):
    h = BrokerHarness(clock=clock)
    try:
        h.connect().call("CreateTopic", {"topic": "t"})
        partition = h.broker.partition("t", 0)
        for _ in range(1000):
            conn = h.connect()
            conn.request("Poll", poll())
            conn.lose()
        assert partition.waiting == 0
        assert len(partition._offsets) <= 1 and len(partition._buckets) <= 1
        h.connect().call("Send", {"topic": "t", "value": 1})
        assert partition._offsets == [] and partition._buckets == {}
    finally:
        h.stop()

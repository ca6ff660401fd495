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


# --- per client address (review 8, finding 7) ---------------------------------------------------


@pytest.fixture
def by_address(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(
        max_waiting_polls_per_connection=3, max_waiting_polls_per_address=4, max_waiting_polls=10))
    h.connect().call("CreateTopic", {"topic": "t"})
    yield h
    h.stop()


def test_the_connections_of_one_address_share_a_quota_below_the_nodes(by_address):
    # Before: 256 connections x 1,000 polls from one address could hold the node's 50,000.
    first, second = by_address.connect("10.0.0.1"), by_address.connect("10.0.0.1")
    for _ in range(3):
        first.request("Poll", poll())
    second.request("Poll", poll())
    assert first.answers() == [] and second.answers() == []
    error = second.call("Poll", poll())["error"]
    assert error["code"] == "TOO_MANY_WAITING_POLLS" and error["scope"] == "address" and error["limit"] == 4
    assert "--max-waiting-polls-per-address" in error["message"]
    assert second.call("Ping")["result"]["pong"] is True  # the connection is kept
    other = by_address.connect("10.0.0.2")  # another address still may wait
    other.request("Poll", poll())
    assert other.answers() == []
    # The first connection goes: its polls no longer count for the address.
    first.lose()
    for _ in range(2):
        second.request("Poll", poll())
    assert second.answers() == []
    assert "error" in second.call("Poll", poll())  # 3 of its own: the connection's limit now
    # Every connection of the address gone: a new one starts from nothing.
    second.lose()
    fresh = by_address.connect("10.0.0.1")
    for _ in range(3):
        fresh.request("Poll", poll())
    assert fresh.answers() == [] and by_address.factory.address_polls("10.0.0.1").waiting == 3


def test_an_ipv6_client_counts_as_its_slash_64_and_a_mapped_ipv4_as_its_ipv4(by_address):
    a = by_address.connect("2001:db8:1:2::1")
    b = by_address.connect("2001:db8:1:2:ffff::9")  # same /64, another address in it
    c = by_address.connect("2001:db8:1:3::1")  # the next /64
    for _ in range(3):
        a.request("Poll", poll())
    b.request("Poll", poll())
    assert by_address.factory.address_polls("2001:db8:1:2::/64").waiting == 4
    assert b.call("Poll", poll())["error"]["scope"] == "address"
    c.request("Poll", poll())
    assert c.answers() == []
    mapped, plain = by_address.connect("::ffff:10.0.0.7"), by_address.connect("10.0.0.7")
    for _ in range(3):
        mapped.request("Poll", poll())
    plain.request("Poll", poll())
    assert plain.call("Poll", poll())["error"]["scope"] == "address"
    assert by_address.factory.connections_by_address["10.0.0.7"] == 2


def test_connections_per_address_count_an_ipv6_slash_64_as_one_address(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_connections_per_address=2))
    h.connect("2001:db8::1"), h.connect("2001:db8::2")
    refused = h.connect("2001:db8::3")
    [answer] = refused.answers()
    assert answer["error"]["code"] == "TOO_MANY_CONNECTIONS" and answer["error"]["scope"] == "address"
    assert refused.closed
    assert not h.connect("2001:db8:0:1::1").closed
    h.stop()


def test_the_default_poll_quotas_nest():
    limits = wire.DEFAULT_LIMITS
    assert limits.max_waiting_polls_per_connection <= limits.max_waiting_polls_per_address < limits.max_waiting_polls
    # As many connections per address as allowed cannot park more than the address may.
    assert limits.max_waiting_polls_per_address <= limits.max_waiting_polls // 2

"""The broker over its JSON-lines protocol, on in-memory transports and a Clock."""

from __future__ import annotations

import orjson
import pytest

from streamlog import wire
from streamlog.broker.broker import BrokerConfig
from streamlog.partitioner import partition_for_key
from streamlog.testing import BrokerHarness


@pytest.fixture
def harness(clock):
    h = BrokerHarness(clock=clock)
    yield h
    h.stop()


def make_harness(clock, **kwargs):
    return BrokerHarness(clock=clock, **kwargs)


def test_send_then_poll_returns_the_message_at_its_offset(harness):
    conn = harness.connect()
    ack = conn.call("Send", {"topic": "orders", "value": {"n": 1}, "key": "k", "headers": {"h": "v"}})["result"]
    assert ack["topic"] == "orders" and ack["partition"] == 0 and ack["offset"] == 0
    assert ack["durability"] == "written"
    assert ack["timestamp"] == 0  # the Clock starts at 0
    polled = conn.call("Poll", {"topic": "orders", "partition": 0, "offset": 0, "max_messages": 1})["result"]
    assert polled == {
        "messages": [{"offset": 0, "timestamp": 0, "key": "k", "value": {"n": 1}, "headers": {"h": "v"}}],
        "next_offset": 1,
        "high_watermark": 1,
        "log_start_offset": 0,
    }


def test_offsets_are_dense_and_in_send_order(harness):
    conn = harness.connect()
    offsets = [conn.call("Send", {"topic": "t", "value": i})["result"]["offset"] for i in range(20)]
    assert offsets == list(range(20))
    result = conn.call("Poll", {"topic": "t", "partition": 0, "offset": 5, "max_messages": 3})["result"]
    assert [m["value"] for m in result["messages"]] == [5, 6, 7]
    assert result["next_offset"] == 8


def test_send_batch_is_placed_per_partition_in_order(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 3})
    messages = [{"value": i, "key": f"key-{i % 4}"} for i in range(12)]
    result = conn.call("SendBatch", {"topic": "t", "messages": messages})["result"]
    expected: dict[int, list[int]] = {}
    for i, m in enumerate(messages):
        expected.setdefault(partition_for_key(m["key"], 3), []).append(i)
    placed = {p["partition"]: p for p in result["partitions"]}
    assert set(placed) == set(expected)
    for partition, values in expected.items():
        assert placed[partition]["count"] == len(values)
        polled = conn.call("Poll", {"topic": "t", "partition": partition, "offset": 0})["result"]
        assert [m["value"] for m in polled["messages"]] == values
        assert [m["offset"] for m in polled["messages"]] == list(range(len(values)))


def test_unkeyed_messages_round_robin_across_requests(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 3})
    partitions = [conn.call("Send", {"topic": "t", "value": i})["result"]["partition"] for i in range(6)]
    assert partitions == [0, 1, 2, 0, 1, 2]


def test_unkeyed_messages_of_one_request_stick_to_one_partition(harness):
    # Sticky per request, not spread message by message (streamlog.partitioner says so).
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 3})
    placed = []
    for batch in range(4):
        result = conn.call("SendBatch", {"topic": "t", "messages": [{"value": [batch, i]} for i in range(5)]})["result"]
        assert [(p["partition"], p["count"]) for p in result["partitions"]] == [(batch % 3, 5)]
        placed.append(result["partitions"][0]["partition"])
    assert placed == [0, 1, 2, 0]


def test_explicit_partition_wins_over_key(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 4})
    ack = conn.call("Send", {"topic": "t", "value": 1, "key": "x", "partition": 3})["result"]
    assert ack["partition"] == 3


def test_send_to_missing_partition_is_unknown_partition_and_appends_nothing(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 2})
    error = conn.call("SendBatch", {"topic": "t", "messages": [{"value": 1, "partition": 0}, {"value": 2, "partition": 5}]})["error"]
    assert error["code"] == "UNKNOWN_PARTITION"
    described = conn.call("DescribeTopic", {"topic": "t"})["result"]
    assert all(p["log_end_offset"] == 0 for p in described["partitions"])


def test_long_poll_waits_for_data_without_blocking_the_connection(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t"})
    poll_id = conn.request("Poll", {"topic": "t", "partition": 0, "offset": 0, "max_wait_ms": 5000})
    assert conn.answers() == []
    send_id = conn.request("Send", {"topic": "t", "value": "hello"})
    answers = conn.answers()
    # The Send's answer and the waiting Poll's answer both arrive (in either order).
    by_id = {a["id"]: a for a in answers}
    assert set(by_id) == {send_id, poll_id}
    assert by_id[poll_id]["result"]["messages"][0]["value"] == "hello"


def test_long_poll_times_out_with_nothing(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t"})
    rid = conn.request("Poll", {"topic": "t", "partition": 0, "offset": 0, "max_wait_ms": 250})
    harness.clock.advance(0.249)
    assert conn.answers() == []
    harness.clock.advance(0.002)
    [answer] = conn.answers()
    assert answer["id"] == rid
    assert answer["result"]["messages"] == [] and answer["result"]["next_offset"] == 0


def test_long_poll_is_forgotten_when_the_connection_drops(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t"})
    conn.request("Poll", {"topic": "t", "partition": 0, "offset": 0, "max_wait_ms": 5000})
    partition = harness.broker.partition("t", 0)
    assert partition.waiting == 1
    conn.lose()
    assert partition.waiting == 0
    assert not harness.clock.getDelayedCalls() or all(
        "sweep" in repr(c.func) for c in harness.clock.getDelayedCalls()
    )


def test_delete_topic_wakes_waiting_polls_with_unknown_topic(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t"})
    rid = conn.request("Poll", {"topic": "t", "partition": 0, "offset": 0, "max_wait_ms": 5000})
    other = harness.connect()
    assert other.call("DeleteTopic", {"topic": "t"})["result"] == {"topic": "t", "deleted": True}
    [answer] = conn.answers()
    assert answer["id"] == rid and answer["error"]["code"] == "UNKNOWN_TOPIC"


def test_acks_none_gets_no_answer_but_is_appended(harness):
    conn = harness.connect()
    conn.request("Send", {"topic": "t", "value": 1, "acks": "none"})
    assert conn.answers() == []
    assert conn.call("Poll", {"topic": "t", "offset": 0})["result"]["messages"][0]["value"] == 1


def test_acks_leader_answers_with_its_durability(harness):
    conn = harness.connect()
    assert conn.call("Send", {"topic": "t", "value": 1, "acks": "leader"})["result"]["durability"] == "written"


def test_topic_admin_methods(harness):
    conn = harness.connect()
    created = conn.call("CreateTopic", {"topic": "a", "partitions": 2, "config": {"retention_ms": 1000}})["result"]
    assert created["topic"] == "a" and len(created["partitions"]) == 2
    assert created["config"]["retention_ms"] == 1000
    assert conn.call("CreateTopic", {"topic": "a"})["error"]["code"] == "TOPIC_EXISTS"
    conn.call("CreateTopic", {"topic": "b"})
    assert conn.call("ListTopics", {})["result"] == {
        "topics": [{"topic": "a", "partitions": 2}, {"topic": "b", "partitions": 1}]
    }
    conn.call("DeleteTopic", {"topic": "a"})
    assert conn.call("DescribeTopic", {"topic": "a"})["error"]["code"] == "UNKNOWN_TOPIC"
    assert conn.call("DeleteTopic", {"topic": "a"})["error"]["code"] == "UNKNOWN_TOPIC"


def test_list_offsets_earliest_latest_and_by_timestamp(harness):
    conn = harness.connect()
    for i in range(3):
        conn.call("Send", {"topic": "t", "value": i})
        harness.clock.advance(1.0)
    assert conn.call("ListOffsets", {"topic": "t", "at": "earliest"})["result"]["offset"] == 0
    assert conn.call("ListOffsets", {"topic": "t", "at": "latest"})["result"]["offset"] == 3
    assert conn.call("ListOffsets", {"topic": "t", "at": 1000})["result"]["offset"] == 1
    assert conn.call("ListOffsets", {"topic": "t", "at": 1500})["result"]["offset"] == 2
    assert conn.call("ListOffsets", {"topic": "t", "at": 99_000})["result"]["offset"] == 3


def test_auto_create_off_refuses_unknown_topics(clock):
    h = make_harness(clock, config=BrokerConfig(auto_create_topics=False))
    conn = h.connect()
    assert conn.call("Send", {"topic": "t", "value": 1})["error"]["code"] == "UNKNOWN_TOPIC"
    h.stop()


def test_auto_created_topics_get_the_default_partition_count(clock):
    h = make_harness(clock, config=BrokerConfig(default_partitions=4))
    conn = h.connect()
    conn.call("Send", {"topic": "t", "value": 1})
    assert len(conn.call("DescribeTopic", {"topic": "t"})["result"]["partitions"]) == 4
    h.stop()


def test_poll_offsets_outside_the_log_are_out_of_range(harness):
    conn = harness.connect()
    conn.call("Send", {"topic": "t", "value": 1})
    error = conn.call("Poll", {"topic": "t", "offset": 2})["error"]
    assert error["code"] == "OFFSET_OUT_OF_RANGE"
    assert error["log_start_offset"] == 0 and error["high_watermark"] == 1
    # The end itself is where a consumer waits: an empty answer, not an error.
    assert conn.call("Poll", {"topic": "t", "offset": 1})["result"]["messages"] == []


def test_poll_below_retention_start_is_out_of_range_with_the_new_start(clock):
    h = make_harness(clock)
    conn = h.connect()
    conn.call("CreateTopic", {"topic": "t", "config": {"retention_ms": 1000}})
    conn.call("Send", {"topic": "t", "value": 0})
    clock.advance(5)
    conn.call("Send", {"topic": "t", "value": 1})
    h.broker.apply_retention()
    error = conn.call("Poll", {"topic": "t", "offset": 0})["error"]
    assert error["code"] == "OFFSET_OUT_OF_RANGE" and error["log_start_offset"] == 1
    assert conn.call("Poll", {"topic": "t", "offset": 1})["result"]["messages"][0]["value"] == 1
    h.stop()


def test_poll_max_bytes_returns_at_least_one_message(harness):
    conn = harness.connect()
    conn.call("SendBatch", {"topic": "t", "messages": [{"value": "x" * 100} for _ in range(5)]})
    result = conn.call("Poll", {"topic": "t", "offset": 0, "max_bytes": 10})["result"]
    assert len(result["messages"]) == 1 and result["next_offset"] == 1
    result = conn.call("Poll", {"topic": "t", "offset": 1, "max_bytes": 400})["result"]
    assert 1 < len(result["messages"]) < 4


def test_string_ids_are_echoed(harness):
    conn = harness.connect()
    conn.request("Ping", {}, rid="abc-1")
    [answer] = conn.answers()
    assert answer["id"] == "abc-1" and answer["result"]["pong"] is True


def test_the_encoded_answer_is_one_line_per_request(harness):
    conn = harness.connect()
    conn.send_line(b'{"id":1,"method":"Send","params":{"topic":"t","value":"a\\nb"}}')
    conn.send_line(b'{"id":2,"method":"Poll","params":{"topic":"t","offset":0}}')
    raw = conn.transport.value()
    assert raw.count(b"\n") == 2
    assert orjson.loads(raw.split(b"\n")[1])["result"]["messages"][0]["value"] == "a\nb"


def test_many_pipelined_lines_in_one_read_are_all_answered(harness):
    conn = harness.connect()
    lines = b"".join(wire.encode_request(i, "Send", {"topic": "t", "value": i}) for i in range(2000))
    conn.protocol.dataReceived(lines)
    answers = conn.answers()
    assert [a["result"]["offset"] for a in answers] == list(range(2000))


def test_a_line_split_across_reads_is_reassembled(harness):
    conn = harness.connect()
    line = wire.encode_request(1, "Send", {"topic": "t", "value": "split"})
    for byte in range(len(line)):
        conn.protocol.dataReceived(line[byte : byte + 1])
    [answer] = conn.answers()
    assert answer["result"]["offset"] == 0


@pytest.mark.parametrize("index", [2, 1023, 1024, 5000, 2**63 - 1, 2**63, 2**64 - 1])
def test_any_partition_the_topic_lacks_is_unknown_partition(clock, index):
    # Not INVALID_PARAMS: the number is well formed, the topic just does not have it,
    # whether or not it is past --max-partitions (the limit on a topic's size).
    h = make_harness(clock, limits=wire.Limits(max_partitions=8))
    try:
        conn = h.connect()
        conn.call("CreateTopic", {"topic": "t", "partitions": 2})
        requests = [
            ("Send", {"topic": "t", "value": 1, "partition": index}),
            ("SendBatch", {"topic": "t", "messages": [{"value": 1, "partition": 0}, {"value": 2, "partition": index}]}),
            ("Poll", {"topic": "t", "partition": index, "offset": 0}),
            ("ListOffsets", {"topic": "t", "partition": index}),
        ]
        for method, params in requests:
            error = conn.call(method, params)["error"]
            assert error["code"] == "UNKNOWN_PARTITION", (method, error)
            assert error["topic"] == "t" and error["partitions"] == 2
        described = conn.call("DescribeTopic", {"topic": "t"})["result"]
        assert all(p["log_end_offset"] == 0 for p in described["partitions"])
    finally:
        h.stop()


@pytest.mark.parametrize("index", [b"-1", b"-9223372036854775808", b"1.0", b'"1"', b"true", b"18446744073709551616"])
@pytest.mark.parametrize("method", ["Send", "Poll", "ListOffsets"])
def test_a_partition_that_is_not_a_non_negative_integer_is_invalid_params(harness, index, method):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 2})
    extra = b'"value":1,' if method == "Send" else b'"offset":0,' if method == "Poll" else b""
    # 2**64 does not fit orjson's integers: it is read as a float, so it is no integer either.
    conn.send_line(b'{"id":1,"method":"%s","params":{"topic":"t",%s"partition":%s}}' % (method.encode(), extra, index))
    [answer] = conn.answers()
    assert answer["error"]["code"] == "INVALID_PARAMS", answer


# --- half-close: the client shuts down its sending side (nc at the end of its input) ---


def test_half_close_answers_what_was_sent_then_closes(harness):
    conn = harness.connect()
    conn.request("Send", {"topic": "t", "value": "hi"})
    conn.request("Ping")
    assert not conn.closed
    conn.protocol.readConnectionLost()
    assert [a["id"] for a in conn.answers()] == [1, 2]
    assert conn.closed
    assert conn.transport.producer is None  # unregistered, or a paused one would hold the close


def test_half_close_with_a_pending_long_poll_closes_after_its_answer(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t"})
    rid = conn.request("Poll", {"topic": "t", "offset": 0, "max_wait_ms": 5000})
    conn.protocol.readConnectionLost()
    assert not conn.closed  # the poll is still owed its answer
    harness.connect().call("Send", {"topic": "t", "value": "late"})
    [answer] = conn.answers()
    assert answer["id"] == rid and answer["result"]["messages"][0]["value"] == "late"
    assert conn.closed


def test_half_close_with_a_long_poll_that_times_out(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t"})
    conn.request("Poll", {"topic": "t", "offset": 0, "max_wait_ms": 500})
    conn.protocol.readConnectionLost()
    harness.clock.advance(0.5)
    [answer] = conn.answers()
    assert answer["result"]["messages"] == []
    assert conn.closed


def test_the_last_line_before_a_half_close_needs_no_newline(harness):
    conn = harness.connect()
    conn.protocol.dataReceived(wire.encode_request(1, "Ping", {}) + wire.encode_request(2, "Ping", {}).rstrip(b"\n"))
    assert [a["id"] for a in conn.answers()] == [1]
    conn.protocol.readConnectionLost()
    assert [a["id"] for a in conn.answers()] == [2]
    assert conn.closed


def test_a_blank_tail_at_half_close_is_not_a_request(harness):
    conn = harness.connect()
    conn.protocol.dataReceived(wire.encode_request(1, "Ping", {}) + b"  \r")
    conn.protocol.readConnectionLost()
    assert [a["id"] for a in conn.answers()] == [1]
    assert conn.closed


def test_half_close_while_requests_are_held_back_by_the_in_flight_limit(clock):
    h = make_harness(clock, limits=wire.Limits(max_in_flight=2))
    try:
        conn = h.connect()
        conn.call("CreateTopic", {"topic": "t"})
        polls = b"".join(wire.encode_request(i, "Poll", {"topic": "t", "offset": 0, "max_wait_ms": 1000}) for i in range(3))
        conn.protocol.dataReceived(polls + wire.encode_request(9, "Ping", {}).rstrip(b"\n"))
        assert conn.protocol.in_flight == 2
        conn.protocol.readConnectionLost()
        assert conn.answers() == [] and not conn.closed
        clock.advance(1.0)  # two polls answer; the third poll and the Ping are read now
        assert sorted(a["id"] for a in conn.answers()) == [0, 1, 9]
        assert not conn.closed
        clock.advance(1.0)
        assert [a["id"] for a in conn.answers()] == [2]
        assert conn.closed
    finally:
        h.stop()


def test_half_close_does_not_close_while_held_back_lines_are_being_read(clock):
    # acks=leader answers fire while the held-back lines are read: the close must wait
    # for the lines after them.
    h = make_harness(clock, limits=wire.Limits(max_in_flight=1))
    try:
        conn = h.connect()
        conn.call("CreateTopic", {"topic": "t"})
        lines = [wire.encode_request(0, "Poll", {"topic": "t", "offset": 0, "max_wait_ms": 1000})]
        lines += [wire.encode_request(10 + i, "Send", {"topic": "t", "value": i, "acks": "leader"}) for i in range(5)]
        lines.append(wire.encode_request(99, "Ping", {}))
        conn.protocol.dataReceived(b"".join(lines))
        assert conn.protocol.in_flight == 1 and conn.answers() == []
        conn.protocol.readConnectionLost()
        h.connect().call("Send", {"topic": "t", "value": "wake"})
        assert sorted(a["id"] for a in conn.answers()) == [0, 10, 11, 12, 13, 14, 99]
        assert conn.closed
    finally:
        h.stop()


def test_an_idle_close_unregisters_the_producer_and_a_close_that_never_ends_is_aborted(clock):
    harness = make_harness(clock, limits=wire.Limits(idle_timeout=5, close_timeout=10))
    conn = harness.connect()
    conn.protocol.pauseProducing()  # its writes are paused: the client does not read
    clock.pump([1] * 6)
    # Closing, with no producer left to resume instead of closing once the buffer drains.
    assert conn.transport.disconnecting and conn.transport.producer is None
    assert not conn.transport.disconnected
    clock.pump([1] * 10)
    assert not conn.transport.disconnected  # within --close-timeout: its last answers may still go
    clock.pump([1] * 2)
    assert conn.transport.disconnected  # aborted
    harness.stop()

"""Every kind of bad input gets its documented error code, and the server keeps serving."""

from __future__ import annotations

import orjson
import pytest
from twisted.internet.testing import StringTransport

from streamlog import wire
from streamlog.testing import BrokerHarness

BAD_LINES = [
    # (line, code, id echoed)
    (b"not json", "PARSE_ERROR", None),
    (b'{"id": 1, "method": "Send"', "PARSE_ERROR", None),
    (b"\xff\xfe{}", "PARSE_ERROR", None),
    (b'{"id":1,"method":"Send","params":{"topic":"t","value":"\\ud800"}}', "PARSE_ERROR", None),
    (b'{"id":1,"method":"Send","params":{"topic":"t","value":NaN}}', "PARSE_ERROR", None),
    (b'{"id":1,"method":"Send","params":{"topic":"t","value":Infinity}}', "PARSE_ERROR", None),
    (b'{"id":1,"method":"Send","params":{"topic":"t","value":1e999}}', "PARSE_ERROR", None),
    (b"[1,2,3]", "INVALID_REQUEST", None),
    (b'"just a string"', "INVALID_REQUEST", None),
    (b"{}", "INVALID_REQUEST", None),
    (b'{"id": true, "method": "Ping"}', "INVALID_REQUEST", None),
    (b'{"id": 1.5, "method": "Ping"}', "INVALID_REQUEST", None),
    (b'{"id": [1], "method": "Ping"}', "INVALID_REQUEST", None),
    (b'{"id": 7, "method": 5}', "INVALID_REQUEST", 7),
    (b'{"id": 7}', "INVALID_REQUEST", 7),
    (b'{"id": 7, "method": "Ping", "params": [1]}', "INVALID_REQUEST", 7),
    (b'{"id": 7, "method": "Ping", "extra": 1}', "INVALID_REQUEST", 7),
    (b'{"id": 7, "method": "Explode"}', "METHOD_NOT_FOUND", 7),
    (b'{"id": 7, "method": "Send", "params": {}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t"}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": 5, "value": 1}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t", "value": 1, "key": 5}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t", "value": 1, "headers": {"a": 1}}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t", "value": 1, "headers": [1]}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t", "value": 1, "partition": -1}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t", "value": 1, "partition": "0"}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t", "value": 1, "acks": "some"}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t", "value": 1, "colour": "red"}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "bad name", "value": 1}}', "INVALID_TOPIC", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "..", "value": 1}}', "INVALID_TOPIC", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": ".hidden", "value": 1}}', "INVALID_TOPIC", 7),
    (b'{"id": 7, "method": "CreateTopic", "params": {"topic": ".deleted-x"}}', "INVALID_TOPIC", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "", "value": 1}}', "INVALID_TOPIC", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "' + b"a" * 250 + b'", "value": 1}}', "INVALID_TOPIC", 7),
    (b'{"id": 7, "method": "SendBatch", "params": {"topic": "t", "messages": []}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "SendBatch", "params": {"topic": "t", "messages": {}}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "SendBatch", "params": {"topic": "t", "messages": [1]}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "SendBatch", "params": {"topic": "t", "messages": [{"key": "k"}]}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "t"}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "t", "offset": -1}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "t", "offset": 1.5}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "t", "offset": true}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "t", "offset": 9223372036854775808}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "t", "offset": 0, "max_messages": 0}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "t", "offset": 0, "max_wait_ms": 3600000}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "nope", "offset": 0}}', "UNKNOWN_TOPIC", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "t", "partition": 3, "offset": 0}}', "UNKNOWN_PARTITION", 7),
    (b'{"id": 7, "method": "Poll", "params": {"topic": "t", "offset": 99}}', "OFFSET_OUT_OF_RANGE", 7),
    (b'{"id": 7, "method": "CreateTopic", "params": {"topic": "x", "partitions": 0}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "CreateTopic", "params": {"topic": "x", "partitions": 100000}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "CreateTopic", "params": {"topic": "x", "config": {"retention_ms": -5}}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "CreateTopic", "params": {"topic": "x", "config": {"colour": 1}}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "CreateTopic", "params": {"topic": "t"}}', "TOPIC_EXISTS", 7),
    (b'{"id": 7, "method": "ListOffsets", "params": {"topic": "t", "at": "yesterday"}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "ListOffsets", "params": {"topic": "t", "at": -1}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Ping", "params": {"x": 1}}', "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t", "value": ' + b"[" * 65 + b"]" * 65 + b"}}", "NESTING_TOO_DEEP", 7),
    (b'{"id": 7, "method": "SendBatch", "params": {"topic": "t", "messages": [{"value": 1}, {"value": {"a": '
     + b"[" * 64 + b"]" * 64 + b"}}]}}", "NESTING_TOO_DEEP", 7),
    (b'{"id": 7, "method": "Ping", "params": {"v": ' + b"[" * 70 + b"]" * 70 + b"}}", "INVALID_PARAMS", 7),
    (b'{"id": 7, "method": "Send", "params": {"topic": "t", "value": ' + b"[" * 2000 + b"]" * 2000 + b"}}", "NESTING_TOO_DEEP", None),
]


@pytest.fixture
def harness(clock):
    h = BrokerHarness(clock=clock)
    h.connect().call("Send", {"topic": "t", "value": "first"})
    yield h
    h.stop()


@pytest.mark.parametrize("line,code,rid", BAD_LINES, ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(BAD_LINES)])
def test_bad_input_gets_its_error_and_the_connection_keeps_serving(harness, line, code, rid):
    conn = harness.connect()
    conn.send_line(line)
    [answer] = conn.answers()
    assert answer["error"]["code"] == code, answer
    assert answer["id"] == rid
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
    assert not conn.closed
    # The same connection still works, and the log holds exactly what it held.
    polled = conn.call("Poll", {"topic": "t", "offset": 0})["result"]
    assert [m["value"] for m in polled["messages"]] == ["first"]


def test_depth_limit_is_configurable(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_depth=3))
    conn = h.connect()
    assert "result" in conn.call("Send", {"topic": "t", "value": [{"a": ["x"]}]})  # depth 3
    error = conn.call("Send", {"topic": "t", "value": [{"a": [["x"]]}]})["error"]  # depth 4
    assert error["code"] == "NESTING_TOO_DEEP" and error["limit"] == 3
    h.stop()


def test_duplicate_keys_keep_the_last_value(harness):
    # RFC 8259 leaves duplicate names undefined; streamlog documents last-wins (as orjson and JS).
    conn = harness.connect()
    conn.send_line(b'{"id":1,"method":"Send","params":{"topic":"d","value":{"a":1,"a":2}}}')
    assert "result" in conn.answers()[0]
    assert conn.call("Poll", {"topic": "d", "offset": 0})["result"]["messages"][0]["value"] == {"a": 2}


def test_duplicate_keys_keep_the_last_value_in_params_batches_and_the_stored_bytes(harness):
    conn = harness.connect()
    conn.send_line(b'{"id":1,"method":"Send","params":{"topic":"nope","topic":"e","value":1}}')
    assert conn.answers()[0]["result"]["topic"] == "e"
    conn.send_line(b'{"id":2,"method":"SendBatch","params":{"topic":"e","messages":['
                   b'{"value":{"x":[1],"x":{"y":1,"y":2}},"key":"k1","key":"k2"}]}}')
    assert "result" in conn.answers()[0]
    conn.transport.clear()
    conn.send_line(b'{"id":4,"method":"Poll","params":{"topic":"e","offset":1}}')
    raw = conn.transport.value()
    assert b'"key":"k2","value":{"x":{"y":2}}' in raw  # served as stored: re-encoded, the duplicates gone
    # A value whose duplicates matter travels as a string: stored and served as sent.
    assert "result" in conn.call("Send", {"topic": "e", "value": '{"a": 1, "a": 2}'})
    assert conn.call("Poll", {"topic": "e", "offset": 2})["result"]["messages"][0]["value"] == '{"a": 1, "a": 2}'


def test_oversized_message_is_refused_and_nothing_is_appended(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_message_bytes=200))
    conn = h.connect()
    ok = conn.call("Send", {"topic": "t", "value": "x" * 50})
    assert "result" in ok
    error = conn.call("SendBatch", {"topic": "t", "messages": [{"value": "y"}, {"value": "z" * 300}]})["error"]
    assert error["code"] == "MESSAGE_TOO_LARGE" and error["limit"] == 200
    described = conn.call("DescribeTopic", {"topic": "t"})["result"]
    assert described["partitions"][0]["log_end_offset"] == 1
    h.stop()


def test_oversized_batch_is_refused(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_batch_messages=3))
    conn = h.connect()
    error = conn.call("SendBatch", {"topic": "t", "messages": [{"value": i} for i in range(4)]})["error"]
    assert error["code"] == "BATCH_TOO_LARGE" and error["limit"] == 3
    assert "result" in conn.call("SendBatch", {"topic": "t", "messages": [{"value": i} for i in range(3)]})
    h.stop()


def test_too_long_line_is_answered_then_the_connection_closes(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_line_bytes=100))
    conn = h.connect()
    other = h.connect()
    conn.protocol.dataReceived(b'{"id":1,"method":"Send","params":{"topic":"t","value":"' + b"x" * 200)
    [answer] = conn.answers()
    assert answer == {"id": None, "error": {"code": "LINE_TOO_LONG", "message": answer["error"]["message"], "limit": 100}}
    assert conn.closed
    assert other.call("Ping")["result"]["pong"] is True
    h.stop()


def test_too_long_line_with_its_newline_is_refused_too(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_line_bytes=100))
    conn = h.connect()
    conn.send_line(wire.encode_request(1, "Send", {"topic": "t", "value": "x" * 200}).rstrip(b"\n"))
    assert conn.answers()[0]["error"]["code"] == "LINE_TOO_LONG"
    assert conn.closed
    h.stop()


def test_a_line_exactly_at_the_limit_is_accepted(clock):
    line = wire.encode_request(1, "Send", {"topic": "t", "value": "x"}).rstrip(b"\n")
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_line_bytes=len(line)))
    conn = h.connect()
    conn.send_line(line)
    assert "result" in conn.answers()[0]
    h.stop()


def test_connection_limit_refuses_the_extra_connection(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_connections=2))
    first, second = h.connect(), h.connect()
    third = h.connect()
    [answer] = third.answers()
    assert answer["error"]["code"] == "TOO_MANY_CONNECTIONS"
    assert third.closed
    assert first.call("Ping")["result"]["pong"] and second.call("Ping")["result"]["pong"]
    third.lose()
    fourth = h.connect()  # a slot is free again
    assert fourth.call("Ping")["result"]["pong"]
    h.stop()


def test_in_flight_limit_stops_reading_until_answers_go_out(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_in_flight=2))
    conn = h.connect()
    conn.call("CreateTopic", {"topic": "t"})
    polls = b"".join(
        wire.encode_request(i, "Poll", {"topic": "t", "offset": 0, "max_wait_ms": 1000}) for i in range(3)
    )
    conn.protocol.dataReceived(polls + wire.encode_request(99, "Ping", {}))
    assert conn.protocol.in_flight == 2
    assert conn.transport.producerState == "paused"
    assert conn.answers() == []
    clock.advance(1.0)  # the first two polls time out, reading resumes: the third poll waits, Ping answers
    answered = [a["id"] for a in conn.answers()]
    assert answered == [0, 1, 99]
    assert conn.protocol.in_flight == 1
    clock.advance(1.0)
    assert [a["id"] for a in conn.answers()] == [2]
    h.stop()


def test_a_client_that_never_reads_is_disconnected_past_the_outbound_limit(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_outbound_bytes=1000))
    conn = h.connect()
    conn.call("CreateTopic", {"topic": "t"})
    for _i in range(10):
        conn.request("Poll", {"topic": "t", "offset": 0, "max_wait_ms": 60000})
    # Twisted calls pauseProducing once its write buffer is full (the client is not reading).
    conn.protocol.pauseProducing()
    assert conn.transport.producerState == "paused"  # no more requests are read
    # Data arrives: the ten answers owed (about 200 bytes each) pass the 1000-byte limit.
    other = h.connect()
    other.call("Send", {"topic": "t", "value": "x" * 100})
    assert conn.transport.disconnecting
    assert other.call("Ping")["result"]["pong"]
    h.stop()


def test_answers_owed_within_the_outbound_limit_are_kept(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_outbound_bytes=100_000))
    conn = h.connect()
    conn.call("CreateTopic", {"topic": "t"})
    for _i in range(10):
        conn.request("Poll", {"topic": "t", "offset": 0, "max_wait_ms": 60000})
    conn.protocol.pauseProducing()
    h.connect().call("Send", {"topic": "t", "value": "x" * 100})
    assert not conn.transport.disconnecting
    conn.protocol.resumeProducing()
    assert len(conn.answers()) == 10
    h.stop()


def test_idle_connections_are_closed_and_busy_ones_kept(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(idle_timeout=10, partial_line_timeout=0))
    idle = h.connect()
    waiting = h.connect()
    waiting.call("CreateTopic", {"topic": "t"})
    waiting.request("Poll", {"topic": "t", "offset": 0, "max_wait_ms": 60000})
    clock.pump([1.0] * 12)
    assert idle.closed
    assert not waiting.closed  # a request in flight is not idleness
    h.stop()
    clock.advance(60)


def test_partial_line_timeout_closes_a_stalled_request(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(partial_line_timeout=5, idle_timeout=0))
    conn = h.connect()
    conn.protocol.dataReceived(b'{"id":1,"meth')
    clock.pump([1.0] * 4)
    conn.protocol.dataReceived(b'od":"Pi')  # still partial: the clock keeps running
    clock.pump([1.0] * 2)
    assert conn.closed
    h.stop()


def test_bad_input_never_stops_other_connections(clock):
    h = BrokerHarness(clock=clock)
    good = h.connect()
    for line, _, _ in BAD_LINES:
        bad = h.connect()
        bad.send_line(line)
    acks = [good.call("Send", {"topic": "ok", "value": i})["result"]["offset"] for i in range(3)]
    assert acks == [0, 1, 2]
    h.stop()


def test_errors_are_json_objects_with_code_and_message(harness):
    conn = harness.connect()
    conn.send_line(b"][")
    raw = conn.transport.value()
    parsed = orjson.loads(raw)
    assert set(parsed) == {"id", "error"} and set(parsed["error"]) >= {"code", "message"}


def test_too_long_line_arriving_in_many_reads_is_refused(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_line_bytes=1000))
    conn = h.connect()
    conn.protocol.dataReceived(b'{"id":1,"method":"Send","params":{"topic":"t","value":"')
    for _ in range(9):
        conn.protocol.dataReceived(b"x" * 100)
        assert not conn.closed
    conn.protocol.dataReceived(b"x" * 100)
    assert conn.answers()[0]["error"]["code"] == "LINE_TOO_LONG"
    assert conn.closed
    h.stop()


def test_requests_held_back_by_the_in_flight_limit_are_not_a_stalled_line(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_in_flight=2, partial_line_timeout=5, idle_timeout=0))
    conn = h.connect()
    conn.call("CreateTopic", {"topic": "t"})
    polls = b"".join(
        wire.encode_request(i, "Poll", {"topic": "t", "offset": 0, "max_wait_ms": 30_000}) for i in range(3)
    )
    conn.protocol.dataReceived(polls)  # the third poll waits, complete, in the buffer
    clock.pump([1.0] * 10)
    assert not conn.closed
    clock.advance(30)  # the polls time out one after another; all three are answered
    clock.advance(30)
    assert sorted(a["id"] for a in conn.answers()) == [0, 1, 2]
    h.stop()


def test_closing_connections_at_stop_does_not_wait_on_a_paused_writer(clock):
    h = BrokerHarness(clock=clock)
    conn = h.connect()
    conn.protocol.pauseProducing()  # its write buffer is full at the moment of the stop
    closed = h.factory.close_connections(5.0)
    assert conn.transport.producer is None  # not resumed once drained: closed instead
    assert conn.transport.disconnecting
    conn.lose()  # the transport finished writing and closed
    assert closed.called
    h.stop()


def test_a_key_over_the_limit_is_key_too_large_and_nothing_is_appended(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_key_bytes=10))
    conn = h.connect()
    conn.call("CreateTopic", {"topic": "t"})
    assert "result" in conn.call("Send", {"topic": "t", "value": 1, "key": "k" * 10})  # exactly at the limit
    error = conn.call("Send", {"topic": "t", "value": 2, "key": "k" * 11})["error"]
    assert error["code"] == "KEY_TOO_LARGE" and error["limit"] == 10 and error["size"] == 11
    # The limit is in UTF-8 bytes: four two-byte characters fit, six do not.
    assert "result" in conn.call("Send", {"topic": "t", "value": 3, "key": "é" * 5})
    error = conn.call("Send", {"topic": "t", "value": 4, "key": "é" * 6})["error"]
    assert error["code"] == "KEY_TOO_LARGE" and error["size"] == 12
    error = conn.call("SendBatch", {"topic": "t", "messages": [{"value": 5, "key": "a"}, {"value": 6, "key": "€" * 4}]})["error"]
    assert error["code"] == "KEY_TOO_LARGE" and error["size"] == 12 and "messages[1].key" in error["message"]
    assert not conn.closed
    polled = conn.call("Poll", {"topic": "t", "offset": 0})["result"]
    assert [m["value"] for m in polled["messages"]] == [1, 3]
    h.stop()


def test_the_default_key_limit_takes_ordinary_keys_and_refuses_huge_ones(harness):
    conn = harness.connect()
    limit = wire.DEFAULT_LIMITS.max_key_bytes
    assert "result" in conn.call("Send", {"topic": "t", "value": 1, "key": "x" * limit})
    error = conn.call("Send", {"topic": "t", "value": 1, "key": "x" * 900_000})["error"]
    assert error == {"code": "KEY_TOO_LARGE", "message": error["message"], "limit": limit, "size": 900_000}


class BufferingTransport(StringTransport):
    """A StringTransport that pauses its producer the way Twisted's TCP transport does:
    on every write while more than C{buffer_size} bytes wait to be sent, not once."""

    buffer_size = 64 * 1024

    def write(self, data):
        super().write(data)
        if self.producer is not None and len(self.value()) > self.buffer_size:
            self.producerState = "paused"
            self.producer.pauseProducing()

    def writeSequence(self, seq):
        self.write(b"".join(seq))


def test_answers_owed_past_the_outbound_limit_drop_the_connection_even_when_paused_on_every_write(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_outbound_bytes=300_000))
    try:
        h.connect().call("CreateTopic", {"topic": "t"})
        protocol = h.factory.buildProtocol(None)
        transport = BufferingTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"".join(
            wire.encode_request(i, "Poll", {"topic": "t", "offset": 0, "max_wait_ms": 60_000}) for i in range(20)))
        assert h.broker.waiting_polls.waiting == 20
        # One Send of ~100 kB wakes all twenty: ~2 MB owed to a client that reads nothing.
        h.connect().call("Send", {"topic": "t", "value": "x" * 100_000})
        assert transport.disconnecting
        written = len(transport.value())
        assert written <= 64 * 1024 + 300_000 + 2 * 100_200, written  # buffer + limit + the answers at the edges
        # The polls it still had were forgotten at once, not answered into the void.
        assert h.broker.waiting_polls.waiting == 0
        assert h.connect().call("Ping")["result"]["pong"] is True
    finally:
        h.stop()


def test_connections_past_the_per_address_cap_are_refused_and_others_served(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_connections_per_address=2, max_connections=10))
    try:
        first, second = h.connect("10.0.0.1"), h.connect("10.0.0.1")
        third = h.connect("10.0.0.1")
        [answer] = third.answers()
        assert answer["error"]["code"] == "TOO_MANY_CONNECTIONS"
        assert answer["error"]["scope"] == "address" and answer["error"]["limit"] == 2
        assert third.closed
        other = h.connect("10.0.0.2")  # another address has its own allowance
        assert other.call("Ping")["result"]["pong"]
        assert first.call("Ping")["result"]["pong"] and second.call("Ping")["result"]["pong"]
        third.lose()
        first.lose()
        again = h.connect("10.0.0.1")  # slots free again once connections close
        assert again.call("Ping")["result"]["pong"]
        assert h.factory.connections_by_address == {"10.0.0.1": 2, "10.0.0.2": 1}
    finally:
        h.stop()
    assert h.factory.connections_by_address == {}


def test_the_node_connection_limit_says_its_scope(clock):
    h = BrokerHarness(clock=clock, limits=wire.Limits(max_connections=1))
    try:
        h.connect("10.0.0.1")
        refused = h.connect("10.0.0.2")
        error = refused.answers()[0]["error"]
        assert error["code"] == "TOO_MANY_CONNECTIONS" and error["scope"] == "node" and error["limit"] == 1
    finally:
        h.stop()

"""A refused Send creates nothing; CreateTopic refuses a config that is not an object."""

from __future__ import annotations

import pytest

from streamlog import wire
from streamlog.broker.broker import BrokerConfig
from streamlog.storage.segmented import SegmentedStorage
from streamlog.testing import BrokerHarness


@pytest.fixture
def conn(clock):
    harness = BrokerHarness(config=BrokerConfig(default_partitions=2, limits=wire.Limits(max_message_bytes=200)),
                            clock=clock)
    yield harness.connect()
    harness.stop()


def topics(conn) -> list:
    return conn.call("ListTopics")["result"]["topics"]


@pytest.mark.parametrize("method, params, code", [
    ("Send", {"topic": "new", "value": 1, "partition": 2}, "UNKNOWN_PARTITION"),
    ("Send", {"topic": "new", "value": "x" * 300}, "MESSAGE_TOO_LARGE"),
    ("Send", {"topic": "new", "key": "k", "value": "x" * 300}, "MESSAGE_TOO_LARGE"),
    ("SendBatch", {"topic": "new", "messages": [{"value": 1}, {"value": 2, "partition": 5}]}, "UNKNOWN_PARTITION"),
    # A batch of one shape (wire.plain_batch) is routed whole: its one partition is checked as any other.
    ("SendBatch", {"topic": "new", "messages": [{"value": 1, "partition": 5}, {"value": 2, "partition": 5}]},
     "UNKNOWN_PARTITION"),
    ("SendBatch", {"topic": "new", "messages": [{"value": 1, "partition": 1}, {"value": "x" * 300}]},
     "MESSAGE_TOO_LARGE"),
])
def test_a_refused_send_to_a_new_topic_leaves_no_topic(conn, method, params, code):
    assert conn.call(method, params)["error"]["code"] == code
    assert topics(conn) == []
    assert conn.call("DescribeTopic", {"topic": "new"})["error"]["code"] == "UNKNOWN_TOPIC"


def test_the_refusal_says_the_topic_does_not_exist_yet(conn):
    error = conn.call("Send", {"topic": "new", "value": 1, "partition": 2})["error"]
    assert error == {"code": "UNKNOWN_PARTITION", "topic": "new", "partitions": 2,
                     "message": "topic 'new' does not exist; auto-created it would have 2 partitions, not 2"}


def test_a_refused_send_leaves_no_topic_on_disk(tmp_path, clock):
    harness = BrokerHarness(storage=SegmentedStorage(str(tmp_path)),
                            config=BrokerConfig(limits=wire.Limits(max_message_bytes=200)), clock=clock)
    conn = harness.connect()
    try:
        assert conn.call("Send", {"topic": "new", "value": 1, "partition": 3})["error"]["code"] == "UNKNOWN_PARTITION"
        assert conn.call("Send", {"topic": "new", "value": "x" * 300})["error"]["code"] == "MESSAGE_TOO_LARGE"
        assert [p.name for p in tmp_path.iterdir()] == ["hardstate"]  # only the node's Raft terms and votes
    finally:
        harness.stop()
        harness.broker.close()


def test_a_send_that_is_appended_still_creates_its_topic_and_round_robins(conn):
    first = conn.call("Send", {"topic": "new", "value": "a"})["result"]
    second = conn.call("Send", {"topic": "new", "value": "b"})["result"]
    assert topics(conn) == [{"topic": "new", "partitions": 2}]
    # As before: the first unkeyed Send of a new topic goes to partition 0, the next to 1.
    assert [(first["partition"], first["offset"]), (second["partition"], second["offset"])] == [(0, 0), (1, 0)]
    batch = conn.call("SendBatch", {"topic": "other", "messages": [{"value": 1, "partition": 1}, {"value": 2}]})
    assert batch["result"]["partitions"] == [{"partition": 1, "base_offset": 0, "count": 1},
                                             {"partition": 0, "base_offset": 0, "count": 1}]


def test_a_batch_of_one_shape_is_routed_whole_as_message_by_message(conn):
    """wire.plain_batch's batches: all naming one partition, all naming none (one round-robin
    pick for them all), or naming several (routed message by message); each refusal as before."""
    send = lambda messages: conn.call("SendBatch", {"topic": "new", "messages": messages})  # noqa: E731
    assert send([{"value": 1}, {"value": 2}])["result"]["partitions"] == [
        {"partition": 0, "base_offset": 0, "count": 2}]
    assert send([{"value": 3}])["result"]["partitions"] == [{"partition": 1, "base_offset": 0, "count": 1}]
    assert send([{"value": 4, "partition": 1}, {"value": 5, "partition": 1}])["result"]["partitions"] == [
        {"partition": 1, "base_offset": 1, "count": 2}]
    assert send([{"value": 6, "partition": 1}, {"value": 7, "partition": 0}])["result"]["partitions"] == [
        {"partition": 1, "base_offset": 3, "count": 1}, {"partition": 0, "base_offset": 2, "count": 1}]
    error = send([{"value": 8, "partition": 2}, {"value": 9, "partition": 2}])["error"]
    assert error == {"code": "UNKNOWN_PARTITION", "topic": "new", "partitions": 2,
                     "message": "topic 'new' has 2 partitions, not 2"}
    assert send([{"value": 1}])["result"]["partitions"] == [{"partition": 0, "base_offset": 3, "count": 1}]
    polled = conn.call("Poll", {"topic": "new", "partition": 1, "offset": 0})["result"]
    assert [(r["offset"], r["value"]) for r in polled["messages"]] == [(0, 3), (1, 4), (2, 5), (3, 6)]


@pytest.mark.parametrize("config", [0, "", [], False, 1, "x", [1], True])
def test_create_topic_refuses_a_config_that_is_not_an_object(conn, config):
    answer = conn.call("CreateTopic", {"topic": "t", "config": config})
    assert answer["error"]["code"] == "INVALID_PARAMS"
    assert answer["error"]["message"] == "'config' must be an object"
    assert topics(conn) == []


@pytest.mark.parametrize("params", [{"topic": "t"}, {"topic": "t", "config": None}, {"topic": "t", "config": {}}])
def test_create_topic_without_a_config_gets_the_defaults(conn, params):
    result = conn.call("CreateTopic", params)["result"]
    assert result["config"] == {"retention_ms": None, "retention_bytes": None, "segment_bytes": None, "segment_ms": None}

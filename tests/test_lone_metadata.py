"""Metadata at a node started without --peers: answered like any node (a cluster of one)."""

from __future__ import annotations

import pytest

from streamlog.client.metadata import MetadataAnswer
from streamlog.testing import BrokerHarness


@pytest.fixture
def harness(clock):
    h = BrokerHarness(clock=clock)
    yield h
    h.stop()


def test_a_node_alone_answers_metadata_leading_every_partition(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 2})
    harness.settle()
    result = conn.call("Metadata", {})["result"]
    assert result["alone"] is True and result["cluster_id"] is None and result["controller"] == 1
    assert result["nodes"] == [{"node_id": 1, "address": None, "up": True}]  # no listener in this harness
    [topic] = result["topics"]
    assert topic["topic"] == "t"
    for i, p in enumerate(topic["partitions"]):
        assert p["partition"] == i and p["leader"] == 1 and p["replicas"] == [1] and p["isr"] == [1]
        assert p["leader_term"] >= 1
    assert MetadataAnswer.parse(result).alone  # the client reads it, and treats the node as the only one


def test_metadata_alone_lists_only_the_topics_asked_and_refuses_bad_params(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t"})
    result = conn.call("Metadata", {"topics": ["nope"]})["result"]
    assert result["topics"][0]["topic"] == "nope" and result["topics"][0]["error"]["code"] == "UNKNOWN_TOPIC"
    assert conn.call("Metadata", {"topics": []})["result"]["topics"] == []
    assert conn.call("Metadata", {"topics": "t"})["error"]["code"] == "INVALID_PARAMS"
    assert conn.call("Metadata", {"topic": ["t"]})["error"]["code"] == "INVALID_PARAMS"
    assert conn.call("Ping", {})["result"]["pong"] is True  # and it keeps serving

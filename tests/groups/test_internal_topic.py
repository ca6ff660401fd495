"""The offsets topic is internal: clients cannot write to it, create it or delete it (INTERNAL_TOPIC),
may Poll it, and see it marked internal in ListTopics, DescribeTopic and Metadata."""

from __future__ import annotations

import pytest

from streamlog.broker.broker import BrokerConfig
from streamlog.groups.config import OFFSETS_TOPIC, GroupConfig
from streamlog.testing import BrokerHarness, ClusterHarness


@pytest.fixture
def conn(clock):
    h = BrokerHarness(clock=clock, config=BrokerConfig(groups=GroupConfig(offsets_partitions=2)))
    c = h.connect()
    assert "result" in c.call("CommitOffsets", {"group": "g", "offsets": [{"topic": "t", "partition": 0,
                                                                           "offset": 3}]})
    yield c
    h.broker.groups.stop()
    h.stop()


REFUSED = [
    ("Send", {"topic": OFFSETS_TOPIC, "value": {"type": "delete", "group": "g"}}),
    ("Send", {"topic": OFFSETS_TOPIC, "value": 1, "acks": "none"}),
    ("SendBatch", {"topic": OFFSETS_TOPIC, "messages": [{"value": 1}]}),
    ("DeleteTopic", {"topic": OFFSETS_TOPIC}),
    ("CreateTopic", {"topic": OFFSETS_TOPIC, "partitions": 1, "config": {"retention_ms": 1000}}),
]


@pytest.mark.parametrize("method, params", REFUSED)
def test_clients_cannot_write_create_or_delete_the_offsets_topic(conn, method, params):
    error = conn.call(method, params)["error"]
    assert (error["code"], error["topic"]) == ("INTERNAL_TOPIC", OFFSETS_TOPIC)
    # Nothing changed, and the node keeps serving.
    fetched = conn.call("FetchOffsets", {"group": "g"})["result"]["offsets"]
    assert [(o["topic"], o["offset"]) for o in fetched] == [("t", 3)]
    assert conn.call("Ping", {})["result"]["pong"]


def test_a_client_cannot_create_it_before_the_node_does(clock):
    h = BrokerHarness(clock=clock)
    c = h.connect()
    assert c.call("CreateTopic", {"topic": OFFSETS_TOPIC, "partitions": 50})["error"]["code"] == "INTERNAL_TOPIC"
    assert OFFSETS_TOPIC not in h.broker.topics
    h.broker.groups.stop()
    h.stop()


def test_poll_reads_it_and_listings_mark_it_internal(conn):
    polled = conn.call("Poll", {"topic": OFFSETS_TOPIC, "partition": 0, "offset": 0})
    assert "result" in polled
    listed = conn.call("ListTopics", {})["result"]["topics"]
    assert [t for t in listed if t["topic"] == OFFSETS_TOPIC] == [
        {"topic": OFFSETS_TOPIC, "partitions": 2, "internal": True}]
    assert "internal" not in conn.call("DescribeTopic", {"topic": "t"}).get("result", {})
    assert conn.call("DescribeTopic", {"topic": OFFSETS_TOPIC})["result"]["internal"] is True
    meta = conn.call("Metadata", {})["result"]["topics"]
    assert [t.get("internal", False) for t in meta] == [t["topic"] == OFFSETS_TOPIC for t in meta]


def test_in_a_cluster_every_node_refuses_and_metadata_marks_it():
    cluster = ClusterHarness(3)
    try:
        cluster.run_until(lambda: cluster.controller() is not None
                          and all(len(n.state.nodes) == 3 for n in cluster.nodes.values()))

        def found():
            answer = cluster.call(1, "FindCoordinator", {"group": "g"})
            return "result" in answer and answer["result"]["coordinator"] is not None

        cluster.run_until(found, timeout=20)
        controller = cluster.controller()
        for i in (1, 2, 3):  # the controller itself, and the nodes that would forward to it
            for method, params in REFUSED:
                assert cluster.call(i, method, params)["error"]["code"] == "INTERNAL_TOPIC", (i, method)
        assert OFFSETS_TOPIC in cluster.nodes[controller].state.topics
        meta = cluster.call(2, "Metadata", {"topics": [OFFSETS_TOPIC]})["result"]["topics"]
        assert meta[0]["internal"] is True
        assert cluster.call(3, "DescribeTopic", {"topic": OFFSETS_TOPIC})["result"]["internal"] is True
    finally:
        for broker in cluster.brokers.values():
            broker.groups.stop()
        cluster.stop()

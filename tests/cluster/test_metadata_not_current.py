"""A node that cannot know whether a topic exists says so: LEADER_NOT_AVAILABLE (retriable), not UNKNOWN_TOPIC.

A node that restarted holds the metadata of its last snapshot (or none) until
the controller tells it the metadata group's commit index.  Before that, a
topic missing from its state may well exist: answering C{UNKNOWN_TOPIC} made
the Producer take the topic for one to auto-create and send unnumbered
batches (found by the cluster simulator's idempotent producers).
"""

from __future__ import annotations

import pytest

from streamlog.testing import ClusterHarness


@pytest.fixture
def cluster():
    c = ClusterHarness(3)
    c.run_until(lambda: c.controller() is not None and all(len(n.state.nodes) == 3 for n in c.nodes.values()))
    answer = c.call(1, "CreateTopic", {"topic": "t", "partitions": 1})
    assert "result" in answer, answer
    c.run_until(lambda: all(n.state is not None and "t" in n.state.topics for n in c.nodes.values()))
    yield c
    c.stop()


def restarted_alone(c: ClusterHarness) -> None:
    """Node 1 restarted while the other two are down: no controller it can learn from."""
    for i in (1, 2, 3):
        c.kill(i)
    c.start(1)
    c.run(1.0)
    assert c.nodes[1].controller is None


def test_metadata_at_a_node_without_a_controller_is_leader_not_available_for_a_live_topic(cluster):
    restarted_alone(cluster)
    answer = cluster.call(1, "Metadata", {"topics": ["t"]})
    [topic] = answer["result"]["topics"]
    assert topic["error"]["code"] == "LEADER_NOT_AVAILABLE", topic


def test_describe_send_and_poll_there_are_retriable_too(cluster):
    restarted_alone(cluster)
    for method, params in [("DescribeTopic", {"topic": "t"}),
                           ("Poll", {"topic": "t", "partition": 0, "offset": 0}),
                           ("Send", {"topic": "t", "value": "x"}),
                           # A partition past the count a new topic would get: not UNKNOWN_PARTITION
                           # from a guess (seen: a Producer's batches failed at a node just restarted).
                           ("Send", {"topic": "t", "value": "x", "partition": 7}),
                           ("SendBatch", {"topic": "t", "messages": [{"value": "x", "partition": 7}]})]:
        answer = cluster.call(1, method, params)
        assert answer.get("error", {}).get("code") == "LEADER_NOT_AVAILABLE", (method, answer)


def test_once_the_controller_is_back_the_topic_is_there_and_a_missing_one_is_unknown(cluster):
    restarted_alone(cluster)
    cluster.start(2)
    cluster.run_until(lambda: cluster.nodes[1].controller is not None and "t" in cluster.nodes[1].state.topics)
    topics = cluster.call(1, "Metadata", {"topics": ["t", "nope"]})["result"]["topics"]
    assert "error" not in topics[0] and topics[1]["error"]["code"] == "UNKNOWN_TOPIC"


def test_after_every_node_restarted_no_node_ever_calls_the_live_topic_unknown(cluster):
    # A new controller after a restart of every node has commit index 0 until it commits an
    # entry of its own term, and so do the followers it tells: "a leader is known" is not enough.
    for i in (1, 2, 3):
        cluster.kill(i)
    for i in (1, 2, 3):
        cluster.start(i)
    seen: set[str] = set()

    def everywhere_known() -> bool:
        known = 0
        for node in cluster.nodes.values():
            [topic] = node.metadata({"topics": ["t"]})["topics"]
            seen.add(topic["error"]["code"] if "error" in topic else "ok")
            known += "error" not in topic
        return known == 3

    cluster.run_until(everywhere_known)
    assert "UNKNOWN_TOPIC" not in seen and "LEADER_NOT_AVAILABLE" in seen, seen

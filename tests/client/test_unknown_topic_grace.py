"""UNKNOWN_TOPIC right after a topic is created: a node whose metadata lags says so; the client
retries for C{unknown_topic_grace} when it saw the topic exist, instead of failing the send."""

from __future__ import annotations

import pytest
from fake_cluster import FakeCluster, close_client, cluster_client, outcomes, run_for, run_until
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import Producer
from streamlog.testing import result_of


@pytest.fixture
def cluster(clock):
    c = FakeCluster(clock, nodes=3)
    c.auto_create = False
    yield c
    c.stop()


def make_client(clock, cluster, **kw):
    return cluster_client(clock, cluster, seed=3, **kw)


def close(client, cluster):
    close_client(client, cluster)


def outcome(d):
    return outcomes([d])[0]


def lagging(clock, cluster, nodes, topic, until):
    """C{nodes} do not know C{topic} yet (Metadata and writes) until C{until} (virtual seconds)."""
    before = cluster.metadata()
    for n in nodes:
        node = cluster.nodes[n]
        node.frozen_metadata = before

        def refuse(params, node=node):
            if clock.seconds() < until and params.get("topic") == topic:
                return errors.UnknownTopic(f"unknown topic {topic!r}", topic=topic)
            node.frozen_metadata = None  # caught up
            return None

        for method in ("SendBatch", "Send", "Poll"):
            node.faults[method] = refuse


def create_lagging(clock, cluster, client, lag=0.4):
    """CreateTopic through the client (the controller, node 1, knows it at once); node 2, which the
    cluster makes the partition's leader, and node 3 lag behind."""
    lagging(clock, cluster, (2, 3), "new", clock.seconds() + lag)
    d = client.create_topic("new", 1)
    run_until(clock, cluster, lambda: d.called)
    result_of(d)
    cluster.topics["new"][0].leader = 2


def test_a_producer_sends_to_a_topic_just_created_while_its_leader_lags(clock, cluster):
    client = make_client(clock, cluster)
    try:
        create_lagging(clock, cluster, client)
        producer = Producer(client, linger_ms=1)
        ds = [producer.send("new", {"n": i}, partition=0) for i in range(10)]
        run_until(clock, cluster, lambda: all(d.called for d in ds), limit=10)
        assert [outcome(d) for d in ds] == [(0, i) for i in range(10)]
        assert [v["n"] for v in cluster.values("new", 0)] == list(range(10))
        assert clock.seconds() < 2.0
    finally:
        close(client, cluster)


@pytest.mark.parametrize("grace", [0.0, 2.0])
def test_a_poll_right_after_create_is_retried_within_the_grace_only(clock, cluster, grace):
    client = make_client(clock, cluster, unknown_topic_grace=grace)
    try:
        create_lagging(clock, cluster, client)
        d = client.poll("new", 0, 0)
        run_until(clock, cluster, lambda: d.called, limit=10)
        got = outcome(d)
        if grace:
            assert got["messages"] == []
        else:
            assert isinstance(got, Failure) and isinstance(got.value, errors.UnknownTopic)
    finally:
        close(client, cluster)


def test_a_topic_never_seen_fails_at_once(clock, cluster):
    client = make_client(clock, cluster)
    try:
        d = client.poll("never", 0, 0)
        run_until(clock, cluster, lambda: d.called, limit=10)
        failure = outcome(d)
        assert isinstance(failure, Failure) and isinstance(failure.value, errors.UnknownTopic)
        assert clock.seconds() < 0.5  # a metadata fetch, no grace
    finally:
        close(client, cluster)


def test_a_topic_deleted_elsewhere_fails_once_the_grace_is_over(clock, cluster):
    client = make_client(clock, cluster)
    try:
        cluster.create_topic("gone", 1)
        producer = Producer(client, linger_ms=1)
        first = producer.send("gone", {"n": 0}, partition=0)
        run_until(clock, cluster, lambda: first.called)
        assert outcome(first) == (0, 0)
        del cluster.topics["gone"]  # another client deleted it
        began = clock.seconds()
        d = producer.send("gone", {"n": 1}, partition=0)
        run_until(clock, cluster, lambda: d.called, limit=10)
        failure = outcome(d)
        assert isinstance(failure, Failure) and isinstance(failure.value, errors.UnknownTopic), failure
        assert 2.0 <= clock.seconds() - began < 3.5
        run_for(clock, cluster, 0.5)
    finally:
        close(client, cluster)


def test_a_negative_grace_is_refused(clock, cluster):
    with pytest.raises(ValueError):
        make_client(clock, cluster, unknown_topic_grace=-1)

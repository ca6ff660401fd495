"""The idempotent Producer (the default) over the fake cluster: numbers, resends, fencing, epoch bumps.

The fake cluster keeps each partition's producer state in the real
ProducerStateTable, shared by its nodes (as if replicated), so a leader that
takes over recognises the retries of batches its predecessor stored.
"""

from __future__ import annotations

import random

import pytest
from fake_cluster import _PARKED, FakeCluster, run_for, run_until

from streamlog import errors
from streamlog.client import ClusterClient, Producer
from streamlog.idempotence.table import ProducerStateTable
from streamlog.testing import failure_of, result_of


@pytest.fixture
def cluster(clock):
    c = FakeCluster(clock, nodes=3)
    yield c
    c.stop()


def make_client(clock, cluster, seed=11):
    return ClusterClient(cluster.bootstrap, clock=clock, endpoint_factory=cluster.endpoint, rng=random.Random(seed),
                         request_timeout=2.0)


@pytest.fixture
def client(clock, cluster):
    c = make_client(clock, cluster)
    yield c
    d = c.close()
    cluster.pump()
    result_of(d)


def sent_batches(cluster):
    return [p for _, p in cluster.sent("SendBatch")]


def test_batches_carry_the_producer_id_epoch_and_record_sequence_numbers(clock, cluster, client):
    cluster.create_topic("t", 2, leaders=[1, 2])
    producer = Producer(client, linger_ms=0, batch_size=2)
    ds = [producer.send("t", i, partition=i % 2) for i in range(8)]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    assert [result_of(d) for d in ds] == [(i % 2, i // 2) for i in range(8)]
    assert cluster.inits == [producer.identity] and producer.identity == (0, 0)
    numbers = {}
    for params in sent_batches(cluster):
        assert params["producer_id"] == 0 and params["epoch"] == 0
        (entry,) = params["sequences"]
        numbers.setdefault(entry["partition"], []).append((entry["base_sequence"], len(params["messages"])))
    assert numbers == {0: [(0, 2), (2, 2)], 1: [(0, 2), (2, 2)]}


def test_a_producer_without_idempotence_sends_no_numbers(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=0, idempotent=False)
    d = producer.send("t", "x", partition=0)
    run_until(clock, cluster, lambda: d.called)
    assert result_of(d) == (0, 0) and cluster.inits == []
    assert all("producer_id" not in p and "sequences" not in p for p in sent_batches(cluster))


def test_at_most_eight_batches_per_partition_are_in_flight_as_without_idempotence(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    assert Producer(client).max_in_flight_per_partition == Producer(client, idempotent=False).max_in_flight_per_partition
    producer = Producer(client, linger_ms=0, batch_size=1, max_in_flight=20)
    assert producer.max_in_flight_per_partition == 8
    cluster.nodes[1].black_hole = {"SendBatch"}  # read, never answered: they stay in flight
    ds = [producer.send("t", i, partition=0) for i in range(12)]
    run_until(clock, cluster, lambda: len(cluster.nodes[1].swallowed) == 8)
    clock.advance(0.5)
    cluster.pump()
    assert len(cluster.nodes[1].swallowed) == 8
    cluster.nodes[1].black_hole = False
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    assert [result_of(d)[1] for d in ds] == list(range(12))
    assert cluster.values("t", 0) == list(range(12))


def test_a_leader_change_with_answers_lost_stores_every_batch_once_in_order(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=0, batch_size=1)
    first = producer.send("t", "first", partition=0)
    run_until(clock, cluster, lambda: first.called)
    node = cluster.nodes[1]
    real = node.handle_SendBatch
    stored = []

    def store_then_die(params):
        stored.append(real(params))  # appended (and, in the fake, replicated) ...
        if len(stored) == 3:
            cluster.move_leader("t", 0, 2)
            clock.callLater(0, cluster.kill, 1)  # ... but the node dies before its answers go out
            node.black_hole = True
        return _PARKED  # no answer

    node.handle_SendBatch = store_then_die
    ds = [producer.send("t", i, partition=0) for i in range(5)]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    assert [result_of(d)[1] for d in ds] == [1, 2, 3, 4, 5]
    assert cluster.values("t", 0) == ["first", 0, 1, 2, 3, 4]
    assert producer.retries >= 1


def test_a_newer_instance_of_a_named_producer_fences_the_older_one(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    old = Producer(client, linger_ms=0, producer_name="orders")
    d = old.send("t", "a", partition=0)
    run_until(clock, cluster, lambda: d.called)
    other = make_client(clock, cluster, seed=12)
    try:
        new = Producer(other, linger_ms=0, producer_name="orders")
        d2 = new.send("t", "b", partition=0)
        run_until(clock, cluster, lambda: d2.called)
        assert result_of(d2) == (0, 1) and new.identity == (old.identity[0], old.identity[1] + 1)
        late = old.send("t", "c", partition=0)
        run_until(clock, cluster, lambda: late.called)
        fenced = failure_of(late)
        assert fenced.check(errors.ProducerFenced)
        assert "fenced" in fenced.value.message and "newer instance" in fenced.value.message
        later = old.send("t", "d", partition=0)
        assert failure_of(later).check(errors.ProducerFenced)  # fatal: nothing more goes out
        assert cluster.values("t", 0) == ["a", "b"]
    finally:
        d = other.close()
        cluster.pump()
        result_of(d)


def test_a_partition_that_forgot_the_producer_makes_it_take_the_next_epoch(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=0, batch_size=1)
    d = producer.send("t", "a", partition=0)
    run_until(clock, cluster, lambda: d.called)
    cluster.topics["t"][0].producers = ProducerStateTable()  # expired there
    ds = [producer.send("t", v, partition=0) for v in "bc"]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    assert [result_of(d)[1] for d in ds] == [1, 2]
    assert producer.epoch_bumps == 1 and producer.identity == (0, 1)
    assert cluster.inits == [(0, 0), (0, 1)]
    assert cluster.values("t", 0) == ["a", "b", "c"]
    last = sent_batches(cluster)[-1]
    assert last["epoch"] == 1 and last["sequences"] == [{"partition": 0, "base_sequence": 1}]


def test_a_batch_that_expires_alone_at_its_resend_lets_the_sends_behind_it_go_in_the_next_epoch(
        clock, cluster, client):
    # The partition's only numbered batch fails for good at its resend (the retry timer fires at
    # its deadline), with nothing else in flight whose answer would take the next epoch: the
    # producer must take it there, or the sends queued behind the gap wait for ever, past their
    # own delivery timeout (cluster simulator, seed 91020: the Producer held them for good).
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=0, batch_size=1, delivery_timeout=1.0, max_in_flight_per_partition=1)
    first = producer.send("t", "a", partition=0)
    run_until(clock, cluster, lambda: first.called)
    cluster.nodes[1].faults["SendBatch"] = lambda params: errors.LeaderNotAvailable("an election")
    expiring = producer.send("t", "b", partition=0)
    run_for(clock, cluster, 0.6)
    behind = producer.send("t", "c", partition=0)  # waits, unnumbered, while "b" is retried
    run_until(clock, cluster, lambda: expiring.called)
    assert failure_of(expiring).check(errors.DeliveryTimeout)
    del cluster.nodes[1].faults["SendBatch"]
    run_until(clock, cluster, lambda: behind.called, limit=1.0)  # within its own delivery timeout
    assert result_of(behind) == (0, 1)
    assert producer.epoch_bumps == 1 and producer.identity == (0, 1) and producer.pending == 0
    assert cluster.values("t", 0) == ["a", "c"]


def test_a_batch_that_expires_alone_does_not_hold_the_sends_to_a_healthy_partition(clock, cluster, client):
    # The same gap, at the default pipelining: it held every partition's new batches, not only its own.
    cluster.create_topic("t", 2, leaders=[1, 2])
    producer = Producer(client, linger_ms=0, batch_size=1, delivery_timeout=1.0)
    first = producer.send("t", "a", partition=0)
    run_until(clock, cluster, lambda: first.called)
    cluster.nodes[1].faults["SendBatch"] = lambda params: errors.LeaderNotAvailable("an election")
    expiring = producer.send("t", "b", partition=0)
    run_until(clock, cluster, lambda: expiring.called)
    assert failure_of(expiring).check(errors.DeliveryTimeout)
    elsewhere = producer.send("t", "x", partition=1)
    run_until(clock, cluster, lambda: elsewhere.called, limit=1.0)
    assert result_of(elsewhere) == (1, 0) and producer.epoch_bumps == 1


def test_an_idempotent_producer_refuses_acks_none():
    with pytest.raises(ValueError, match="acks"):
        Producer(object.__new__(ClusterClient), acks="none")


def lose_the_first_send_batch_answer(cluster):
    """Every node stores SendBatch requests; the first one's answer is lost (the request times out)."""
    lost = []
    for node in cluster.nodes.values():
        real = node.handle_SendBatch

        def store_first_answer_never(params, real=real):
            result = real(params)
            if not lost:
                lost.append(params)
                return _PARKED  # stored, never answered: the client's attempt times out
            return result

        node.handle_SendBatch = store_first_answer_never
    return lost


def test_the_first_batches_to_a_topic_that_does_not_exist_yet_are_numbered(clock, cluster, client):
    # The topic is auto-created: the producer has it created first (CreateTopic auto_create), so
    # even its first batch carries numbers, and the resend after the lost answer is a duplicate.
    lost = lose_the_first_send_batch_answer(cluster)
    producer = Producer(client, linger_ms=0, batch_size=10)
    ds = [producer.send("fresh", v) for v in "abc"]
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=300)
    assert [result_of(d) for d in ds] == [(0, 0), (0, 1), (0, 2)]
    assert cluster.values("fresh", 0) == ["a", "b", "c"]  # stored once
    assert len(lost) == 1 and lost[0]["sequences"] == [{"partition": 0, "base_sequence": 0}]
    assert all("producer_id" in p for p in sent_batches(cluster))
    assert [p for _, p in cluster.sent("CreateTopic")] == [{"topic": "fresh", "auto_create": True}]


def test_a_producer_without_idempotence_still_lets_its_first_send_auto_create(clock, cluster, client):
    producer = Producer(client, linger_ms=0, idempotent=False)
    d = producer.send("fresh", "a")
    run_until(clock, cluster, lambda: d.called)
    assert result_of(d) == (0, 0) and cluster.sent("CreateTopic") == []


def test_an_idempotent_producer_to_a_topic_that_may_not_be_auto_created_fails_its_messages(clock, cluster, client):
    cluster.auto_create = False
    producer = Producer(client, linger_ms=0)
    ds = [producer.send("nowhere", v) for v in "ab"]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    for d in ds:
        failure = failure_of(d)
        assert failure.check(errors.UnknownTopic) and "auto-creation is off" in failure.value.message
    assert sent_batches(cluster) == []


def test_a_lost_init_producer_id_answer_is_resent_with_its_token_and_gets_the_same_identity(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    lost = []
    for node in cluster.nodes.values():
        real = node.handle_InitProducerId

        def answer_lost(params, real=real):
            result = real(params)  # handed out (a name's epoch bumped) ...
            if not lost:
                lost.append(params)
                return _PARKED  # ... but the answer never comes: the producer sends it again
            return result

        node.handle_InitProducerId = answer_lost
    producer = Producer(client, linger_ms=0, producer_name="orders")
    d = producer.send("t", "a", partition=0)
    run_until(clock, cluster, lambda: d.called)
    assert result_of(d) == (0, 0)
    asked = [p for _, p in cluster.sent("InitProducerId")]
    assert len(asked) == 2 and asked[0] == asked[1] and len(asked[0]["request_token"]) == 32
    assert producer.identity == (0, 0) and cluster.inits == [(0, 0)]  # one epoch, not two

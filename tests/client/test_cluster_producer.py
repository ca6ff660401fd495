"""The Producer over a fake cluster: partitions chosen here, batches to leaders, retries in order."""

from __future__ import annotations

import random

import pytest
from fake_cluster import run_for, run_until
from test_producer_merge import Held
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import ClusterClient, Producer
from streamlog.partitioner import partition_for_key
from streamlog.testing import result_of


@pytest.fixture
def cluster_client_options():
    return {"seed": 11, "request_timeout": 2.0}


def results(ds):
    out = []
    for d in ds:
        box = []
        d.addBoth(box.append)
        assert box, "not settled"
        out.append(box[0])
    return out


def acked(ds):
    got = results(ds)
    bad = [r for r in got if isinstance(r, Failure)]
    assert not bad, bad[0]
    return got


def send_one(clock, cluster, producer, value, topic="t", partition=0):
    d = producer.send(topic, value, partition=partition)
    run_until(clock, cluster, lambda: d.called)
    return acked([d])[0]


def in_order(cluster, topic, partitions):
    """Each partition holds its messages in send order (the values are send numbers)."""
    for p in range(partitions):
        values = [v["n"] for v in cluster.values(topic, p)]
        assert values == sorted(values), f"partition {p} out of order: {values}"


def test_many_distinct_keys_fill_one_request_per_partition(clock, cluster, client):
    cluster.create_topic("k", 4)
    producer = Producer(client, linger_ms=5, batch_size=1000)
    ds = [producer.send("k", {"n": i}, key=f"key-{i}") for i in range(800)]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    placed = acked(ds)
    for i, (partition, offset) in enumerate(placed):
        assert partition == partition_for_key(f"key-{i}", 4)
        assert cluster.records("k", partition)[offset]["value"] == {"n": i}
    sends = cluster.sent("SendBatch")
    assert len(sends) == 4 and producer.requests_sent == 4  # 800 keys, one request per partition
    for node, params in sends:
        partitions = {m["partition"] for m in params["messages"]}
        assert len(partitions) == 1 and cluster.topics["k"][partitions.pop()].leader == node
    in_order(cluster, "k", 4)


def test_unkeyed_messages_stick_to_a_partition_per_batch_then_move_on(clock, cluster, client):
    cluster.create_topic("u", 3)
    producer = Producer(client, linger_ms=5, batch_size=10)
    ds = [producer.send("u", {"n": i}) for i in range(30)]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    placed = acked(ds)
    by_batch = [{p for p, _ in placed[i:i + 10]} for i in range(0, 30, 10)]
    assert all(len(b) == 1 for b in by_batch)  # a full batch on one partition
    assert len({next(iter(b)) for b in by_batch}) == 3  # and the next batch on the next one
    in_order(cluster, "u", 3)


def steady(clock, cluster, producer, topic, count, every=0.01, key=None, partition=None, change=None, at=None):
    """Send C{count} messages, one per C{every} seconds (calling C{change()} after C{at} of them)."""
    ds = []
    for i in range(count):
        ds.append(producer.send(topic, {"n": i}, key=key, partition=partition))
        if at is not None and i == at:
            change()
        clock.advance(every)
        cluster.pump()
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)
    return ds


def test_leader_moving_mid_stream_loses_and_reorders_nothing(clock, cluster, client):
    cluster.create_topic("t", 2, leaders=[1])
    producer = Producer(client, linger_ms=2, max_in_flight=8)
    ds = steady(clock, cluster, producer, "t", 300, partition=0, change=lambda: cluster.move_leader("t", 0, 2),
                at=150)
    placed = acked(ds)
    assert [o for _, o in placed] == list(range(300))  # every message once, offsets in send order
    assert [v["n"] for v in cluster.values("t", 0)] == list(range(300))
    nodes = [n for n, _ in cluster.sent("SendBatch")]
    assert nodes[0] == 1 and nodes[-1] == 2 and producer.retries >= 1 and producer.reordered == 0


def test_leader_moving_without_hints_refreshes_the_metadata_and_keeps_order(clock, cluster, client):
    cluster.hints = False
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=2)
    ds = steady(clock, cluster, producer, "t", 200, partition=0, change=lambda: cluster.move_leader("t", 0, 3),
                at=100)
    assert [o for _, o in acked(ds)] == list(range(200))
    assert [v["n"] for v in cluster.values("t", 0)] == list(range(200))
    assert len(cluster.sent("Metadata")) >= 2


def test_a_leader_that_dies_with_batches_in_flight(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
    first = [producer.send("t", {"n": i}, partition=0) for i in range(20)]
    run_until(clock, cluster, lambda: all(d.called for d in first))
    cluster.nodes[1].black_hole = True  # it reads the next batches but never answers...
    later = [producer.send("t", {"n": i}, partition=0) for i in range(20, 100)]
    run_for(clock, cluster, 0.1)
    assert len(cluster.nodes[1].swallowed) == 4  # four batches in flight at node 1
    cluster.kill(1)  # ...and dies; node 2 takes over
    cluster.move_leader("t", 0, 2)
    run_until(clock, cluster, lambda: all(d.called for d in later), limit=30)
    assert [o for _, o in acked(first + later)] == list(range(100))
    assert [v["n"] for v in cluster.values("t", 0)] == list(range(100))


def test_a_leader_dying_with_a_window_in_flight_is_resent_at_once_not_a_backoff_per_batch(clock, cluster, client):
    # The four batches in flight fail together when the leader's connection closes: one failure
    # of the partition, so the first resend goes at once (it was 0.4-0.8 s: a backoff of four).
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
    first = [producer.send("t", {"n": i}, partition=0) for i in range(20)]
    run_until(clock, cluster, lambda: all(d.called for d in first))
    cluster.nodes[1].black_hole = True
    later = [producer.send("t", {"n": i}, partition=0) for i in range(20, 100)]
    run_for(clock, cluster, 0.2)
    assert len(cluster.nodes[1].swallowed) == 4
    cluster.move_leader("t", 0, 2)  # elected already when the client asks
    cluster.kill(1)
    began = clock.seconds()
    run_until(clock, cluster, lambda: all(d.called for d in later), step=0.001, limit=30)
    assert clock.seconds() - began < 0.05
    assert [v["n"] for v in cluster.values("t", 0)] == list(range(100))


def test_after_the_first_resend_went_through_the_other_failed_batches_go_together_in_order(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
    first = [producer.send("t", {"n": i}, partition=0) for i in range(20)]
    run_until(clock, cluster, lambda: all(d.called for d in first))
    cluster.nodes[1].black_hole = True
    later = [producer.send("t", {"n": i}, partition=0) for i in range(20, 100)]
    run_for(clock, cluster, 0.2)
    assert len(cluster.nodes[1].swallowed) == 4
    new = cluster.nodes[2]

    def answer_the_first_only(params):
        new.black_hole = {"SendBatch"}  # it answers this one, then holds what comes next
        return None

    new.faults["SendBatch"] = answer_the_first_only
    cluster.move_leader("t", 0, 2)
    cluster.kill(1)
    run_for(clock, cluster, 0.05)
    assert [v["n"] for v in cluster.values("t", 0)] == list(range(40))  # the oldest resent alone
    assert len(new.swallowed) == 3  # then the other three together (not one round trip each)
    del new.faults["SendBatch"]
    new.black_hole = False  # the held three time out and go again
    run_until(clock, cluster, lambda: all(d.called for d in later), limit=30)
    assert [o for _, o in acked(first + later)] == list(range(100))
    assert [v["n"] for v in cluster.values("t", 0)] == list(range(100))


def test_batches_in_flight_behind_a_failed_one_go_again_after_it(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=1, batch_size=10, max_in_flight=8)
    send_one(clock, cluster, producer, {"n": -1})
    node = cluster.nodes[1]
    node.black_hole = True
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(50)]
    run_for(clock, cluster, 0.05)
    assert len(node.swallowed) == 5  # five pipelined batches at the leader
    node.black_hole = False
    cluster.move_leader("t", 0, 3)
    node.connections and [c.transport.loseConnection() for c in list(node.connections)]  # the old leader hangs up
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)
    assert [o for _, o in acked(ds)] == list(range(1, 51))
    assert [v["n"] for v in cluster.values("t", 0)] == [-1, *range(50)]
    assert producer.reordered == 0


def test_leader_not_available_storm_then_an_election(clock, cluster, client):
    cluster.create_topic("t", 2, leaders=[1])
    producer = Producer(client, linger_ms=2)
    for p in range(2):
        send_one(clock, cluster, producer, {"n": -1}, partition=p)
    cluster.move_leader("t", 0, None)
    cluster.move_leader("t", 1, None)
    ds = [producer.send("t", {"n": i}, key=f"k{i}") for i in range(40)]
    run_for(clock, cluster, 4.0)
    assert not any(d.called for d in ds)
    cluster.move_leader("t", 0, 2)
    cluster.move_leader("t", 1, 3)
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)
    for i, (partition, _) in enumerate(acked(ds)):
        assert partition == partition_for_key(f"k{i}", 2)
    in_order(cluster, "t", 2)
    assert len(cluster.sent("Metadata")) <= 4.5 / client.metadata_min_interval


def test_delivery_timeout_fails_the_messages_with_a_typed_error(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=1, delivery_timeout=3.0)
    send_one(clock, cluster, producer, {"n": 0})
    cluster.move_leader("t", 0, None)
    t0 = clock.seconds()
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(1, 6)]
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=10)
    failures = results(ds)
    assert all(isinstance(f, Failure) and f.check(errors.DeliveryTimeout) for f in failures)
    e = failures[0].value
    assert e.code == "DELIVERY_TIMEOUT" and isinstance(e, errors.Timeout)
    assert e.details["last_error"]["code"] == "LEADER_NOT_AVAILABLE" and e.details["sent"] is False
    assert 3.0 <= clock.seconds() - t0 <= 3.1
    assert producer.pending == 0 and result_of(producer.flush()) is None


def test_a_refusal_followed_by_a_success_at_the_same_node_is_reported_as_reordered(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=0, batch_size=1, max_in_flight=4, idempotent=False)
    send_one(clock, cluster, producer, {"n": -1})
    refused = []

    def refuse_once(params):
        if not refused:
            refused.append(params)
            return errors.NotLeader("not the leader for a moment", topic="t", partition=0, leader=None,
                                    leader_address=None, leader_term=None)
        return None

    cluster.nodes[1].faults["SendBatch"] = refuse_once
    with capturedLogs() as events:
        ds = [producer.send("t", {"n": i}, partition=0) for i in range(3)]  # three requests, pipelined
        run_until(clock, cluster, lambda: all(d.called for d in ds))
    acked(ds)
    assert [v["n"] for v in cluster.values("t", 0)] == [-1, 1, 2, 0]
    assert producer.reordered == 2  # two batches landed ahead of the refused one
    assert [e for e in events if "those will land after it" in formatEvent(e)]


def test_an_idempotent_producer_keeps_the_order_a_refusal_would_break(clock, cluster, client):
    # The same refusal as above: the batches behind the refused one are refused in turn
    # (OUT_OF_ORDER_SEQUENCE: their predecessor is missing) and go again after it, in order.
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=0, batch_size=1, max_in_flight=4)
    send_one(clock, cluster, producer, {"n": -1})
    refused = []

    def refuse_once(params):
        if not refused:
            refused.append(params)
            return errors.NotLeader("not the leader for a moment", topic="t", partition=0, leader=None,
                                    leader_address=None, leader_term=None)
        return None

    cluster.nodes[1].faults["SendBatch"] = refuse_once
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(3)]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    assert acked(ds) == [(0, 1), (0, 2), (0, 3)]
    assert [v["n"] for v in cluster.values("t", 0)] == [-1, 0, 1, 2]
    assert producer.reordered == 0 and producer.retries >= 3


def test_one_in_flight_per_partition_rules_reordering_out(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=0, batch_size=1, max_in_flight=4, max_in_flight_per_partition=1)
    send_one(clock, cluster, producer, {"n": -1})
    refused = []

    def refuse_once(params):
        if not refused:
            refused.append(params)
            return errors.NotLeader("not the leader for a moment", topic="t", partition=0, leader=None,
                                    leader_address=None, leader_term=None)
        return None

    cluster.nodes[1].faults["SendBatch"] = refuse_once
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(3)]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    acked(ds)
    assert [v["n"] for v in cluster.values("t", 0)] == [-1, 0, 1, 2]
    assert producer.reordered == 0


def test_a_topic_nobody_knows_is_created_by_its_first_batch_then_partitioned_here(clock, cluster, client):
    producer = Producer(client, linger_ms=1, idempotent=False)
    ds = [producer.send("new", {"n": i}, key=f"k{i % 3}") for i in range(12)]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    acked(ds)
    first_node, first = cluster.sent("SendBatch")[0]
    assert all("partition" not in m for m in first["messages"])  # the server placed the first request
    assert {m["key"] for m in first["messages"]} == {"k0"}  # one routing class
    rest = cluster.sent("SendBatch")[1:]
    assert rest and all("partition" in m for _, p in rest for m in p["messages"])
    in_order(cluster, "new", 1)


def test_an_idempotent_producer_has_a_topic_nobody_knows_created_then_partitions_and_numbers_every_batch(
        clock, cluster, client):
    producer = Producer(client, linger_ms=1)
    ds = [producer.send("new", {"n": i}, key=f"k{i % 3}") for i in range(12)]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    acked(ds)
    assert [p for _, p in cluster.sent("CreateTopic")] == [{"topic": "new", "auto_create": True}]
    sent = cluster.sent("SendBatch")
    assert sent and all("partition" in m for _, p in sent for m in p["messages"])
    assert all(p["producer_id"] == producer.identity[0] for _, p in sent)
    in_order(cluster, "new", 1)


def test_a_topic_that_cannot_be_created_fails_its_messages(clock, cluster, client):
    cluster.auto_create = False
    producer = Producer(client, linger_ms=1)
    ds = [producer.send("absent", {"n": i}) for i in range(5)]
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    assert all(isinstance(r, Failure) and r.check(errors.UnknownTopic) for r in results(ds))
    assert producer.pending == 0


def test_flush_waits_for_messages_whose_topic_was_being_looked_up(clock, cluster, client):
    cluster.create_topic("t", 2)
    producer = Producer(client, linger_ms=1000)
    ds = [producer.send("t", {"n": i}) for i in range(5)]
    flushed = producer.flush()
    run_until(clock, cluster, lambda: flushed.called)
    assert all(d.called for d in ds)
    later = producer.send("t", {"n": 5})
    again = producer.flush()
    assert not again.called  # not before the new message is settled
    run_until(clock, cluster, lambda: again.called)
    assert later.called


def test_closing_the_client_fails_what_waits_in_the_producer(clock, cluster):
    client = ClusterClient(cluster.bootstrap, clock=clock, endpoint_factory=cluster.endpoint, rng=random.Random(1))
    cluster.create_topic("t", 1)
    cluster.move_leader("t", 0, None)
    producer = Producer(client, linger_ms=1)
    ds = [producer.send("t", {"n": i}) for i in range(3)]
    run_for(clock, cluster, 1.0)
    d = client.close()
    cluster.pump()
    result_of(d)
    assert all(isinstance(r, Failure) and r.check(errors.ConnectionLost) for r in results(ds))
    assert isinstance(results([producer.send("t", 1)])[0], Failure)


def test_no_batch_goes_to_a_new_leader_while_earlier_ones_are_in_flight_at_the_old_one(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=1, batch_size=10)
    send_one(clock, cluster, producer, {"n": -1})
    cluster.nodes[1].black_hole = {"SendBatch"}  # appends nothing, answers nothing: a stalled partition
    early = [producer.send("t", {"n": i}, partition=0) for i in range(20)]
    run_for(clock, cluster, 0.05)
    assert len(cluster.nodes[1].swallowed) == 2  # in flight at node 1
    cluster.move_leader("t", 0, 2)
    refreshed = client.refresh_metadata()  # e.g. another partition's error, or the periodic refresh
    run_until(clock, cluster, lambda: refreshed.called)
    assert client.view.leader("t", 0).node_id == 2
    later = [producer.send("t", {"n": i}, partition=0) for i in range(20, 30)]
    run_for(clock, cluster, 0.2)
    assert cluster.sent("SendBatch")[-1][0] == 1  # the later batch waits: nothing went to node 2 yet
    cluster.kill(1)
    run_until(clock, cluster, lambda: all(d.called for d in early + later), limit=30)
    assert [o for _, o in acked(early + later)] == list(range(1, 31))
    assert [v["n"] for v in cluster.values("t", 0)] == [-1, *range(30)]


class GatedRoutes:
    """Routes that wait, as for a metadata fetch, until L{open} answers them (in send order)."""

    def __init__(self, client):
        self.client = client
        self.real = client.leader_target
        self.waiting = []
        client.leader_target = self.gate

    def gate(self, topic, partition):
        d = Deferred()
        self.waiting.append((topic, partition, d))
        return d

    def open(self, count=None, which=None):
        """Answer the first C{count} routes waiting (all by default), or those at the indexes
        C{which}, from the client's metadata now."""
        if which is None:
            which = range(len(self.waiting) if count is None else count)
        now = [self.waiting[i] for i in which]
        self.waiting = [w for i, w in enumerate(self.waiting) if i not in which]
        if not self.waiting:
            self.client.leader_target = self.real
        for topic, partition, d in now:
            self.real(topic, partition).chainDeferred(d)


def moved_while_routing(clock, cluster, client, producer, first_settled):
    """Batch X (0-2) in flight at node 1, batches A (3-5) and B (6-8) waiting for their routes
    when the leader moves to node 2 (X answered first if C{first_settled}, else still in flight)."""
    cluster.create_topic("t", 1, leaders=[1])
    send_one(clock, cluster, producer, -1)
    held = Held(cluster.nodes[1]) if first_settled else None
    if not first_settled:
        cluster.nodes[1].black_hole = {"SendBatch"}  # written to node 1, never answered
    x = [producer.send("t", i, partition=0) for i in range(3)]
    run_for(clock, cluster, 0.05)
    routes = GatedRoutes(client)
    ab = [producer.send("t", i, partition=0) for i in range(3, 9)]
    run_for(clock, cluster, 0.05)
    assert len(routes.waiting) == 2
    if held is not None:
        held.release()
        run_until(clock, cluster, lambda: all(d.called for d in x))
    cluster.move_leader("t", 0, 2)
    refreshed = client.refresh_metadata()
    run_until(clock, cluster, lambda: refreshed.called)
    return x + ab, routes


@pytest.mark.parametrize("idempotent", [False, True])
def test_batches_put_back_for_a_new_leader_go_there_in_send_order(clock, cluster, client, idempotent):
    producer = Producer(client, linger_ms=1, batch_size=3, idempotent=idempotent)
    ds, routes = moved_while_routing(clock, cluster, client, producer, first_settled=False)
    routes.open()  # both name node 2 while X is in flight at node 1: both are put back, A first
    queue = producer._topics["t"].queues[0]
    assert [b.messages[0] for b in queue.ready] == [b'{"value":3,"partition":0}', b'{"value":6,"partition":0}']
    cluster.kill(1)
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)
    # Before: B was put back in front of A, written first: [-1, 0, 1, 2, 6, 7, 8, 3, 4, 5] and reordered == 0
    # without idempotence; with it an OUT_OF_ORDER_SEQUENCE refusal of B, and B again.
    assert cluster.values("t", 0) == [-1, *range(9)]
    assert [o for _, o in acked(ds)] == list(range(1, 10))
    assert [[m["value"] for m in p["messages"]] for n, p in cluster.sent("SendBatch") if n == 2] == [
        [0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert producer.retries == 1 and producer.reordered == 0


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_batch_routed_after_the_old_leaders_answers_does_not_pass_the_one_put_back(clock, cluster, client,
                                                                                    idempotent):
    producer = Producer(client, linger_ms=1, batch_size=3, idempotent=idempotent)
    ds, routes = moved_while_routing(clock, cluster, client, producer, first_settled=True)
    routes.open(1)  # A names node 2 while B's route is pending: A is put back
    queue = producer._topics["t"].queues[0]
    assert len(queue.ready) == 1 and queue.draining
    routes.open()  # B names node 2 with nothing else in flight: it must not go ahead of A
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)
    # Before: B was written at once, A after its answer: [-1, 0, 1, 2, 6, 7, 8, 3, 4, 5] without
    # idempotence; with it an OUT_OF_ORDER_SEQUENCE refusal of B first.
    assert cluster.values("t", 0) == [-1, *range(9)]
    assert [o for _, o in acked(ds)] == list(range(1, 10))
    assert [[m["value"] for m in p["messages"]] for n, p in cluster.sent("SendBatch") if n == 2] == [
        [3, 4, 5], [6, 7, 8]]
    assert producer.retries == 0 and producer.reordered == 0 and not queue.draining


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_batch_put_back_goes_before_a_later_one_that_failed_at_the_old_leader(clock, cluster, client,
                                                                               idempotent):
    producer = Producer(client, linger_ms=1, batch_size=3, idempotent=idempotent)
    cluster.create_topic("t", 1, leaders=[1])
    send_one(clock, cluster, producer, -1)
    cluster.nodes[1].black_hole = {"SendBatch"}
    routes = GatedRoutes(client)
    ds = [producer.send("t", i, partition=0) for i in range(6)]  # batches A (0-2) and B (3-5)
    run_for(clock, cluster, 0.05)
    assert len(routes.waiting) == 2
    routes.open(which=[1])  # B's route first: written to node 1 (which answers nothing)
    cluster.move_leader("t", 0, 2)
    refreshed = client.refresh_metadata()
    run_until(clock, cluster, lambda: refreshed.called)
    routes.open()  # A names node 2 while B is in flight at node 1: A is put back
    queue = producer._topics["t"].queues[0]
    assert len(queue.ready) == 1 and queue.ready[0].taken
    cluster.kill(1)  # B fails (may heal): it is sent again, after A
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)
    # Before: B went to the retry list, A stayed in queue.ready behind it: [-1, 3, 4, 5, 0, 1, 2]
    # without idempotence; with it nothing settled within 30 s (B refused OUT_OF_ORDER_SEQUENCE, A behind it).
    assert cluster.values("t", 0) == [-1, *range(6)]
    assert [o for _, o in acked(ds)] == list(range(1, 7))
    assert [[m["value"] for m in p["messages"]] for n, p in cluster.sent("SendBatch") if n == 2] == [
        [0, 1, 2], [3, 4, 5]]


def test_a_batch_behind_a_failed_one_that_was_never_written_is_taken_back(clock, cluster):
    client = ClusterClient(cluster.bootstrap, clock=clock, endpoint_factory=cluster.endpoint, rng=random.Random(2),
                           request_timeout=1.0)
    cluster.create_topic("t", 1, leaders=[3])
    cluster.nodes[3].connect_delay = 1.2  # the leader's connection takes longer than a request may wait
    producer = Producer(client, linger_ms=0, batch_size=1, delivery_timeout=30)
    first = producer.send("t", {"n": 0}, partition=0)
    run_for(clock, cluster, 0.5)
    second = producer.send("t", {"n": 1}, partition=0)  # waits for the connection behind the first
    run_until(clock, cluster, lambda: first.called and second.called, limit=10)
    assert [o for _, o in acked([first, second])] == [0, 1]
    assert [v["n"] for v in cluster.values("t", 0)] == [0, 1]
    assert producer.reordered == 0
    d = client.close()
    cluster.pump()
    result_of(d)


def test_a_topic_re_created_with_more_partitions_is_learnt_again(clock, cluster, client):
    cluster.create_topic("t", 2)
    producer = Producer(client, linger_ms=1)
    first = [producer.send("t", {"n": i}, key=f"k{i}") for i in range(20)]
    run_until(clock, cluster, lambda: all(d.called for d in first))
    acked(first)
    del cluster.topics["t"]
    cluster.create_topic("t", 5)  # the same name, more partitions
    lost = [producer.send("t", {"n": i}, partition=4) for i in range(3)]  # partition 4: unknown to the old info
    assert all(isinstance(r, Failure) and r.check(errors.UnknownPartition) for r in results(lost))
    leader = cluster.nodes[cluster.topics["t"][1].leader]
    leader.faults["SendBatch"] = lambda params: errors.UnknownPartition("not that topic any more", topic="t",
                                                                        partitions=5)
    refused = producer.send("t", {"n": 0}, partition=1)  # the server refuses: the Producer learns it again
    run_until(clock, cluster, lambda: refused.called)
    assert isinstance(results([refused])[0], Failure)
    leader.faults.clear()
    later = [producer.send("t", {"n": i}, key=f"k{i}") for i in range(20)]
    run_until(clock, cluster, lambda: all(d.called for d in later))
    for i, (partition, _) in enumerate(acked(later)):
        assert partition == partition_for_key(f"k{i}", 5)


@pytest.mark.parametrize("value, key, headers", [
    ("x" * 10, None, None), ({"a": [1, 2.5, None]}, "k\u00e9\"\\", None), (None, "", None),
    ([], "u", {"h": "v"}), ("\u2028", None, {}),
])
def test_messages_are_encoded_as_their_dicts_would_be(value, key, headers):
    import orjson

    from streamlog.client import requests
    from streamlog.client.producer import _encode

    assert _encode(value, key, 7, headers) == orjson.dumps(requests.message(value, key, 7, headers))


def test_a_batch_failed_after_an_attempt_that_may_have_landed_is_never_reported_as_not_stored(clock, cluster):
    client = ClusterClient(cluster.bootstrap, clock=clock, endpoint_factory=cluster.endpoint, rng=random.Random(3),
                           request_timeout=2.0)
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=1)
    send_one(clock, cluster, producer, {"n": 0})
    cluster.nodes[1].black_hole = {"SendBatch"}  # the leader reads the batch and never answers
    d = producer.send("t", {"n": 1}, partition=0)
    run_for(clock, cluster, 0.2)
    assert cluster.nodes[1].swallowed  # written: it may be stored
    cluster.move_leader("t", 0, None)  # then an election: the resends are refused
    run_for(clock, cluster, 4.0)
    assert not d.called
    closed = client.close()
    cluster.pump()
    result_of(closed)
    [failure] = results([d])
    assert failure.check(errors.ConnectionLost)
    assert failure.value.details["maybe_appended"] is True and failure.value.details["sent"] is True

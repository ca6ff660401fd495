"""A node the client lost comes back: the client dials it as soon as the cluster says so.

After a node's death the client's connection to it backs off (up to
C{reconnect_max}, 10 s).  When the node returns and the planner hands its
partitions back, a Metadata answer or a NOT_LEADER hint says so: the client
dials at once (one attempt per node at a time) and what is routed there waits
for that attempt instead of failing "cannot connect ... was not sent" until
the backoff is over.  A node that stays down is not dialled in a storm, and a
connection nothing needs stops dialling after C{idle_dial_limit} attempts.
"""

from __future__ import annotations

import pytest
from fake_cluster import close_client, cluster_client, outcomes, run_for, run_until
from twisted.python.failure import Failure

from streamlog.client import Producer
from streamlog.client.cluster import DEFAULT_IDLE_DIAL_LIMIT


@pytest.fixture
def client(clock, cluster):
    c = cluster_client(clock, cluster, seed=3, request_timeout=5.0)
    yield c
    close_client(c, cluster)


def attempts_at(cluster, node_id, since=0.0):
    return [t for n, t in cluster.attempts if n == node_id and t >= since]


def acked(ds):
    got = outcomes(ds)
    bad = [r for r in got if isinstance(r, Failure)]
    assert not bad, bad[0]
    return got


def send(clock, cluster, producer, n):
    d = producer.send("t", {"n": n}, partition=0)
    run_until(clock, cluster, lambda: d.called, limit=30.0)
    acked([d])
    return clock.seconds()


def lose_node_1(clock, cluster, producer):
    """Partition 0 led by node 1, which dies; node 2 leads it while node 1 is down for 12 s."""
    cluster.create_topic("t", 1, leaders=[1])
    send(clock, cluster, producer, 0)
    cluster.kill(1)
    cluster.move_leader("t", 0, 2)
    send(clock, cluster, producer, 1)
    run_for(clock, cluster, 12.0, step=0.05)  # the connection to node 1 backs off meanwhile
    cluster.revive(1)


def test_leadership_back_at_a_restarted_node_is_acknowledged_without_waiting_out_the_backoff(clock, cluster,
                                                                                           client):
    producer = Producer(client, linger_ms=1, delivery_timeout=30.0)
    lose_node_1(clock, cluster, producer)
    run_for(clock, cluster, 0.3, step=0.05)
    cluster.move_leader("t", 0, 1)  # the planner hands it back (preferred leader)
    moved = clock.seconds()
    acked_at = send(clock, cluster, producer, 2)  # to node 2 first: NOT_LEADER with node 1 as the hint
    assert acked_at - moved < 0.1, f"acknowledged {acked_at - moved:.2f}s after the move"
    assert [v["n"] for v in cluster.values("t", 0)] == [0, 1, 2]
    assert cluster.sent("SendBatch")[-1][0] == 1


def test_a_metadata_answer_saying_a_node_leads_again_dials_it_at_once(clock, cluster, client):
    producer = Producer(client, linger_ms=1, delivery_timeout=30.0)
    lose_node_1(clock, cluster, producer)
    cluster.move_leader("t", 0, 1)
    before = len(attempts_at(cluster, 1))
    fetched = client.refresh_metadata()
    cluster.pump()
    assert fetched.called
    # The answer names node 1 as partition 0's leader in a newer term: dialled now, not at the
    # end of its backoff (by then up to reconnect_max, 10 s, away).
    assert len(attempts_at(cluster, 1)) == before + 1
    assert client.connections["10.0.0.1:7070"].connected


def test_a_node_still_down_is_not_dialled_once_per_request(clock, cluster, client):
    producer = Producer(client, linger_ms=1, delivery_timeout=30.0)
    cluster.create_topic("t", 1, leaders=[1])
    send(clock, cluster, producer, 0)
    cluster.kill(1)
    cluster.nodes[1].up = True  # the others' metadata still call it up...
    cluster.nodes[1].refuse = True
    start = clock.seconds()
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(1, 50)]
    run_for(clock, cluster, 2.0, step=0.01)
    cluster.move_leader("t", 0, 2)
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30.0)
    acked(ds)
    # Backoff paces the dials (0.1, 0.2, 0.4, 0.8 s... with jitter), however many requests wait.
    assert len(attempts_at(cluster, 1, since=start)) <= 6


def test_an_unused_connection_to_a_dead_node_stops_dialling_after_the_idle_limit(clock, cluster):
    client = cluster_client(clock, cluster, seed=3, request_timeout=5.0, idle_dial_limit=4)
    try:
        producer = Producer(client, linger_ms=1, delivery_timeout=30.0)
        cluster.create_topic("t", 1, leaders=[1])
        send(clock, cluster, producer, 0)
        killed = clock.seconds()
        cluster.kill(1)
        cluster.move_leader("t", 0, 2)
        send(clock, cluster, producer, 1)
        run_for(clock, cluster, 120.0, step=0.5)
        assert len(attempts_at(cluster, 1, since=killed)) == 4
        # Back, and leading again: the next Metadata answer dials it.
        cluster.revive(1)
        cluster.move_leader("t", 0, 1)
        moved = clock.seconds()
        at = send(clock, cluster, producer, 2)
        assert at - moved < 0.1
        assert cluster.sent("SendBatch")[-1][0] == 1
        assert len(attempts_at(cluster, 1, since=killed)) == 5
    finally:
        close_client(client, cluster)


def test_a_hint_naming_a_dead_node_is_bounded(clock, cluster):
    """NOT_LEADER with a hint of a node that is down: the client tries it, then asks the
    metadata, and the connection does not redial for ever once nothing needs it."""
    client = cluster_client(clock, cluster, seed=3, request_timeout=5.0)  # the default idle_dial_limit
    try:
        producer = Producer(client, linger_ms=1, delivery_timeout=30.0)
        cluster.create_topic("t", 1, leaders=[2])
        send(clock, cluster, producer, 0)
        cluster.kill(3)
        # Node 2's hint says node 3 leads (it led for a moment before dying); the metadata says
        # so too for a while, then the partition moves back to node 2.
        cluster.move_leader("t", 0, 3)
        d = producer.send("t", {"n": 1}, partition=0)
        run_for(clock, cluster, 1.0)
        cluster.move_leader("t", 0, 2)
        run_until(clock, cluster, lambda: d.called, limit=30.0)
        acked([d])
        acked_at = clock.seconds()
        run_for(clock, cluster, 300.0, step=0.5)
        assert len(attempts_at(cluster, 3, since=acked_at)) <= DEFAULT_IDLE_DIAL_LIMIT
    finally:
        close_client(client, cluster)

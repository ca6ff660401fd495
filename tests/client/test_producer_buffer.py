"""The Producer's bound on buffered messages (buffer_bytes, max_block), over a fake cluster and a Clock."""

from __future__ import annotations

import pytest
from fake_cluster import run_for, run_until
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import Producer
from streamlog.client.producer import DEFAULT_BUFFER_BYTES, DEFAULT_MAX_BLOCK

#: Small enough that a few dozen messages fill it (each {"value":{"n":i},"partition":0} is ~35 bytes).
BOUND = 1024


@pytest.fixture
def cluster_client_options():
    return {"seed": 3, "request_timeout": 2.0}


def outcome(d):
    """C{d}'s result so far (None if none); a result stays in C{d}, a failure is taken (handled)."""
    box = []
    d.addBoth(lambda r: box.append(r) or (None if isinstance(r, Failure) else r))
    return box[0] if box else None


def stalled(cluster, client, **kw):
    """A Producer of t/0 whose leader is gone (an election is on): nothing it sends settles."""
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=1, max_request_bytes=BOUND, buffer_bytes=BOUND, **kw)
    return producer


def test_defaults_are_kafkas_and_the_buffer_holds_every_request():
    assert DEFAULT_BUFFER_BYTES == 32 * 1024 * 1024 and DEFAULT_MAX_BLOCK == 60.0
    with pytest.raises(ValueError, match="buffer_bytes"):
        Producer(object(), max_request_bytes=2048, buffer_bytes=1024)
    with pytest.raises(ValueError, match="max_block"):
        Producer(object(), max_block=-1)


def test_sends_past_the_bound_wait_then_go_in_order_once_acks_make_room(clock, cluster, client):
    producer = stalled(cluster, client)
    first = producer.send("t", {"n": -1}, partition=0)
    run_until(clock, cluster, lambda: first.called)  # the metadata is known: the hot path from now on
    cluster.move_leader("t", 0, None)
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(200)]
    run_for(clock, cluster, 3.0)
    assert producer.buffered <= BOUND
    assert 0 < producer.blocked_sends < 200 and not any(d.called for d in ds)
    assert producer.pending == 200
    cluster.move_leader("t", 0, 2)
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)
    assert [outcome(d) for d in ds] == [(0, i + 1) for i in range(200)]  # every one, in send order
    assert [r["value"]["n"] for r in cluster.records("t", 0)] == list(range(-1, 200))
    assert producer.buffered == 0 and producer.pending == 0 and producer.buffer_full == 0


def test_a_send_that_waits_longer_than_max_block_fails_with_buffer_full(clock, cluster, client):
    producer = stalled(cluster, client, max_block=2.0)
    first = producer.send("t", {"n": -1}, partition=0)
    run_until(clock, cluster, lambda: first.called)
    cluster.move_leader("t", 0, None)
    t0 = clock.seconds()
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(100)]
    accepted = 100 - producer.blocked_sends
    run_until(clock, cluster, lambda: any(d.called for d in ds), limit=10)
    assert 2.0 <= clock.seconds() - t0 <= 2.05
    got = [outcome(d) for d in ds]
    assert got[:accepted] == [None] * accepted  # in the buffer: they wait for the leader
    refused = got[accepted:]
    assert all(isinstance(f, Failure) and f.check(errors.BufferFull) for f in refused)
    e = refused[0].value
    assert e.code == "BUFFER_FULL" and e.details["sent"] is False and e.details["buffer_bytes"] == BOUND
    assert e.details["max_block"] == 2.0 and "max_block=2s" in e.message
    assert producer.buffer_full == 100 - accepted and producer.pending == accepted
    cluster.move_leader("t", 0, 2)
    flushed = producer.flush()
    run_until(clock, cluster, lambda: flushed.called, limit=30)
    assert [outcome(d) for d in ds[:accepted]] == [(0, i + 1) for i in range(accepted)]
    assert producer.buffered == 0


def test_a_small_send_does_not_overtake_one_waiting_for_room(clock, cluster, client):
    producer = stalled(cluster, client)
    first = producer.send("t", {"n": -1}, partition=0)
    run_until(clock, cluster, lambda: first.called)
    cluster.move_leader("t", 0, None)
    big = [producer.send("t", {"n": i, "pad": "x" * 400}, partition=0) for i in range(3)]
    assert producer.blocked_sends == 1  # the third one does not fit
    small = producer.send("t", {"n": 3}, partition=0)  # it would fit, but waits behind the big one
    assert producer.blocked_sends == 2
    cluster.move_leader("t", 0, 2)
    run_until(clock, cluster, lambda: small.called, limit=30)
    assert [outcome(d) for d in [*big, small]] == [(0, 1), (0, 2), (0, 3), (0, 4)]


def test_when_room_fires_once_nothing_waits(clock, cluster, client):
    producer = stalled(cluster, client)
    first = producer.send("t", {"n": -1}, partition=0)
    run_until(clock, cluster, lambda: first.called)
    assert producer.when_room().called
    cluster.move_leader("t", 0, None)
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(60)]
    room = producer.when_room()
    run_for(clock, cluster, 2.0)
    assert not room.called
    cluster.move_leader("t", 0, 2)
    run_until(clock, cluster, lambda: room.called, limit=30)
    assert outcome(room) is None and producer.buffered < BOUND
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)


def test_messages_for_a_topic_not_known_yet_count_and_wait_too(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    cluster.move_leader("t", 0, None)
    producer = Producer(client, linger_ms=1, max_request_bytes=BOUND, buffer_bytes=BOUND)
    ds = [producer.send("t", {"n": i}) for i in range(100)]  # the producer knows no partitions yet
    assert 0 < producer.blocked_sends < 100 and producer.buffered <= BOUND
    run_for(clock, cluster, 3.0)
    assert producer.buffered <= BOUND and not any(d.called for d in ds)
    cluster.move_leader("t", 0, 2)
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)
    assert [outcome(d) for d in ds] == [(0, i) for i in range(100)]
    assert producer.buffered == 0 and producer.pending == 0


def test_closing_the_client_fails_the_sends_waiting_for_room(clock, cluster, client):
    producer = stalled(cluster, client)
    first = producer.send("t", {"n": -1}, partition=0)
    run_until(clock, cluster, lambda: first.called)
    cluster.move_leader("t", 0, None)
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(60)]
    room = producer.when_room()
    d = client.close()
    cluster.pump()
    assert outcome(d) is None
    assert all(isinstance(outcome(x), Failure) for x in [*ds, room])
    assert producer.pending == 0 and producer.buffered == 0


def test_when_room_fires_once_the_waiting_sends_failed(clock, cluster, client):
    producer = stalled(cluster, client, max_block=1.0)
    first = producer.send("t", {"n": -1}, partition=0)
    run_until(clock, cluster, lambda: first.called)
    cluster.move_leader("t", 0, None)
    ds = [producer.send("t", {"n": i}, partition=0) for i in range(60)]
    producer.send("t", {"n": 60}, partition=0).addErrback(lambda f: None)
    room = producer.when_room()
    assert not room.called
    # The waiting sends fail at max_block; the buffer is below its bound: there is room again.
    run_until(clock, cluster, lambda: room.called, limit=5)
    assert producer.buffer_full == producer.blocked_sends and producer.buffered < BOUND
    cluster.move_leader("t", 0, 2)
    run_until(clock, cluster, lambda: all(d.called for d in ds), limit=30)
    for d in ds:
        d.addErrback(lambda f: None)

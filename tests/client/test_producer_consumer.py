"""Producer batching and per-message offsets; Consumer position and prefetch (Broker on iosim)."""

from __future__ import annotations

import random

import pytest
from client_support import failure_of, result_of, run_until, settle

from streamlog import errors
from streamlog.client import ClientProtocol, ClusterClient, Consumer, Producer, StreamlogClient
from streamlog.partitioner import partition_for_key
from streamlog.testing import stored_records


@pytest.fixture
def client(network, clock):
    c = StreamlogClient(network, clock=clock, rng=random.Random(3), reconnect_min=0.1, reconnect_max=1.0)
    network.pump()
    yield c
    d = c.close()
    network.pump()
    result_of(d)


def got(network, clock, d):
    return result_of(settle(clock, network, d))


def values(network, topic, partition=0):
    return stored_records(network.broker, topic, partition)


def test_many_sends_become_few_batches_with_exact_offsets(network, clock, client):
    got(network, clock, client.create_topic("t", partitions=1))
    producer = Producer(client, linger_ms=5, batch_size=100, max_in_flight=4)
    ds = [producer.send("t", {"n": i}) for i in range(250)]
    run_until(clock, network, lambda: all(d.called for d in ds))
    assert [result_of(d) for d in ds] == [(0, i) for i in range(250)]
    assert producer.requests_sent == 3  # 100 + 100 + 50
    stored = values(network, "t", 0)
    assert [r["value"]["n"] for r in stored] == list(range(250))


def test_batches_are_cut_by_bytes_to_stay_under_the_request_limit(network, clock, client):
    got(network, clock, client.create_topic("t", partitions=1))
    producer = Producer(client, linger_ms=5, batch_size=1000, max_request_bytes=10_000)
    ds = [producer.send("t", "x" * 2000) for i in range(12)]  # 24 KB of messages
    run_until(clock, network, lambda: all(d.called for d in ds))
    assert [result_of(d) for d in ds] == [(0, i) for i in range(12)]
    assert producer.requests_sent == 3  # at most four 2 KB messages per 10 KB request
    assert len(values(network, "t", 0)) == 12


def test_batches_filled_to_the_line_limit_are_accepted_by_the_server(network, clock, client):
    got(network, clock, client.create_topic("t", partitions=1))
    producer = Producer(client, linger_ms=5)  # max_request_bytes = the server's default line limit
    ds = [producer.send("t", "x" * 990_000)] + [producer.send("t", "y" * 1000) for _ in range(60)]
    run_until(clock, network, lambda: all(d.called for d in ds))
    assert [result_of(d)[1] for d in ds] == list(range(61))
    assert producer.requests_sent == 2  # cut where the next message would pass the line limit


def test_a_message_larger_than_a_request_fails_alone(network, clock, client):
    got(network, clock, client.create_topic("t", partitions=1))
    producer = Producer(client, linger_ms=5, max_request_bytes=1000)
    small = producer.send("t", "ok")
    big = producer.send("t", "x" * 2000)
    assert failure_of(big).value.code == "MESSAGE_TOO_LARGE"
    run_until(clock, network, lambda: small.called)
    assert result_of(small) == (0, 0)


def test_keyed_and_explicit_partition_sends_get_their_own_offsets(network, clock, client):
    got(network, clock, client.create_topic("t", partitions=4))
    producer = Producer(client, linger_ms=1)
    keys = [f"user-{i % 7}" for i in range(40)]
    keyed = [producer.send("t", i, key=k) for i, k in enumerate(keys)]
    explicit = [producer.send("t", f"p{i}", partition=3) for i in range(5)]
    unkeyed = [producer.send("t", f"u{i}") for i in range(6)]
    flushed = producer.flush()
    got(network, clock, flushed)
    for i, (d, k) in enumerate(zip(keyed, keys)):
        partition, offset = result_of(d)
        assert partition == partition_for_key(k, 4)
        assert network.broker.topic("t").partitions[partition].log is not None
        record = [r for r in values(network, "t", partition) if r["offset"] == offset][0]
        assert record["value"] == i and record["key"] == k
    for i, d in enumerate(explicit):
        partition, offset = result_of(d)
        record = [r for r in values(network, "t", 3) if r["offset"] == offset][0]
        assert partition == 3 and record["value"] == f"p{i}"
    placed = [result_of(d) for d in unkeyed]
    assert len({p for p, _ in placed}) == 1  # one sticky partition per request
    offsets = [o for _, o in placed]
    assert offsets == list(range(offsets[0], offsets[0] + 6))
    # offsets on each partition are dense and follow send order
    for p in range(4):
        assert [r["offset"] for r in values(network, "t", p)] == list(range(len(values(network, "t", p))))


def test_max_in_flight_bounds_outstanding_requests(network, clock, client, monkeypatch):
    got(network, clock, client.create_topic("t", partitions=1))
    outstanding = []
    real = ClientProtocol.request

    def request(proto, method, params=None, **kw):
        if method == "SendBatch":
            outstanding.append(1 + sum(1 for p in proto._pending.values() if p.method == "SendBatch"))
        return real(proto, method, params, **kw)

    monkeypatch.setattr(ClientProtocol, "request", request)
    producer = Producer(client, linger_ms=0, batch_size=1, max_in_flight=2)
    ds = [producer.send("t", i) for i in range(6)]
    run_until(clock, network, lambda: all(d.called for d in ds))
    assert len(outstanding) == 6 and max(outstanding) == 2
    assert [result_of(d)[1] for d in ds] == list(range(6))


def test_flush_with_nothing_pending_fires_at_once(client):
    producer = Producer(client)
    assert result_of(producer.flush()) is None


def test_failed_batch_fails_each_message(network, clock, client):
    producer = Producer(client, linger_ms=0)
    d = producer.send("bad topic!", 1)
    run_until(clock, network, lambda: d.called)
    assert failure_of(d).check(errors.InvalidTopic)
    assert producer.pending == 0


def test_messages_in_flight_when_the_connection_drops_are_sent_again_in_order(network, clock, client):
    got(network, clock, client.create_topic("t", partitions=1))
    producer = Producer(client, linger_ms=0, idempotent=False)
    got(network, clock, producer.send("t", "first"))
    ds = [producer.send("t", i) for i in range(3)]
    clock.advance(0)  # the batch is written
    network.drop()
    run_until(clock, network, lambda: all(d.called for d in ds))
    # The server had appended them before the drop; the Producer cannot know, and resends:
    # everything is there, in order, the batch twice (idempotence is off).
    assert [result_of(d)[1] for d in ds] == [4, 5, 6]
    assert [r["value"] for r in values(network, "t")] == ["first", 0, 1, 2, 0, 1, 2]
    assert producer.retries == 1


def test_an_idempotent_resend_after_the_connection_drops_is_answered_with_the_original_offsets(
        network, clock, client):
    got(network, clock, client.create_topic("t", partitions=1))
    producer = Producer(client, linger_ms=0)
    got(network, clock, producer.send("t", "first"))
    ds = [producer.send("t", i) for i in range(3)]
    clock.advance(0)  # the batch is written
    network.drop()
    run_until(clock, network, lambda: all(d.called for d in ds))
    # The server had appended them before the drop; the resend carries the same numbers and is
    # answered with the offsets of the first append: stored once.
    assert [result_of(d)[1] for d in ds] == [1, 2, 3]
    assert [r["value"] for r in values(network, "t")] == ["first", 0, 1, 2]
    assert producer.retries == 1 and producer.identity is not None


def test_messages_fail_with_delivery_timeout_when_the_server_stays_away(network, clock):
    client = ClusterClient(network, clock=clock, endpoint_factory=lambda address: address, rng=random.Random(3),
                           reconnect_min=0.1, reconnect_max=1.0)
    got(network, clock, client.create_topic("t", partitions=1))
    producer = Producer(client, linger_ms=0, delivery_timeout=5.0)
    got(network, clock, producer.send("t", "first"))
    network.drop()
    network.up = False
    t0 = clock.seconds()
    ds = [producer.send("t", i) for i in range(3)]
    run_until(clock, network, lambda: all(d.called for d in ds), limit=10)
    failures = [failure_of(d) for d in ds]
    assert all(f.check(errors.DeliveryTimeout) for f in failures)
    error = failures[0].value
    assert error.details["sent"] is False and error.details["attempts"] >= 2
    assert error.details["last_error"]["code"] == "CONNECTION_LOST"
    assert 5.0 <= clock.seconds() - t0 <= 5.1  # the delivery timeout, not later
    assert producer.pending == 0
    d = client.close()
    network.pump()
    result_of(d)
    assert producer.pending == 0


def test_consumer_reads_in_order_and_keeps_position(network, clock, client):
    producer = Producer(client, linger_ms=0)
    got(network, clock, producer.send("t", "warmup"))
    consumer = Consumer(client, "t", 0, start="earliest", max_messages=3, max_wait_ms=100)
    seen = []
    for _ in range(2):
        seen += [m["value"] for m in got(network, clock, consumer.poll())]
    assert seen == ["warmup"]  # the second poll waited and found nothing
    for i in range(7):
        producer.send("t", i)
    got(network, clock, producer.flush())
    while len(seen) < 8:
        seen += [m["value"] for m in got(network, clock, consumer.poll())]
    assert seen == ["warmup", 0, 1, 2, 3, 4, 5, 6]
    assert consumer.position == 8
    consumer.close()
    run_until(clock, network, lambda: client.protocol.in_flight == 0)


def test_consumer_prefetches_the_next_batch(network, clock, client):
    producer = Producer(client, linger_ms=0)
    for i in range(10):
        producer.send("t", i)
    got(network, clock, producer.flush())
    consumer = Consumer(client, "t", 0, start=0, max_messages=4, max_wait_ms=0)
    asked: list[tuple[int, list[int]]] = []  # (offset asked, offsets still unanswered then)
    real_poll = consumer.client.poll  # the cluster client over the connection

    def poll(topic, partition, offset, **kw):
        asked.append((offset, [f.offset for f in consumer._fetches if f.outcome is None]))
        return real_poll(topic, partition, offset, **kw)

    consumer.client.poll = poll
    first = got(network, clock, consumer.poll())
    assert [m["offset"] for m in first] == [0, 1, 2, 3]
    # The next Polls went out on their own as soon as the first answered: the one for
    # offset 4, and (6 messages remain, more than a batch) a guess at offset 8, sent
    # while the Poll for 4 was still unanswered.
    network.pump()
    assert asked[:3] == [(0, []), (4, []), (8, [4])]
    assert [f.offset for f in consumer._fetches][:2] == [4, 8]
    assert all(f.outcome is not None for f in list(consumer._fetches)[:2])
    second = consumer.poll()
    assert second.called  # answered from the prefetched result
    assert [m["offset"] for m in result_of(second)] == [4, 5, 6, 7]
    third = consumer.poll()
    assert third.called  # the guess was right
    assert [m["offset"] for m in result_of(third)] == [8, 9]
    consumer.close()
    run_until(clock, network, lambda: client.protocol.in_flight == 0)


def test_closing_while_latest_is_resolved_sends_no_poll(network, clock, client):
    producer = Producer(client, linger_ms=0)
    got(network, clock, producer.send("t", "old"))
    consumer = Consumer(client, "t", 0, start="latest", max_wait_ms=5000)
    pending = consumer.poll()  # asks ListOffsets first
    consumer.close()
    run_until(clock, network, lambda: pending.called)
    assert failure_of(pending).value.code == "CONNECTION_LOST"
    assert client.protocol.in_flight == 0


def test_a_wrong_guess_is_dropped_and_nothing_is_skipped_or_repeated(network, clock, client):
    producer = Producer(client, linger_ms=0)
    for _i in range(40):
        producer.send("t", "x" * 50)
    got(network, clock, producer.flush())
    # max_bytes cuts every batch short of max_messages, so each guess misses.
    consumer = Consumer(client, "t", 0, start=0, max_messages=4, max_bytes=250, max_wait_ms=0)
    offsets: list[int] = []
    while len(offsets) < 40:
        batch = got(network, clock, consumer.poll())
        assert batch
        offsets.extend(m["offset"] for m in batch)
    assert offsets == list(range(40))
    consumer.close()
    run_until(clock, network, lambda: client.protocol.in_flight == 0)


def test_consumer_latest_sees_only_new_messages(network, clock, client):
    producer = Producer(client, linger_ms=0)
    got(network, clock, producer.send("t", "old"))
    consumer = Consumer(client, "t", 0, start="latest", max_wait_ms=1000)
    pending = consumer.poll()
    run_until(clock, network, lambda: consumer.position is not None)
    assert consumer.position == 1
    got(network, clock, producer.send("t", "new"))
    assert [m["value"] for m in got(network, clock, pending)] == ["new"]
    consumer.close()
    run_until(clock, network, lambda: client.protocol.in_flight == 0)


def test_consumer_retries_from_its_position_after_connection_loss(network, clock, client):
    producer = Producer(client, linger_ms=0)
    for i in range(3):
        producer.send("t", i)
    got(network, clock, producer.flush())
    consumer = Consumer(client, "t", 0, start=0, max_messages=2, max_wait_ms=5000)
    assert [m["value"] for m in got(network, clock, consumer.poll())] == [0, 1]
    network.pump()
    second = [m["value"] for m in result_of(consumer.poll())]
    assert second == [2]
    network.pump()  # the prefetch of offset 3 is waiting on the server
    network.drop()  # the Poll is lost with the connection: it is asked again once reconnected
    pending = consumer.poll()
    done = []
    pending.addBoth(lambda r: (done.append(r), r)[1])
    run_until(clock, network, lambda: client.connected and client.protocol.in_flight == 1)
    assert consumer.position == 3 and not done
    producer.send("t", 3)
    got(network, clock, producer.flush())
    assert [m["value"] for m in got(network, clock, pending)] == [3]  # nothing skipped, nothing twice
    consumer.close()
    run_until(clock, network, lambda: client.protocol.in_flight == 0)


def test_a_poll_that_keeps_failing_fails_after_its_timeout_and_keeps_the_position(network, clock, client):
    producer = Producer(client, linger_ms=0)
    for i in range(3):
        producer.send("t", i)
    got(network, clock, producer.flush())
    consumer = Consumer(client, "t", 0, start=0, max_messages=2, max_wait_ms=0, timeout=3.0, prefetch=False)
    assert [m["value"] for m in got(network, clock, consumer.poll())] == [0, 1]
    network.drop()
    network.up = False
    t0 = clock.seconds()
    failed = got_failure(network, clock, consumer.poll())
    assert failure_of(failed).check(errors.ConnectionLost, errors.Timeout)
    assert 2.0 <= clock.seconds() - t0 <= 3.1
    assert consumer.position == 2
    network.up = True
    assert [m["value"] for m in got(network, clock, consumer.poll())] == [2]
    consumer.close()


def test_consumer_unknown_topic_and_out_of_range(network, clock, client):
    consumer = Consumer(client, "nothing", 0, start=0, max_wait_ms=0)
    assert failure_of(got_failure(network, clock, consumer.poll())).check(errors.UnknownTopic)
    consumer.close()
    got(network, clock, Producer(client, linger_ms=0).send("t", 1))
    far = Consumer(client, "t", 0, start=50, max_wait_ms=0)
    f = failure_of(got_failure(network, clock, far.poll()))
    assert f.check(errors.OffsetOutOfRange)
    assert f.value.details["high_watermark"] == 1
    far.close()


def got_failure(network, clock, d):
    return settle(clock, network, d)


def test_consumer_seek_drops_prefetch(network, clock, client):
    producer = Producer(client, linger_ms=0)
    for i in range(5):
        producer.send("t", i)
    got(network, clock, producer.flush())
    consumer = Consumer(client, "t", 0, start=0, max_messages=2, max_wait_ms=0)
    got(network, clock, consumer.poll())
    consumer.seek(4)
    assert [m["value"] for m in got(network, clock, consumer.poll())] == [4]
    consumer.close()
    run_until(clock, network, lambda: client.protocol.in_flight == 0)


def test_consumer_starts_n_before_the_end_or_at_a_time(network, clock, client):
    producer = Producer(client, linger_ms=0)
    for i in range(5):
        producer.send("t", i)
    got(network, clock, producer.flush())
    clock.advance(5)
    cut = int(clock.seconds() * 1000)
    got(network, clock, producer.send("t", "later"))
    back = Consumer(client, "t", 0, start="-2", max_wait_ms=0)
    assert [m["value"] for m in got(network, clock, back.poll())] == [4, "later"]
    back.close()
    more_than_stored = Consumer(client, "t", 0, start="-100", max_wait_ms=0)  # the log start, not an error
    assert len(got(network, clock, more_than_stored.poll())) == 6
    more_than_stored.close()
    at = Consumer(client, "t", 0, start=f"@{cut}", max_wait_ms=0)
    assert [m["value"] for m in got(network, clock, at.poll())] == ["later"]
    at.close()
    run_until(clock, network, lambda: client.protocol.in_flight == 0)


def test_consumer_refuses_a_start_it_cannot_read():
    with pytest.raises(ValueError, match="N before the end"):
        Consumer(None, "t", 0, start=-1)
    with pytest.raises(ValueError, match="cannot start from 'soon'"):
        Consumer(None, "t", 0, start="soon")

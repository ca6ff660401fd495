"""The Producer merges a partition's ready batches into one request when a slot frees.

Under backpressure (every in-flight slot busy) the linger timer still closes each
partition's open batch every C{linger_ms}; the ready batches that pile up so are
merged, at their first send, into as few requests as C{batch_size} and
C{max_request_bytes} allow, instead of going one small batch per freed slot.
Only batches never sent merge: an attempt's messages and numbers are fixed.
"""

from __future__ import annotations

from typing import Any

import pytest
from fake_cluster import _PARKED, FakeNodeProtocol, close_client, cluster_client, run_for, run_until

from streamlog import errors
from streamlog.client import Producer, requests
from streamlog.client.producer import REQUEST_OVERHEAD
from streamlog.testing import failure_of, result_of

LINGER_MS = 5


class Held:
    """A leader that reads SendBatch requests and answers them only when released: a slow node
    that keeps every in-flight slot busy."""

    def __init__(self, node: Any) -> None:
        self.real = node.handle
        self.waiting: list[tuple[Any, Any]] = []
        self.holding = True
        node.handle = self.handle

    def handle(self, proto: Any, request: Any) -> Any:
        if request.method == "SendBatch" and self.holding:
            self.waiting.append((proto, request))
            return _PARKED
        return self.real(proto, request)

    def release(self) -> None:
        """Answer what waits, and every later request at once."""
        self.holding = False
        waiting, self.waiting = self.waiting, []
        for proto, request in waiting:
            try:
                result = self.real(proto, request)
            except errors.StreamlogError as e:
                proto.answer(request.id, error=e)
                continue
            proto.answer(request.id, result)


def sent_batches(cluster: Any) -> list[dict[str, Any]]:
    return [p for _, p in cluster.sent("SendBatch")]


def backlog(clock: Any, cluster: Any, producer: Producer, rounds: int, per_round: int = 3,
            partitions: int = 1, value: Any = None, n: int = 0) -> list[Any]:
    """Send C{per_round} messages to each partition, then let the linger timer close the
    open batches, C{rounds} times: with every slot busy, each round leaves one small ready
    batch per partition.  Values are (partition, send number from C{n}) unless C{value} makes them."""
    ds = []
    for _ in range(rounds):
        for p in range(partitions):
            for _ in range(per_round):
                v = [p, n] if value is None else value(n)
                ds.append(producer.send("t", v, partition=p))
                n += 1
        clock.advance(LINGER_MS / 1000.0)
        cluster.pump()
    return ds


def stalled(clock: Any, cluster: Any, client: Any, partitions: int = 1,
            **options: Any) -> tuple[Producer, Held, Any]:
    """A topic led by node 1 and a Producer of one in-flight slot (C{options} on top), whose
    first message's request node 1 holds: the slot is busy until L{Held.release}."""
    cluster.create_topic("t", partitions, leaders=[1])
    options = {"linger_ms": LINGER_MS, "batch_size": 1000, "max_in_flight": 1, **options}
    producer = Producer(client, **options)
    held = Held(cluster.nodes[1])
    first = producer.send("t", "first", partition=0)
    run_until(clock, cluster, lambda: len(held.waiting) == 1)
    return producer, held, first


@pytest.mark.parametrize("idempotent", [True, False])
def test_under_backpressure_the_next_request_carries_every_lingered_batch(clock, cluster, client, idempotent):
    producer, held, first = stalled(clock, cluster, client, idempotent=idempotent)
    ds = backlog(clock, cluster, producer, rounds=10)
    assert len(held.waiting) == 1  # the slot stayed busy while linger closed ten batches
    held.release()
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    # Before merging: [1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3], one small batch per freed slot.
    assert [len(p["messages"]) for p in sent_batches(cluster)] == [1, 30]
    assert producer.requests_sent == 2 and producer.merged == 9
    assert result_of(first) == (0, 0)
    assert [result_of(d) for d in ds] == [(0, 1 + i) for i in range(30)]
    assert cluster.values("t", 0) == ["first"] + [[0, i] for i in range(30)]
    if idempotent:
        assert [p["sequences"] for p in sent_batches(cluster)] == [
            [{"partition": 0, "base_sequence": 0}], [{"partition": 0, "base_sequence": 1}]]


@pytest.mark.parametrize("idempotent", [True, False])
def test_merging_keeps_each_partitions_order_and_flush_waits_for_every_message(clock, cluster, client, idempotent):
    producer, held, first = stalled(clock, cluster, client, partitions=2, idempotent=idempotent)
    ds = backlog(clock, cluster, producer, rounds=6, per_round=2, partitions=2)
    flushed = producer.flush()
    held.release()
    run_until(clock, cluster, lambda: flushed.called)
    assert all(d.called for d in ds) and producer.pending == 0
    assert sorted(len(p["messages"]) for p in sent_batches(cluster)) == [1, 12, 12]
    for p in range(2):
        values = [v for v in cluster.values("t", p) if v != "first"]
        assert values == sorted(values) and {v[0] for v in values} == {p} and len(values) == 12
    offsets = {}
    for d in ds:
        partition, offset = result_of(d)
        assert offset > offsets.get(partition, -1)  # acknowledged offsets grow in send order
        offsets[partition] = offset


@pytest.mark.parametrize("limit", ["count", "bytes"])
def test_a_merged_batch_never_passes_the_count_or_byte_limit(clock, cluster, client, monkeypatch, limit):
    lines: list[int] = []
    real_line = FakeNodeProtocol.lineReceived

    def measured(self, line):
        if b'"SendBatch"' in line:
            lines.append(len(line) + 1)  # with its delimiter, as max_request_bytes counts it
        return real_line(self, line)

    monkeypatch.setattr(FakeNodeProtocol, "lineReceived", measured)

    def value(n):
        return f"{n:04d}" + "x" * 100

    one = len(f'{{"value":"{value(0)}","partition":0}}') + 1
    if limit == "count":
        options = {"batch_size": 8}  # two ready batches of 3 fit, a third does not
    else:
        options = {"max_request_bytes": REQUEST_OVERHEAD + len("t") + 8 * one}  # 8 such messages
    producer, held, first = stalled(clock, cluster, client, **options)
    ds = backlog(clock, cluster, producer, rounds=10, value=value)
    held.release()
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    assert [len(p["messages"]) for p in sent_batches(cluster)] == [1, 6, 6, 6, 6, 6]
    assert all(len(p["messages"]) <= producer.batch_size for p in sent_batches(cluster))
    assert max(lines) <= producer.max_request_bytes
    assert cluster.values("t", 0) == ["first"] + [value(n) for n in range(30)]


def test_merging_stops_at_the_servers_default_batch_limit_whatever_batch_size(clock, cluster, client):
    """batch_size 20,000 (a server may raise --max-batch-messages): the batches that sends fill
    go as large as it asks, but merging stops at 10,000, which a default server takes."""
    assert requests.MAX_BATCH_MESSAGES == 10_000
    producer, held, first = stalled(clock, cluster, client, batch_size=20_000)
    ds = backlog(clock, cluster, producer, rounds=5, per_round=3_000)
    held.release()
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    # Before: [1, 15000], refused BATCH_TOO_LARGE by a server with the default limit.
    assert [len(p["messages"]) for p in sent_batches(cluster)] == [1, 9_000, 6_000]
    assert [result_of(d)[1] for d in ds] == list(range(1, 15_001))


def test_an_idempotent_resend_after_a_timeout_carries_the_same_numbers_and_messages(clock, cluster, client):
    producer, held, first = stalled(clock, cluster, client)
    ds = backlog(clock, cluster, producer, rounds=5)
    node = cluster.nodes[1]
    real = held.real
    lost: list[dict[str, Any]] = []

    def store_then_lose_the_answer(proto, request):
        if request.method == "SendBatch" and not lost and len(request.params["messages"]) > 1:
            lost.append(request.params)
            real(proto, request)  # appended ...
            return _PARKED  # ... and never answered: the client times out and sends it again
        return real(proto, request)

    held.real = store_then_lose_the_answer
    node.handle = held.handle
    held.release()
    run_until(clock, cluster, lambda: bool(lost))
    later = backlog(clock, cluster, producer, rounds=3, n=15)  # sent while the merged attempt waits
    run_until(clock, cluster, lambda: all(d.called for d in ds + later))
    merged = [p for p in sent_batches(cluster) if p["messages"] == lost[0]["messages"]]
    assert len(merged) == 2 and merged[0] == merged[1]  # the resend: the same numbers, the same messages
    assert len(lost[0]["messages"]) == 15 and lost[0]["sequences"] == [{"partition": 0, "base_sequence": 1}]
    assert producer.retries == 1
    assert [result_of(d)[1] for d in ds + later] == list(range(1, 25))  # the original offsets, then the rest
    assert cluster.values("t", 0) == ["first"] + [[0, i] for i in range(24)]  # stored once


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_refused_merged_request_fails_every_one_of_its_messages(clock, cluster, client, idempotent):
    producer, held, first = stalled(clock, cluster, client, idempotent=idempotent)
    ds = backlog(clock, cluster, producer, rounds=4)
    cluster.nodes[1].faults["SendBatch"] = lambda params: (
        errors.InvalidParams("refused", field="messages") if len(params["messages"]) > 1 else None)
    held.release()
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    assert result_of(first) == (0, 0)
    assert [len(p["messages"]) for p in sent_batches(cluster)] == [1, 12]
    assert all(failure_of(d).check(errors.InvalidParams) for d in ds)
    assert producer.pending == 0 and producer.buffered == 0
    assert cluster.values("t", 0) == ["first"]


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_merged_request_that_fails_and_may_heal_is_sent_again_whole_and_in_order(clock, cluster, client,
                                                                                   idempotent):
    producer, held, first = stalled(clock, cluster, client, idempotent=idempotent)
    ds = backlog(clock, cluster, producer, rounds=4)
    refusals = []

    def busy_twice(params):
        if len(params["messages"]) > 1 and len(refusals) < 2:
            refusals.append(params)
            return errors.LeaderNotAvailable("an election is on", topic="t", partition=0)
        return None

    cluster.nodes[1].faults["SendBatch"] = busy_twice
    held.release()
    run_until(clock, cluster, lambda: len(refusals) == 2)
    later = backlog(clock, cluster, producer, rounds=2, n=12)  # ready behind the one being retried
    run_until(clock, cluster, lambda: all(d.called for d in ds + later))
    sizes = [len(p["messages"]) for p in sent_batches(cluster)]
    assert sizes == [1, 12, 12, 12, 6]  # the failed one whole, three times; the later ones merged behind it
    assert producer.retries == 2
    assert [result_of(d)[1] for d in ds + later] == list(range(1, 19))
    assert cluster.values("t", 0) == ["first"] + [[0, i] for i in range(18)]


def test_a_merged_batch_fails_at_the_earliest_deadline_of_its_parts(clock, cluster, client):
    producer, held, first = stalled(clock, cluster, client, delivery_timeout=3.0)
    start = clock.seconds()
    ds = backlog(clock, cluster, producer, rounds=10)
    cluster.nodes[1].faults["SendBatch"] = lambda params: (
        errors.LeaderNotAvailable("an election is on", topic="t", partition=0) if len(params["messages"]) > 1
        else None)
    failed_at: list[float] = []
    for d in ds:
        d.addErrback(lambda f: failed_at.append(clock.seconds()) or f)
    held.release()
    run_until(clock, cluster, lambda: all(d.called for d in ds), step=0.001)
    failures = [failure_of(d) for d in ds]
    assert all(f.check(errors.DeliveryTimeout) for f in failures)
    assert failures[-1].value.details["sent"] is False  # refused at every attempt: never stored
    # One request, one deadline: the first part's (its messages were sent at `start`), well
    # before the last part's own (nine lingers later); not before the first part's.
    last_own_deadline = start + 3.0 + 9 * LINGER_MS / 1000.0
    assert len(set(failed_at)) == 1 and start + 3.0 <= failed_at[0] < last_own_deadline - 0.02


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_late_message_is_not_merged_behind_an_old_batch_and_keeps_its_own_delivery_timeout(clock, cluster,
                                                                                            idempotent):
    """A leader stalls for 9.95 s with the one slot busy, then an election holds the partition
    until 11 s; the delivery timeout is 10 s.  'c', sent at 9.9 s, has until 19.9 s.  Merged
    behind 'b' (sent at 0.01 s) it took b's deadline and failed at 10.04 s, 0.14 s after it was
    sent; kept apart (its deadline is 9.89 s after b's, past merge_slack, 1 s) it is stored."""
    client = cluster_client(clock, cluster, request_timeout=30.0)
    try:
        cluster.create_topic("t", 1, leaders=[1])
        producer = Producer(client, linger_ms=1, delivery_timeout=10.0, max_in_flight=1, idempotent=idempotent)
        assert producer.merge_slack == 1.0
        warm = producer.send("t", "warm", partition=0)
        run_until(clock, cluster, lambda: warm.called)
        start = clock.seconds()
        held = Held(cluster.nodes[1])
        first = producer.send("t", "first", partition=0)
        run_until(clock, cluster, lambda: len(held.waiting) == 1)
        run_for(clock, cluster, 0.01)
        b = producer.send("t", "b", partition=0)
        run_for(clock, cluster, 9.89)
        c = producer.send("t", "c", partition=0)
        run_for(clock, cluster, 0.05)
        cluster.nodes[1].faults["SendBatch"] = lambda params: (
            errors.LeaderNotAvailable("an election is on", topic="t", partition=0)
            if clock.seconds() < start + 11.0 and [m["value"] for m in params["messages"]] != ["first"]
            else None)
        held.release()  # 'first' is stored at 9.95 s; then the election refuses until 11 s
        failed_at: list[float] = []
        c.addErrback(lambda f: failed_at.append(clock.seconds() - start) or f)
        run_until(clock, cluster, lambda: first.called and b.called and c.called, limit=30, step=0.001)
        assert result_of(first)[1] == 1
        assert failure_of(b).check(errors.DeliveryTimeout)  # b's own time ran out at 10.01 s
        assert not failed_at, f"c failed at {failed_at[0]:.3f} s"
        assert result_of(c)[1] == 2 and producer.merged == 0
        assert cluster.values("t", 0) == ["warm", "first", "c"]
    finally:
        close_client(client, cluster)


def test_merging_stops_at_a_batch_whose_deadline_is_past_the_merge_slack(clock, cluster, client):
    producer, held, first = stalled(clock, cluster, client, merge_slack=0.012)
    ds = backlog(clock, cluster, producer, rounds=10)  # ten batches, LINGER_MS = 5 ms apart
    held.release()
    run_until(clock, cluster, lambda: all(d.called for d in ds))
    # Three batches span 10 ms of deadlines; a fourth would span 15 ms, past 12 ms.
    assert [len(p["messages"]) for p in sent_batches(cluster)] == [1, 9, 9, 9, 3]
    assert [result_of(d)[1] for d in ds] == list(range(1, 31))


@pytest.mark.parametrize("merge_slack", [-0.5, float("nan")])
def test_a_negative_merge_slack_is_refused(client, merge_slack):
    with pytest.raises(ValueError, match="merge_slack"):
        Producer(client, merge_slack=merge_slack)


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_batch_taken_back_unwritten_for_a_new_leader_keeps_its_messages(clock, cluster, client, idempotent):
    cluster.create_topic("t", 1, leaders=[1])
    producer = Producer(client, linger_ms=1, batch_size=10, idempotent=idempotent)
    d = producer.send("t", -1, partition=0)
    run_until(clock, cluster, lambda: d.called)
    cluster.nodes[1].black_hole = {"SendBatch"}  # a stalled partition: two batches stay in flight
    early = [producer.send("t", i, partition=0) for i in range(20)]
    run_for(clock, cluster, 0.05)
    assert len(cluster.nodes[1].swallowed) == 2
    cluster.move_leader("t", 0, 2)
    refreshed = client.refresh_metadata()
    run_until(clock, cluster, lambda: refreshed.called)
    taken = [producer.send("t", i, partition=0) for i in range(20, 25)]
    run_for(clock, cluster, 0.05)  # taken for its first send, routed to node 2, put back: it waits
    queue = producer._topics["t"].queues[0]
    assert [len(b.messages) for b in queue.ready] == [5] and queue.ready[0].taken
    behind = [producer.send("t", i, partition=0) for i in range(25, 28)]
    run_for(clock, cluster, 0.05)
    assert [len(b.messages) for b in queue.ready] == [5, 3]
    cluster.kill(1)
    run_until(clock, cluster, lambda: all(d.called for d in early + taken + behind), limit=30)
    at_node_2 = [[m["value"] for m in p["messages"]] for n, p in cluster.sent("SendBatch") if n == 2]
    assert [20, 21, 22, 23, 24] in at_node_2 and [25, 26, 27] in at_node_2  # not merged: it was taken
    assert cluster.values("t", 0) == [-1, *range(28)]
    assert [result_of(d)[1] for d in early + taken + behind] == list(range(1, 29))

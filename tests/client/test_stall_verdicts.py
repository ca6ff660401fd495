"""Which stalls leave a node: only partition-bound requests (Send/SendBatch/Poll/ListOffsets of a
known partition) are judged, each against the term its leader had when it was sent, in a view
fetched after the silence began.  A slow but healthy leader, a slow controller or a slow group
coordinator is waited for (review of client-stall, findings 1, 2 and 8)."""

from __future__ import annotations

import orjson
import pytest
from fake_cluster import FakeNodeProtocol, close_client, cluster_client, outcomes, run_for, run_until, settled
from twisted.python.failure import Failure

from streamlog.client import GroupConsumer, Producer


def slow_answers(monkeypatch, clock, node_id, delay, methods):
    """Node C{node_id} does the work at once but its answers to C{methods} leave C{delay} s later
    (a healthy node on a slow disk: the write is committed, the answer is late)."""
    original_answer = FakeNodeProtocol.answer
    original_line = FakeNodeProtocol.lineReceived
    method_of: dict[tuple[int, object], str] = {}

    def line(self, data):
        request = orjson.loads(data)
        method_of[(id(self), request.get("id"))] = request.get("method")
        return original_line(self, data)

    def answer(self, rid, result=None, error=None):
        if self.node.node_id == node_id and method_of.get((id(self), rid)) in methods:
            clock.callLater(delay, original_answer, self, rid, result, error)
            return
        return original_answer(self, rid, result, error)

    monkeypatch.setattr(FakeNodeProtocol, "lineReceived", line)
    monkeypatch.setattr(FakeNodeProtocol, "answer", answer)


def answered(clock, cluster, d):
    """C{d}'s result, which must be no failure."""
    result = settled(clock, cluster, d, limit=10)
    assert not isinstance(result, Failure), result
    return result


def stored(cluster, partition=0):
    return [r["value"]["n"] for r in cluster.records("t", partition)]


# --- a slow leader whose other partition moved unseen (finding 2) ------------------------------


def moved_unseen(clock, cluster, client, warm_up):
    """Node 1 leads t/0 and t/1; the client uses both; then t/1 moves to node 2 in term 2 (a
    preferred-leader transfer) and the client does not hear of it (no traffic to t/1)."""
    cluster.create_topic("t", 2, leaders=[1])
    warm = warm_up()
    run_until(clock, cluster, lambda: all(d.called for d in warm))
    cluster.move_leader("t", 1, 2)


def test_a_slow_healthy_leader_is_waited_for_and_a_batch_not_idempotent_is_stored_once(monkeypatch, clock,
                                                                                          cluster):
    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        producer = Producer(client, linger_ms=1, idempotent=False, acks="all")
        moved_unseen(clock, cluster, client,
                     lambda: [producer.send("t", {"n": i}, partition=i) for i in (0, 1)])
        slow_answers(monkeypatch, clock, 1, 0.8, {"SendBatch"})
        d = producer.send("t", {"n": 100}, partition=0)
        began = clock.seconds()
        run_until(clock, cluster, lambda: d.called, limit=10)
        assert not isinstance(outcomes([d])[0], Failure)
        assert 0.8 <= clock.seconds() - began < 0.9  # its own answer, not a resend's
        run_for(clock, cluster, 1.0)
        assert client.stalls_dropped == 0  # t/0 is still node 1's, in term 1
        assert stored(cluster).count(100) == 1
    finally:
        close_client(client, cluster)


def test_a_slow_healthy_leader_costs_an_idempotent_producer_no_reconnect(monkeypatch, clock, cluster):
    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        producer = Producer(client, linger_ms=1)
        moved_unseen(clock, cluster, client,
                     lambda: [producer.send("t", {"n": i}, partition=i) for i in (0, 1)])
        slow_answers(monkeypatch, clock, 1, 0.8, {"SendBatch"})
        sent_before = len(cluster.sent("SendBatch"))
        d = producer.send("t", {"n": 100}, partition=0)
        run_until(clock, cluster, lambda: d.called, limit=10)
        assert client.stalls_dropped == 0
        assert len(cluster.sent("SendBatch")) == sent_before + 1  # not resent
        assert stored(cluster).count(100) == 1
    finally:
        close_client(client, cluster)


def test_cluster_client_send_to_a_slow_healthy_leader_reports_the_stored_record(monkeypatch, clock, cluster):
    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        moved_unseen(clock, cluster, client, lambda: [client.send("t", {"n": i}, partition=i) for i in (0, 1)])
        slow_answers(monkeypatch, clock, 1, 0.8, {"Send"})
        assert answered(clock, cluster, client.send("t", {"n": 100}, partition=0))["partition"] == 0
        assert client.stalls_dropped == 0
        assert stored(cluster).count(100) == 1
    finally:
        close_client(client, cluster)


def test_an_old_stall_leaves_nothing_behind_for_the_next_one(monkeypatch, clock, cluster):
    # Finding 8: a first stall of node 1 (t/0 and t/1 in flight) while the other nodes cannot
    # answer Metadata; it ends.  Later t/1 moves to node 2 and the client learns it; then node 1
    # (still t/0's leader) is slow again with only t/0 in flight: that is no reason to leave it.
    from streamlog import errors

    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        producer = Producer(client, linger_ms=1)
        cluster.create_topic("t", 2, leaders=[1])
        warm = [producer.send("t", {"n": i}, partition=i) for i in (0, 1)]
        run_until(clock, cluster, lambda: all(d.called for d in warm))
        for n in (1, 2, 3):  # no Metadata answer during that stall: its check cannot conclude
            cluster.nodes[n].faults["Metadata"] = lambda params: errors.LeaderNotAvailable("busy")
        slow_answers(monkeypatch, clock, 1, 0.8, {"SendBatch"})
        first = [producer.send("t", {"n": 10 + i}, partition=i) for i in (0, 1)]
        run_until(clock, cluster, lambda: all(d.called for d in first), limit=10)
        monkeypatch.undo()
        for n in (1, 2, 3):
            del cluster.nodes[n].faults["Metadata"]
        cluster.move_leader("t", 1, 2)
        moved = producer.send("t", {"n": 20}, partition=1)  # NOT_LEADER, hint: node 2, term 2
        run_until(clock, cluster, lambda: moved.called, limit=10)
        assert client.view.leader("t", 1).node_id == 2
        run_for(clock, cluster, 60.0)
        slow_answers(monkeypatch, clock, 1, 0.8, {"SendBatch"})
        answered(clock, cluster, producer.send("t", {"n": 30}, partition=0))
        assert client.stalls_dropped == 0
        assert stored(cluster).count(30) == 1
    finally:
        close_client(client, cluster)


# --- coordinator and admin calls end at their own timeout (finding 1) ---------------------------


def test_a_slow_create_topic_at_a_controller_leading_nothing_in_use_succeeds(monkeypatch, clock, cluster):
    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        cluster.create_topic("t", 1, leaders=[2])  # node 1, the controller, leads none of "t"
        warm = Producer(client, linger_ms=1).send("t", {"n": 0}, partition=0)
        run_until(clock, cluster, lambda: warm.called)
        slow_answers(monkeypatch, clock, 1, 0.8, {"CreateTopic"})
        answered(clock, cluster, client.create_topic("new", 3))
        assert "new" in cluster.topics
        assert client.stalls_dropped == 0
        assert len(cluster.sent("CreateTopic")) == 1
    finally:
        close_client(client, cluster)


def joined_member(clock, cluster, client):
    cluster.create_topic("t", 2, leaders=[1])  # the group's coordinator (node 3) leads none of "t"
    cluster.topics["t"][0].records.append({"offset": 0, "timestamp": 1000, "key": None, "value": "a",
                                           "headers": {}})
    member = GroupConsumer(client, "g", ["t"], auto_commit_interval=None)
    got: list = []
    while not got:
        box: list = []
        member.poll().addBoth(box.append)
        run_until(clock, cluster, lambda box=box: box, limit=10)
        got.extend(box[0])
    return member


@pytest.mark.parametrize("delay", [0.8, 1.5])
def test_a_commit_at_a_slow_coordinator_leading_nothing_in_use_is_sent_once(monkeypatch, clock, cluster, delay):
    # Before: dropped at 0.5 s and resent 5 times (0.8 s), or never through until the request
    # timeout (1.5 s), though the coordinator had applied the first attempt.
    client = cluster_client(clock, cluster, request_timeout=30.0)
    try:
        member = joined_member(clock, cluster, client)
        slow_answers(monkeypatch, clock, 3, delay, {"CommitOffsets"})
        began = clock.seconds()
        answered(clock, cluster, member.commit())
        assert delay <= clock.seconds() - began < delay + 0.1
        assert len(cluster.sent("CommitOffsets")) == 1
        assert client.stalls_dropped == 0
        assert cluster.group_offsets == {("t", 0): 1}
        monkeypatch.undo()
        member.close()
        run_for(clock, cluster, 3.0)
    finally:
        close_client(client, cluster)


def test_a_join_at_a_slow_coordinator_leading_nothing_in_use_is_answered(monkeypatch, clock, cluster):
    client = cluster_client(clock, cluster, request_timeout=30.0)
    try:
        cluster.create_topic("t", 2, leaders=[1])
        warm = client.send("t", {"n": 0}, partition=0)  # the view knows "t" (as a producer's would)
        run_until(clock, cluster, lambda: warm.called)
        slow_answers(monkeypatch, clock, 3, 0.8, {"JoinGroup"})
        member = GroupConsumer(client, "g", ["t"], auto_commit_interval=None)
        answered(clock, cluster, member.poll())
        assert member.member_id is not None
        assert len(cluster.sent("JoinGroup")) == 1 and client.stalls_dropped == 0
        monkeypatch.undo()
        member.close()
        run_for(clock, cluster, 3.0)
    finally:
        close_client(client, cluster)


# --- how often a slow leader is asked about (finding 6) -----------------------------------------


def test_a_slow_healthy_leader_costs_a_few_metadata_requests_not_one_per_recheck(monkeypatch, clock, cluster):
    client = cluster_client(clock, cluster, request_timeout=10.0)
    try:
        cluster.create_topic("t", 1, leaders=[1])
        producer = Producer(client, linger_ms=1)
        warm = producer.send("t", {"n": 0}, partition=0)
        run_until(clock, cluster, lambda: warm.called)
        before = len(cluster.sent("Metadata"))
        slow_answers(monkeypatch, clock, 1, 3.0, {"SendBatch"})
        d = producer.send("t", {"n": 1}, partition=0)
        run_until(clock, cluster, lambda: d.called, limit=10)
        asked = len(cluster.sent("Metadata")) - before
        # At 0.5, 0.6, 0.8, 1.2 and 2.0 s of silence (before: every 0.1 s, 25 in all).
        assert asked == 5, asked
        assert client.stalls_dropped == 0
    finally:
        close_client(client, cluster)

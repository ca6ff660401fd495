"""Stall detection: a node that reads requests and says nothing (SIGSTOP, cut off) while its
partitions move is left after C{stall_timeout}, not after the request timeout."""

from __future__ import annotations

import pytest
from fake_cluster import close_client, cluster_client, outcomes, run_for, run_until
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from streamlog.client import Producer
from streamlog.client.connection import ClientProtocol, server_wait
from streamlog.testing import failure_of, result_of


def make_client(clock, cluster, **kw):
    kw.setdefault("request_timeout", 10.0)
    return cluster_client(clock, cluster, seed=5, **kw)


@pytest.fixture
def client(clock, cluster):
    c = make_client(clock, cluster)
    yield c
    close_client(c, cluster)


def values(cluster, partition=0):
    return [v["n"] for v in cluster.values("t", partition)]


def acked(ds):
    got = outcomes(ds)
    bad = [r for r in got if isinstance(r, Failure)]
    assert not bad, bad[0]
    return got


# --- the protocol: what counts as a stall ------------------------------------------------------


def connected(clock, stall_timeout=0.5, recheck=0.1, recheck_max=None):
    proto = ClientProtocol(clock, request_timeout=30.0, stall_timeout=stall_timeout, stall_recheck=recheck,
                           stall_recheck_max=recheck_max)
    proto.makeConnection(StringTransport())
    seen = []
    proto.on_stall = lambda silent, n: seen.append((round(clock.seconds(), 3), round(silent, 3), n))
    return proto, seen


def answer(proto, rid):
    proto.dataReceived(b'{"id":%d,"result":{}}\n' % rid)


def test_silence_with_a_request_in_flight_is_reported_after_stall_timeout_then_ever_less_often():
    clock = Clock()
    proto, seen = connected(clock, recheck_max=0.4)
    d = proto.request("Ping", {})
    clock.advance(0.49)
    assert seen == []
    clock.advance(0.01)
    assert seen == [(0.5, 0.5, 1)]
    clock.pump([0.1] * 25)
    # Reported again after the recheck (0.1 s), then after twice as long each time up to
    # stall_recheck_max (0.4 s): each report costs the cluster client a Metadata request.
    assert [s[0] for s in seen] == [0.5, 0.6, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8]
    answer(proto, 1)
    assert result_of(d) == {}
    assert clock.getDelayedCalls() == []  # nothing in flight: nothing watched


def test_the_reports_back_off_afresh_at_the_next_stall():
    clock = Clock()
    proto, seen = connected(clock, recheck_max=2.0)
    proto.request("Ping", {})
    proto.request("Ping", {})
    clock.pump([0.1] * 13)  # reported at 0.5, 0.6, 0.8, 1.2
    assert [s[0] for s in seen] == [0.5, 0.6, 0.8, 1.2]
    answer(proto, 1)  # the stall ends (the other request is still in flight)
    seen.clear()
    clock.pump([0.1] * 8)
    assert [s[0] for s in seen] == [1.8, 1.9, 2.1]  # a new stall: from the first recheck again
    proto.connectionLost(Failure(Exception("gone")))


def test_any_bytes_from_the_server_restart_the_silence():
    clock = Clock()
    proto, seen = connected(clock)
    proto.request("Ping", {})
    second = proto.request("Ping", {})
    clock.advance(0.4)
    answer(proto, 1)  # a healthy server answering the others: not stalled
    clock.advance(0.4)
    assert seen == []
    clock.advance(0.1)
    assert seen == [(0.9, 0.5, 1)]
    answer(proto, 2)
    result_of(second)
    assert clock.getDelayedCalls() == []


def test_a_long_poll_is_not_silent_until_its_max_wait_passed():
    clock = Clock()
    proto, seen = connected(clock)
    proto.request("Poll", {"topic": "t", "partition": 0, "offset": 0, "max_wait_ms": 2000})
    clock.advance(2.4)
    assert seen == []
    clock.advance(0.1)
    assert seen == [(2.5, 0.5, 1)]
    proto.connectionLost(Failure(Exception("gone")))
    assert clock.getDelayedCalls() == []


def test_a_silence_a_hair_short_of_the_timeout_never_reschedules_a_zero_wait():
    # On a clock at a large time, now + 1e-17 is now: a recheck "for the remainder" ran at the same
    # instant for ever (the cluster simulator's seed 14 hung).
    clock = Clock()
    clock.advance(10.0)  # small enough that 0.5 - 1e-12 stays exact
    proto, seen = connected(clock)
    proto.request("Ping", {})
    proto.last_received = clock.seconds() - (0.5 - 1e-12)
    for pending in proto._pending.values():
        pending.due = proto.last_received
    proto._stall_timer.cancel()
    proto._check_stall()
    assert seen  # counted as the stall it is
    delays = [call.getTime() - clock.seconds() for call in clock.getDelayedCalls() if call.active()]
    assert all(d >= 0.001 for d in delays), delays
    proto.connectionLost(Failure(Exception("gone")))


def test_server_wait_is_a_polls_max_wait_only():
    assert server_wait("Poll", {"max_wait_ms": 250}) == 0.25
    assert server_wait("Poll", {"max_wait_ms": True}) == 0.0
    assert server_wait("SendBatch", {"max_wait_ms": 250}) == 0.0
    assert server_wait("Poll", None) == 0.0


def test_no_stall_timeout_watches_nothing():
    clock = Clock()
    proto, seen = connected(clock, stall_timeout=None)
    proto.request("Ping", {}, timeout=None)
    clock.advance(100)
    assert seen == [] and clock.getDelayedCalls() == []


def test_abort_fails_what_is_in_flight_with_the_reason():
    clock = Clock()
    proto, _ = connected(clock)
    d = proto.request("SendBatch", {})
    proto.abort("it stalled")
    proto.connectionLost(Failure(Exception("aborted")))
    failure = failure_of(d)
    assert failure.value.code == "CONNECTION_LOST"
    assert "it stalled" in failure.value.message


def test_bad_stall_timeouts_are_refused(clock, cluster):
    with pytest.raises(ValueError):
        make_client(clock, cluster, stall_timeout=0)
    with pytest.raises(ValueError):
        make_client(clock, cluster, stall_recheck_max=0)


def test_stall_recheck_max_reaches_the_node_connections(clock, cluster):
    client = make_client(clock, cluster, stall_recheck_max=0.3)
    try:
        node = client.node_client(cluster.bootstrap.split(",")[0])
        run_until(clock, cluster, lambda: node.connected)
        assert node.protocol.stall_recheck_max == 0.3
    finally:
        close_client(client, cluster)


# --- the cluster client: leaving a stalled leader ----------------------------------------------


def stall_leader_with_batches_in_flight(clock, cluster, producer):
    cluster.create_topic("t", 1, leaders=[1])
    first = [producer.send("t", {"n": i}, partition=0) for i in range(20)]
    run_until(clock, cluster, lambda: all(d.called for d in first))
    cluster.nodes[1].black_hole = True  # SIGSTOP: reads what arrives, answers nothing, stays connected
    later = [producer.send("t", {"n": i}, partition=0) for i in range(20, 100)]
    run_for(clock, cluster, 0.05)
    assert len(cluster.nodes[1].swallowed) == 4  # four batches in flight at the paused leader
    return first, later


def test_a_paused_leader_whose_partition_moved_is_left_after_the_stall_timeout(clock, cluster, client):
    producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
    first, later = stall_leader_with_batches_in_flight(clock, cluster, producer)
    stopped = clock.seconds() - 0.05
    cluster.move_leader("t", 0, 2)  # the others elected node 2; node 1 is still paused, its connection up
    run_until(clock, cluster, lambda: all(d.called for d in later), step=0.01, limit=30)
    took = clock.seconds() - stopped
    assert 0.5 <= took < 0.8, took  # the stall timeout and a Metadata round trip, not the 10 s request timeout
    assert [o for _, o in acked(first + later)] == list(range(100))
    assert values(cluster) == list(range(100))  # in order, none twice (idempotent resends)
    assert client.stalls_dropped == 1


def test_a_paused_leader_still_leading_is_waited_for(clock, cluster, client):
    # Slow, not gone: no other leader, so the connection stays and the batches are answered late.
    producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
    first, later = stall_leader_with_batches_in_flight(clock, cluster, producer)
    run_for(clock, cluster, 2.0)
    assert client.stalls_dropped == 0
    assert not any(d.called for d in later)
    asked = [n for n, m, _ in cluster.requests if m == "Metadata"]
    assert set(asked[-3:]) <= {2, 3}  # the rechecks ask the other nodes
    assert {method for method, _ in cluster.nodes[1].swallowed} == {"SendBatch"}  # no Metadata waits on it
    cluster.move_leader("t", 0, 2)  # then an election after all: the next recheck leaves node 1
    run_until(clock, cluster, lambda: all(d.called for d in later), limit=30)
    assert values(cluster) == list(range(100))


def test_election_later_than_the_first_check_is_caught_by_a_recheck(clock, cluster, client):
    producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
    first, later = stall_leader_with_batches_in_flight(clock, cluster, producer)
    stopped = clock.seconds() - 0.05
    run_for(clock, cluster, 0.9)  # the first check (0.5 s) saw node 1 still leading
    assert client.stalls_dropped == 0
    cluster.move_leader("t", 0, 3)
    run_until(clock, cluster, lambda: all(d.called for d in later), limit=30)
    # At the next report: they came at 0.5, 0.6 and 0.8 s of silence, then at 1.2 s (backing off).
    assert clock.seconds() - stopped < 1.3
    assert values(cluster) == list(range(100))


def test_a_fetch_during_the_election_that_says_no_leader_does_not_hide_the_move(clock, cluster, client):
    # Seen on real nodes: the first rechecks' Metadata said "no leader" (term 2): the view forgot
    # node 1 as the leader, and judging by the view of the moment found nothing node 1 still led.
    producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
    first, later = stall_leader_with_batches_in_flight(clock, cluster, producer)
    stopped = clock.seconds() - 0.05
    run_for(clock, cluster, 0.5)
    cluster.move_leader("t", 0, None)  # the election is on
    run_for(clock, cluster, 0.3)
    assert client.view.leader("t", 0) is None and client.stalls_dropped == 0
    cluster.move_leader("t", 0, 3)  # and won, in a later term still
    run_until(clock, cluster, lambda: all(d.called for d in later), limit=30)
    assert clock.seconds() - stopped < 1.3  # at the report at 1.2 s of silence (backing off)
    assert client.stalls_dropped == 1
    assert values(cluster) == list(range(100))


def test_a_silent_node_the_view_gave_up_on_before_the_silence_began_is_left_once_another_leads(clock, cluster,
                                                                                                 client):
    # The batches went to node 1 while it led (term 1); then a fetch said "no leader" (an election
    # on) before the silence reached stall_timeout.  Each batch keeps the term it was sent for, so
    # the move is seen once a leader of a later term is named; while none is, nothing better
    # than waiting exists (the batches would wait for a leader elsewhere too).
    producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
    first, later = stall_leader_with_batches_in_flight(clock, cluster, producer)
    stopped = clock.seconds() - 0.05
    cluster.move_leader("t", 0, None)
    client.refresh_metadata()
    run_for(clock, cluster, 0.1)
    assert client.view.leader("t", 0) is None
    run_for(clock, cluster, 0.6)
    assert client.stalls_dropped == 0
    cluster.move_leader("t", 0, 2)
    run_until(clock, cluster, lambda: all(d.called for d in later), limit=30)
    assert clock.seconds() - stopped < 1.5  # not the 10 s request timeout
    assert client.stalls_dropped == 1
    assert values(cluster) == list(range(100))


def test_stall_detection_off_waits_for_the_request_timeout(clock, cluster):
    client = make_client(clock, cluster, stall_timeout=None, request_timeout=3.0)
    try:
        producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
        first, later = stall_leader_with_batches_in_flight(clock, cluster, producer)
        stopped = clock.seconds() - 0.05
        cluster.move_leader("t", 0, 2)
        run_until(clock, cluster, lambda: all(d.called for d in later), limit=30)
        assert clock.seconds() - stopped >= 3.0
        assert values(cluster) == list(range(100))
    finally:
        close_client(client, cluster)


# --- a leader cut off from its peers, which clients still reach ----------------------------------


def test_metadata_is_asked_of_the_nodes_in_turn_so_a_cut_off_nodes_stale_view_does_not_hold_a_producer(clock,
                                                                                                        cluster):
    # Node 1 led t/0 and was cut off from its peers: it stepped down and knows no leader; it still
    # answers clients at once (NOT_LEADER without a hint, Metadata without a leader).  Asked first
    # at every fetch, it kept the producer from learning that node 2 leads now.
    from streamlog import errors

    client = make_client(clock, cluster, stall_timeout=None)
    try:
        producer = Producer(client, linger_ms=1, batch_size=20, max_in_flight=8)
        cluster.create_topic("t", 1, leaders=[1])
        first = [producer.send("t", {"n": i}, partition=0) for i in range(20)]
        run_until(clock, cluster, lambda: all(d.called for d in first))
        cut = cluster.nodes[1]
        cluster.move_leader("t", 0, 2)
        stale = cluster.metadata()
        stale["topics"][0]["partitions"][0].update(leader=None, leader_term=1)
        for n in stale["nodes"]:
            n["up"] = n["node_id"] == 1  # as the cut-off node sees it (seen on real nodes: then only it was asked)
        cut.frozen_metadata = stale
        cut.faults["SendBatch"] = lambda params: errors.NotLeader(
            "this node does not lead t/0", topic="t", partition=0, leader=None, leader_term=1)
        busy_until = clock.seconds() + 0.3  # the others cannot answer at first: node 1's view is taken

        def busy(params):
            if clock.seconds() < busy_until:
                return errors.LeaderNotAvailable("not yet", topic="t", partition=0)
            return None

        for n in (2, 3):
            cluster.nodes[n].faults["Metadata"] = busy
        later = [producer.send("t", {"n": i}, partition=0) for i in range(20, 60)]
        began = clock.seconds()
        run_until(clock, cluster, lambda: all(d.called for d in later), limit=30)
        assert clock.seconds() - began < 1.0
        assert values(cluster) == list(range(60))
        asked = [n for n, m, _ in cluster.requests if m == "Metadata"]
        assert {1, 2} <= set(asked)
    finally:
        close_client(client, cluster)

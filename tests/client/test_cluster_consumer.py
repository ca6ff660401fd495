"""The Consumer and TopicConsumer over a fake cluster: they follow leaders, and skip or repeat nothing."""

from __future__ import annotations

import pytest
from fake_cluster import run_for, run_until
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import Consumer, TopicConsumer


def fill(cluster, topic, partition, values):
    part = cluster.topics[topic][partition]
    for v in values:
        part.records.append({"offset": len(part.records), "timestamp": 1000 + len(part.records), "key": None,
                             "value": v, "headers": {}})
    cluster.appended(topic, partition)


def next_batch(clock, cluster, consumer, limit=30.0):
    box = []
    consumer.poll().addBoth(box.append)
    run_until(clock, cluster, lambda: box, limit=limit)
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def read(clock, cluster, consumer, count, during=None, at=None):
    """Poll until C{count} messages came (calling C{during()} once C{at} were read); their offsets."""
    offsets = []
    changed = False
    while len(offsets) < count:
        offsets += [m["offset"] for m in next_batch(clock, cluster, consumer)]
        if during is not None and not changed and len(offsets) >= at:
            during()
            changed = True
    return offsets


def test_the_consumer_follows_a_leader_that_moves_while_it_reads(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    fill(cluster, "t", 0, range(200))
    consumer = Consumer(client, "t", 0, start="earliest", max_messages=10, max_wait_ms=100)
    offsets = read(clock, cluster, consumer, 200, during=lambda: cluster.move_leader("t", 0, 2), at=50)
    assert offsets == list(range(200))  # nothing skipped, nothing twice
    polls = [n for n, _ in cluster.sent("Poll")]
    assert polls[0] == 1 and polls[-1] == 2
    consumer.close()


def test_the_consumer_follows_a_leader_that_moves_without_hints(clock, cluster, client):
    cluster.hints = False
    cluster.create_topic("t", 1, leaders=[1])
    fill(cluster, "t", 0, range(100))
    consumer = Consumer(client, "t", 0, start=0, max_messages=7, max_wait_ms=100)
    offsets = read(clock, cluster, consumer, 100, during=lambda: cluster.move_leader("t", 0, 3), at=30)
    assert offsets == list(range(100))
    assert [n for n, _ in cluster.sent("Poll")][-1] == 3
    consumer.close()


def test_the_consumer_leaves_a_dead_leader_for_the_new_one(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    fill(cluster, "t", 0, range(60))

    def die():
        cluster.kill(1)
        cluster.move_leader("t", 0, 3)

    consumer = Consumer(client, "t", 0, start=0, max_messages=10, max_wait_ms=100)
    offsets = read(clock, cluster, consumer, 60, during=die, at=20)
    assert offsets == list(range(60))
    consumer.close()


def test_a_long_poll_parked_at_a_leader_that_steps_down_goes_on_at_the_new_one(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    fill(cluster, "t", 0, ["old"])
    consumer = Consumer(client, "t", 0, start=0, max_wait_ms=5000)
    assert [m["value"] for m in next_batch(clock, cluster, consumer)] == ["old"]
    box = []
    consumer.poll().addBoth(box.append)
    run_for(clock, cluster, 0.1)
    assert cluster.nodes[1].parked  # the long poll waits at node 1
    cluster.move_leader("t", 0, 2)  # node 1 answers it NOT_LEADER
    run_for(clock, cluster, 0.1)
    assert cluster.nodes[2].parked and not box  # asked again, and parked, at node 2
    fill(cluster, "t", 0, ["new"])
    run_until(clock, cluster, lambda: box)
    assert [m["value"] for m in box[0]] == ["new"]
    consumer.close()
    run_for(clock, cluster, 0.1)


def test_leader_not_available_storm_while_reading_then_an_election(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    fill(cluster, "t", 0, range(40))
    consumer = Consumer(client, "t", 0, start=0, max_messages=10, max_wait_ms=100, timeout=30.0, prefetch=False)
    offsets = [m["offset"] for m in next_batch(clock, cluster, consumer)]
    cluster.move_leader("t", 0, None)
    box = []
    with capturedLogs() as events:
        consumer.poll().addBoth(box.append)
        run_for(clock, cluster, 3.0)
        assert not box
        cluster.move_leader("t", 0, 2)
        run_until(clock, cluster, lambda: box)
    offsets += [m["offset"] for m in box[0]]
    offsets += read(clock, cluster, consumer, 40 - len(offsets))
    assert offsets == list(range(40))
    text = [formatEvent(e) for e in events]
    assert len([t for t in text if "LEADER_NOT_AVAILABLE" in t]) == 1  # said once, not per retry
    assert [t for t in text if "polling t/0 works again" in t]
    consumer.close()


def test_start_n_before_the_end_is_resolved_at_the_leader(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[2])
    fill(cluster, "t", 0, range(10))
    consumer = Consumer(client, "t", 0, start="-3", max_wait_ms=0)
    assert [m["offset"] for m in next_batch(clock, cluster, consumer)] == [7, 8, 9]
    assert {n for n, _ in cluster.sent("ListOffsets")} == {2}
    consumer.close()


def test_a_poll_that_cannot_succeed_in_time_fails_and_keeps_the_position(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    fill(cluster, "t", 0, range(5))
    consumer = Consumer(client, "t", 0, start=0, max_messages=2, max_wait_ms=0, timeout=2.0, prefetch=False)
    read(clock, cluster, consumer, 2)
    cluster.move_leader("t", 0, None)
    with pytest.raises(errors.LeaderNotAvailable):
        next_batch(clock, cluster, consumer)
    assert consumer.position == 2
    cluster.move_leader("t", 0, 1)
    assert read(clock, cluster, consumer, 3) == [2, 3, 4]
    consumer.close()


def test_topic_consumer_reads_every_partition_from_its_leader_across_a_move(clock, cluster, client):
    cluster.create_topic("t", 3)  # leaders 1, 2, 3
    for p in range(3):
        fill(cluster, "t", p, [f"{p}-{i}" for i in range(30)])
    consumer = TopicConsumer(client, "t", start="earliest", max_messages=5, max_wait_ms=100)
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}
    moved = False
    while sum(map(len, got.values())) < 90:
        for m in next_batch(clock, cluster, consumer):
            got[m["partition"]].append(m["offset"])
            assert m["value"] == f"{m['partition']}-{m['offset']}"
        if not moved and sum(map(len, got.values())) >= 30:
            cluster.move_leader("t", 1, 3)
            moved = True
    assert got == {p: list(range(30)) for p in range(3)}
    assert consumer.positions == {0: 30, 1: 30, 2: 30}
    consumer.close()
    run_for(clock, cluster, 0.2)


def test_topic_consumer_hands_out_an_empty_list_once_nothing_came_anywhere(clock, cluster, client):
    cluster.create_topic("t", 2)
    consumer = TopicConsumer(client, "t", partitions=[0, 1], max_wait_ms=200)
    assert next_batch(clock, cluster, consumer) == []
    fill(cluster, "t", 1, ["x"])
    batch = next_batch(clock, cluster, consumer)
    assert [(m["partition"], m["value"]) for m in batch] == [(1, "x")]
    consumer.close()
    run_for(clock, cluster, 0.5)


def test_topic_consumer_keeps_asking_a_quiet_partition_while_another_is_busy(clock, cluster, client):
    cluster.create_topic("t", 2)
    consumer = TopicConsumer(client, "t", max_messages=5, max_wait_ms=50)
    seen: list[tuple[int, int]] = []
    for i in range(40):
        run_for(clock, cluster, 0.1)  # partition 1's long polls run out meanwhile: it answers []
        fill(cluster, "t", 0, [i])  # partition 0 always has something new
        if i == 20:
            fill(cluster, "t", 1, ["late"])
        seen += [(m["partition"], m["offset"]) for m in next_batch(clock, cluster, consumer)]
    assert (1, 0) in seen  # not starved by partition 0
    assert [o for p, o in seen if p == 0] == list(range(len([o for p, o in seen if p == 0])))
    consumer.close()
    run_for(clock, cluster, 0.5)

"""The partition snapshot an InstallSnapshot carries (streamlog.cluster.catchup)."""

from __future__ import annotations

import orjson
import pytest

from streamlog.cluster.catchup import PartitionSnapshot, PartitionSnapshotError, snapshot_of
from streamlog.cluster.producer_log import ProducerTrackingLog
from streamlog.cluster.replica import ReplicaStorage
from streamlog.idempotence.rules import Outcome
from streamlog.idempotence.table import ProducerStateTable
from streamlog.raft.log import Entry
from streamlog.raft.messages import InstallSnapshot
from streamlog.storage.base import RecordBatch, TopicConfig
from streamlog.storage.memory import MemoryLog


def test_round_trip_and_canonical_bytes():
    snap = PartitionSnapshot(1234, b"\x00state\xff")
    data = snap.encode()
    assert data == b'{"next_offset":1234,"producer_state":"AHN0YXRl/w==","v":1}'
    assert PartitionSnapshot.decode(data) == snap


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b'{"v":2,"next_offset":1,"producer_state":""}',
    b'{"v":1,"next_offset":-1,"producer_state":""}', b'{"v":1,"next_offset":true,"producer_state":""}',
    b'{"v":1,"next_offset":1.5,"producer_state":""}', b'{"v":1,"next_offset":1,"producer_state":"!!"}',
    b'{"v":1,"next_offset":1}', b'{"v":1,"next_offset":1,"producer_state":"","extra":0}',
])
def test_what_is_not_a_snapshot_is_refused(data):
    with pytest.raises(PartitionSnapshotError):
        PartitionSnapshot.decode(data)


def batch(base: int, count: int) -> RecordBatch:
    records = [orjson.dumps({"offset": base + i, "timestamp": 1000, "key": None, "value": "v", "headers": {}})
               for i in range(count)]
    return RecordBatch(base_offset=base, count=count, term=1, first_timestamp=1000, max_timestamp=1000,
                       payload=b"\n".join(records))


def test_a_follower_installing_it_resumes_at_the_leaders_log_start():
    leader = MemoryLog(TopicConfig(), always_durable=True)
    for i in range(5):
        leader.append([Entry(i + 1, 1, batch(3 * i, 3))])
    leader.truncate_prefix(3)
    data = snapshot_of(leader, leader.start_index - 1)
    assert PartitionSnapshot.decode(data).next_offset == leader.start_offset == 9
    follower = MemoryLog(TopicConfig(), always_durable=True)
    storage = ReplicaStorage("g", follower, None, lambda: None, lambda f: None)
    storage.install_snapshot(InstallSnapshot(2, "a", 3, 1, data, ("a", "b")))
    assert (follower.start_index, follower.start_offset, follower.end_offset) == (4, 9, 9)
    assert follower.config_at(3) == (3, ("a", "b"))
    with pytest.raises(PartitionSnapshotError):
        storage.install_snapshot(InstallSnapshot(2, "a", 4, 1, b"junk", ("a", "b")))
    assert (follower.start_index, follower.start_offset) == (4, 9)  # untouched
    # What a node that predates the snapshot data sends: the log's own default.
    storage.install_snapshot(InstallSnapshot(2, "a", 7, 1, b"", ("a", "b")))
    assert (follower.start_index, follower.start_offset) == (8, 9)


def idempotent_batch(base: int, count: int, producer_id: int, sequence: int) -> RecordBatch:
    plain = batch(base, count)
    return RecordBatch(base_offset=base, count=count, term=1, first_timestamp=1000, max_timestamp=1000,
                       payload=plain.payload, producer_id=producer_id, producer_epoch=0, base_sequence=sequence)


def test_the_same_snapshot_restores_the_followers_producer_table():
    # One mechanism (rejoin's PartitionSnapshot, idempotence's producer state): the follower's
    # log resumes at the leader's offset and its producer table is the leader's as of the snapshot.
    leader = ProducerTrackingLog(MemoryLog(TopicConfig(), always_durable=True), ProducerStateTable())
    for i in range(5):
        leader.append([Entry(i + 1, 1, idempotent_batch(3 * i, 3, 7, 3 * i))])
    leader.table.mark_committed(5)
    leader.truncate_prefix(3)
    data = leader.snapshot_data(leader.start_index - 1)
    snap = PartitionSnapshot.decode(data)
    assert snap.next_offset == 9 and snap.producer_state
    follower = ProducerTrackingLog(MemoryLog(TopicConfig(), always_durable=True), ProducerStateTable())
    storage = ReplicaStorage("g", follower.raw, None, lambda: None, lambda f: None)
    storage.log = follower
    storage.install_snapshot(InstallSnapshot(2, "a", 3, 1, data, ("a", "b")))
    assert (follower.raw.start_index, follower.raw.start_offset) == (4, 9)
    # A retry of the batch at sequence 6 (entry 3, below the snapshot) is recognised as stored...
    decision = follower.table.check(7, 0, 6, 3, 1000)
    assert decision.outcome is Outcome.DUPLICATE and decision.base_offset == 6
    # ... and the leader's next batches continue the producer's numbers there.
    follower.append([Entry(4, 1, idempotent_batch(9, 3, 7, 9))])
    assert follower.table.check(7, 0, 12, 1, 1000).outcome is Outcome.NEW
    assert follower.table.check(7, 0, 9, 3, 1000).outcome is Outcome.DUPLICATE

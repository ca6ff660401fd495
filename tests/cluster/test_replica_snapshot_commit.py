"""A follower's commit that was queued before it installed a snapshot, delivered after it.

The Raft driver runs a group's effects in order and holds them behind a barrier
(a hard-state save, a SyncLog barrier); the core meanwhile goes on taking
messages.  So a follower can install an InstallSnapshot (its log reset to
start after the snapshot) while a C{Commit} of an index below the snapshot
still waits in the queue.  That commit then reaches the replica, whose log no
longer holds the index: it raised inside the Raft callback (C{next_offset_after}
outside the log), found by the cluster simulator with retention running.
"""

from __future__ import annotations

import orjson

from streamlog.cluster.catchup import PartitionSnapshot
from streamlog.cluster.replica import PartitionReplica, ReplicaStorage
from streamlog.raft.log import Entry
from streamlog.raft.messages import InstallSnapshot
from streamlog.storage.base import RecordBatch, TopicConfig
from streamlog.storage.memory import MemoryLog


def batch(base: int, count: int) -> RecordBatch:
    records = [orjson.dumps({"offset": base + i, "timestamp": 1000, "key": None, "value": f"v{base + i}",
                             "headers": {}}) for i in range(count)]
    return RecordBatch(base_offset=base, count=count, term=1, first_timestamp=1000, max_timestamp=1000,
                       payload=b"\n".join(records))


def follower() -> tuple[PartitionReplica, ReplicaStorage, MemoryLog]:
    log = MemoryLog(TopicConfig(), always_durable=True)
    for i in range(5):
        log.append([Entry(i + 1, 1, batch(2 * i, 2))])
    replica = PartitionReplica("t", 0, log, "g", None, "b", lambda member: (None, None))
    storage = ReplicaStorage("g", log, None, lambda: None, lambda f: None)
    return replica, storage, log


def test_a_commit_queued_before_a_snapshot_install_is_harmless_after_it():
    replica, storage, log = follower()
    replica.committed(2)
    assert replica.high_watermark == 4
    storage.install_snapshot(InstallSnapshot(2, "a", 30, 2, PartitionSnapshot(60, b"").encode(), ("a", "b")))
    assert (log.start_index, log.start_offset) == (31, 60)
    replica.committed(4)  # queued before the install: entry 4 is gone from this log
    replica.committed(30)  # the install's own commit
    assert replica.commit_index == 30 and replica.high_watermark == 60


def test_a_commit_of_the_snapshots_own_index_sets_the_high_watermark_at_its_offset():
    replica, storage, log = follower()
    storage.install_snapshot(InstallSnapshot(2, "a", 30, 2, PartitionSnapshot(60, b"").encode(), ("a", "b")))
    replica.committed(3)
    assert replica.high_watermark == 60 and replica.commit_index == 30
    log.append([Entry(31, 2, batch(60, 2))])
    replica.committed(31)
    assert replica.high_watermark == 62

"""The metadata group compacts its log (streamlog.cluster.meta_snapshots over ClusterHarness:
real ClusterNodes, RaftHosts, planner and replicas on a Clock, memory storage that survives a
restart as a disk would).

What these show: every node takes snapshots of the cluster state and drops the log's prefix
up to the older one it keeps; a restarted node starts from its snapshot and the log after it;
a wiped node rejoins by the controller's InstallSnapshot; a damaged newest snapshot falls back
to the older one, and with none readable the node refuses to start; in the window after every
node restarted (the new controller's commit index at its log start), neither the planner nor
the broker takes the snapshot's state for current.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from streamlog.cluster import meta_snapshots
from streamlog.cluster.meta_snapshots import MetadataCompactor, MetadataRestoreError, MetadataSnapshotError
from streamlog.cluster.metadata import METADATA_GROUP, ClusterState, encode_snapshot, partition_group
from streamlog.raft.log import Entry, MemoryRaftLog
from streamlog.storage.snapshot_files import MemorySnapshots
from streamlog.testing import ClusterHarness

INTERVAL = 4


def store_of(c: ClusterHarness, i: int) -> MemorySnapshots:
    store: MemorySnapshots = c.storages[i].snapshot_store(METADATA_GROUP)
    return store


def create(c: ClusterHarness, *names: str) -> None:
    c.create_topics(*names)


def converged(c: ClusterHarness) -> bool:
    nodes = [n for n in c.nodes.values() if not n.stopped]
    if any(n.state is None or n.cores.get(METADATA_GROUP) is None or not n.metadata_current() for n in nodes):
        return False
    return len({encode_snapshot(n.state) for n in nodes}) == 1


@pytest.fixture
def cluster():
    c = ClusterHarness(3, metadata_snapshot_entries=INTERVAL)
    c.run_until_formed()
    create(c, *(f"t{i}" for i in range(12)))
    c.run_until(lambda: converged(c))
    yield c
    c.stop()


def test_every_node_snapshots_and_drops_the_logs_prefix(cluster):
    for node in cluster.nodes.values():
        log, compactor = node.meta_log, node.compactor
        held = store_of(cluster, node.node_id).listing()
        assert len(held) == 2 and held[0] == compactor.index
        assert log.start_index == held[1] + 1  # cut at the older snapshot, never past it
        # What the log keeps: about two intervals, not every entry since the cluster began.
        assert log.last_index - log.start_index + 1 <= 2 * INTERVAL + 2 < log.last_index
        assert compactor.stats["written"] >= 3


def test_a_restarted_node_starts_from_its_snapshot_and_replays_only_the_log_after_it(cluster):
    before = cluster.nodes[2].state
    cluster.kill(2)
    node = cluster.start(2)
    snapshot = node.compactor.index
    assert node.state.applied_index == snapshot >= node.meta_log.start_index - 1
    assert set(node.state.topics) <= set(before.topics) and "t0" in node.state.topics
    # Its replicas are opened at once from its own storage (the snapshot names their topics).
    assert all(node.directory.topics[name].partitions for name in node.state.topics)
    create(cluster, "after-restart")
    cluster.run_until(lambda: converged(cluster) and "after-restart" in cluster.nodes[2].state.topics)


def test_a_node_that_was_away_past_the_controllers_log_start_installs_its_snapshot(cluster):
    cluster.kill(3)
    create(cluster, *(f"while-away-{k}" for k in range(3 * INTERVAL)))
    leader_start = max(n.meta_log.start_index for i, n in cluster.nodes.items() if i != 3)
    assert leader_start > cluster.nodes[3].meta_log.last_index + 1  # what node 3 needs next is gone
    node = cluster.start(3)
    cluster.run_until(lambda: converged(cluster) and f"while-away-{3 * INTERVAL - 1}" in node.state.topics)
    assert node.compactor.stats["installed"] >= 1 and node.meta_log.start_index > 1
    assert len(store_of(cluster, 3).listing()) == 2  # its own older one, and the installed one


def test_a_wiped_node_rejoins_by_installing_the_controllers_snapshot(cluster):
    cluster.kill(3)
    create(cluster, "while-away-1", "while-away-2")
    node = cluster.wipe_and_start(3)
    cluster.run_until(lambda: converged(cluster) and node.state.nodes[3].incarnation == node.identity.incarnation
                      and "while-away-2" in node.state.topics, timeout=60)
    assert node.compactor.stats["installed"] >= 1
    assert node.meta_log.start_index > 1  # it never saw the entries before the controller's log start
    assert store_of(cluster, 3).listing()  # the installed snapshot is on its disk: a restart rebuilds from it
    cluster.kill(3)
    again = cluster.start(3)
    assert again.state.applied_index >= again.meta_log.start_index - 1 and "t0" in again.state.topics
    cluster.run_until(lambda: converged(cluster))


def test_a_damaged_newest_snapshot_falls_back_to_the_older_one(cluster):
    cluster.kill(2)
    store = store_of(cluster, 2)
    newest, older = store.listing()
    data = bytearray(store.files[newest])
    data[-3] ^= 0x20  # a bit flip inside the state
    store.files[newest] = bytes(data)
    node = cluster.start(2)
    assert node.state.applied_index == older and node.refused is None
    assert newest in store.refused and store.listing() == [older]
    cluster.run_until(lambda: converged(cluster))


def test_with_no_readable_snapshot_a_compacted_node_refuses_to_start(cluster):
    cluster.kill(2)
    store = store_of(cluster, 2)
    for index in store.listing():
        store.files[index] = b"damaged"
    node = cluster.start(2)
    assert node.refused is not None and "cannot rebuild the cluster metadata" in node.refused, node.refused
    assert "not a snapshot file" in node.refused or "shorter" in node.refused
    assert METADATA_GROUP not in node.cores  # it runs no group on a state it does not have


def test_the_window_after_every_node_restarted_is_not_current_for_the_planner_or_the_broker(cluster, monkeypatch):
    # A topic deleted, and one created, after the newest snapshot: after a restart of every node
    # each starts from a state that still has the first and lacks the second.
    c = cluster
    create(c, "gone")
    for filler in range(INTERVAL + 1):  # until every node's newest snapshot has it
        c.run_until(lambda: converged(c))
        if all(n.compactor.index >= n.state.topics["gone"].created_index for n in c.nodes.values()):
            break
        create(c, f"filler{filler}")
    gone = partition_group(c.nodes[1].state.topics["gone"].topic_id, 0)
    assert c.call(1, "DeleteTopic", {"topic": "gone"}).get("result"), "delete"
    create(c, "late")
    c.run_until(lambda: converged(c) and all(gone not in n.cores for n in c.nodes.values()))
    for i, node in c.nodes.items():  # the precondition: the snapshot a restart starts from
        snapshot = meta_snapshots.decode(store_of(c, i).read(node.compactor.index), node.state.cluster_id)[1]
        assert "gone" in snapshot.topics and "late" not in snapshot.topics, i
    recreated: list[tuple[int, str]] = []
    for i in c.nodes:
        storage = c.storages[i]
        real = storage.create_topic

        def recording(name: str, partitions: int, config: Any, _i: int = i, _real: Any = real) -> Any:
            recreated.append((_i, name))
            return _real(name, partitions, config)

        monkeypatch.setattr(storage, "create_topic", recording)
    for i in (1, 2, 3):
        c.kill(i)
    for i in (1, 2, 3):
        c.start(i)
    answers: set[str] = set()

    def late_everywhere() -> bool:
        for node in c.nodes.values():
            [topic] = node.metadata({"topics": ["late"]})["topics"]
            answers.add(topic["error"]["code"] if "error" in topic else "ok")
        return converged(c) and all("late" in n.state.topics for n in c.nodes.values())

    c.run_until(late_everywhere)
    assert (gone not in {name for _, name in recreated}), recreated
    assert "UNKNOWN_TOPIC" not in answers and "LEADER_NOT_AVAILABLE" in answers, answers


# --- the compactor alone ----------------------------------------------------------------


def _state(applied: int = 5) -> ClusterState:
    return attrs.evolve(ClusterState.empty("0" * 32), applied_index=applied)


def _log(start: int, last: int, term: int = 2) -> MemoryRaftLog:
    return MemoryRaftLog([Entry(i, term) for i in range(start, last + 1)], start_index=start, prefix_term=term)


def test_a_snapshot_waits_until_the_log_is_durable_at_its_index():
    compactor = MetadataCompactor(MemorySnapshots(), interval=5)
    assert not compactor.due(4) and compactor.due(5)
    compactor.take(_state(5), 2)
    assert not compactor.write(durable_index=4) and compactor.store.listing() == []
    assert not compactor.due(9)  # one at a time
    assert compactor.write(durable_index=5) and compactor.store.listing() == [5]
    assert compactor.compaction_point() == 0  # one snapshot: nothing dropped yet
    compactor.take(_state(10), 2)
    assert compactor.write(durable_index=12) and compactor.compaction_point() == 5


def test_a_snapshot_taken_before_a_newer_one_was_installed_is_not_written():
    compactor = MetadataCompactor(MemorySnapshots(), interval=5)
    compactor.take(_state(5), 2)  # waiting for the log's fsync
    compactor.install(meta_snapshots.encode(_state(9), 3), "0" * 32, 7)
    assert compactor.pending is None and not compactor.write(durable_index=20)
    assert compactor.index == 9 and compactor.store.listing() == [9]


def test_zero_entries_never_snapshots():
    assert not MetadataCompactor(MemorySnapshots(), interval=0).due(10**6)


def test_restore_takes_the_newest_that_reaches_the_logs_start():
    store = MemorySnapshots()
    store.save(3, meta_snapshots.encode(_state(3), 2))
    store.save(8, meta_snapshots.encode(_state(8), 2))
    compactor = MetadataCompactor(store)
    assert compactor.restore("0" * 32, _log(4, 12)).applied_index == 8
    assert compactor.index == 8 and compactor.snapshot_for(3) == store.read(8) and compactor.snapshot_for(9) is None


def test_restore_refuses_a_snapshot_whose_term_the_log_contradicts():
    store = MemorySnapshots()
    store.save(3, meta_snapshots.encode(_state(3), 2))
    store.save(8, meta_snapshots.encode(_state(8), 1))  # entry 8 has term 2 in the log
    assert MetadataCompactor(store).restore("0" * 32, _log(4, 12)).applied_index == 3
    assert list(store.refused) == [8]


def test_restore_of_an_uncompacted_log_without_snapshots_replays_it_all():
    assert MetadataCompactor(MemorySnapshots()).restore("0" * 32, _log(1, 12)) is None


def test_restore_refuses_a_snapshot_of_another_cluster():
    store = MemorySnapshots()
    store.save(8, meta_snapshots.encode(_state(8), 2))
    with pytest.raises(MetadataRestoreError, match="of cluster 0{32}, this node's is 1{32}"):
        MetadataCompactor(store).restore("1" * 32, _log(4, 12))


def test_install_checks_before_it_stores_anything():
    compactor = MetadataCompactor(MemorySnapshots())
    good = meta_snapshots.encode(_state(8), 2)
    for data, at, error in [(good[:-1], 8, "torn"), (good, 9, "older than the log start"),
                            (meta_snapshots.encode(_state(8), 2).replace(b'"version":1', b'"version":2'), 8,
                             "torn|CRC")]:
        with pytest.raises(MetadataSnapshotError, match=error):
            compactor.install(data, "0" * 32, at)
    assert compactor.store.listing() == [] and compactor.index == 0
    assert compactor.install(good, "0" * 32, 6).applied_index == 8
    assert compactor.store.listing() == [8] and compactor.snapshot_for(6) == good


def test_the_state_must_say_the_index_its_file_says():
    frame_says_9 = meta_snapshots.snapshot_files.encode(9, 2, encode_snapshot(_state(8)))
    with pytest.raises(MetadataSnapshotError, match="says index 9, its state was applied to 8"):
        meta_snapshots.decode(frame_says_9, "0" * 32)


def test_a_state_of_another_version_or_not_canonical_is_refused_in_a_sound_frame():
    payload = encode_snapshot(_state(8))
    for changed, error in [(payload.replace(b'"version":1', b'"version":2'), "version 2 is not 1"),
                           (payload.replace(b'{"applied_index"', b'{ "applied_index"'), "not canonical")]:
        with pytest.raises(MetadataSnapshotError, match=error):
            meta_snapshots.decode(meta_snapshots.snapshot_files.encode(8, 2, changed), "0" * 32)


def test_a_snapshot_installed_while_one_is_in_a_worker_stays_the_newest():
    # The node saves a snapshot in a worker (start_write, then finish_write once durable): an
    # install from the leader may land in between, and must not be overtaken by the older file.
    compactor = MetadataCompactor(MemorySnapshots(), interval=5)
    compactor.take(_state(5), 2)
    job = compactor.start_write(durable_index=5)
    assert job is not None and job[0] == 5 and compactor.writing == 5
    assert not compactor.due(100) and compactor.start_write(100) is None  # one at a time
    compactor.install(meta_snapshots.encode(_state(9), 3), "0" * 32, 7)
    compactor.store.save(*job)  # the worker's save ends after it
    assert not compactor.finish_write(*job)  # not the newest: the log is not compacted for it
    assert compactor.index == 9 and compactor.writing is None and compactor.snapshot_for(9) is not None
    assert compactor.stats["written"] == 1 and compactor.store.listing() == [9, 5]


def test_a_failed_save_in_a_worker_lets_the_next_snapshot_be_taken():
    compactor = MetadataCompactor(MemorySnapshots(), interval=5)
    compactor.take(_state(5), 2)
    assert compactor.start_write(durable_index=5) is not None and not compactor.due(10)
    compactor.abandon_write()
    assert compactor.due(10) and compactor.index == 0 and compactor.stats["written"] == 0


def test_a_directory_save_tolerates_an_old_file_another_save_already_pruned(tmp_path):
    from streamlog.storage.snapshot_files import DirectorySnapshots

    store = DirectorySnapshots(str(tmp_path))
    store.save(1, b"one")
    store.save(2, b"two")
    real = store.listing
    store.listing = lambda: [*real(), 0]  # as listed just before a concurrent save removed file 0
    store.save(3, b"three")
    assert real() == [3, 2]


def test_an_install_not_newer_than_the_snapshot_held_is_not_counted():
    """Read-only review of ready-metrics: streamlog_meta_snapshot_installs_total counted every install,
    though one not newer than the snapshot held is neither stored nor taken."""
    compactor = MetadataCompactor(MemorySnapshots())
    compactor.install(meta_snapshots.encode(_state(9), 3), "0" * 32, 7)
    assert compactor.stats["installed"] == 1 and compactor.store.saves == 1
    for older in (9, 8):  # the same one again (the message resent), and an older one
        compactor.install(meta_snapshots.encode(_state(older), 3), "0" * 32, 7)
    assert compactor.stats["installed"] == 1 and compactor.store.saves == 1 and compactor.index == 9
    compactor.install(meta_snapshots.encode(_state(12), 3), "0" * 32, 10)
    assert compactor.stats["installed"] == 2 and compactor.index == 12


class StuckSnapshots(MemorySnapshots):
    """A store whose files cannot be renamed aside (a read-only directory, say)."""

    def refuse(self, index: int) -> None:
        raise PermissionError(13, "Permission denied")


def test_a_damaged_file_is_counted_refused_only_once_it_was_set_aside():
    """Read-only review of ready-metrics: streamlog_meta_snapshots_refused_total counted a damaged file
    even when setting it aside failed (it stays, and is read and refused again at the next start)."""
    for store, refused in [(StuckSnapshots(), 0), (MemorySnapshots(), 1)]:
        store.save(3, meta_snapshots.encode(_state(3), 2))
        store.save(8, meta_snapshots.encode(_state(8), 2)[:-1])  # torn
        compactor = MetadataCompactor(store)
        assert compactor.restore("0" * 32, _log(4, 12)).applied_index == 3  # the older one, either way
        assert compactor.stats["refused"] == refused
        assert store.listing() == ([8, 3] if refused == 0 else [3])

"""A node whose fsync hangs: /ready says so (with the sync's age) past --ready-max-sync-seconds, and
/metrics shows the age of the oldest sync in flight, which the duration histogram (finished syncs
only) cannot.  A durable node alone on segmented storage, its sync worker held (ManualThreads)."""

from __future__ import annotations

import attrs
import pytest
from http_support import get
from metrics_support import Scrape, SyncedLog, service_of

from streamlog.http.health import HealthResource, ReadyResource, readiness
from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
from streamlog.storage.segmented import SegmentedStorage
from streamlog.testing import BrokerHarness, ManualThreads


def turn(threads, clock, n=5):
    for _ in range(n):
        threads.run_all()
        clock.advance(0)


@pytest.fixture
def hung(clock, tmp_path):
    """(harness, threads, a connection that got one acknowledged write with the disk still healthy)."""
    threads = ManualThreads()
    committer = GroupCommitter(FsyncPolicy("always"), clock=clock, run_in_thread=threads, checkpoint_interval=None)
    h = BrokerHarness(storage=SegmentedStorage(str(tmp_path / "data")), clock=clock, committer=committer)
    h.broker.create_topic("t", 1)
    for _ in range(5):
        h.settle()
        turn(threads, clock, 1)
    conn = h.connect()
    warm = conn.request("Send", {"topic": "t", "value": "warm"})
    turn(threads, clock)
    assert [a for a in conn.answers() if a["id"] == warm and "result" in a]  # a healthy disk: acked
    yield h, threads, conn
    h.stop()
    committer.stop()
    turn(threads, clock, 10)
    h.broker.close()


def test_a_sync_in_flight_past_the_limit_makes_the_node_not_ready_and_the_gauge_shows_its_age(hung, clock):
    h, threads, conn = hung
    service = service_of(h.broker)
    scrape = Scrape(h.broker, h.factory)
    assert scrape.value("streamlog_fsync_oldest_in_flight_seconds", kind="log") == 0
    rids = [conn.request("Send", {"topic": "t", "value": i, "acks": "all"}) for i in range(5)]
    clock.advance(0)  # the round hands the sync to the (now hung) worker
    assert threads.jobs
    clock.advance(9.5)
    assert scrape.value("streamlog_fsync_oldest_in_flight_seconds", kind="log") == pytest.approx(9.5)
    ready, body = readiness(service)
    assert ready and body["checks"]["disk"] == {"ok": True, "oldest_sync_seconds": 9.5}
    clock.advance(1.0)  # 10.5 s: past the default --ready-max-sync-seconds (10)
    ready, body = readiness(service)
    assert not ready
    assert body["checks"]["disk"] == {
        "ok": False, "oldest_sync_seconds": 10.5, "limit_seconds": 10.0, "sync": "log",
        "reason": "a log sync (fsync) has been in flight for 10.5 s, more than --ready-max-sync-seconds (10 s): "
                  "writes that wait for it are not answered"}
    answer = get(ReadyResource(service), "/")
    assert answer.status == 503 and answer.json()["checks"]["disk"]["ok"] is False
    health = get(HealthResource(1, service=service), "/")  # liveness stays: a restart does not mend a disk
    assert health.status == 200 and health.json()["oldest_sync_seconds"] == 10.5
    assert not {a["id"] for a in conn.answers()} & set(rids)
    turn(threads, clock)  # the disk comes back
    assert {a["id"] for a in conn.answers() if "result" in a} >= set(rids)
    assert readiness(service)[0] and scrape.value("streamlog_fsync_oldest_in_flight_seconds", kind="log") == 0


def test_the_limit_is_the_nodes_option(hung, clock):
    h, threads, conn = hung
    service = service_of(h.broker)
    service.config = attrs.evolve(service.config, ready_max_sync_seconds=2.0)
    conn.request("Send", {"topic": "t", "value": 1, "acks": "all"})
    clock.advance(0)
    clock.advance(1.5)
    assert readiness(service)[0]
    clock.advance(1.0)
    ready, body = readiness(service)
    assert not ready and body["checks"]["disk"]["limit_seconds"] == 2.0
    turn(threads, clock)


def test_the_oldest_of_several_syncs_in_flight_is_the_one_reported():
    from twisted.internet.task import Clock

    clock = Clock()
    threads = ManualThreads()
    committer = GroupCommitter(FsyncPolicy("always"), clock=clock, run_in_thread=threads, checkpoint_interval=None)

    first, second = SyncedLog(), SyncedLog()
    committer.wait_index(first, 3)
    clock.advance(0)
    clock.advance(4.0)
    committer.wait_index(second, 3)
    clock.advance(0)
    clock.advance(1.0)
    assert committer.oldest_sync_seconds() == pytest.approx(5.0)
    threads.run_one()  # the older one finishes
    assert committer.oldest_sync_seconds() == pytest.approx(1.0)
    threads.run_all()
    assert committer.oldest_sync_seconds() == 0.0


def test_a_hung_hard_state_save_makes_the_node_not_ready(clock, tmp_path):
    """A Raft term-and-vote save that never finishes stalls the group's election as surely as a
    hung log sync stalls writes: /ready goes 503 (sync: hard_state) and the gauge shows its age."""
    threads = ManualThreads()
    committer = GroupCommitter(FsyncPolicy("always"), clock=clock, run_in_thread=threads, checkpoint_interval=None)
    h = BrokerHarness(storage=SegmentedStorage(str(tmp_path / "data")), clock=clock, committer=committer)
    saves = ManualThreads()
    h.broker.storage.hard_state.bind(clock, saves)  # the term-and-vote rounds now wait in this "worker"
    service = service_of(h.broker)
    scrape = Scrape(h.broker, h.factory)
    try:
        h.broker.create_topic("t", 1)  # its group elects this node: a term and vote to save first
        turn(threads, clock)  # log syncs go through: only the save is held
        assert saves.jobs and not threads.jobs
        clock.advance(10.5)
        assert scrape.value("streamlog_fsync_oldest_in_flight_seconds", kind="hard_state") == pytest.approx(10.5)
        assert scrape.value("streamlog_fsync_oldest_in_flight_seconds", kind="log") == 0
        ready, body = readiness(service)
        assert not ready
        assert body["checks"]["disk"] == {
            "ok": False, "oldest_sync_seconds": 10.5, "limit_seconds": 10.0, "sync": "hard_state",
            "reason": "a Raft hard-state save (term and vote, fsync) has been in flight for 10.5 s, more than "
                      "--ready-max-sync-seconds (10 s): its Raft groups cannot vote or elect until it is durable"}
        assert get(ReadyResource(service), "/").status == 503
        saves.run_all()  # the disk comes back
        assert scrape.value("streamlog_fsync_oldest_in_flight_seconds", kind="hard_state") == 0
        assert readiness(service)[1]["checks"]["disk"] == {"ok": True, "oldest_sync_seconds": 0.0}
    finally:
        h.stop()
        committer.stop()
        for _ in range(10):
            saves.run_all()
            turn(threads, clock, 1)
        h.broker.close()


def test_a_hung_checkpoint_counts_as_a_sync_in_flight():
    """The periodic pass's sync-and-checkpoint job in a worker is tracked like a commit sync."""
    from twisted.internet.task import Clock

    clock = Clock()
    threads = ManualThreads()
    committer = GroupCommitter(FsyncPolicy("never"), clock=clock, run_in_thread=threads, checkpoint_interval=5.0)
    log = SyncedLog()
    committer.wait_index(log, 3)  # seen: the periodic pass syncs and checkpoints it
    clock.advance(5.0)
    assert threads.jobs
    clock.advance(12.0)
    assert committer.in_flight.oldest() == (pytest.approx(12.0), "checkpoint")
    assert committer.oldest_sync_seconds() == pytest.approx(12.0)
    threads.run_all()
    assert committer.in_flight.oldest() is None
    committer.stop()
    threads.run_all()


class DueLog(SyncedLog):
    """A log whose commit sync makes a checkpoint due (it rolled, or grew enough)."""

    checkpoint_due = True
    checkpoints = 0

    def checkpoint(self, sync: bool = True) -> bool:
        self.checkpoint_due = False
        self.checkpoints += 1
        return True


def test_a_hung_due_checkpoint_counts_as_a_sync_in_flight_and_ready_says_what_it_holds():
    """A checkpoint a commit sync made due, written by a worker of its own (not the periodic pass's
    job), is tracked too: a hung one fails /ready (read-only review of ready-metrics: no test
    failed with that tracking removed)."""
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from streamlog.http.health import _disk

    clock = Clock()
    threads = ManualThreads()
    committer = GroupCommitter(FsyncPolicy("always"), clock=clock, run_in_thread=threads, checkpoint_interval=None)
    service = SimpleNamespace(broker=SimpleNamespace(committer=committer),
                              config=SimpleNamespace(ready_max_sync_seconds=10.0))
    log = DueLog()
    committer.wait_index(log, 3)
    clock.advance(0)
    threads.run_one()  # the commit sync: it made a checkpoint due, handed to a worker (held)
    assert len(threads.jobs) == 1 and log.checkpoints == 0 and committer.checkpoints == 0
    clock.advance(11.0)
    assert committer.in_flight.oldest() == (pytest.approx(11.0), "checkpoint")
    disk = _disk(service)
    assert not disk["ok"] and disk["sync"] == "checkpoint"
    assert disk["reason"] == (
        "a checkpoint sync has been in flight for 11 s, more than --ready-max-sync-seconds (10 s): that log gets "
        "no newer checkpoint, a truncation, retention or close of it may block the node's reactor until it ends "
        "(they take the lock a checkpoint write holds), and a periodic pass's checkpoint also holds that log's "
        "later syncs and the rest of the pass")
    threads.run_all()
    assert log.checkpoints == 1 and committer.checkpoints == 1
    assert committer.in_flight.oldest() is None and _disk(service) == {"ok": True, "oldest_sync_seconds": 0.0}
    committer.stop()
    threads.run_all()


def test_a_started_node_counts_its_hard_state_saves_with_its_log_syncs(tmp_path):
    """The node's wiring: the committer made at start shares its tracker with the hard-state store."""
    from twisted.internet.testing import MemoryReactorClock

    from streamlog.broker.service import NodeConfig
    from streamlog.tap.server import Node

    reactor = MemoryReactorClock()
    node = Node(NodeConfig(listen="tcp:7070:interface=127.0.0.1", data_dir=str(tmp_path)), reactor)
    node.open()
    service = node.broker_service
    service.startService()
    try:
        store = service.broker.storage.hard_state
        assert store is not None and store.in_flight is service.committer.in_flight
    finally:
        service.stopService()


def test_a_metadata_snapshot_write_runs_in_a_worker_and_a_hung_one_makes_the_node_not_ready():
    """A cluster node's metadata snapshot (written and fsynced before the metadata log may drop
    its prefix) ran on the reactor thread, where a hung disk held everything and nothing could
    tell; in the committer's worker it is a sync in flight like the others (meta_snapshot)."""
    from metrics_support import service_of

    from streamlog.cluster.metadata import METADATA_GROUP
    from streamlog.testing import ClusterHarness

    c = ClusterHarness(3, metadata_snapshot_entries=4)
    try:
        c.run_until_formed()
        node, broker = c.nodes[2], c.brokers[2]
        threads = ManualThreads()  # "never": no log syncs, so the snapshot write is its only job
        broker.committer = GroupCommitter(FsyncPolicy("never"), clock=c.clock, run_in_thread=threads,
                                          checkpoint_interval=None)
        compactor, log = node.compactor, node.meta_log
        written, start = compactor.stats["written"], log.start_index
        c.create_topics(*(f"t{i}" for i in range(8)))
        c.run_until(lambda: threads.jobs)  # due: handed to the worker, not written on the reactor
        held = compactor.writing
        assert held is not None and compactor.stats["written"] == written
        already, kind = broker.committer.in_flight.oldest()  # handed over during create_topics' own run
        assert kind == "meta_snapshot"
        assert c.storages[2].snapshot_store(METADATA_GROUP).listing()[:1] != [held]  # not on disk yet
        service = service_of(broker, node_id=2)
        scrape = Scrape(broker, c.factories[2], node_id=2)
        c.run(10.5)  # the node runs on (the others' entries keep coming), the write stays hung
        assert len(threads.jobs) == 1 and compactor.writing == held  # one at a time
        assert log.start_index == start  # no prefix dropped before its snapshot is durable
        age = scrape.value("streamlog_fsync_oldest_in_flight_seconds", kind="meta_snapshot")
        assert age == pytest.approx(already + 10.5, abs=0.005)
        assert scrape.value("streamlog_fsync_oldest_in_flight_seconds", kind="log") == 0
        disk = readiness(service)[1]["checks"]["disk"]
        assert disk["ok"] is False and disk["sync"] == "meta_snapshot"
        assert disk["reason"].startswith("a metadata snapshot write (fsync) has been in flight for")
        assert disk["reason"].endswith("the metadata log is not compacted, and no newer snapshot is taken, "
                                       "until it is durable")
        threads.run_all()  # the disk comes back: the file is durable, then the log is compacted
        assert compactor.writing is None and compactor.stats["written"] == written + 1 and compactor.index == held
        c.create_topics(*(f"u{i}" for i in range(8)))  # a second snapshot: the older one is where the log is cut

        def compacted():
            threads.run_all()
            return log.start_index > start

        c.run_until(compacted)
        assert log.start_index <= compactor.index
        assert scrape.value("streamlog_fsync_oldest_in_flight_seconds", kind="meta_snapshot") == 0
    finally:
        c.stop()


def test_the_committers_stop_waits_for_a_tracked_job_still_in_its_worker():
    """A metadata snapshot write still in a worker when the node stops: the committer's stop
    (after which the node closes its storage and releases its data directory) waits for it."""
    from twisted.internet.task import Clock

    from streamlog.testing import no_result, result_of

    clock = Clock()
    threads = ManualThreads()
    committer = GroupCommitter(FsyncPolicy("never"), clock=clock, run_in_thread=threads, checkpoint_interval=None)
    results = []
    committer.run_tracked("meta_snapshot", lambda: "saved").addCallback(results.append)
    assert committer.in_flight.oldest() == (0.0, "meta_snapshot")
    stopped = committer.stop()
    no_result(stopped)
    threads.run_all()
    assert results == ["saved"]  # the job's own result still goes to its caller
    result_of(stopped)
    assert committer.in_flight.oldest() is None

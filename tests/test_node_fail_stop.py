"""A failed fsync stops the node (exit 70) wherever it happens, once start-up is over; during
start-up it refuses the start (exit 1).  The node's wiring, in-process: fail_stop replaced.

The storage's sync sites, one class each, are in tests/storage/test_sync_fail_stop.py.
"""

from __future__ import annotations

import errno
import os

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from streamlog.broker import service as service_module
from streamlog.broker.service import BrokerService, NodeConfig, StartupError
from streamlog.cluster.identity import IdentityStore
from streamlog.raft.core import RaftConfig
from streamlog.raft.driver import MemoryGroupStorage, RaftHost
from streamlog.raft.log import Entry
from streamlog.raft.messages import AppendEntries, AppendEntriesResponse
from streamlog.storage import producer_snapshots, sync_failure
from streamlog.storage.base import RecordBatch, TopicConfig
from streamlog.storage.errors import SyncFailed, WriteFailed
from streamlog.storage.lock import DataDirLock
from streamlog.storage.log import SegmentedLog
from streamlog.storage.segmented import SegmentedStorage


class Exited(BaseException):
    """What the replaced C{os._exit} raises (a test must not end its own process)."""


@pytest.mark.parametrize("failure", [
    sync_failure.describe("/data/t/0/1.log", OSError(errno.EIO, "Input/output error")),
    sync_failure.describe_write("/data/t/0/1.log", OSError(errno.EIO, "Input/output error"), "append to"),
], ids=["sync", "write"])
def test_fail_stop_logs_the_path_and_errno_critically_and_exits_70(monkeypatch, failure):
    statuses: list[int] = []

    def exit_(status: int) -> None:
        statuses.append(status)
        raise Exited()

    events: list[dict] = []
    monkeypatch.setattr(os, "_exit", exit_)
    globalLogPublisher.addObserver(events.append)
    try:
        with pytest.raises(Exited):
            service_module.fail_stop(failure)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert statuses == [70]
    [line] = [e for e in events if e.get("log_level") == LogLevel.critical]
    assert line["path"] == "/data/t/0/1.log" and line["errno"] == errno.EIO
    assert "/data/t/0/1.log" in str(line["error"]) and "EIO" in str(line["error"])


@pytest.fixture
def stops(monkeypatch):
    """Replaces fail_stop: what it was told, in order (it returns, where the real one exits 70)."""
    told: list = []
    monkeypatch.setattr(service_module, "fail_stop", told.append)
    return told


def stop(service: BrokerService, clock: Clock) -> None:
    service.stopService()
    clock.advance(10)
    assert service.lock is None


def test_a_running_node_stops_on_a_failed_sync_its_caller_would_answer_as_an_error(tmp_path, stops, eio_syncs):
    """InitProducerId's registry file (a node alone): its failed fsync was answered as an error
    while the node went on, and a retry was then answered from memory, never made durable."""
    clock = Clock()
    node = BrokerService(NodeConfig(data_dir=str(tmp_path)), clock)
    node.startService()
    registry = str(tmp_path / "producer-ids.json")
    eio_syncs(registry)
    request = {"producer_name": "p", "request_token": "t-1"}
    with pytest.raises(OSError):
        node.broker.handle_init_producer_id(request)
    [told] = stops
    assert isinstance(told, SyncFailed) and told.path.startswith(registry) and told.errno == errno.EIO
    # (The real fail_stop never returns.)  Its resend is not answered from memory either: that
    # identity never reached the disk.
    with pytest.raises(OSError):
        node.broker.handle_init_producer_id(request)
    eio_syncs(None)
    stop(node, clock)


def test_fail_stop_handles_failed_syncs_from_the_start_of_the_service_to_the_end_of_its_stop(tmp_path, stops):
    clock = Clock()
    node = BrokerService(NodeConfig(data_dir=str(tmp_path)), clock)
    before = sync_failure.installed()
    node.open()
    assert sync_failure.installed() is before  # start-up: a failure refuses the start instead
    node.startService()
    handler = sync_failure.installed()
    assert handler is not None and handler is not before
    failure = sync_failure.describe(str(tmp_path), OSError(errno.EIO, "Input/output error"))
    handler(failure)
    assert stops == [failure]
    stop(node, clock)
    assert sync_failure.installed() is before


def a_refused_snapshot(data_dir):
    """Topic t's partition, with a producer-state snapshot the next open refuses and removes
    (the failure of that removal's directory sync was only a warning); and a predicate for
    eio_syncs that accepts that sync."""
    storage = SegmentedStorage(str(data_dir))
    storage.load()
    storage.create_topic("t", 1, TopicConfig())
    storage.close()
    partition = data_dir / "t" / "0"
    doomed = partition / producer_snapshots.file_name(7)
    doomed.write_bytes(b"not a snapshot")
    return partition, lambda path: path == str(partition) and not doomed.exists()


def test_start_up_refuses_to_start_after_a_failed_sync_even_one_its_caller_went_on_from(tmp_path, eio_syncs):
    """A refused producer-state snapshot's removal: its failed directory fsync was a warning,
    and the node started on a disk that had just failed."""
    partition, removal = a_refused_snapshot(tmp_path)
    eio_syncs(removal)
    node = BrokerService(NodeConfig(data_dir=str(tmp_path)), Clock())
    with pytest.raises(StartupError) as refused:
        node.open()
    assert str(partition) in str(refused.value) and "EIO" in str(refused.value)
    assert node.lock is None and node.broker is None  # released: nothing was served
    eio_syncs(None)
    again = BrokerService(NodeConfig(data_dir=str(tmp_path)), Clock())
    again.open()
    again.close()


def a_follower(directory) -> tuple[RaftHost, SegmentedLog, list]:
    """Node b, a follower of a in group g, its log holding entries 1-3 of term 1 (synced), the
    running node's handler installed; and the list of the messages it sends."""
    sync_failure.install(service_module._sync_failed)
    log = SegmentedLog(str(directory))
    log.append([Entry(i, 1, b"") for i in range(1, 4)])
    log.sync()
    host = RaftHost("b", ["a", "b"], RaftConfig(election_timeout=0.3, heartbeat_interval=0.05), clock=Clock())
    host.add_group("g", ["a", "b"], MemoryGroupStorage(log))
    sent: list = []
    host._send = lambda peer, group, msg: sent.append(msg)  # type: ignore[method-assign]
    return host, log, sent


def test_a_followers_failed_truncation_sync_inside_the_peer_transport_reaches_fail_stop(tmp_path, stops, eio_syncs):
    """A Raft follower cuts a conflicting tail on the reactor thread, inside the peer
    transport's delivery, which logged what a message raised and went on: the failed sync
    reaches fail_stop there (the running node's handler, as startService installs it), with
    its path and errno.  (That no success is answered held before the change too.)"""
    host, log, sent = a_follower(tmp_path / "g")
    eio_syncs(str(tmp_path / "g"))
    # The leader of term 2 has another entry at index 2: the follower truncates from 2.
    host.transport._deliver("a", "g", "b", "a", AppendEntries(2, "a", 1, 1, (Entry(2, 2, b""),), 0))
    assert stops and all(isinstance(f, SyncFailed) and f.path.startswith(str(tmp_path / "g")) and f.errno == errno.EIO
                         for f in stops)
    assert not [m for m in sent if isinstance(m, AppendEntriesResponse) and m.success]
    eio_syncs(None)
    host.stop()
    log.close(sync=False)


def test_a_registry_resend_after_a_failed_save_is_not_answered_from_memory(tmp_path, sync_failures, eio_syncs):
    from streamlog.broker.producer_ids import LocalRegistry

    registry = LocalRegistry(str(tmp_path / "producer-ids.json"))
    eio_syncs(str(tmp_path / "producer-ids.json"))
    with pytest.raises(OSError):
        registry.register("p", None, "t-1")
    assert sync_failures.failures
    with pytest.raises(OSError):
        registry.register("p", None, "t-1")  # the resend: still not durable, so not answered
    assert registry.producers == {} and registry.next_id == 0
    eio_syncs(None)
    assert LocalRegistry(str(tmp_path / "producer-ids.json")).producers == {}


def crashed_topic(data_dir, name: str = "t") -> None:
    """A topic whose last records were never synced nor checkpointed (as a crash leaves it):
    the next open reads them back and syncs them."""
    storage = SegmentedStorage(str(data_dir))
    storage.load()
    storage.create_topic("whole", 1, TopicConfig())
    log = storage.create_topic(name, 1, TopicConfig())[0]
    log.append(RecordBatch(base_offset=0, count=1, term=1, first_timestamp=1, max_timestamp=1, payload=b'{}'))
    log.log._release()  # no clean-shutdown checkpoint
    for other in storage.logs():
        if other is not log.log:
            other.close()
    storage.hard_state.close()


class SyncsSeen:
    """The path of every sync, and the index of the first one failed (a predicate for eio_syncs)."""

    def __init__(self, fails) -> None:
        self.fails = fails
        self.paths: list[str] = []
        self.failed_at: int | None = None

    def __call__(self, path: str) -> bool:
        self.paths.append(path)
        failing = self.fails(path)
        if failing and self.failed_at is None:
            self.failed_at = len(self.paths) - 1
        return failing

    def after_the_failure(self) -> list[str]:
        assert self.failed_at is not None, "no sync failed"
        return self.paths[self.failed_at + 1:]


def test_a_failed_start_after_a_swallowed_sync_failure_closes_the_logs_without_another_sync(
        tmp_path, eio_syncs, monkeypatch):
    """A failed sync the step that asked for it went on from, then a later start-up step fails:
    the storage is let go without syncing or checkpointing on the disk that failed."""
    partition, removal = a_refused_snapshot(tmp_path)
    seen = SyncsSeen(removal)
    eio_syncs(seen)

    class Refused(service_module.Broker):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            raise ValueError("a later start-up step fails")

    monkeypatch.setattr(service_module, "Broker", Refused)
    node = BrokerService(NodeConfig(data_dir=str(tmp_path)), Clock())
    with pytest.raises(StartupError) as refused:
        node.open()
    assert str(partition) in str(refused.value) and "EIO" in str(refused.value)
    assert seen.after_the_failure() == []
    assert node.lock is None and node.broker is None


def test_a_failed_recovery_sync_refuses_the_start_and_syncs_nothing_more(tmp_path, eio_syncs):
    """A start-up sync whose error goes up (recovery reading back a crashed log): one line
    naming the file and the errno, nothing synced after it, the lock released."""
    crashed_topic(tmp_path)
    seen = SyncsSeen(lambda path: path.startswith(str(tmp_path / "t")))
    eio_syncs(seen)
    node = BrokerService(NodeConfig(data_dir=str(tmp_path)), Clock())
    with pytest.raises(StartupError) as refused:
        node.open()
    assert str(tmp_path / "t") in str(refused.value) and "EIO" in str(refused.value)
    assert "a disk fault" in str(refused.value)
    assert seen.after_the_failure() == []
    assert node.lock is None and node.broker is None
    eio_syncs(None)
    again = BrokerService(NodeConfig(data_dir=str(tmp_path)), Clock())
    again.open()
    again.close()


def test_another_nodes_identity_file_refuses_the_start_with_the_storage_closed_and_the_lock_released(tmp_path):
    config = NodeConfig(data_dir=str(tmp_path), node_id=1, peers={1: "127.0.0.1:1", 2: "127.0.0.1:2"},
                        peer_listen="tcp:0:interface=127.0.0.1")
    IdentityStore(str(tmp_path)).load(2)  # the data dir of node 2
    node = BrokerService(config, Clock())
    with pytest.raises(StartupError) as refused:
        node.open()
    assert "belongs to node 2" in str(refused.value)
    assert node.lock is None and node.cluster is None
    assert open_files_under(tmp_path) == []  # the logs and the hard-state file closed, the lock file too
    DataDirLock.acquire(str(tmp_path), {}).release()  # the next server gets in


def open_files_under(directory) -> list[str]:
    """The files under C{directory} this process holds open."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed
        if path.startswith(str(directory)):
            paths.append(path)
    return paths


def test_two_services_in_one_process_keep_fail_stop_until_the_last_one_stopped(tmp_path, stops):
    before = sync_failure.installed()
    failure = sync_failure.describe(str(tmp_path), OSError(errno.EIO, "Input/output error"))
    for order in ("first-started-stops-first", "last-started-stops-first"):
        clocks = [Clock(), Clock()]
        nodes = [BrokerService(NodeConfig(data_dir=str(tmp_path / order / str(i))), clocks[i]) for i in range(2)]
        for node in nodes:
            node.startService()
        first = 0 if order == "first-started-stops-first" else 1
        stop(nodes[first], clocks[first])
        handler = sync_failure.installed()
        assert handler is not None and handler is not before  # the other node still runs
        stops.clear()
        handler(failure)
        assert stops == [failure]
        stop(nodes[1 - first], clocks[1 - first])
        assert sync_failure.installed() is before


# --- failed log writes (not syncs) take the same road: tests/storage/test_write_fail_stop.py --------


def test_a_followers_failed_append_inside_the_peer_transport_reaches_fail_stop(tmp_path, stops, failing_writes):
    """A follower appends a leader's entries on the reactor thread, inside the peer transport's
    delivery, which logs what a message raised and goes on: the failed write (ENOSPC, part of
    the frame perhaps in the file) reaches fail_stop there, with its path and errno, and no
    success is answered for it."""
    host, log, sent = a_follower(tmp_path / "g")
    failing_writes(str(tmp_path / "g"), calls=("writev",))
    host.transport._deliver("a", "g", "b", "a", AppendEntries(1, "a", 3, 1, (Entry(4, 1, b""), Entry(5, 1, b"")), 0))
    [failure] = stops
    assert isinstance(failure, WriteFailed) and failure.errno == errno.ENOSPC
    assert failure.path.startswith(str(tmp_path / "g")) and failure.path.endswith(".log")
    assert not [m for m in sent if isinstance(m, AppendEntriesResponse) and m.success and m.match_index > 3]
    failing_writes(None)
    host.stop()
    log.close(sync=False)


@pytest.fixture
def durable_node(tmp_path, clock, stops):
    """A node alone on durable storage with the running node's handler installed (fail_stop
    replaced by C{stops}), its syncs run by hand."""
    from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
    from streamlog.testing import BrokerHarness, ManualThreads, result_of

    sync_failure.install(service_module._sync_failed)
    threads = ManualThreads()
    fatal: list = []
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, fatal.append, checkpoint_interval=None)
    h = BrokerHarness(storage=SegmentedStorage(str(tmp_path / "data")), clock=clock, committer=committer)
    h.broker.on_fatal = fatal.append
    h.threads, h.fatal, h.committer = threads, fatal, committer
    yield h
    h.stop()
    stopped = committer.stop()
    for _ in range(10):
        threads.run_all()
        clock.advance(0)
    result_of(stopped)
    h.broker.close()


def test_a_leaders_failed_local_append_reaches_fail_stop_and_is_not_acknowledged(tmp_path, durable_node, stops,
                                                                                  failing_writes):
    durable_node.broker.create_topic("t", 1)
    durable_node.settle()
    conn = durable_node.connect()
    kept = conn.request("Send", {"topic": "t", "value": "kept"})
    durable_node.settle()
    assert ["result" in a for a in conn.answers() if a["id"] == kept] == [True]
    failing_writes(str(tmp_path / "data" / "t"), calls=("writev",))
    lost = conn.request("Send", {"topic": "t", "value": "not on disk"})
    durable_node.clock.advance(0)
    durable_node.threads.run_all()
    durable_node.clock.advance(0)
    failing_writes(None)
    assert stops and isinstance(stops[0], WriteFailed) and stops[0].errno == errno.ENOSPC
    assert stops[0].path.startswith(str(tmp_path / "data" / "t"))
    [answer] = [a for a in conn.answers() if a["id"] == lost]
    assert "error" in answer  # never acknowledged


def test_a_group_of_ones_failed_hard_state_write_reaches_fail_stop(tmp_path, durable_node, stops, failing_writes):
    """The storage opens the hard-state store without an on_fatal, and a group of one does not
    wait for its save: a failed write of the round reached no handler, the node went on."""
    failing_writes(str(tmp_path / "data" / "hardstate"), calls=("write",))
    durable_node.broker.create_topic("t", 1)  # its group of one elects itself: a hard-state round
    for _ in range(5):
        durable_node.clock.advance(0)
        durable_node.threads.run_all()
    failing_writes(None)
    assert stops and isinstance(stops[0], WriteFailed) and stops[0].path.startswith(str(tmp_path / "data" / "hardstate"))

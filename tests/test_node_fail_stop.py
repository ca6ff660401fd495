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
from streamlog.raft.core import RaftConfig
from streamlog.raft.driver import MemoryGroupStorage, RaftHost
from streamlog.raft.log import Entry
from streamlog.raft.messages import AppendEntries, AppendEntriesResponse
from streamlog.storage import producer_snapshots, sync_failure
from streamlog.storage.base import TopicConfig
from streamlog.storage.errors import SyncFailed
from streamlog.storage.log import SegmentedLog
from streamlog.storage.segmented import SegmentedStorage


class Exited(BaseException):
    """What the replaced C{os._exit} raises (a test must not end its own process)."""


def test_fail_stop_logs_the_path_and_errno_critically_and_exits_70(monkeypatch):
    statuses: list[int] = []

    def exit_(status: int) -> None:
        statuses.append(status)
        raise Exited()

    events: list[dict] = []
    monkeypatch.setattr(os, "_exit", exit_)
    globalLogPublisher.addObserver(events.append)
    try:
        with pytest.raises(Exited):
            service_module.fail_stop(sync_failure.describe("/data/t/0/1.log", OSError(errno.EIO, "Input/output error")))
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


def test_start_up_refuses_to_start_after_a_failed_sync_even_one_its_caller_went_on_from(tmp_path, eio_syncs):
    """A refused producer-state snapshot's removal: its failed directory fsync was a warning,
    and the node started on a disk that had just failed."""
    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    storage.create_topic("t", 1, TopicConfig())
    storage.close()
    partition = tmp_path / "t" / "0"
    doomed = partition / producer_snapshots.file_name(7)
    doomed.write_bytes(b"not a snapshot")  # refused at the next open, and removed
    eio_syncs(lambda path: path == str(partition) and not doomed.exists())  # the removal's sync
    node = BrokerService(NodeConfig(data_dir=str(tmp_path)), Clock())
    with pytest.raises(StartupError) as refused:
        node.open()
    assert str(partition) in str(refused.value) and "EIO" in str(refused.value)
    assert node.lock is None and node.broker is None  # released: nothing was served
    eio_syncs(None)
    again = BrokerService(NodeConfig(data_dir=str(tmp_path)), Clock())
    again.open()
    again.close()


def test_a_followers_failed_truncation_sync_stops_the_node_and_is_never_answered(tmp_path, sync_failures, eio_syncs):
    """A Raft follower cuts a conflicting tail on the reactor thread, inside the peer
    transport's delivery, which logged what a message raised and went on."""
    log = SegmentedLog(str(tmp_path / "g"))
    log.append([Entry(i, 1, b"") for i in range(1, 4)])
    log.sync()
    host = RaftHost("b", ["a", "b"], RaftConfig(election_timeout=0.3, heartbeat_interval=0.05), clock=Clock())
    host.add_group("g", ["a", "b"], MemoryGroupStorage(log))
    sent: list = []
    host._send = lambda peer, group, msg: sent.append(msg)  # type: ignore[method-assign]
    eio_syncs(str(tmp_path / "g"))
    # The leader of term 2 has another entry at index 2: the follower truncates from 2.
    host.transport._deliver("a", "g", "b", "a", AppendEntries(2, "a", 1, 1, (Entry(2, 2, b""),), 0))
    assert sync_failures.failures and all(f.path.startswith(str(tmp_path / "g")) for f in sync_failures.failures)
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

"""The node's start-up step, in-process: a plain config, one open() that fails cleanly.

Real processes (exit status, the printed line, twistd's fork) are in
tests/integration/test_startup.py.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.python import usage

from streamlog import wire
from streamlog.broker.service import BrokerService, NodeConfig, StartupError
from streamlog.storage.base import TopicConfig
from streamlog.storage.group_commit import FsyncPolicy
from streamlog.storage.lock import read_holder
from streamlog.storage.segmented import SegmentedStorage
from streamlog.tap.server import Node, Options


def test_construction_touches_nothing_open_does_the_work(tmp_path, clock):
    data = tmp_path / "data"
    service = BrokerService(NodeConfig(data_dir=str(data)), clock)
    assert not data.exists() and service.broker is None
    broker = service.open()
    assert service.open() is broker  # one start-up step, done once
    assert read_holder(str(data))["pid"] == os.getpid()
    assert service.recovery.topics == 0 and service.recovery.partitions == 0
    service.close()


def test_open_reports_what_it_recovered(tmp_path, clock):
    storage = SegmentedStorage(str(tmp_path))
    storage.create_topic("a", 2, TopicConfig())
    storage.create_topic("b", 3, TopicConfig())
    storage.close()
    service = BrokerService(NodeConfig(data_dir=str(tmp_path)), clock)
    service.open()
    assert (service.recovery.topics, service.recovery.partitions, service.recovery.unavailable) == (2, 5, 0)
    assert sorted(service.broker.topics) == ["a", "b"]
    service.close()


def test_a_second_service_on_a_locked_data_dir_is_a_startup_error_naming_the_holder(tmp_path, clock):
    first = BrokerService(NodeConfig(data_dir=str(tmp_path)), clock)
    first.open()
    first.listening_on("127.0.0.1:7070")
    second = BrokerService(NodeConfig(data_dir=str(tmp_path)), clock)
    with pytest.raises(StartupError, match=rf"locked by another streamlog server \(pid {os.getpid()} on .*127\.0\.0\.1:7070"):
        second.open()
    assert second.broker is None and second.lock is None
    first.close()
    third = BrokerService(NodeConfig(data_dir=str(tmp_path)), clock)
    third.open()  # released by close()
    third.close()


@pytest.mark.parametrize("make, message", [
    (lambda p: (p / "f").write_text("x") and p / "f", "is not a directory"),
    (lambda p: (p / "f").write_text("x") and p / "f" / "data", "cannot create the data dir .*: Not a directory"),
    (lambda p: p / ("x" * 300), "cannot create the data dir .*: File name too long"),
])
def test_a_data_dir_that_cannot_be_one_is_a_startup_error(tmp_path, clock, make, message):
    service = BrokerService(NodeConfig(data_dir=str(make(tmp_path))), clock)
    with pytest.raises(StartupError, match=message):
        service.open()


def test_unreadable_topic_metadata_is_a_startup_error_and_releases_the_lock(tmp_path, clock):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "topic.json").write_bytes(b'{"version": 99, "partitions": 1, "config": {}}')
    service = BrokerService(NodeConfig(data_dir=str(tmp_path)), clock)
    with pytest.raises(StartupError, match=r"cannot recover the data dir .*unknown version 99"):
        service.open()
    assert service.lock is None
    (tmp_path / "t" / "topic.json").unlink()
    (tmp_path / "t").rmdir()
    again = BrokerService(NodeConfig(data_dir=str(tmp_path)), clock)
    again.open()
    again.close()


def test_a_node_alone_and_a_cluster_node_refuse_each_others_data_dir(tmp_path, clock):
    # Each used to start on the other's as if it were new: a cluster node showed no topics (the
    # node alone's data sat unread), a node alone showed the Raft groups' logs as topics.
    lone = tmp_path / "lone"
    storage = SegmentedStorage(str(lone))
    storage.create_topic("orders", 1, TopicConfig())
    storage.close()
    clustered = NodeConfig(data_dir=str(lone), peers={1: "127.0.0.1:17071"}, node_id=1)
    with pytest.raises(StartupError, match=r"holds the topics of a node run alone \(orders\).*without --peers"):
        BrokerService(clustered, clock).open()
    assert not (lone / "node.json").exists()  # nothing written
    service = BrokerService(NodeConfig(data_dir=str(lone)), clock)
    assert sorted(service.open().topics) == ["orders"]  # still the node alone's
    service.close()

    member = tmp_path / "member"
    member.mkdir()
    (member / "node.json").write_text('{"version": 1, "node_id": 1, "incarnation": "00aa", "cluster_id": null}')
    with pytest.raises(StartupError, match=r"belongs to a cluster node \(node.json\).*--peers"):
        BrokerService(NodeConfig(data_dir=str(member)), clock).open()
    fresh = BrokerService(NodeConfig(data_dir=str(tmp_path / "new"), peers={1: "127.0.0.1:17071"}, node_id=1), clock)
    fresh._check_data_dir_kind(str(tmp_path / "new"))  # a new data dir suits either


def test_memory_storage_does_not_touch_the_data_dir(tmp_path, clock):
    service = BrokerService(NodeConfig(storage="memory", data_dir=str(tmp_path / "data")), clock)
    service.open()
    assert not (tmp_path / "data").exists() and service.lock is None
    assert service.broker.config.unsynced_durability == "memory"
    service.close()


def test_node_config_refuses_an_unknown_storage():
    with pytest.raises(ValueError):
        NodeConfig(storage="disk")


def test_options_build_the_node_config():
    options = Options()
    options.parseOptions([
        "--listen", "tcp:0:interface=127.0.0.1", "--data-dir", "d", "--fsync", "interval:50",
        "--default-partitions", "3", "--auto-create-topics", "off", "--retention-ms", "1000",
        "--max-message-bytes", "2048", "--port-file", "p", "--sync-workers", "2",
    ])
    config = options.node_config()
    assert config == NodeConfig(
        listen="tcp:0:interface=127.0.0.1", data_dir="d", fsync=FsyncPolicy("interval", 50),
        default_partitions=3, auto_create_topics=False,
        topic_defaults=TopicConfig(retention_ms=1000, segment_bytes=128 * 1024 * 1024, segment_ms=7 * 24 * 3600 * 1000),
        limits=wire.Limits(max_message_bytes=2048), port_file="p", sync_workers=2,
    )


def test_the_committer_the_service_starts_has_the_configured_sync_workers(tmp_path, clock):
    service = BrokerService(NodeConfig(data_dir=str(tmp_path), sync_workers=3), clock)
    service.startService()
    assert service.committer.sync_workers == 3 and service.broker.committer is service.committer
    service.stopService()
    clock.advance(10)
    assert service.lock is None  # stopped: the lock is released


@pytest.mark.parametrize("args, message", [
    (["--listen", "7070"], "--listen '7070' is not a server endpoint description"),
    (["--listen", "tcp:7070:colour=red"], "--listen 'tcp:7070:colour=red' is not a server endpoint description"),
    (["--data-dir", ""], "--data-dir must not be empty"),
    (["--default-partitions", "2000"], "--default-partitions must be between 1 and --max-partitions"),
    (["--segment-bytes", "10"], "--segment-bytes must be at least 1024"),
    (["--retention-ms", "0"], "--retention-ms must be at least 1"),
    (["--retention-check-interval", "0"], "--retention-check-interval must be more than 0"),
])
def test_option_mistakes_are_usage_errors(args, message):
    with pytest.raises(usage.UsageError, match=message.replace("(", r"\(")):
        Options().parseOptions(args)


def test_node_open_binds_before_the_reactor_runs_and_records_the_address(tmp_path):
    reactor = MemoryReactorClock()
    node = Node(NodeConfig(listen="tcp:7070:interface=127.0.0.1", data_dir=str(tmp_path)), reactor)
    node.open()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(7070, "127.0.0.1")]
    assert read_holder(str(tmp_path))["listen"] == node.address
    node.broker_service.close()


class RaisingReactorClock(Clock, RaisingMemoryReactor):
    """A reactor whose listens fail, with a clock (a node's Raft host reads the time as it is built)."""

    def __init__(self, listenException: Exception) -> None:
        Clock.__init__(self)
        RaisingMemoryReactor.__init__(self, listenException=listenException)


def test_a_port_that_cannot_be_bound_is_a_startup_error_that_releases_the_data_dir(tmp_path, clock):
    in_use = CannotListenError("127.0.0.1", 7070, OSError(98, "Address already in use"))
    node = Node(NodeConfig(data_dir=str(tmp_path)), RaisingReactorClock(listenException=in_use))
    with pytest.raises(StartupError) as raised:
        node.open()
    assert str(raised.value) == "cannot listen on tcp:7070:interface=127.0.0.1: Address already in use"
    assert node.broker_service.lock is None and node.broker_service.broker is None
    again = BrokerService(NodeConfig(data_dir=str(tmp_path)), clock)
    again.open()  # the lock was released
    again.close()


def test_a_port_file_that_cannot_be_written_is_a_startup_error(tmp_path):
    reactor = MemoryReactorClock()
    node = Node(NodeConfig(listen="tcp:0", data_dir=str(tmp_path / "d"), port_file=str(tmp_path / "no" / "port")), reactor)
    with pytest.raises(StartupError, match=r"cannot write the port file .*/no/port: No such file or directory"):
        node.open()
    assert node.broker_service.lock is None


def _listening(tmp_path, port=4321):
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory

    from streamlog.tap.server import ListenService

    service = ListenService(TCP4ServerEndpoint(MemoryReactorClock(), port), Factory(), str(tmp_path / "port"))
    service.startService()
    return service


def test_a_clean_stop_removes_the_port_file_it_wrote(tmp_path):
    service = _listening(tmp_path)
    assert (tmp_path / "port").read_text() == "4321\n"
    service.stopService()
    assert not (tmp_path / "port").exists()


def test_a_port_file_another_node_wrote_since_is_left_alone(tmp_path):
    service = _listening(tmp_path)
    (tmp_path / "port").write_text("5555\n")
    service.stopService()
    assert (tmp_path / "port").read_text() == "5555\n"


def test_a_listener_that_fails_after_the_storage_opened_releases_it_without_a_sync(tmp_path, eio_syncs):
    """Nothing was served: the logs are let go as they were found (the next start recovers them
    as after a crash), so no sync runs outside start-up's recording of failed syncs (its failure
    would only have been logged, the start refused for the listener alone)."""
    storage = SegmentedStorage(str(tmp_path))
    storage.load()
    storage.create_topic("t", 2, TopicConfig())
    storage.close()
    events: list[str] = []
    eio_syncs(lambda path: bool(events.append(path)))  # every sync seen, none failed

    class Refusing(RaisingReactorClock):
        def listenTCP(self, *args, **kwargs):
            events.append("listen")
            return super().listenTCP(*args, **kwargs)

    in_use = CannotListenError("127.0.0.1", 7070, OSError(98, "Address already in use"))
    node = Node(NodeConfig(data_dir=str(tmp_path)), Refusing(listenException=in_use))
    with pytest.raises(StartupError):
        node.open()
    assert "listen" in events and events[events.index("listen") + 1:] == []
    assert node.broker_service.lock is None and node.broker_service.broker is None
    eio_syncs(None)
    again = BrokerService(NodeConfig(data_dir=str(tmp_path)), Clock())
    assert again.open().topics.keys() == {"t"}
    again.close()

"""Creating topics on durable storage: the node's partition cap, storage faults, descriptors.

A create past the cap is refused before anything is opened; a storage fault
while creating is fail-stop (STORAGE_ERROR, as for an append); running out of
descriptors is a refusal; in every case what the create opened is closed.
"""

from __future__ import annotations

import errno
import os

import attrs
import pytest

from streamlog import wire
from streamlog.broker.broker import BrokerConfig
from streamlog.broker.service import StartupError, fit_descriptors, fit_partitions
from streamlog.storage.descriptors import (
    DEFAULT_READ_FILES,
    MIN_PARTITIONS,
    NODE_FILES,
    RESERVED,
    RETIRED_SEGMENTS,
    Plan,
    TooFewDescriptors,
    partitions_within,
    plan,
)
from streamlog.storage.segmented import SegmentedStorage
from streamlog.testing import BrokerHarness


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def node(tmp_path, clock):
    """A broker on durable storage, capped at 10 partitions; its fatal errors are recorded, not fatal."""
    data = tmp_path / "data"
    limits = wire.Limits(max_partitions_per_node=10)
    h = BrokerHarness(storage=SegmentedStorage(str(data)), config=BrokerConfig(limits=limits), clock=clock)
    h.fatal = []
    h.broker.on_fatal = h.fatal.append
    h.data = data
    yield h
    h.stop()
    h.broker.close()


def test_a_create_past_the_node_cap_is_refused_before_anything_is_opened(node):
    conn = node.connect()
    assert "result" in conn.call("CreateTopic", {"topic": "a", "partitions": 6})
    before = open_fds()
    for method, params in [
        ("CreateTopic", {"topic": "b", "partitions": 5}),
        ("Send", {"topic": "b", "value": 1}),  # auto-creation goes through the same cap
    ]:
        if method == "Send":
            node.broker.config = attrs.evolve(node.broker.config, default_partitions=5)
        error = conn.call(method, params)["error"]
        assert error["code"] == "TOO_MANY_PARTITIONS"
        assert (error["limit"], error["partitions"]) == (10, 6)
    assert open_fds() == before
    assert sorted(os.listdir(node.data)) == ["a", "hardstate"]
    assert not conn.closed
    assert "result" in conn.call("CreateTopic", {"topic": "b", "partitions": 4})  # exactly up to the cap
    assert conn.call("CreateTopic", {"topic": "c", "partitions": 1})["error"]["partitions"] == 10
    assert conn.call("DeleteTopic", {"topic": "a"})["result"]["deleted"]
    assert "result" in conn.call("CreateTopic", {"topic": "c", "partitions": 6})  # deleting made room
    assert node.fatal == []


@pytest.mark.parametrize("fault", ["fsync", "makedirs", "topic file"])
def test_a_storage_fault_while_creating_stops_the_node_and_closes_what_it_opened(node, monkeypatch, fault):
    conn = node.connect()
    conn.call("CreateTopic", {"topic": "before", "partitions": 1})
    before = open_fds()
    if fault == "fsync":
        def eio(fd):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fsync", eio)
    elif fault == "makedirs":  # a data directory made read-only after start
        def read_only(path, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", path)

        monkeypatch.setattr(os, "makedirs", read_only)
    else:
        real_open = os.open

        def no_space(path, flags, *args, **kwargs):
            if str(path).endswith("topic.json.tmp"):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", no_space)
    error = conn.call("CreateTopic", {"topic": "t", "partitions": 3})["error"]
    monkeypatch.undo()
    assert error["code"] == "STORAGE_ERROR" and "creating topic 't' failed" in error["message"]
    assert len(node.fatal) == 1  # fail-stop: the server exits with status 70
    assert open_fds() == before  # the three partitions' descriptors were closed
    assert "t" not in node.broker.topics


def test_running_out_of_descriptors_while_creating_is_a_refusal_that_leaves_nothing(node, monkeypatch):
    conn = node.connect()
    real_open = os.open
    opened = [0]

    def emfile_after_seven(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            opened[0] += 1
            if opened[0] > 7:  # in the middle of the third partition
                raise OSError(errno.EMFILE, "Too many open files", path)
        return real_open(path, flags, *args, **kwargs)

    before = open_fds()
    monkeypatch.setattr(os, "open", emfile_after_seven)
    error = conn.call("CreateTopic", {"topic": "t", "partitions": 4})["error"]
    monkeypatch.undo()
    assert error["code"] == "TOO_MANY_PARTITIONS" and "out of file descriptors" in error["message"]
    assert node.fatal == []  # not a disk fault: the node serves on
    assert open_fds() == before
    assert os.listdir(node.data) == ["hardstate"]  # the half-made topic is gone
    assert "result" in conn.call("CreateTopic", {"topic": "t", "partitions": 4})


def test_the_cap_is_lowered_to_what_the_open_file_limit_holds():
    limits = wire.Limits(max_connections=100, max_partitions_per_node=4096)
    config = BrokerConfig(limits=limits)
    # Room for 100 partitions: 3 descriptors each, plus connections, read cache, the rolled
    # segments waiting for a sync (3 each), the node's own files (the lock, the hard-state
    # file) and the reserve.
    limit = 100 * 3 + 100 + 50 + RETIRED_SEGMENTS * 3 + NODE_FILES + RESERVED
    assert partitions_within(limit, 100, 50) == 100
    assert fit_partitions(config, limit, 50).limits.max_partitions_per_node == 100
    assert fit_partitions(config, limit - 1, 50).limits.max_partitions_per_node == 99
    assert fit_partitions(config, limit, 50).limits.max_connections == 100  # only the partition cap moved
    assert fit_partitions(config, 1_048_576, 1024) is config  # a usual server limit: the cap stands
    assert fit_partitions(config, -1, 1024) is config  # unlimited
    # The default cap fits this machine's hard limit (20,000) with every default connection and read file.
    default = wire.Limits()
    assert partitions_within(20_000, default.max_connections, 1024) >= default.max_partitions_per_node


def test_a_hard_limit_of_1024_shrinks_connections_and_the_read_cache_rather_than_hold_no_partition():
    # The review: the defaults (1,024 connections, 1,024 read files) under a hard limit of 1,024
    # gave a cap of 0 partitions; the node started and refused every topic.
    config = BrokerConfig()
    fitted_config, fitted = fit_descriptors(config, 1024, DEFAULT_READ_FILES)
    assert fitted == Plan(connections=224, read_files=112, retired=37, partitions=149, shrunk=True)
    assert fitted.descriptors <= 1024
    assert fitted_config.limits.max_partitions_per_node == 149
    assert fitted_config.limits.max_connections == 224
    for limit in range(509, 5000, 7):  # whatever the limit, the plan fits in it
        assert plan(limit, 1024, 1024, 4096).descriptors <= limit, limit
        assert plan(limit, 1024, 1024, 4096).partitions >= MIN_PARTITIONS


def test_a_limit_too_low_for_a_useful_node_refuses_to_start_with_one_line():
    with pytest.raises(StartupError, match=r"open-file limit \(300\) is too low.*at least 509") as refused:
        fit_descriptors(BrokerConfig(), 300, DEFAULT_READ_FILES)
    assert "\n" not in str(refused.value)
    with pytest.raises(TooFewDescriptors):
        plan(508, 1024, 1024, 4096)
    # A node asked for few partitions fits in less.
    assert plan(300, 1024, 1024, 10).partitions == 10


def test_a_send_whose_roll_runs_out_of_descriptors_is_refused_whole_and_retriable(node, monkeypatch):
    conn = node.connect()
    assert "result" in conn.call("CreateTopic", {"topic": "t", "partitions": 3, "config": {"segment_bytes": 1024}})
    batch = [{"partition": p, "value": "x" * 700} for p in range(3)]
    assert "result" in conn.call("SendBatch", {"topic": "t", "messages": batch, "acks": "leader"})
    real_open = os.open

    def emfile_for_partition_2(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and f"{os.sep}2{os.sep}" in str(path):
            raise OSError(errno.EMFILE, "Too many open files", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", emfile_for_partition_2)
    # Every partition must roll for this batch; partition 2 cannot.
    error = conn.call("SendBatch", {"topic": "t", "messages": batch, "acks": "leader"})["error"]
    monkeypatch.undo()
    assert error["code"] == "TOO_MANY_OPEN_FILES" and error["partition"] == 2, error
    assert node.fatal == []  # was: "roll failed: [Errno 24] Too many open files", fail-stop
    ends = [p["log_end_offset"] for p in conn.call("DescribeTopic", {"topic": "t"})["result"]["partitions"]]
    assert ends == [1, 1, 1]  # nothing of it was appended, on any partition
    placed = conn.call("SendBatch", {"topic": "t", "messages": batch, "acks": "leader"})["result"]["partitions"]
    assert [p["base_offset"] for p in placed] == [1, 1, 1]  # the retry lands whole

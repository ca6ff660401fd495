"""The broker over durable storage at its edges: dropped connections, deletes and
stops while fsyncs run, storage failures outside the send path."""

from __future__ import annotations

import errno

import pytest

from streamlog import errors
from streamlog.broker.broker import BrokerConfig
from streamlog.raft.log import Entry
from streamlog.storage.base import ReadResult, TopicConfig
from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
from streamlog.storage.memory import MemoryStorage
from streamlog.storage.segmented import SegmentedStorage
from streamlog.testing import BrokerHarness, ManualThreads, result_of


@pytest.fixture
def durable(tmp_path, clock):
    threads = ManualThreads()
    fatal: list = []
    committer = GroupCommitter(FsyncPolicy.parse("always"), clock, threads, fatal.append, checkpoint_interval=None)
    storage = SegmentedStorage(str(tmp_path / "data"))
    h = BrokerHarness(storage=storage, clock=clock, committer=committer)
    h.broker.on_fatal = fatal.append
    h.broker.directory.host.on_fatal = fatal.append  # a Raft group's failed fsync is fatal too
    h.threads, h.fatal, h.committer = threads, fatal, committer
    yield h
    h.stop()
    stopped = committer.stop()
    for _ in range(10):  # the final sync runs "in the thread", maybe behind a running round
        threads.run_all()
        clock.advance(0)
    result_of(stopped)
    h.broker.close()


def test_a_durable_record_is_visible_even_if_its_producer_disconnected(durable):
    durable.broker.create_topic("t", 1)
    durable.settle()  # its group elects this node: a hard-state round, the no-op synced
    producer = durable.connect()
    producer.request("Send", {"topic": "t", "value": "hello"})
    durable.clock.advance(0)  # the group-commit round starts; the fsync is "in the thread"
    producer.lose()  # the producer dies before its ack
    durable.threads.run_all()
    consumer = durable.connect()
    polled = consumer.call("Poll", {"topic": "t", "offset": 0})["result"]
    assert [m["value"] for m in polled["messages"]] == ["hello"]
    assert consumer.call("ListOffsets", {"topic": "t", "at": "latest"})["result"]["offset"] == 1


def test_deleting_a_topic_answers_its_waiting_sends_unknown_topic(durable):
    durable.broker.create_topic("t", 1)
    durable.settle()  # its group elects this node: a hard-state round, the no-op synced
    conn = durable.connect()
    in_round = conn.request("Send", {"topic": "t", "value": "a"})
    durable.clock.advance(0)  # "a" is in a running round
    queued = conn.request("Send", {"topic": "t", "value": "b"})  # "b" waits for the next
    assert durable.connect().call("DeleteTopic", {"topic": "t"})["result"]["deleted"]
    durable.threads.run_all()
    durable.clock.advance(0)
    answers = {a["id"]: a for a in conn.answers()}
    assert answers[in_round]["error"]["code"] == "UNKNOWN_TOPIC"
    assert answers[queued]["error"]["code"] == "UNKNOWN_TOPIC"
    assert durable.fatal == []


def test_stopping_answers_appended_sends_and_refuses_new_ones(durable):
    durable.broker.create_topic("t", 1)
    durable.settle()  # its group elects this node: a hard-state round, the no-op synced
    conn = durable.connect()
    first = conn.request("Send", {"topic": "t", "value": "in flight"})
    durable.broker.stopping = True  # what BrokerService.stopService does first
    refused = conn.request("Send", {"topic": "t", "value": "too late"})
    stopped = durable.committer.stop()
    durable.threads.run_all()
    result_of(stopped)
    answers = {a["id"]: a for a in conn.answers()}
    assert answers[first]["result"]["durability"] == "fsync"
    assert answers[refused]["error"]["code"] == "SHUTTING_DOWN"
    assert durable.broker.partition("t", 0).end_offset == 1  # nothing of the refused send


def test_a_long_poll_past_the_high_watermark_waits_for_data_at_its_offset(clock):
    h = BrokerHarness(clock=clock)
    conn = h.connect()
    conn.call("Send", {"topic": "t", "value": 0, "acks": "leader"})
    partition = h.broker.partition("t", 0)
    # Appended but not yet committed: a consumer that learnt offset 1 from an
    # acks=leader answer waits at 1 while the high watermark is below it.
    log = partition.log  # the group's Raft log: the record batch as its next entry
    log.append([Entry(log.last_index + 1, partition.term, _batch(1, b'{"offset":1,"timestamp":0}'))])
    partition.high_watermark = 0
    rid = conn.request("Poll", {"topic": "t", "offset": 1, "max_wait_ms": 10_000})
    partition.advance(1)  # the high watermark moves, but not past offset 1
    assert conn.answers() == []
    partition.advance(2)
    [answer] = conn.answers()
    assert answer["id"] == rid and answer["result"]["messages"][0]["offset"] == 1
    h.stop()


def _batch(offset: int, payload: bytes):
    from streamlog.storage.base import RecordBatch

    return RecordBatch(base_offset=offset, count=1, term=0, first_timestamp=0, max_timestamp=0, payload=payload)


def test_a_storage_failure_during_retention_stops_the_node(durable, monkeypatch):
    durable.broker.create_topic("t", 1)
    durable.settle()  # its group elects this node: a hard-state round, the no-op synced
    log = durable.broker.partition("t", 0).log

    def no_space(now_ms):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log, "retention_point", no_space)  # where retention rolls an idle segment
    with pytest.raises(errors.StorageError):
        durable.broker.apply_retention()
    assert len(durable.fatal) == 1


def test_a_storage_failure_while_deleting_a_topic_stops_the_node(durable, monkeypatch):
    durable.broker.create_topic("t", 1)
    durable.settle()  # its group elects this node: a hard-state round, the no-op synced

    def failing_delete(name):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(durable.broker.storage, "delete_topic", failing_delete)
    answer = durable.connect().call("DeleteTopic", {"topic": "t"})
    assert answer["error"]["code"] == "STORAGE_ERROR"
    assert len(durable.fatal) == 1
    assert "t" in durable.broker.topics  # not forgotten while its files may remain


def test_memory_storage_applies_the_server_retention_defaults(clock):
    storage = MemoryStorage(TopicConfig(retention_ms=1000))
    h = BrokerHarness(storage=storage, clock=clock, config=BrokerConfig())
    conn = h.connect()
    conn.call("Send", {"topic": "t", "value": 0})
    clock.advance(5)
    conn.call("Send", {"topic": "t", "value": 1})
    h.broker.apply_retention()
    assert conn.call("DescribeTopic", {"topic": "t"})["result"]["partitions"][0]["log_start_offset"] == 1
    h.stop()


@pytest.mark.parametrize(
    "read",
    [
        ReadResult(fragments=[b"", b""], count=2, next_offset=2, size=1),  # empty records: "[,]"
        ReadResult(fragments=[b'{"offset":0}'], count=1, next_offset=0, size=12),  # does not move
        ReadResult(fragments=[], count=3, next_offset=3, size=0),  # records claimed, none given
        ReadResult(fragments=[b'{"offset":0'], count=1, next_offset=1, size=11),  # cut short
        ReadResult(fragments=[b"{}"] * 5, count=5, next_offset=5, size=14),  # more than committed
    ],
)
def test_poll_never_answers_invalid_json_whatever_the_storage_returns(clock, monkeypatch, read):
    h = BrokerHarness(clock=clock)
    conn = h.connect()
    for i in range(3):
        conn.call("Send", {"topic": "t", "value": i})
    monkeypatch.setattr(h.broker.partition("t", 0).log, "read", lambda *args: read)
    answer = conn.call("Poll", {"topic": "t", "offset": 0})  # parsed as JSON: it must be JSON
    assert answer["error"]["code"] == "PARTITION_UNAVAILABLE"
    assert not conn.closed and conn.call("Ping")["result"]["pong"]
    h.stop()

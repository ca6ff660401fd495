"""The idempotent producer at one node: InitProducerId, and Send/SendBatch checked by the partition leader.

Deterministic: a BrokerHarness (StringTransports, a Clock), memory storage
or real files in tmp_path for the restarts.
"""

from __future__ import annotations

import json
import os

import pytest

from streamlog import wire
from streamlog.broker.broker import BrokerConfig
from streamlog.broker.producer_ids import REGISTRY_FILE
from streamlog.idempotence.table import ProducerStateConfig
from streamlog.storage.memory import MemoryStorage
from streamlog.storage.segmented import SegmentedStorage
from streamlog.testing import BrokerHarness


def make(clock, storage=None, **producer_state):
    config = BrokerConfig(default_partitions=2, producer_state=ProducerStateConfig(**producer_state))
    return BrokerHarness(storage=storage or MemoryStorage(), config=config, clock=clock)


@pytest.fixture
def harness(clock):
    h = make(clock)
    yield h
    h.stop()


def init(conn, **params):
    answer = conn.call("InitProducerId", params)
    assert "result" in answer, answer
    return answer["result"]["producer_id"], answer["result"]["epoch"]


def batch(pid, epoch, sequences, values, acks="all"):
    """A SendBatch of `values` per partition: {partition: (base_sequence, [values])}."""
    messages = [{"value": v, "partition": p} for p, (_, vs) in sorted(values.items()) for v in vs]
    return {"topic": "t", "acks": acks, "producer_id": pid, "epoch": epoch, "messages": messages,
            "sequences": [{"partition": p, "base_sequence": s} for p, (s, _) in sorted(values.items())]}


def read(conn, partition=0):
    result = conn.call("Poll", {"topic": "t", "partition": partition, "offset": 0})["result"]
    return [m["value"] for m in result["messages"]]


def test_init_producer_id_gives_distinct_ids_at_epoch_0(harness):
    conn = harness.connect()
    ids = [init(conn) for _ in range(5)]
    assert [epoch for _, epoch in ids] == [0] * 5
    assert len({pid for pid, _ in ids}) == 5


def test_a_producer_name_asked_again_bumps_the_epoch_and_fences_the_older_instance(harness):
    conn = harness.connect()
    old = init(conn, producer_name="orders")
    assert conn.call("Send", {"topic": "t", "partition": 0, "value": "a", "producer_id": old[0], "epoch": old[1],
                              "base_sequence": 0})["result"]["offset"] == 0
    new = init(conn, producer_name="orders")
    assert new == (old[0], old[1] + 1)
    assert conn.call("Send", {"topic": "t", "partition": 0, "value": "b", "producer_id": new[0], "epoch": new[1],
                              "base_sequence": 0})["result"]["offset"] == 1
    # The older instance goes on where it was: fenced, nothing stored.
    late = conn.call("Send", {"topic": "t", "partition": 0, "value": "c", "producer_id": old[0], "epoch": old[1],
                              "base_sequence": 1})
    assert late["error"]["code"] == "PRODUCER_FENCED"
    assert read(conn) == ["a", "b"]
    # And asking for its own next epoch is refused by the registry too.
    again = conn.call("InitProducerId", {"producer_name": "orders", "producer_id": old[0], "epoch": old[1]})
    assert again["error"]["code"] == "PRODUCER_FENCED"
    # The current one may bump its own epoch.
    assert init(conn, producer_name="orders", producer_id=new[0], epoch=new[1]) == (new[0], new[1] + 1)


def test_an_unnamed_producer_bumps_its_own_epoch(harness):
    conn = harness.connect()
    pid, epoch = init(conn)
    assert init(conn, producer_id=pid, epoch=epoch) == (pid, epoch + 1)


def test_a_retried_batch_is_answered_with_its_original_offsets_and_stored_once(harness):
    conn = harness.connect()
    pid, epoch = init(conn)
    first = conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["a", "b"]), 1: (0, ["x"])}))["result"]
    assert first["partitions"] == [{"partition": 0, "base_offset": 0, "count": 2},
                                   {"partition": 1, "base_offset": 0, "count": 1}]
    second = conn.call("SendBatch", batch(pid, epoch, None, {0: (2, ["c"])}))["result"]
    assert second["partitions"] == [{"partition": 0, "base_offset": 2, "count": 1}]
    # The answer to the first was lost: the producer sends it again, with the same numbers.
    again = conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["a", "b"]), 1: (0, ["x"])}))["result"]
    assert again["partitions"] == [{"partition": 0, "base_offset": 0, "count": 2, "duplicate": True},
                                   {"partition": 1, "base_offset": 0, "count": 1, "duplicate": True}]
    assert read(conn, 0) == ["a", "b", "c"] and read(conn, 1) == ["x"]
    # A Send (one message) is answered the same way.
    send = {"topic": "t", "partition": 1, "value": "y", "producer_id": pid, "epoch": epoch, "base_sequence": 1}
    assert "duplicate" not in conn.call("Send", send)["result"]
    dup = conn.call("Send", send)["result"]
    assert dup["offset"] == 1 and dup["duplicate"] is True
    assert read(conn, 1) == ["x", "y"]


def test_a_gap_in_sequence_is_out_of_order_and_stores_nothing(harness):
    conn = harness.connect()
    pid, epoch = init(conn)
    conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["a"])}))
    error = conn.call("SendBatch", batch(pid, epoch, None, {0: (2, ["c"])}))["error"]
    assert error["code"] == "OUT_OF_ORDER_SEQUENCE" and error["partition"] == 0
    assert read(conn, 0) == ["a"]
    assert conn.call("SendBatch", batch(pid, epoch, None, {0: (1, ["b"])}))["result"]["partitions"][0]["base_offset"] == 1


def test_a_refused_part_of_a_batch_over_partitions_is_an_error_entry_and_the_others_are_stored(harness):
    # Per partition, as a part another node leads: the gap on partition 0 refuses only that part.
    conn = harness.connect()
    pid, epoch = init(conn)
    conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["a"])}))
    result = conn.call("SendBatch", batch(pid, epoch, None, {0: (2, ["c"]), 1: (0, ["x"])}))["result"]
    entries = {e["partition"]: e for e in result["partitions"]}
    assert entries[0]["error"]["code"] == "OUT_OF_ORDER_SEQUENCE" and entries[0]["error"]["partition"] == 0
    assert entries[1] == {"partition": 1, "base_offset": 0, "count": 1}
    assert read(conn, 0) == ["a"] and read(conn, 1) == ["x"]
    # A retry of the whole request: partition 1's part is a duplicate, partition 0's still a gap.
    result = conn.call("SendBatch", batch(pid, epoch, None, {0: (2, ["c"]), 1: (0, ["x"])}))["result"]
    entries = {e["partition"]: e for e in result["partitions"]}
    assert entries[0]["error"]["code"] == "OUT_OF_ORDER_SEQUENCE"
    assert entries[1] == {"partition": 1, "base_offset": 0, "count": 1, "duplicate": True}
    assert read(conn, 1) == ["x"]


def test_a_first_batch_not_at_sequence_0_is_unknown_producer(harness):
    conn = harness.connect()
    pid, epoch = init(conn)
    assert conn.call("SendBatch", batch(pid, epoch, None, {0: (7, ["a"])}))["error"]["code"] == "UNKNOWN_PRODUCER_ID"


def test_sequences_must_name_exactly_the_partitions_of_the_messages(harness):
    conn = harness.connect()
    pid, epoch = init(conn)
    params = batch(pid, epoch, None, {0: (0, ["a"])})
    params["sequences"].append({"partition": 1, "base_sequence": 0})
    error = conn.call("SendBatch", params)["error"]
    assert error["code"] == "INVALID_PARAMS" and error["field"] == "sequences"
    assert conn.call("ListTopics")["result"]["topics"] == []  # refused whole: not even the topic was made


@pytest.mark.parametrize("params", [
    {"producer_id": 1, "value": 1},
    {"producer_id": 1, "epoch": 0, "value": 1},
    {"base_sequence": 0, "value": 1},
    {"producer_id": -2, "epoch": 0, "base_sequence": 0, "value": 1},
    {"producer_id": 1, "epoch": 2**31, "base_sequence": 0, "value": 1},
    {"producer_id": 1, "epoch": 0, "base_sequence": "0", "value": 1},
])
def test_malformed_producer_fields_are_invalid_params(harness, params):
    conn = harness.connect()
    assert conn.call("Send", {"topic": "t", "partition": 0, **params})["error"]["code"] == "INVALID_PARAMS"
    assert conn.call("ListTopics")["result"]["topics"] == []


def test_too_many_producers_refuses_a_new_one_while_all_are_recent(clock):
    h = make(clock, max_producers=2, evict_min_idle_ms=60_000)
    try:
        conn = h.connect()
        for _ in range(2):
            pid, epoch = init(conn)
            assert "result" in conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["a"])}))
        pid, epoch = init(conn)
        error = conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["b"])}))["error"]
        assert error["code"] == "TOO_MANY_PRODUCERS" and error["limit"] == 2
        clock.advance(61)  # the oldest is now idle long enough to be evicted for it
        assert "result" in conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["b"])}))
    finally:
        h.stop()


def test_an_idle_producer_expires_and_its_next_batch_is_unknown(clock):
    h = make(clock, expiry_ms=10_000, evict_min_idle_ms=1_000)
    try:
        conn = h.connect()
        pid, epoch = init(conn)
        conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["a"])}))
        replica = h.broker.topics["t"].partitions[0]
        clock.advance(5)
        h.broker.apply_retention()  # the periodic sweep: not idle long enough yet
        assert replica.producers.producer_ids() == [pid]
        clock.advance(6)
        h.broker.apply_retention()
        assert replica.producers.producer_ids() == []
        assert conn.call("SendBatch", batch(pid, epoch, None, {0: (1, ["b"])}))["error"]["code"] == "UNKNOWN_PRODUCER_ID"
        # A retry of its first batch is no longer recognised either way: it starts a new window.
        assert read(conn) == ["a"]
    finally:
        h.stop()


def test_expiry_counts_even_before_the_sweep_runs(clock):
    h = make(clock, expiry_ms=10_000, evict_min_idle_ms=1_000)
    try:
        conn = h.connect()
        pid, epoch = init(conn)
        conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["a"])}))
        clock.advance(11)
        assert conn.call("SendBatch", batch(pid, epoch, None, {0: (1, ["b"])}))["error"]["code"] == "UNKNOWN_PRODUCER_ID"
    finally:
        h.stop()


def test_acks_leader_and_none_take_the_same_checks(harness):
    conn = harness.connect()
    pid, epoch = init(conn)
    ok = conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["a"])}, acks="leader"))["result"]
    assert ok["partitions"] == [{"partition": 0, "base_offset": 0, "count": 1}]
    dup = conn.call("SendBatch", batch(pid, epoch, None, {0: (0, ["a"])}, acks="leader"))["result"]
    assert dup["partitions"][0]["duplicate"] is True
    conn.request("SendBatch", batch(pid, epoch, None, {0: (0, ["a"])}, acks="none"))
    assert conn.answers() == []
    assert read(conn) == ["a"]


def restart(h, clock, data):
    h.stop()
    h.broker.close()
    return make(clock, storage=SegmentedStorage(data))


def test_the_table_is_rebuilt_from_the_log_after_a_restart(tmp_path, clock):
    data = str(tmp_path / "data")
    h = make(clock, storage=SegmentedStorage(data))
    conn = h.connect()
    pid, epoch = init(conn)
    for seq, value in enumerate("abc"):
        conn.call("SendBatch", batch(pid, epoch, None, {0: (seq, [value])}))
    h = restart(h, clock, data)
    try:
        conn = h.connect()
        # A retry of a batch written before the restart is recognised...
        dup = conn.call("SendBatch", batch(pid, epoch, None, {0: (1, ["b"])}))["result"]["partitions"][0]
        assert dup == {"partition": 0, "base_offset": 1, "count": 1, "duplicate": True}
        # ... the sequence goes on where it was, and a gap is still a gap.
        assert conn.call("SendBatch", batch(pid, epoch, None, {0: (5, ["x"])}))["error"]["code"] == "OUT_OF_ORDER_SEQUENCE"
        assert "result" in conn.call("SendBatch", batch(pid, epoch, None, {0: (3, ["d"])}))
        assert read(conn) == ["a", "b", "c", "d"]
        # The registry file kept the ids handed out: a new producer gets a new one.
        assert init(conn)[0] != pid
        with open(os.path.join(data, REGISTRY_FILE)) as f:
            assert json.load(f)["next_producer_id"] > pid
    finally:
        h.stop()
        h.broker.close()


def test_named_producers_survive_a_restart_of_a_node_alone(tmp_path, clock):
    data = str(tmp_path / "data")
    h = make(clock, storage=SegmentedStorage(data))
    first = init(h.connect(), producer_name="p")
    h = restart(h, clock, data)
    try:
        assert init(h.connect(), producer_name="p") == (first[0], first[1] + 1)
    finally:
        h.stop()
        h.broker.close()


def test_retention_keeps_the_producers_whose_batches_it_removed_across_a_restart(tmp_path, clock):
    data = str(tmp_path / "data")
    h = make(clock, storage=SegmentedStorage(data))
    conn = h.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 1, "config": {"segment_bytes": 1024}})
    pid, epoch = init(conn)
    seq = 40
    for i in range(seq):
        assert "result" in conn.call("SendBatch", batch(pid, epoch, None, {0: (i, ["x" * 100])}))
    replica = h.broker.topics["t"].partitions[0]
    assert replica.log.segment_count > 3
    replica.log.sync()
    replica.node.compact(replica.commit_index - 2)  # retention removes all but the last segment(s)
    assert replica.log.start_index > 10
    assert replica.log.producer_state  # the new start keeps the table as of the entry before it
    h = restart(h, clock, data)
    try:
        conn = h.connect()
        assert "result" in conn.call("SendBatch", batch(pid, epoch, None, {0: (seq, ["y"])}))
        assert h.broker.topics["t"].partitions[0].producers.producer_ids() == [pid]
    finally:
        h.stop()
        h.broker.close()


def test_the_wire_parses_idempotent_params():
    p = wire.parse_send_batch({"topic": "t", "producer_id": 3, "epoch": 1, "messages": [{"value": 1, "partition": 0}],
                               "sequences": [{"partition": 0, "base_sequence": 9}]})
    assert (p.producer_id, p.epoch, p.sequences) == (3, 1, {0: 9})
    s = wire.parse_send({"topic": "t", "value": 1, "producer_id": 3, "epoch": 1, "base_sequence": 4})
    assert s.messages == [{"value": 1}] and s.sequences == {-1: 4}


def test_create_topic_auto_create_makes_the_topic_a_send_would_and_finds_an_existing_one(harness):
    conn = harness.connect()
    created = conn.call("CreateTopic", {"topic": "t", "auto_create": True})["result"]
    assert created["created"] is True and len(created["partitions"]) == 2  # default_partitions
    again = conn.call("CreateTopic", {"topic": "t", "auto_create": True})["result"]
    assert again["created"] is False and len(again["partitions"]) == 2
    # The plain form still refuses an existing topic.
    assert conn.call("CreateTopic", {"topic": "t"})["error"]["code"] == "TOPIC_EXISTS"


@pytest.mark.parametrize("params, field", [
    ({"topic": "t", "auto_create": False}, "auto_create"),
    ({"topic": "t", "auto_create": 1}, "auto_create"),
    ({"topic": "t", "auto_create": True, "partitions": 3}, "partitions"),
    ({"topic": "t", "auto_create": True, "config": {}}, "config"),
])
def test_create_topic_auto_create_takes_no_settings(harness, params, field):
    error = harness.connect().call("CreateTopic", params)["error"]
    assert error["code"] == "INVALID_PARAMS" and error["field"] == field


def test_create_topic_auto_create_is_unknown_topic_when_auto_creation_is_off(clock):
    h = BrokerHarness(storage=MemoryStorage(), config=BrokerConfig(auto_create_topics=False), clock=clock)
    try:
        conn = h.connect()
        error = conn.call("CreateTopic", {"topic": "t", "auto_create": True})["error"]
        assert error["code"] == "UNKNOWN_TOPIC" and "auto-creation is off" in error["message"]
        conn.call("CreateTopic", {"topic": "t"})
        assert conn.call("CreateTopic", {"topic": "t", "auto_create": True})["result"]["created"] is False
        assert conn.call("CreateTopic", {"topic": "__consumer_offsets", "auto_create": True})["error"]["code"] \
            == "INTERNAL_TOPIC"
    finally:
        h.stop()


def test_init_producer_id_with_a_request_token_answers_a_resend_as_the_first(harness):
    conn = harness.connect()
    first = init(conn, request_token="t-1")
    assert init(conn, request_token="t-1") == first  # a resend: no second id
    assert init(conn, request_token="t-2") != first and init(conn) != first
    # An epoch bump with a token: the resend gets the same epoch, not the one after it.
    bumped = init(conn, producer_id=first[0], epoch=first[1], request_token="t-3")
    assert bumped == (first[0], first[1] + 1)
    assert init(conn, producer_id=first[0], epoch=first[1], request_token="t-3") == bumped


def test_a_named_producer_resending_its_init_with_the_token_is_not_fenced_by_itself(harness):
    conn = harness.connect()
    first = init(conn, producer_name="orders", request_token="a")
    assert init(conn, producer_name="orders", request_token="a") == first  # no second bump
    # It asks for its next epoch; the answer is lost and it asks again with the same token.
    params = {"producer_name": "orders", "producer_id": first[0], "epoch": first[1], "request_token": "b"}
    bumped = init(conn, **params)
    assert init(conn, **params) == bumped == (first[0], first[1] + 1)  # without the token: PRODUCER_FENCED
    without = conn.call("InitProducerId", {"producer_name": "orders", "producer_id": first[0], "epoch": first[1]})
    assert without["error"]["code"] == "PRODUCER_FENCED"
    # Another instance under the name (no token, or another one) still fences it.
    assert init(conn, producer_name="orders", request_token="c") == (first[0], first[1] + 2)
    # "b" again is an older instance's resend now: fenced, and it registers nothing.
    late = conn.call("InitProducerId", {"producer_name": "orders", "request_token": "b"})
    assert late["error"]["code"] == "PRODUCER_FENCED"
    assert init(conn, producer_name="orders", request_token="c") == (first[0], first[1] + 2)


def test_an_older_instances_resend_does_not_fence_the_newer_one(harness):
    conn = harness.connect()
    a = init(conn, producer_name="orders", request_token="A")  # instance A; suppose its answer is lost
    b = init(conn, producer_name="orders", request_token="B")  # instance B of the same name starts
    assert b == (a[0], a[1] + 1)
    resent = conn.call("InitProducerId", {"producer_name": "orders", "request_token": "A"})  # A's resend
    assert resent["error"]["code"] == "PRODUCER_FENCED" and resent["error"]["producer_name"] == "orders"
    # Nothing was registered: B still holds the name, and its own resend and next epoch work.
    assert init(conn, producer_name="orders", request_token="B") == b
    assert init(conn, producer_name="orders", producer_id=b[0], epoch=b[1], request_token="B2") == (b[0], b[1] + 1)


@pytest.mark.parametrize("token", ["", "x" * 65, 7, "tab\there", "é"])
def test_a_malformed_request_token_is_invalid_params(harness, token):
    error = harness.connect().call("InitProducerId", {"request_token": token})["error"]
    assert error["code"] == "INVALID_PARAMS" and error["field"] == "request_token"


def test_an_unnamed_producers_tokens_are_bounded(harness, monkeypatch):
    from streamlog.broker import producer_ids

    monkeypatch.setattr(producer_ids, "TOKENS_REMEMBERED", 3)
    conn = harness.connect()
    first = init(conn, request_token="t0")
    for i in range(1, 4):
        init(conn, request_token=f"t{i}")
    assert init(conn, request_token="t0") != first  # forgotten: the oldest of more than 3


def test_a_named_producers_last_token_survives_a_restart_of_a_node_alone(tmp_path, clock):
    h = make(clock, storage=SegmentedStorage(str(tmp_path)))
    first = init(h.connect(), producer_name="orders", request_token="a")
    h.stop()
    h = make(clock, storage=SegmentedStorage(str(tmp_path)))
    try:
        assert init(h.connect(), producer_name="orders", request_token="a") == first
        with open(os.path.join(str(tmp_path), REGISTRY_FILE)) as f:
            assert json.load(f)["tokens"] == {"orders": "a"}
        second = init(h.connect(), producer_name="orders", request_token="b")
    finally:
        h.stop()
    h = make(clock, storage=SegmentedStorage(str(tmp_path)))
    try:  # both tokens and what each was given survive: "a" is now an older instance
        with open(os.path.join(str(tmp_path), REGISTRY_FILE)) as f:
            assert json.load(f)["tokens"] == {"orders": [["b", *second], ["a", *first]]}
        assert init(h.connect(), producer_name="orders", request_token="b") == second
        error = h.connect().call("InitProducerId", {"producer_name": "orders", "request_token": "a"})["error"]
        assert error["code"] == "PRODUCER_FENCED"
    finally:
        h.stop()

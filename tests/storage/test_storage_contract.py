"""One contract, every partition log: the memory log and the segmented log (format 2).

Both are Raft logs keyed by index (streamlog.raft.log.RaftLog) and record
logs keyed by offset (streamlog.storage.base.ReplicatedLog).  The segmented
variants use tiny segments, a tiny index interval and a tiny (or no) tail
cache so that reads cross segments, go through the index and hit the disk;
most logs here interleave bookkeeping entries (no-ops, configurations) with
record batches, so indexes and offsets drift apart as in a real Raft log.
"""

from __future__ import annotations

import orjson
import pytest
from storage_helpers import append_batch, append_config, append_noop, fill, make_batch, offsets_of, read_all

from streamlog.raft.log import Entry
from streamlog.storage import codec
from streamlog.storage.base import BatchType, RecordBatch, TopicConfig
from streamlog.storage.log import SegmentedLog
from streamlog.storage.memory import MemoryLog

SMALL = TopicConfig(segment_bytes=1_000)


@pytest.fixture(params=["memory", "segmented", "segmented-nocache"])
def make_log(request, tmp_path):
    made = []

    def make(config: TopicConfig | None = None, start_offset: int = 0):
        if request.param == "memory":
            log = MemoryLog(config, start_offset=start_offset)
        else:
            cache = 0 if request.param == "segmented-nocache" else 600
            log = SegmentedLog(
                str(tmp_path / f"p{len(made)}"),
                config,
                SMALL,
                index_interval_bytes=256,
                cache_bytes=cache,
                start_offset=start_offset,
            )
        made.append(log)
        return log

    make.kind = request.param
    yield make
    for log in made:
        log.close()


def mixed(log, batches: int = 40) -> dict[int, tuple[str, object]]:
    """Record batches of five with a no-op after every third and a configuration after every seventh.

    Terms rise by one at every no-op (a new leader's first entry).  Returns
    index -> (kind, base offset or members).
    """
    shape: dict[int, tuple[str, object]] = {}
    for i in range(batches):
        index = append_batch(log, make_batch(log.end_offset, 5, ts=1_000 + log.end_offset))
        shape[index] = ("records", log.end_offset - 5)
        if i % 3 == 2:
            shape[append_noop(log, term=log.last_term + 1)] = ("noop", log.end_offset)
        if i % 7 == 6:
            members = tuple(f"{n}.x" for n in range(1, 2 + i % 3))
            shape[append_config(log, members)] = ("config", members)
    return shape


# -- an empty log, and appending -----------------------------------------------------------


def test_empty_log(make_log):
    log = make_log()
    assert (log.start_offset, log.end_offset) == (0, 0)
    assert (log.start_index, log.last_index, log.last_term, log.prefix_term) == (1, 0, 0, 0)
    assert (log.term_at(0), log.term_at(1), log.config_at(5)) == (0, None, None)
    result = log.read(0, 10, 1000)
    assert (result.count, result.next_offset, result.fragments) == (0, 0, [])
    assert log.offset_for_timestamp(0) == 0
    assert log.entries(1, 10, 1000) == []
    assert log.next_offset_after(0) == 0 and log.index_for_offset(0) is None


def test_start_offset_of_a_new_log(make_log):
    log = make_log(start_offset=42)
    assert (log.start_offset, log.end_offset, log.start_index) == (42, 42, 1)
    append_batch(log, make_batch(42, 3))
    assert read_all(log) == [42, 43, 44]
    assert log.index_for_offset(43) == 1 and log.next_offset_after(0) == 42


def test_append_then_read_everything_across_bookkeeping_entries(make_log):
    log = make_log()
    shape = mixed(log)
    assert log.end_offset == 200 and log.last_index == len(shape) > 40
    assert read_all(log) == list(range(200))
    result = log.read(0, 1000, 1 << 20)
    assert result.count == 200 and result.next_offset == 200
    assert result.size == len(b",".join(result.fragments))
    assert [r["offset"] for r in orjson.loads(b"[" + b",".join(result.fragments) + b"]")] == list(range(200))


@pytest.mark.parametrize("offset", [0, 1, 4, 5, 77, 133, 199])
def test_read_from_any_offset(make_log, offset):
    log = make_log()
    mixed(log)
    result = log.read(offset, 12, 1 << 20)
    assert offsets_of(result) == list(range(offset, min(offset + 12, 200)))
    assert result.next_offset == offset + result.count


def test_read_respects_max_bytes_but_returns_at_least_one(make_log):
    log = make_log()
    fill(log, 10, noops=2)
    one = log.read(3, 100, 1)
    assert offsets_of(one) == [3]
    record_size = one.size
    some = log.read(3, 100, record_size * 3 + 2)
    assert offsets_of(some) == [3, 4, 5]
    assert some.size <= record_size * 3 + 2


def test_read_at_end_is_empty(make_log):
    log = make_log()
    fill(log, 2)
    append_noop(log)
    assert log.read(10, 5, 100).count == 0
    assert log.read(3, 0, 100).count == 0


def test_append_must_continue_the_log(make_log):
    log = make_log()
    fill(log, 1)  # index 1, offsets 0..4
    with pytest.raises(ValueError, match="expected 2"):
        log.append([Entry(3, 1, make_batch(5, 1))])
    with pytest.raises(ValueError, match="base offset"):
        log.append([Entry(2, 1, make_batch(4, 1))])
    with pytest.raises(ValueError, match="base offset"):
        log.append([Entry(2, 1, make_batch(6, 1))])
    log.append([Entry(2, 3, b"")])
    with pytest.raises(ValueError, match="terms never go down"):
        log.append([Entry(3, 2, make_batch(5, 1))])
    with pytest.raises(ValueError, match="configuration entry carries no data"):
        log.append([Entry(3, 3, b"x", ("a",))])
    with pytest.raises(TypeError):
        log.append([Entry(3, 3, 42)])  # type: ignore[arg-type]
    # A call is checked whole before anything is written.
    with pytest.raises(ValueError):
        log.append([Entry(3, 3, make_batch(5, 1)), Entry(5, 3, make_batch(6, 1))])
    assert (log.last_index, log.end_offset) == (2, 5)
    log.append([Entry(3, 3, make_batch(5, 1)), Entry(4, 3, b""), Entry(5, 3, make_batch(6, 2))])
    assert (log.last_index, log.end_offset, log.last_term) == (5, 8, 3)
    assert read_all(log) == list(range(8))


def test_entries_are_whole_stored_batches_and_bookkeeping(make_log):
    log = make_log()
    shape = mixed(log, 20)
    got = log.entries(1, log.last_index + 1, 1 << 30)
    assert [e.index for e in got] == list(range(1, log.last_index + 1))
    for e in got:
        kind, what = shape[e.index]
        assert e.term == log.term_at(e.index)
        if kind == "records":
            batch = e.data
            assert isinstance(batch, RecordBatch) and (batch.raft_index, batch.term, batch.base_offset) == (e.index, e.term, what)
            assert len(batch) == len(batch.payload)
            # It carries its stored header: sent as is, it decodes to itself.
            assert codec.decode(batch.header + batch.payload) == batch
            assert e.config is None
        elif kind == "noop":
            assert (e.data, e.config) == (b"", None)
        else:
            assert (e.data, e.config) == (b"", what)


def test_entries_stop_at_max_bytes_but_return_at_least_one(make_log):
    log = make_log()
    fill(log, 10, noops=2)
    first = log.entries(1, 100, 1)
    assert [e.index for e in first] == [1]
    size = len(first[0].data)
    two = log.entries(1, 100, 2 * size)
    assert [e.index for e in two] == [1, 2, 3]  # the no-op at 3 costs nothing
    assert log.entries(5, 7, 1 << 30)[-1].index == 6
    assert [e.index for e in log.entries(0, 3, 1 << 30)] == [1, 2]  # clipped to the log
    assert log.entries(log.last_index + 1, log.last_index + 5, 100) == []


def test_a_batch_received_from_a_peer_is_stored_as_received(make_log, tmp_path):
    leader = MemoryLog()
    mixed(leader, 12)
    follower = make_log()
    for entry in leader.entries(1, leader.last_index + 1, 1 << 30):
        if isinstance(entry.data, RecordBatch):
            received = codec.decode(entry.data.header + entry.data.payload)  # what a transport hands over
            follower.append([Entry(entry.index, entry.term, received)])
        else:
            follower.append([entry])
    mine = follower.entries(1, follower.last_index + 1, 1 << 30)
    theirs = leader.entries(1, leader.last_index + 1, 1 << 30)
    assert mine == theirs
    for a, b in zip(mine, theirs):
        if isinstance(a.data, RecordBatch):
            assert a.data.header == b.data.header  # byte for byte
    assert read_all(follower) == read_all(leader)


def test_a_received_batch_that_does_not_match_its_entry_is_refused(make_log):
    leader = MemoryLog()
    fill(leader, 1)  # entry 1: offsets 0..4
    append_noop(leader)  # entry 2
    fill(leader, 1)  # entry 3: offsets 5..9
    [one, two, three] = leader.entries(1, 4, 1 << 30)
    log = make_log()
    log.append([one])
    frame = codec.decode(three.data.header + three.data.payload)
    with pytest.raises(ValueError, match="carries a frame of index 3"):
        log.append([Entry(2, 1, frame)])  # the frame of entry 3 as entry 2 (its offset would fit)
    log.append([two])
    with pytest.raises(ValueError, match=r"entry 3 \(term 2\) carries a frame of index 3 \(term 0\)"):
        log.append([Entry(3, 2, frame)])
    fields = ("base_offset", "count", "term", "first_timestamp", "max_timestamp", "raft_index")
    damaged = RecordBatch(**{f: getattr(frame, f) for f in fields}, payload=frame.payload[:-1] + b"X", header=frame.header)
    with pytest.raises(ValueError, match="CRC"):
        log.append([Entry(3, 0, damaged)])
    assert log.last_index == 2
    log.append([Entry(3, 0, frame)])
    assert read_all(log) == list(range(10))


def test_terms_and_configurations_are_answered_for_every_index(make_log):
    log = make_log()
    shape = mixed(log)
    expected_term, expected_config = 0, None
    for index in range(1, log.last_index + 1):
        kind, what = shape[index]
        if kind == "noop":
            expected_term += 1
        if kind == "config":
            expected_config = (index, what)
        assert log.term_at(index) == expected_term, index
        assert log.config_at(index) == expected_config, index
    assert log.last_term == expected_term
    assert log.term_at(log.last_index + 1) is None and log.term_at(-1) is None


def test_next_offset_and_index_map_both_ways(make_log):
    log = make_log()
    shape = mixed(log)
    end = 0
    for index in range(1, log.last_index + 1):
        kind, what = shape[index]
        if kind == "records":
            assert log.next_offset_after(index) == what + 5
            for offset in range(what, what + 5):
                assert log.index_for_offset(offset) == index
            end = what + 5
        else:
            assert log.next_offset_after(index) == end  # bookkeeping moves no offset
    assert log.next_offset_after(0) == 0
    assert log.index_for_offset(200) is None
    with pytest.raises(ValueError):
        log.next_offset_after(log.last_index + 1)


def test_sync_reports_the_durable_index(make_log):
    log = make_log()
    fill(log, 3, noops=1)
    assert log.sync() == 6
    assert (log.durable_index, log.durable_offset) == (6, 15)


def test_offset_for_timestamp(make_log):
    log = make_log()
    mixed(log)  # the record at offset o has timestamp 1000 + o
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(1_000) == 0
    assert log.offset_for_timestamp(1_063) == 63
    assert log.offset_for_timestamp(1_199) == 199
    assert log.offset_for_timestamp(1_200) == 200


def test_offset_for_timestamp_with_out_of_order_timestamps(make_log):
    log = make_log()
    append_batch(log, make_batch(0, 5, ts=5_000))
    append_noop(log)
    append_batch(log, make_batch(5, 5, ts=1_000))
    fill(log, 30, ts=6_000, noops=4)
    assert log.offset_for_timestamp(1_002) == 0
    assert log.offset_for_timestamp(5_003) == 3
    assert log.offset_for_timestamp(6_010) == 10


# -- truncation ------------------------------------------------------------------------------


def test_truncate_suffix_at_every_entry_then_append(make_log):
    probe = make_log()
    shape = mixed(probe, 25)
    last = probe.last_index
    terms = {i: probe.term_at(i) for i in range(0, last + 1)}
    configs = {i: probe.config_at(i) for i in range(0, last + 1)}
    offsets = {i: probe.next_offset_after(i) for i in range(0, last + 1)}
    for cut in range(1, last + 2):
        log = make_log()
        mixed(log, 25)
        log.truncate_suffix(cut)
        assert (log.last_index, log.last_term) == (cut - 1, terms[cut - 1])
        assert log.end_offset == offsets[cut - 1]
        assert log.durable_index <= cut - 1
        assert read_all(log) == list(range(offsets[cut - 1]))
        assert log.config_at(last) == configs[cut - 1]
        assert log.term_at(cut) is None
        assert log.offset_for_timestamp(1_000 + offsets[cut - 1]) == offsets[cut - 1]
        new_term = terms[cut - 1] + 5
        append_batch(log, make_batch(log.end_offset, 4, ts=9_000), term=new_term)
        append_noop(log)
        assert read_all(log) == list(range(offsets[cut - 1] + 4))
        assert log.offset_for_timestamp(9_000) == offsets[cut - 1]
        assert (log.term_at(cut), log.last_index) == (new_term, cut + 1)
        [entry] = log.entries(cut, cut + 1, 1 << 20)
        assert entry.data.term == new_term and entry.data.raft_index == cut
        log.close()
    assert shape  # (used above through `probe`)


def test_truncate_at_or_past_the_end_does_nothing_below_the_start_refuses(make_log):
    log = make_log()
    fill(log, 3)
    log.truncate_suffix(4)
    log.truncate_suffix(99)
    assert read_all(log) == list(range(15)) and log.last_index == 3
    with pytest.raises(ValueError):
        log.truncate_suffix(0)


# -- the log start: retention, compaction, snapshots ------------------------------------------


def test_retention_by_bytes_moves_the_start_to_a_batch_boundary(make_log):
    log = make_log(TopicConfig(retention_bytes=1_500))
    fill(log, 60, noops=4)
    log.sync()
    start = log.apply_retention(now_ms=2_000)
    assert start == log.start_offset
    assert 0 < start < log.end_offset and start % 5 == 0
    assert read_all(log) == list(range(start, 300))
    assert log.size_bytes <= 1_500 + 1_000  # within one segment of the limit
    assert log.prefix_term == log.term_at(log.start_index - 1)
    assert log.next_offset_after(log.start_index - 1) == start


def test_retention_by_time(make_log):
    log = make_log(TopicConfig(retention_ms=100))
    fill(log, 60, noops=3)  # timestamps 1000..1299
    log.sync()
    start = log.apply_retention(now_ms=1_300)
    assert 0 < start <= 200
    assert read_all(log)[-1] == 299
    assert log.offset_for_timestamp(0) == start


def test_retention_without_limits_keeps_everything(make_log):
    log = make_log()
    fill(log, 60)
    log.sync()
    assert log.apply_retention(now_ms=10**12) == 0
    assert read_all(log) == list(range(300)) and log.start_index == 1


def test_retention_removes_only_what_is_durable(make_log):
    log = make_log(TopicConfig(retention_bytes=1))
    fill(log, 20)
    assert log.retention_point(0) == 0 and log.apply_retention(now_ms=0) == 0  # nothing synced yet
    log.sync()
    assert log.retention_point(0) >= 10


def test_truncate_prefix_keeps_what_follows_and_remembers_what_went(make_log):
    log = make_log()
    shape = mixed(log, 30)
    log.sync()
    last = log.last_index
    terms = {i: log.term_at(i) for i in range(0, last + 1)}
    configs = {i: log.config_at(i) for i in range(0, last + 1)}
    for upto in (3, 17, 26, last - 3):
        log.truncate_prefix(upto)
        start = log.start_index
        assert start <= upto + 1  # a segmented log removes whole segments only
        assert log.prefix_term == terms[start - 1] == log.term_at(start - 1)
        assert log.term_at(start - 2) is None
        assert log.config_at(start - 1) == ((start - 1, configs[start - 1][1]) if configs[start - 1] else None)
        assert log.config_at(last) == configs[last]
        for index in range(start, last + 1):
            assert log.term_at(index) == terms[index]
        assert read_all(log) == list(range(log.start_offset, 150))
        assert [e.index for e in log.entries(0, last + 1, 1 << 30)] == list(range(start, last + 1))
    assert shape


def test_compaction_past_every_configuration_remembers_the_last_one(make_log):
    log = make_log()
    append_config(log, ("1.a",))
    fill(log, 10)
    append_config(log, ("1.a", "2.b"))
    fill(log, 30)
    log.sync()
    log.truncate_prefix(log.last_index - 2)
    assert log.start_index > 13  # both configuration entries are gone
    assert log.config_at(log.start_index - 1) == (log.start_index - 1, ("1.a", "2.b"))
    assert log.config_at(log.last_index) == (log.start_index - 1, ("1.a", "2.b"))
    assert log.prefix_config == ("1.a", "2.b")


def test_reset_after_the_end_starts_an_empty_log_there(make_log):
    log = make_log()
    mixed(log, 10)
    log.reset(100, 7, ("1.a", "2.b"), next_offset=500, producer_state=b"\x01state")
    assert (log.start_index, log.last_index, log.last_term, log.prefix_term) == (101, 100, 7, 7)
    assert (log.start_offset, log.end_offset, log.producer_state) == (500, 500, b"\x01state")
    assert log.config_at(100) == (100, ("1.a", "2.b")) and log.config_at(150) == (100, ("1.a", "2.b"))
    assert log.term_at(100) == 7 and log.term_at(99) is None and log.entries(1, 200, 100) == []
    assert log.read(500, 10, 100).count == 0 and log.durable_index == 100
    append_batch(log, make_batch(500, 3), term=8)
    assert read_all(log) == [500, 501, 502] and log.index_for_offset(501) == 101


def test_reset_inside_the_log_drops_everything_and_keeps_the_offset_there(make_log):
    log = make_log()
    mixed(log, 20)
    after = log.next_offset_after(10)
    log.reset(10, 99)
    assert (log.start_index, log.last_index, log.end_offset, log.start_offset) == (11, 10, after, after)
    assert log.term_at(10) == 99 and log.term_at(11) is None and log.config_at(30) is None
    append_noop(log)
    append_batch(log, make_batch(after, 2))
    assert read_all(log) == [after, after + 1] and log.last_term == 99


def test_reset_before_the_start(make_log):
    log = make_log()
    fill(log, 30)
    log.sync()
    log.truncate_prefix(20)
    log.reset(5, 3, next_offset=25)
    assert (log.start_index, log.end_offset, log.last_term) == (6, 25, 3)
    append_batch(log, make_batch(25, 1))
    assert read_all(log) == [25]


def test_a_configuration_payload_is_the_json_array_of_members(make_log):
    log = make_log()
    append_config(log, ("2.b", "1.a"))
    [entry] = log.entries(1, 2, 100)
    assert entry.config == ("2.b", "1.a")
    if make_log.kind == "memory":
        stored = log._batches[0]
    else:
        stored = log.chain.batch_at(1)
    assert (stored.type, stored.count, stored.payload) == (BatchType.CONFIG, 0, b'["2.b","1.a"]')


def test_opaque_data_entries_hold_no_records(make_log):
    log = make_log()
    log.append([Entry(1, 1, b'{"command":"CreateTopic"}')])
    fill(log, 2)
    [entry] = log.entries(1, 2, 100)
    assert entry.data == b'{"command":"CreateTopic"}'
    assert read_all(log) == list(range(10)) and log.index_for_offset(0) == 2


def test_reset_at_the_last_entry_just_after_a_roll(make_log):
    """(Found by the state machine: the empty active segment already bore the new log's name.)"""
    log = make_log()
    append_noop(log)
    fill(log, 2)
    if hasattr(log, "roll"):
        log.roll()
    log.reset(log.last_index, 4, ("1.a",))
    assert (log.start_index, log.last_index, log.end_offset) == (4, 3, 10)
    append_config(log, ("1.a", "2.b"))
    append_batch(log, make_batch(10, 2))
    assert read_all(log) == [10, 11] and log.config_at(5) == (4, ("1.a", "2.b"))


def test_an_empty_range_of_entries_is_empty(make_log):
    """(Found by the state machine: the memory log sliced [lo - start : hi - start] with hi below the start.)"""
    log = make_log()
    fill(log, 3)
    assert log.entries(0, 0, 1) == [] and log.entries(2, 2, 100) == [] and log.entries(3, 1, 100) == []

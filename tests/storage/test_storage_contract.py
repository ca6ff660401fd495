"""One contract, every PartitionLog: the memory reference and the segmented log.

The segmented variants use tiny segments, a tiny index interval and a tiny
(or no) tail cache so that reads cross segments, go through the index and hit
the disk.
"""

from __future__ import annotations

import orjson
import pytest
from storage_helpers import fill, make_batch, offsets_of, read_all

from streamlog.storage.base import TopicConfig
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

    yield make
    for log in made:
        log.close()


def test_empty_log(make_log):
    log = make_log()
    assert (log.start_offset, log.end_offset) == (0, 0)
    result = log.read(0, 10, 1000)
    assert (result.count, result.next_offset, result.fragments) == (0, 0, [])
    assert log.offset_for_timestamp(0) == 0
    assert list(log.batches(0, 1000)) == []


def test_start_offset_of_a_new_log(make_log):
    log = make_log(start_offset=42)
    assert (log.start_offset, log.end_offset) == (42, 42)
    log.append(make_batch(42, 3))
    assert read_all(log) == [42, 43, 44]


def test_append_then_read_everything(make_log):
    log = make_log()
    fill(log, 40)
    assert log.end_offset == 200
    assert read_all(log) == list(range(200))
    result = log.read(0, 1000, 1 << 20)
    assert result.count == 200 and result.next_offset == 200
    assert result.size == len(b",".join(result.fragments))
    assert [r["offset"] for r in orjson.loads(b"[" + b",".join(result.fragments) + b"]")] == list(range(200))


@pytest.mark.parametrize("offset", [0, 1, 4, 5, 77, 133, 199])
def test_read_from_any_offset(make_log, offset):
    log = make_log()
    fill(log, 40)
    result = log.read(offset, 12, 1 << 20)
    assert offsets_of(result) == list(range(offset, min(offset + 12, 200)))
    assert result.next_offset == offset + result.count


def test_read_respects_max_bytes_but_returns_at_least_one(make_log):
    log = make_log()
    fill(log, 10)
    one = log.read(3, 100, 1)
    assert offsets_of(one) == [3]
    record_size = one.size
    some = log.read(3, 100, record_size * 3 + 2)
    assert offsets_of(some) == [3, 4, 5]
    assert some.size <= record_size * 3 + 2


def test_read_at_end_is_empty(make_log):
    log = make_log()
    fill(log, 2)
    assert log.read(10, 5, 100).count == 0
    assert log.read(3, 0, 100).count == 0


def test_append_must_continue_at_the_end(make_log):
    log = make_log()
    fill(log, 1)
    with pytest.raises(ValueError):
        log.append(make_batch(4, 1))
    with pytest.raises(ValueError):
        log.append(make_batch(6, 1))
    log.append(make_batch(5, 1))
    assert log.end_offset == 6


def test_batches_are_whole_and_cover_the_offset(make_log):
    log = make_log()
    fill(log, 20)
    got = list(log.batches(12, 1))
    assert len(got) == 1 and got[0].base_offset == 10 and got[0].count == 5
    got = list(log.batches(12, 10_000))
    assert got[0].base_offset == 10
    assert [b.base_offset for b in got] == list(range(10, 10 + 5 * len(got), 5))
    assert got[0] == make_batch(10, 5, ts=1_010)
    assert list(log.batches(100, 10)) == []


def test_sync_reports_durable_end(make_log):
    log = make_log()
    fill(log, 3)
    assert log.sync() == 15
    assert log.durable_offset == 15


def test_offset_for_timestamp(make_log):
    log = make_log()
    fill(log, 40)  # record at offset o has timestamp 1000 + o
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(1_000) == 0
    assert log.offset_for_timestamp(1_063) == 63
    assert log.offset_for_timestamp(1_199) == 199
    assert log.offset_for_timestamp(1_200) == 200


def test_offset_for_timestamp_with_out_of_order_timestamps(make_log):
    log = make_log()
    log.append(make_batch(0, 5, ts=5_000))
    log.append(make_batch(5, 5, ts=1_000))
    fill(log, 30, ts=6_000)
    assert log.offset_for_timestamp(1_002) == 0
    assert log.offset_for_timestamp(5_003) == 3
    assert log.offset_for_timestamp(6_010) == 10


@pytest.mark.parametrize("cut", [0, 1, 5, 7, 50, 99, 100, 101, 149])
def test_truncate_suffix_then_append(make_log, cut):
    log = make_log()
    fill(log, 30)
    log.truncate_suffix(cut)
    assert log.end_offset == cut
    assert read_all(log) == list(range(cut))
    assert log.offset_for_timestamp(1_000 + cut) == cut
    log.append(make_batch(cut, 4, ts=9_000, term=2))
    assert read_all(log) == list(range(cut + 4))
    assert log.offset_for_timestamp(9_000) == cut
    assert [b.term for b in log.batches(cut, 100)] == [2]


def test_truncate_at_or_past_end_does_nothing(make_log):
    log = make_log()
    fill(log, 3)
    log.truncate_suffix(15)
    log.truncate_suffix(99)
    assert read_all(log) == list(range(15))


def test_retention_by_bytes_moves_start_to_a_batch_boundary(make_log):
    log = make_log(TopicConfig(retention_bytes=1_500))
    fill(log, 60)
    log.sync()
    start = log.apply_retention(now_ms=2_000)
    assert start == log.start_offset
    assert 0 < start < log.end_offset and start % 5 == 0
    assert read_all(log) == list(range(start, 300))
    assert log.size_bytes <= 1_500 + 1_000  # within one segment of the limit


def test_retention_by_time(make_log):
    log = make_log(TopicConfig(retention_ms=100))
    fill(log, 60)  # timestamps 1000..1299
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
    assert read_all(log) == list(range(300))

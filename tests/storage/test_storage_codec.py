"""The batch frame (format 2): round trips, and every kind of damage is told apart; format 1 is read."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_helpers import make_batch

from streamlog.storage import codec
from streamlog.storage.base import BatchType, RecordBatch


def stored(batch: RecordBatch, index: int, term: int = 1) -> RecordBatch:
    return attrs.evolve(batch, raft_index=index, term=term)


def test_round_trip_keeps_every_field_and_the_stored_header():
    batch = RecordBatch(
        base_offset=2**40,
        count=3,
        term=7,
        first_timestamp=-5,
        max_timestamp=1_700_000_000_000,
        payload=b'{"a":1}\n{"b":2}\n{"c":3}',
        producer_id=99,
        producer_epoch=2,
        base_sequence=1234,
        raft_index=2**35,
    )
    frame = codec.encode(batch)
    assert len(frame) == codec.HEADER_SIZE + len(batch.payload)
    decoded = codec.decode(frame)
    assert decoded == batch
    assert decoded.header == frame[: codec.HEADER_SIZE]  # kept: sent on as is
    assert codec.frame_parts(decoded) == (frame[: codec.HEADER_SIZE], batch.payload)
    assert len(decoded) == len(batch.payload)


@pytest.mark.parametrize("kind,payload", [(BatchType.NOOP, b""), (BatchType.CONFIG, b'["1.a","2.b"]'), (BatchType.DATA, b"cmd")])
def test_bookkeeping_batches_hold_no_records(kind, payload):
    batch = RecordBatch(17, 0, 3, -1, -1, payload, raft_index=9, type=kind)
    assert codec.decode(codec.encode(batch)) == batch
    with pytest.raises(ValueError, match="cannot hold"):
        codec.encode(attrs.evolve(batch, count=1))
    with pytest.raises(ValueError, match="cannot hold"):
        codec.encode(attrs.evolve(stored(make_batch(0, 1), 1), count=0))


def test_the_header_is_76_bytes_with_magic_version_and_type():
    frame = codec.encode(stored(make_batch(0, 1), 1))
    assert codec.HEADER_SIZE == 76
    assert frame[:4] == b"SL\x02\x00"
    config = codec.encode(RecordBatch(0, 0, 1, -1, -1, b"[]", raft_index=2, type=BatchType.CONFIG))
    assert config[3] == 2


def test_a_batch_without_a_raft_index_cannot_be_stored():
    with pytest.raises(ValueError, match="Raft index"):
        codec.encode(make_batch(0, 1))


@given(st.integers(0, (76 + 30) * 8 - 1))
def test_any_single_bit_flip_is_detected(bit):
    frame = bytearray(codec.encode(stored(make_batch(5, 1, size=3), 3)))
    bit %= len(frame) * 8
    frame[bit // 8] ^= 1 << (bit % 8)
    result = codec.scan(bytes(frame), 0, 5, 3)
    assert result.frames == [] and result.stop in (codec.Stop.CORRUPT, codec.Stop.TORN, codec.Stop.GAP)
    with pytest.raises(codec.FrameError):
        codec.decode(bytes(frame))


def test_every_bit_flip_in_a_frame_is_detected():
    frame = codec.encode(stored(make_batch(5, 2, size=3), 4))
    for bit in range(len(frame) * 8):
        damaged = bytearray(frame)
        damaged[bit // 8] ^= 1 << (bit % 8)
        result = codec.scan(bytes(damaged) + frame, 0, 5, 4)
        assert result.valid_end == 0, bit


def frames(n: int = 3) -> list[bytes]:
    return [codec.encode(stored(make_batch(i * 3, 3), i + 1)) for i in range(n)]


def test_scan_stops_at_a_torn_tail():
    parts = frames()
    data = b"".join(parts)
    for cut in range(len(parts[0]) + len(parts[1]) + 1, len(data)):
        result = codec.scan(data[:cut], 0, 0, 1)
        assert result.stop is codec.Stop.TORN
        assert result.valid_end == len(parts[0]) + len(parts[1])
        assert (result.next_offset, result.next_index, result.last_term) == (6, 3, 1)
    whole = codec.scan(data, 0, 0, 1)
    assert whole.stop is codec.Stop.END and len(whole.frames) == 3
    assert (whole.next_offset, whole.next_index) == (9, 4)


def test_scan_reports_corruption_and_every_kind_of_gap():
    good = codec.encode(stored(make_batch(0, 3), 1, term=2))
    assert codec.scan(good + b"\0" * 100, 0, 0, 1).stop is codec.Stop.CORRUPT
    assert codec.scan(good + b"XY", 0, 0, 1).stop is codec.Stop.CORRUPT
    offset_gap = codec.scan(good + codec.encode(stored(make_batch(4, 1), 2, term=2)), 0, 0, 1)
    assert offset_gap.stop is codec.Stop.GAP and offset_gap.valid_end == len(good) and "offset" in offset_gap.reason
    index_gap = codec.scan(good + codec.encode(stored(make_batch(3, 1), 3, term=2)), 0, 0, 1)
    assert index_gap.stop is codec.Stop.GAP and "index" in index_gap.reason
    term_down = codec.scan(good + codec.encode(stored(make_batch(3, 1), 2, term=1)), 0, 0, 1)
    assert term_down.stop is codec.Stop.GAP and "term" in term_down.reason
    # Without expectations the first frame sets them; frames after it must still follow.
    noop = codec.encode(RecordBatch(3, 0, 2, -1, -1, b"", raft_index=2, type=BatchType.NOOP))
    assert codec.scan(good + noop + codec.encode(stored(make_batch(3, 1), 3, term=2))).stop is codec.Stop.END


def test_unknown_versions_and_types_are_refused():
    frame = bytearray(codec.encode(stored(make_batch(0, 1), 1)))
    frame[2] = 3
    with pytest.raises(codec.FrameError, match="version"):
        codec.decode(bytes(frame))
    frame[2], frame[3] = 2, 9
    with pytest.raises(codec.FrameError, match="type"):
        codec.decode(bytes(frame))


def test_format_1_frames_are_read_only_when_asked():
    batch = make_batch(10, 2, term=4)
    v1 = codec.encode_v1_header(batch) + batch.payload
    assert len(v1) == codec.HEADER_SIZE_V1 + len(batch.payload)
    with pytest.raises(codec.FrameError, match="version 1"):
        codec.decode(v1)
    decoded = codec.decode(v1, allow_v1=True)
    assert decoded == batch and decoded.header is None  # never written as is: it is re-encoded as format 2
    result = codec.scan(v1 + v1[:40], 0, 10, allow_v1=True)
    assert result.stop is codec.Stop.TORN and [f.header.version for f in result.frames] == [1]
    assert codec.scan(v1, 0, 10).stop is codec.Stop.CORRUPT

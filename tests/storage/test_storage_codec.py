"""The batch frame: round trips, and every kind of damage is told apart."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_helpers import make_batch

from streamlog.storage import codec
from streamlog.storage.base import RecordBatch


def test_round_trip_keeps_every_field():
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
    )
    frame = codec.encode(batch)
    assert len(frame) == codec.HEADER_SIZE + len(batch.payload)
    assert codec.decode(frame) == batch


def test_header_is_64_bytes_and_starts_with_magic_and_version():
    frame = codec.encode(make_batch(0, 1))
    assert codec.HEADER_SIZE == 64
    assert frame[:3] == b"SL\x01"


@given(st.integers(0, (64 + 30) * 8 - 1))
def test_any_single_bit_flip_is_detected(bit):
    frame = bytearray(codec.encode(make_batch(5, 1, size=3)))
    bit %= len(frame) * 8
    frame[bit // 8] ^= 1 << (bit % 8)
    result = codec.scan(bytes(frame), 0, 5)
    assert result.frames == [] and result.stop in (codec.Stop.CORRUPT, codec.Stop.TORN, codec.Stop.GAP)
    with pytest.raises(codec.FrameError):
        codec.decode(bytes(frame))


def test_every_bit_flip_in_a_frame_is_detected():
    frame = codec.encode(make_batch(5, 2, size=3))
    for bit in range(len(frame) * 8):
        damaged = bytearray(frame)
        damaged[bit // 8] ^= 1 << (bit % 8)
        result = codec.scan(bytes(damaged) + frame, 0, 5)
        assert result.valid_end == 0, bit


def test_scan_stops_at_a_torn_tail():
    frames = [codec.encode(make_batch(i * 3, 3)) for i in range(3)]
    data = b"".join(frames)
    for cut in range(len(frames[0]) + len(frames[1]) + 1, len(data)):
        result = codec.scan(data[:cut], 0, 0)
        assert result.stop is codec.Stop.TORN
        assert result.valid_end == len(frames[0]) + len(frames[1])
        assert result.next_offset == 6
    whole = codec.scan(data, 0, 0)
    assert whole.stop is codec.Stop.END and len(whole.frames) == 3 and whole.next_offset == 9


def test_scan_reports_corruption_and_gaps():
    good = codec.encode(make_batch(0, 3))
    assert codec.scan(good + b"\0" * 100, 0, 0).stop is codec.Stop.CORRUPT
    assert codec.scan(good + b"XY", 0, 0).stop is codec.Stop.CORRUPT
    gap = codec.scan(good + codec.encode(make_batch(4, 1)), 0, 0)
    assert gap.stop is codec.Stop.GAP and gap.valid_end == len(good)
    # Without an expected offset the first frame sets it; frames after it must still be dense.
    assert codec.scan(codec.encode(make_batch(4, 1)) + codec.encode(make_batch(5, 1))).stop is codec.Stop.END
    assert codec.scan(good + codec.encode(make_batch(4, 1))).stop is codec.Stop.GAP


def test_unknown_version_is_refused():
    frame = bytearray(codec.encode(make_batch(0, 1)))
    frame[2] = 2
    with pytest.raises(codec.FrameError, match="version"):
        codec.decode(bytes(frame))

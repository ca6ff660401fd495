"""murmur2 as Kafka's Java client computes it, and the partition of a key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlog.partitioner import murmur2, partition_for_key

# org.apache.kafka.common.utils.UtilsTest.testMurmur2 (signed 32-bit results).
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


def reference_murmur2(data: bytes) -> int:
    """A line-by-line transcription of Kafka's Utils.murmur2, one word at a time."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length - length % 4
    rest = length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@pytest.mark.parametrize("data,expected", KAFKA_VECTORS)
def test_murmur2_matches_kafkas_test_vectors(data, expected):
    assert murmur2(data) == expected
    assert reference_murmur2(data) == expected


@pytest.mark.parametrize("length", range(0, 150))
def test_murmur2_matches_the_reference_at_every_short_length(length):
    # Covers both code paths and the switch between them, with every tail length.
    data = bytes((i * 131 + length) % 256 for i in range(length))
    assert murmur2(data) == reference_murmur2(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=5000))
def test_murmur2_matches_the_reference_on_any_bytes(data):
    assert murmur2(data) == reference_murmur2(data)


def test_murmur2_of_a_long_key_matches_the_reference():
    data = bytes(range(256)) * 1000 + b"xyz"
    assert murmur2(data) == reference_murmur2(data)
    assert murmur2(b"\xff" * 4096) == reference_murmur2(b"\xff" * 4096)  # every lane at its maximum


def test_partition_for_key_is_the_positive_hash_modulo_the_count():
    # toPositive(murmur2("foobar")) = -790332482 & 0x7fffffff = 1357151166.
    assert partition_for_key("foobar", 10) == 1357151166 % 10
    assert partition_for_key("héllo", 7) == (murmur2("héllo".encode()) & 0x7FFFFFFF) % 7

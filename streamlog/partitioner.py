"""Where a message goes: Kafka's default partitioner for keyed messages.

A key is hashed with murmur2 (seed 0x9747b28c) over its UTF-8 bytes, made
positive with C{& 0x7fffffff} and taken modulo the partition count, exactly as
Kafka's Java client does, so a key lands on the partition a Kafka user
expects.  Messages without a key are spread round-robin by the broker.
"""

from __future__ import annotations

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2, as a signed 32-bit int (matches C{Utils.murmur2})."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: str, partitions: int) -> int:
    """The partition of C{key} among C{partitions}, as Kafka's default partitioner."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions

"""Where a message goes: Kafka's default partitioner for keyed messages.

A key is hashed with murmur2 (seed 0x9747b28c) over its UTF-8 bytes, made
positive with C{& 0x7fffffff} and taken modulo the partition count, exactly as
Kafka's Java client does, so a key lands on the partition a Kafka user
expects.

Messages with neither a key nor a partition are not spread one by one: the
broker puts all such messages of one request on one partition (sticky per
request), and moves on to the next partition, round-robin, from one request
to the next (a counter per topic on each node, from partition 0).
The client library chooses for itself, sticky per batch
(L{streamlog.client.partitioning}).

murmur2 is a chain over 32-bit words: each word is mixed (C{k *= m; k ^= k >>
24; k *= m}), then folded into the running hash (C{h = h * m ^ k}).  In pure
Python the per-word work dominates, so for longer keys the mixing of every
word is done at once, in a few big-integer operations over the whole key (each
word in its own 64-bit lane, where its product with C{m} cannot spill into
the next), and only the fold, which depends on the previous word, stays a
Python loop.  That is about four times faster than the word-by-word loop from
a few dozen bytes on; the key length limit (C{--max-key-bytes}) bounds the rest.
"""

from __future__ import annotations

import struct
import sys

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C

#: Below this many whole words, the setup of the lane arithmetic costs more than it saves.
_LANES_FROM_WORDS = 16

# memoryview.cast("I") reads native words: the lane path needs 4-byte little-endian ones.
_NATIVE_WORDS_OK = sys.byteorder == "little" and struct.calcsize("I") == 4


def murmur2(data: bytes) -> int:
    """Kafka's murmur2, as a signed 32-bit int (matches C{Utils.murmur2})."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length & ~3
    words = end >> 2
    m = _M
    mask = _MASK
    if words >= _LANES_FROM_WORDS and _NATIVE_WORDS_OK:
        for k in _mixed_words(data, words):
            h = (h * m ^ k) & mask
    else:
        for i in range(0, end, 4):
            k = (int.from_bytes(data[i : i + 4], "little") * m) & mask
            k ^= k >> 24
            h = (h * m ^ ((k * m) & mask)) & mask
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def _mixed_words(data: bytes, words: int) -> memoryview:
    """C{k * m; k ^= k >> 24; k * m} (mod 2**32) of every whole word of C{data}, at once.

    The words are spread into 64-bit lanes of one big integer: a 32-bit word
    times the 31-bit C{m} fits its lane, so one big multiplication mixes every
    word, and masking each lane to its low 32 bits is the C{mod 2**32}.
    """
    lanes = bytearray(8 * words)
    memoryview(lanes).cast("I")[0::2] = memoryview(data)[: 4 * words].cast("I")
    low = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * words, "little")
    x = (int.from_bytes(lanes, "little") * _M) & low
    x = (x ^ (x >> 24)) & low  # the next lane's bits land above bit 32 and are masked off
    x = (x * _M) & low
    return memoryview(x.to_bytes(8 * words, "little")).cast("I")[0::2]


def partition_for_key(key: str, partitions: int) -> int:
    """The partition of C{key} among C{partitions}, as Kafka's default partitioner."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions

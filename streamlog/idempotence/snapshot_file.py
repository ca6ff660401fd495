"""Producer-state snapshot files: a partition's table as of one Raft index, so that opening the
partition replays only the log after it (issue 10; as Kafka's C{<offset>.snapshot} files).

Without one, start-up rebuilds each partition's L{ProducerStateTable} by reading the header of
every batch its log holds (about 8.8 s of CPU for a partition of a million batches).  The
partition writes one when a segment rolls and when the node closes cleanly (the files are
L{streamlog.storage.producer_snapshots}'); this module is the pure part: the bytes, and when a
file may be believed.

A file holds C{(index, term, table)}: the table as of the log's entry C{index}, whose term was
C{term}, followed by a CRC32C of everything before it.  It is believed only if it decodes whole
(the CRC, the magic, the version, the table's own checks) and the log still holds that very
entry: C{start_index <= index <= last_index} and C{term_at(index) == term}.  By Raft's Log
Matching property two logs that hold an entry of the same index and term hold the same entries
up to it, so the table is then exactly what replaying the log up to C{index} would give, however
the log was truncated and rewritten since the file was written.  Anything else (torn by a crash,
a bit flipped, the log's tail cut by recovery or replaced by a new leader, retention past it) is
ignored, and the caller rebuilds from the log as if there were no file: a snapshot saves time,
it is never trusted over the log.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import crc32c as _crc32c

from streamlog.idempotence.table import CorruptProducerState

_MAGIC = b"SLPF"
_VERSION = 1
_HEAD = struct.Struct(">4sBqq")  # magic, version, index, term
_CRC = struct.Struct(">I")


def encode(index: int, term: int, table: bytes) -> bytes:
    """A snapshot file's bytes: C{table} (L{ProducerStateTable.snapshot}) as of entry C{index} of term C{term}."""
    body = _HEAD.pack(_MAGIC, _VERSION, index, term) + table
    return body + _CRC.pack(_crc32c.crc32c(body))


def decode(data: bytes) -> tuple[int, int, bytes]:
    """C{(index, term, table bytes)} of a snapshot file; L{CorruptProducerState} if it is not whole."""
    if len(data) < _HEAD.size + _CRC.size:
        raise CorruptProducerState(f"{len(data)} bytes is shorter than any producer-state snapshot file")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if _crc32c.crc32c(data[: -_CRC.size]) != crc:
        raise CorruptProducerState("producer-state snapshot file fails its CRC (torn or damaged)")
    magic, version, index, term = _HEAD.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptProducerState(f"not a producer-state snapshot file (magic {magic!r})")
    if version != _VERSION:
        raise CorruptProducerState(f"producer-state snapshot file version {version}; this code reads {_VERSION}")
    if index < 1 or term < 0:
        raise CorruptProducerState(f"producer-state snapshot file at index {index}, term {term}")
    return index, term, bytes(data[_HEAD.size: -_CRC.size])


def matches_log(index: int, term: int, start_index: int, last_index: int,
                term_at: Callable[[int], int | None]) -> bool:
    """May a snapshot as of entry C{index} of term C{term} stand for this log's prefix up to C{index}?

    Only if the log holds that entry (not retention's prefix, not past a cut tail) with that term.
    """
    return start_index <= index <= last_index and term_at(index) == term

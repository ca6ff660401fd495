"""Sans-io framing of stored batches (format version 2; version 1 is read for the upgrade).

Every batch is one frame: a fixed header followed by the payload.  The header
ends with a CRC32C (Castagnoli) computed over the header bytes before it and
then the payload, so a flipped bit anywhere in the frame, including the
length field, is detected.  All integers are big-endian.  The layouts are in
docs/storage.md.

Format 2 (76-byte header) keys a frame by its Raft index as well as by its
record base offset, and says what it holds (C{type}: records, a no-op, a
membership configuration, or opaque data); format 1 (64 bytes, today's
release before it) had neither.  A format-2 log refuses format-1 frames
(C{allow_v1=False}, the default): only the upgrade reads them.

Nothing here touches a file: L{encode_header} returns bytes to write (the
payload is written after it unchanged, with C{os.writev}, so it is never
copied), and L{scan} walks a buffer and says where its valid prefix ends and
why, so recovery and reads can decide what a damaged frame means for them.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator

import attrs
import crc32c as _crc32c

from streamlog.storage.base import BatchType, RecordBatch

MAGIC = b"SL"
FORMAT_VERSION = 2
FORMAT_V1 = 1

# v2: magic, version, type, flags, payload_length, raft_index, term, base_offset, count,
#     first_timestamp, max_timestamp, producer_id, producer_epoch, base_sequence
_FIXED = struct.Struct(">2sBBIIqqqIqqqii")
# v1: magic, version, flags, payload_length, base_offset, count, term,
#     first_timestamp, max_timestamp, producer_id, producer_epoch, base_sequence
_FIXED_V1 = struct.Struct(">2sBBIqIqqqqii")
_CRC = struct.Struct(">I")
FIXED_SIZE = _FIXED.size  # 72
HEADER_SIZE = FIXED_SIZE + _CRC.size  # 76
FIXED_SIZE_V1 = _FIXED_V1.size  # 60
HEADER_SIZE_V1 = FIXED_SIZE_V1 + _CRC.size  # 64
#: Bytes a reader needs to decode any header.
MAX_HEADER_SIZE = max(HEADER_SIZE, HEADER_SIZE_V1)

#: Largest payload a frame may announce; a bigger length is corruption, not a batch.
MAX_PAYLOAD = 256 * 1024 * 1024
_TYPES = frozenset(int(t) for t in BatchType)


def crc32c(data: bytes | memoryview, value: int = 0) -> int:
    """CRC32C of C{data}, continuing from C{value}."""
    return int(_crc32c.crc32c(data, value))


def encode_header(batch: RecordBatch) -> bytes:
    """The 76 header bytes (format 2) that precede C{batch.payload} on disk."""
    return _header(batch, batch.raft_index, batch.term)


def _header(batch: RecordBatch, raft_index: int, term: int) -> bytes:
    if raft_index < 1:
        raise ValueError(f"a stored batch needs a Raft index >= 1, not {raft_index}")
    if not 0 <= batch.count < 2**32:
        raise ValueError(f"record count {batch.count} out of range")
    if (batch.count > 0) != (batch.type == BatchType.RECORDS):
        raise ValueError(f"a {BatchType(batch.type).name} batch cannot hold {batch.count} records")
    if len(batch.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(batch.payload)} bytes exceeds {MAX_PAYLOAD}")
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        int(batch.type),
        0,
        len(batch.payload),
        raft_index,
        term,
        batch.base_offset,
        batch.count,
        batch.first_timestamp,
        batch.max_timestamp,
        batch.producer_id,
        batch.producer_epoch,
        batch.base_sequence,
    )
    return fixed + _CRC.pack(crc32c(batch.payload, crc32c(fixed)))


def stamp(batch: RecordBatch, raft_index: int, term: int) -> RecordBatch:
    """C{batch} as entry C{raft_index} of term C{term}, carrying its new header: one constructor call (the append path)."""
    head = _header(batch, raft_index, term)
    return RecordBatch(
        batch.base_offset, batch.count, term, batch.first_timestamp, batch.max_timestamp, batch.payload,
        batch.producer_id, batch.producer_epoch, batch.base_sequence, raft_index, batch.type, head,
    )


def encode(batch: RecordBatch) -> bytes:
    """One whole frame (header and payload) as a single C{bytes} (copies the payload)."""
    return encode_header(batch) + batch.payload


def encode_v1_header(batch: RecordBatch) -> bytes:
    """A format-1 header (64 bytes), as today's release wrote them: for tests of the upgrade."""
    fixed = _FIXED_V1.pack(
        MAGIC, FORMAT_V1, 0, len(batch.payload), batch.base_offset, batch.count, batch.term,
        batch.first_timestamp, batch.max_timestamp, batch.producer_id, batch.producer_epoch, batch.base_sequence,
    )
    return fixed + _CRC.pack(crc32c(batch.payload, crc32c(fixed)))


class Stop(enum.Enum):
    """Why L{scan} stopped before the end of its buffer (or C{END} if it did not)."""

    END = "end"  # the buffer ended exactly at a frame boundary
    TORN = "torn"  # the buffer ends inside a frame whose bytes so far look right
    CORRUPT = "corrupt"  # bad magic, unknown version or type, impossible length or CRC mismatch
    GAP = "gap"  # a valid frame out of sequence: not the next index, offset, or a lower term


@attrs.frozen
class Header:
    """A decoded header (no payload yet).  A format-1 header has C{raft_index} -1."""

    version: int
    type: int
    payload_length: int
    raft_index: int
    term: int
    base_offset: int
    count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    crc: int
    header_size: int = HEADER_SIZE
    #: Header and payload (a field, not a property: recovery asks it several times per frame).
    frame_size: int = 0

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.count

    @property
    def has_records(self) -> bool:
        return self.type == BatchType.RECORDS


class FrameError(Exception):
    """A header that cannot be the start of a valid frame."""


def header_size_at(data: bytes | memoryview, allow_v1: bool = False) -> int:
    """How many header bytes the frame starting at C{data} has (from its version byte)."""
    if len(data) >= 3 and data[2] == FORMAT_V1 and allow_v1:
        return HEADER_SIZE_V1
    return HEADER_SIZE


def decode_header(data: bytes | memoryview, allow_v1: bool = False) -> Header:
    """Decode the header at the start of C{data}; raise L{FrameError} if impossible."""
    if len(data) < 3:
        raise FrameError(f"short header: {len(data)} bytes")
    version = data[2]
    if version == FORMAT_VERSION:
        if len(data) < HEADER_SIZE:
            raise FrameError(f"short header: {len(data)} bytes")
        (magic, _, type_, _flags, length, index, term, base, count, first_ts, max_ts, pid, epoch, seq) = _FIXED.unpack_from(data)
        (crc,) = _CRC.unpack_from(data, FIXED_SIZE)
    elif version == FORMAT_V1 and allow_v1:
        if len(data) < HEADER_SIZE_V1:
            raise FrameError(f"short header: {len(data)} bytes")
        (magic, _, _flags, length, base, count, term, first_ts, max_ts, pid, epoch, seq) = _FIXED_V1.unpack_from(data)
        (crc,) = _CRC.unpack_from(data, FIXED_SIZE_V1)
        type_, index = int(BatchType.RECORDS), -1
    else:
        if bytes(data[:2]) != MAGIC:
            raise FrameError(f"bad magic {bytes(data[:2])!r}")
        raise FrameError(f"unknown format version {version}")
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}")
    if type_ not in _TYPES:
        raise FrameError(f"unknown batch type {type_}")
    if length > MAX_PAYLOAD:
        raise FrameError(f"impossible payload length {length}")
    if base < 0:
        raise FrameError(f"negative base offset {base}")
    if version == FORMAT_VERSION and (index < 1 or term < 0):
        raise FrameError(f"impossible Raft index {index} or term {term}")
    if version == FORMAT_VERSION and (count > 0) != (type_ == BatchType.RECORDS):
        raise FrameError(f"a {BatchType(type_).name} batch announcing {count} records")  # (format 1 allowed 0)
    size = HEADER_SIZE if version == FORMAT_VERSION else HEADER_SIZE_V1
    return Header(version, type_, length, index, term, base, count, first_ts, max_ts, pid, epoch, seq, crc, size, size + length)


def check_frame(header: Header, data: bytes | memoryview, position: int) -> bool:
    """Whether the frame at C{position} in C{data} (whole, checked by the caller) has a good CRC."""
    view = memoryview(data)
    fixed = view[position : position + header.header_size - _CRC.size]
    payload = view[position + header.header_size : position + header.frame_size]
    return crc32c(payload, crc32c(fixed)) == header.crc


def check_parts(header: Header, head: bytes | memoryview, payload: bytes | memoryview) -> bool:
    """Like L{check_frame}, for a header and payload read apart (a large frame)."""
    return crc32c(payload, crc32c(memoryview(head)[: header.header_size - _CRC.size])) == header.crc


def batch_from(header: Header, payload: bytes, head: bytes | None = None) -> RecordBatch:
    """The batch a checked frame holds; C{head} is its stored header (kept, for sending as is)."""
    return RecordBatch(
        base_offset=header.base_offset,
        count=header.count,
        term=header.term,
        first_timestamp=header.first_timestamp,
        max_timestamp=header.max_timestamp,
        payload=payload,
        producer_id=header.producer_id,
        producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence,
        raft_index=header.raft_index,
        type=BatchType(header.type),
        header=head if header.version == FORMAT_VERSION else None,
    )


def decode(frame: bytes | memoryview, allow_v1: bool = False) -> RecordBatch:
    """Decode one whole frame; raise L{FrameError} if it is not exactly one valid frame.

    The batch keeps the frame's header bytes (L{RecordBatch.header}): a frame
    received from a peer is stored as received.  C{frame} may be a view into a
    received body: the batch holds copies (one of the payload), never the view.
    """
    header = decode_header(frame, allow_v1)
    if len(frame) != header.frame_size:
        raise FrameError(f"frame is {len(frame)} bytes, header says {header.frame_size}")
    if not check_frame(header, frame, 0):
        raise FrameError("CRC mismatch")
    return batch_from(header, bytes(frame[header.header_size :]), bytes(frame[: header.header_size]))


def frame_parts(batch: RecordBatch) -> tuple[bytes, bytes]:
    """(header, payload) of a batch's frame: its stored header if it has one, else a new one."""
    return (batch.header if batch.header is not None else encode_header(batch)), batch.payload


@attrs.frozen
class Frame:
    """One valid frame found by L{scan}: where it is and what it says."""

    position: int
    header: Header


@attrs.define
class ScanResult:
    """The outcome of L{scan}: the valid frames, where the valid prefix ends, and why.

    C{next_index}, C{next_offset} and C{last_term} describe the end of the
    valid prefix (what the next frame must continue from).
    """

    frames: list[Frame]
    valid_end: int  # position just past the last valid frame
    next_offset: int | None
    stop: Stop
    reason: str = ""
    next_index: int | None = None
    last_term: int | None = None


def iter_frames(data: bytes | memoryview, position: int = 0, allow_v1: bool = False) -> Iterator[tuple[int, Header]]:
    """Frame positions and headers in C{data} from C{position}, unchecked (no CRC).

    For trusted, already-validated data only; stops at the first frame that does
    not fit.
    """
    end = len(data)
    while position + 3 <= end:
        size = header_size_at(data[position : position + 3], allow_v1)
        if position + size > end:
            return
        header = decode_header(data[position : position + size], allow_v1)
        if position + header.frame_size > end:
            return
        yield position, header
        position += header.frame_size


def scan(
    data: bytes | memoryview,
    position: int = 0,
    expected_offset: int | None = None,
    expected_index: int | None = None,
    last_term: int | None = None,
    allow_v1: bool = False,
) -> ScanResult:
    """Validate frames in C{data} from C{position} to the end.

    Stops at the first frame that is damaged (L{Stop.CORRUPT}), cut short by
    the end of the buffer (L{Stop.TORN}), or out of sequence (L{Stop.GAP}):
    its base offset is not the expected next offset, its Raft index not the
    expected next index, or its term lower than the one before (the terms of a
    Raft log never go down).  Without C{expected_offset} / C{expected_index}
    the first frame sets them.  A frame that runs past the end of the buffer
    is TORN (its CRC cannot be checked yet); the caller decides what a torn or
    corrupt stop means where it happened (a crash's tail, or damage to synced
    data).  Format-1 frames (C{allow_v1}) carry no index and are only checked
    for offsets.
    """
    view = memoryview(data)
    end = len(view)
    frames: list[Frame] = []
    offset, index, term = expected_offset, expected_index, last_term

    def result(stop: Stop, reason: str = "") -> ScanResult:
        return ScanResult(frames, position, offset, stop, reason, index, term)

    while True:
        remaining = end - position
        if remaining == 0:
            return result(Stop.END)
        size = header_size_at(view[position : position + 3], allow_v1)
        if remaining < size:
            head = bytes(view[position : position + min(remaining, 3)])
            if head[:2] != MAGIC[: len(head[:2])] or (len(head) == 3 and head[2] not in (FORMAT_VERSION, FORMAT_V1)):
                return result(Stop.CORRUPT, "bad magic in a short tail")
            return result(Stop.TORN, f"{remaining} bytes, less than a header")
        try:
            header = decode_header(view[position : position + size], allow_v1)
        except FrameError as e:
            return result(Stop.CORRUPT, str(e))
        frame_size = header.frame_size
        if frame_size > remaining:
            return result(Stop.TORN, f"frame of {frame_size} bytes, {remaining} present")
        if not check_frame(header, view, position):
            return result(Stop.CORRUPT, f"CRC mismatch in the batch at index {header.raft_index}, offset {header.base_offset}")
        if offset is not None and header.base_offset != offset:
            return result(Stop.GAP, f"base offset {header.base_offset}, expected {offset}")
        if header.version == FORMAT_VERSION:
            if index is not None and header.raft_index != index:
                return result(Stop.GAP, f"Raft index {header.raft_index}, expected {index}")
            if term is not None and header.term < term:
                return result(Stop.GAP, f"term {header.term} after term {term}")
            index, term = header.raft_index + 1, header.term
        frames.append(Frame(position, header))
        position += frame_size
        offset = header.next_offset

"""Sans-io framing of record batches on disk (format version 1).

Every batch is one frame: a fixed 64-byte header followed by the payload.
The header ends with a CRC32C (Castagnoli) computed over the first 60 header
bytes and then the payload, so a flipped bit anywhere in the frame, including
the length field, is detected.  All integers are big-endian.  The layout is
written down in docs/storage.md; a reader that meets an unknown C{version}
refuses the frame instead of guessing.

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

from format1.base import RecordBatch

MAGIC = b"SL"
FORMAT_VERSION = 1

# magic, version, flags, payload_length, base_offset, count, term,
# first_timestamp, max_timestamp, producer_id, producer_epoch, base_sequence
_FIXED = struct.Struct(">2sBBIqIqqqqii")
_CRC = struct.Struct(">I")
FIXED_SIZE = _FIXED.size  # 60
HEADER_SIZE = FIXED_SIZE + _CRC.size  # 64

#: Largest payload a frame may announce; a bigger length is corruption, not a batch.
MAX_PAYLOAD = 256 * 1024 * 1024


def crc32c(data: bytes | memoryview, value: int = 0) -> int:
    """CRC32C of C{data}, continuing from C{value}."""
    return _crc32c.crc32c(data, value)


def encode_header(batch: RecordBatch) -> bytes:
    """The 64 header bytes that precede C{batch.payload} on disk."""
    if not 0 <= batch.count < 2**32:
        raise ValueError(f"record count {batch.count} out of range")
    if len(batch.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(batch.payload)} bytes exceeds {MAX_PAYLOAD}")
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        0,
        len(batch.payload),
        batch.base_offset,
        batch.count,
        batch.term,
        batch.first_timestamp,
        batch.max_timestamp,
        batch.producer_id,
        batch.producer_epoch,
        batch.base_sequence,
    )
    return fixed + _CRC.pack(crc32c(batch.payload, crc32c(fixed)))


def encode(batch: RecordBatch) -> bytes:
    """One whole frame (header and payload) as a single C{bytes} (copies the payload)."""
    return encode_header(batch) + batch.payload


class Stop(enum.Enum):
    """Why L{scan} stopped before the end of its buffer (or C{END} if it did not)."""

    END = "end"  # the buffer ended exactly at a frame boundary
    TORN = "torn"  # the buffer ends inside a frame whose bytes so far look right
    CORRUPT = "corrupt"  # bad magic, unknown version, impossible length or CRC mismatch
    GAP = "gap"  # a valid frame whose base offset is not the expected next offset


@attrs.frozen
class Header:
    """A decoded header (no payload yet)."""

    payload_length: int
    base_offset: int
    count: int
    term: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    crc: int

    @property
    def frame_size(self) -> int:
        return HEADER_SIZE + self.payload_length

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.count


class FrameError(Exception):
    """A header that cannot be the start of a valid frame."""


def decode_header(data: bytes | memoryview) -> Header:
    """Decode the first L{HEADER_SIZE} bytes of C{data}; raise L{FrameError} if impossible."""
    if len(data) < HEADER_SIZE:
        raise FrameError(f"short header: {len(data)} bytes")
    (magic, version, _flags, length, base, count, term, first_ts, max_ts, pid, epoch, seq) = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise FrameError(f"unknown format version {version}")
    if length > MAX_PAYLOAD:
        raise FrameError(f"impossible payload length {length}")
    if base < 0:
        raise FrameError(f"negative base offset {base}")
    (crc,) = _CRC.unpack_from(data, FIXED_SIZE)
    return Header(length, base, count, term, first_ts, max_ts, pid, epoch, seq, crc)


def check_frame(header: Header, data: bytes | memoryview, position: int) -> bool:
    """Whether the frame at C{position} in C{data} (whole, checked by the caller) has a good CRC."""
    view = memoryview(data)
    fixed = view[position : position + FIXED_SIZE]
    payload = view[position + HEADER_SIZE : position + header.frame_size]
    return crc32c(payload, crc32c(fixed)) == header.crc


def check_parts(header: Header, head: bytes | memoryview, payload: bytes | memoryview) -> bool:
    """Like L{check_frame}, for a header and payload read apart (a large frame)."""
    return crc32c(payload, crc32c(memoryview(head)[:FIXED_SIZE])) == header.crc


def batch_from(header: Header, payload: bytes) -> RecordBatch:
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
    )


def decode(frame: bytes) -> RecordBatch:
    """Decode one whole frame; raise L{FrameError} if it is not exactly one valid frame."""
    header = decode_header(frame)
    if len(frame) != header.frame_size:
        raise FrameError(f"frame is {len(frame)} bytes, header says {header.frame_size}")
    if not check_frame(header, frame, 0):
        raise FrameError("CRC mismatch")
    return batch_from(header, frame[HEADER_SIZE:])


@attrs.frozen
class Frame:
    """One valid frame found by L{scan}: where it is and what it says."""

    position: int
    header: Header


@attrs.define
class ScanResult:
    """The outcome of L{scan}: the valid frames, where the valid prefix ends, and why."""

    frames: list[Frame]
    valid_end: int  # position just past the last valid frame
    next_offset: int | None  # offset after the last valid frame (or the expected one)
    stop: Stop
    reason: str = ""


def iter_frames(data: bytes | memoryview, position: int = 0) -> Iterator[tuple[int, Header]]:
    """Frame positions and headers in C{data} from C{position}, unchecked (no CRC).

    For trusted, already-validated data only; stops at the first frame that does
    not fit.
    """
    end = len(data)
    while position + HEADER_SIZE <= end:
        header = decode_header(data[position : position + HEADER_SIZE])
        if position + header.frame_size > end:
            return
        yield position, header
        position += header.frame_size


def scan(data: bytes | memoryview, position: int = 0, expected_offset: int | None = None) -> ScanResult:
    """Validate frames in C{data} from C{position} to the end.

    Stops at the first frame that is damaged (L{Stop.CORRUPT}), cut short by
    the end of the buffer (L{Stop.TORN}), or not contiguous in offsets with
    the one before (L{Stop.GAP}; without C{expected_offset} the first frame
    sets it).  A
    frame that runs past the end of the buffer is TORN (its CRC cannot be
    checked yet); the caller decides what a torn or corrupt stop means where
    it happened (a crash's tail, or damage to synced data).
    """
    view = memoryview(data)
    end = len(view)
    frames: list[Frame] = []
    expected = expected_offset
    while True:
        remaining = end - position
        if remaining == 0:
            return ScanResult(frames, position, expected, Stop.END)
        if remaining < HEADER_SIZE:
            if bytes(view[position : position + min(remaining, 2)]) != MAGIC[: min(remaining, 2)]:
                return ScanResult(frames, position, expected, Stop.CORRUPT, "bad magic in a short tail")
            return ScanResult(frames, position, expected, Stop.TORN, f"{remaining} bytes, less than a header")
        try:
            header = decode_header(view[position : position + HEADER_SIZE])
        except FrameError as e:
            return ScanResult(frames, position, expected, Stop.CORRUPT, str(e))
        if header.frame_size > remaining:
            return ScanResult(
                frames, position, expected, Stop.TORN, f"frame of {header.frame_size} bytes, {remaining} present"
            )
        if not check_frame(header, view, position):
            return ScanResult(frames, position, expected, Stop.CORRUPT, f"CRC mismatch at offset {header.base_offset}")
        if expected is not None and header.base_offset != expected:
            return ScanResult(
                frames, position, expected, Stop.GAP, f"base offset {header.base_offset}, expected {expected}"
            )
        frames.append(Frame(position, header))
        position += header.frame_size
        expected = header.next_offset

"""One segment of a partition log: a data file and its two sparse indexes.

Files, named by the segment's base offset in 20 digits (so they sort by name):

  - C{<base>.log}: frames (see L{streamlog.storage.codec}) back to back.
  - C{<base>.index}: 8-byte entries C{(relative offset u32, position u32)},
    one per C{index_interval_bytes} of data; an entry names the first byte of
    a frame whose base offset is C{base + relative offset}.  Position 0 is
    implied, never written.
  - C{<base>.timeindex}: 12-byte entries C{(timestamp i64, relative offset
    u32)}: every record in the batches up to and including the batch at that
    offset has a timestamp <= the entry's timestamp.  Written alongside an
    offset-index entry when the maximum grew, and once more when the segment
    is rolled, so its last entry is the segment's maximum timestamp.

Writes use C{os.write}/C{os.writev} on C{O_APPEND} descriptors: there is no
user-space buffer, so once an append returns, a crash of the process loses
nothing (a crash of the machine loses what was not fsynced).  Which
descriptors are fsynced, and when, is decided by L{streamlog.storage.log}.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterator

import attrs
from twisted.logger import Logger

from format1 import codec
from format1.base import RecordBatch
from format1.descriptors import ReadFiles
from format1.errors import StorageCorrupted

_OFFSET_ENTRY = struct.Struct(">II")
_TIME_ENTRY = struct.Struct(">qI")
_READ_CHUNK = 64 * 1024


class IndexDamaged(Exception):
    """An index entry does not point where it says; rebuild the index from the data."""


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


@attrs.define(eq=False)
class SegmentFiles:
    """The write descriptors of one segment.

    A rolled or cut-away segment's descriptors are C{retired}: they stay open
    until the next sync has fsynced and closed them, so a sync running in a
    worker thread never fsyncs a descriptor number the reactor has closed and
    reused.
    """

    log_fd: int
    index_fd: int
    timeindex_fd: int
    retired: bool = False
    closed: bool = False

    def fsync(self, indexes: bool) -> None:
        os.fsync(self.log_fd)
        if indexes:
            os.fsync(self.index_fd)
            os.fsync(self.timeindex_fd)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in (self.log_fd, self.index_fd, self.timeindex_fd):
                os.close(fd)


class Segment:
    """A segment's metadata and its in-memory copy of the sparse indexes.

    Called from the reactor thread only; the log's lock guards the fields a
    sync reads (C{size}, C{files}).
    """

    _log = Logger()

    def __init__(self, directory: str, base_offset: int, index_interval_bytes: int, read_files: ReadFiles | None = None) -> None:
        self.directory = directory
        #: Where this segment's read descriptor lives (node-wide, bounded); its own if None.
        self.read_files = read_files if read_files is not None else ReadFiles(1)
        self.base_offset = base_offset
        self.index_interval_bytes = index_interval_bytes
        name = os.path.join(directory, segment_name(base_offset))
        self.log_path = name + ".log"
        self.index_path = name + ".index"
        self.timeindex_path = name + ".timeindex"
        self.size = 0
        self.next_offset = base_offset
        self.first_timestamp: int | None = None
        self.max_timestamp: int | None = None
        self.last_base_offset = base_offset
        self.index_rewrite_needed = True
        self.files: SegmentFiles | None = None
        # Sparse indexes, absolute offsets; None until loaded (closed segments load lazily).
        self.index_offsets: list[int] | None = None
        self.index_positions: list[int] = []
        self.time_stamps: list[int] = []
        self.time_offsets: list[int] = []
        self._last_index_position = 0

    # -- files -------------------------------------------------------------

    def open_for_append(self) -> None:
        """Open (creating if needed) the write descriptors; the segment becomes active.

        If one of the three cannot be opened (EMFILE, EIO), those already
        opened are closed before the error goes up.
        """
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fds: list[int] = []
        try:
            for path in (self.log_path, self.index_path, self.timeindex_path):
                fds.append(os.open(path, flags, 0o644))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.files = SegmentFiles(fds[0], fds[1], fds[2])

    def read_fd(self) -> int:
        """A descriptor to read the data file with, from the bounded read cache.

        Fetched again for every read: the cache may have closed the previous one.
        """
        return self.read_files.fd(self, self.log_path)

    def close_read(self) -> None:
        self.read_files.close(self)

    def file_size(self) -> int:
        return os.stat(self.log_path).st_size

    def pread(self, length: int, position: int) -> bytes:
        return os.pread(self.read_fd(), length, position)

    def corrupted(self, position: int, reason: str) -> StorageCorrupted:
        return StorageCorrupted(self.log_path, position, reason)

    # -- appending ---------------------------------------------------------

    def write_batch(self, batch: RecordBatch) -> int:
        """Write one frame at the end of the data file; return its size.

        A short write (a full disk) is completed or, if the rest fails, the
        file is cut back to where it was so no partial frame stays behind.
        """
        assert self.files is not None
        header = codec.encode_header(batch)
        frame_size = len(header) + len(batch.payload)
        fd = self.files.log_fd
        try:
            written = os.writev(fd, [header, batch.payload])
            if written < frame_size:
                rest = memoryview(header + batch.payload)[written:]
                while rest:
                    n = os.write(fd, rest)
                    rest = rest[n:]
        except OSError:
            os.ftruncate(fd, self.size)  # if this fails too, the caller fails the log
            raise
        return frame_size

    def note_appended(self, batch: RecordBatch | codec.Header, position: int, frame_size: int, write: bool = True) -> None:
        """Account for a frame at C{position} and add index entries when due.

        Takes a batch (an append) or a header (recovery replaying validated frames).
        """
        self.size = position + frame_size
        self.next_offset = batch.next_offset
        self.last_base_offset = batch.base_offset
        if self.first_timestamp is None:
            self.first_timestamp = batch.first_timestamp
        grew = self.max_timestamp is None or batch.max_timestamp > self.max_timestamp
        if grew:
            self.max_timestamp = batch.max_timestamp
        if position > 0 and position - self._last_index_position >= self.index_interval_bytes:
            self._add_offset_entry(batch.base_offset, position, write)
            assert self.max_timestamp is not None
            if not self.time_stamps or self.max_timestamp > self.time_stamps[-1]:
                self._add_time_entry(self.max_timestamp, batch.base_offset, write)

    def _add_offset_entry(self, offset: int, position: int, write: bool) -> None:
        assert self.index_offsets is not None
        self.index_offsets.append(offset)
        self.index_positions.append(position)
        self._last_index_position = position
        if write:
            assert self.files is not None
            os.write(self.files.index_fd, _OFFSET_ENTRY.pack(offset - self.base_offset, position))

    def _add_time_entry(self, timestamp: int, offset: int, write: bool) -> None:
        self.time_stamps.append(timestamp)
        self.time_offsets.append(offset)
        if write:
            assert self.files is not None
            os.write(self.files.timeindex_fd, _TIME_ENTRY.pack(timestamp, offset - self.base_offset))

    def seal_time_index(self, last_base_offset: int) -> None:
        """Write the final time-index entry (the segment's maximum) before rolling."""
        if self.max_timestamp is not None and (not self.time_stamps or self.max_timestamp > self.time_stamps[-1]):
            self._add_time_entry(self.max_timestamp, last_base_offset, True)

    # -- indexes -----------------------------------------------------------

    def reset_indexes(self) -> None:
        self.index_rewrite_needed = True
        self.index_offsets = []
        self.index_positions = []
        self.time_stamps = []
        self.time_offsets = []
        self._last_index_position = 0

    def load_indexes(self, limit_position: int | None = None, limit_offset: int | None = None) -> bool:
        """Read both index files into memory; return False if they look damaged.

        Entries at or past C{limit_position}/C{limit_offset} (a tail that was
        not checkpointed) are dropped, not judged.
        """
        end_pos = self.size if limit_position is None else limit_position
        end_off = self.next_offset if limit_offset is None else limit_offset
        try:
            with open(self.index_path, "rb") as f:
                raw = f.read()
            with open(self.timeindex_path, "rb") as f:
                raw_time = f.read()
        except FileNotFoundError:
            return False
        offsets: list[int] = []
        positions: list[int] = []
        usable = len(raw) - len(raw) % _OFFSET_ENTRY.size
        for rel, pos in _OFFSET_ENTRY.iter_unpack(raw[:usable]):
            if pos >= end_pos:
                if limit_position is None:
                    return False  # a closed segment's entry past its end
                break
            offset = self.base_offset + rel
            if pos <= 0 or offset >= end_off or (positions and (pos <= positions[-1] or offset <= offsets[-1])):
                return False
            offsets.append(offset)
            positions.append(pos)
        if limit_position is None and usable != len(raw):
            return False
        stamps: list[int] = []
        toffs: list[int] = []
        usable = len(raw_time) - len(raw_time) % _TIME_ENTRY.size
        for ts, rel in _TIME_ENTRY.iter_unpack(raw_time[:usable]):
            offset = self.base_offset + rel
            if offset >= end_off:
                if limit_offset is None:
                    return False
                break
            if stamps and (ts < stamps[-1] or offset < toffs[-1]):
                return False
            stamps.append(ts)
            toffs.append(offset)
        if limit_position is None and usable != len(raw_time):
            return False
        if limit_position is None and self.size > 0 and not stamps:
            return False  # a closed, non-empty segment always has its final time entry
        self.index_offsets, self.index_positions = offsets, positions
        self.index_rewrite_needed = len(offsets) * _OFFSET_ENTRY.size != len(raw) or len(stamps) * _TIME_ENTRY.size != len(raw_time)
        self.time_stamps, self.time_offsets = stamps, toffs
        self._last_index_position = positions[-1] if positions else 0
        return True

    def write_index_files(self) -> None:
        """Replace both index files with the in-memory entries (after a rebuild or a cut)."""
        assert self.index_offsets is not None
        data = b"".join(_OFFSET_ENTRY.pack(o - self.base_offset, p) for o, p in zip(self.index_offsets, self.index_positions))
        tdata = b"".join(_TIME_ENTRY.pack(t, o - self.base_offset) for t, o in zip(self.time_stamps, self.time_offsets))
        if self.files is not None:
            # The active segment: rewrite in place, its append descriptors stay valid.
            for fd, content in ((self.files.index_fd, data), (self.files.timeindex_fd, tdata)):
                os.ftruncate(fd, 0)
                os.write(fd, content)
                os.fsync(fd)
            self.index_rewrite_needed = False
            return
        for path, content in ((self.index_path, data), (self.timeindex_path, tdata)):
            tmp = path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        self.index_rewrite_needed = False

    def rebuild_indexes(self, expected_offset: int) -> None:
        """Rebuild the indexes by reading the whole (synced) data file; raise if it is damaged."""
        self._log.warn("rebuilding the indexes of {path}", path=self.log_path)
        self.reset_indexes()
        self.max_timestamp = None
        self.first_timestamp = None
        size = self.size
        result = codec.scan(self.pread(size, 0), 0, expected_offset)
        if result.stop is not codec.Stop.END:
            raise self.corrupted(result.valid_end, f"{result.stop.value}: {result.reason}")
        self.replay(result.frames)
        last = result.frames[-1].header.base_offset if result.frames else self.base_offset
        self.seal_time_index_memory(last)
        self.size = size
        self.write_index_files()

    def replay(self, frames: list[codec.Frame]) -> None:
        """Account for validated frames (from a scan) without writing index files."""
        for frame in frames:
            h = frame.header
            self.note_appended(h, frame.position, h.frame_size, write=False)

    def seal_time_index_memory(self, last_base_offset: int) -> None:
        if self.max_timestamp is not None and (not self.time_stamps or self.max_timestamp > self.time_stamps[-1]):
            self._add_time_entry(self.max_timestamp, last_base_offset, False)

    def position_for(self, offset: int) -> int:
        """The position of an indexed frame at or before C{offset} (at most one interval before it)."""
        assert self.index_offsets is not None
        i = bisect.bisect_right(self.index_offsets, offset) - 1
        return self.index_positions[i] if i >= 0 else 0

    def time_lookup(self, timestamp: int) -> int:
        """An offset from which to scan for the first record with a timestamp >= C{timestamp}."""
        i = bisect.bisect_left(self.time_stamps, timestamp) - 1
        return self.time_offsets[i] if i >= 0 else self.base_offset

    def cut_indexes(self, position: int, offset: int) -> None:
        """Drop index entries at or past C{position}/C{offset} (a truncation)."""
        assert self.index_offsets is not None
        i = bisect.bisect_left(self.index_positions, position)
        del self.index_offsets[i:], self.index_positions[i:]
        j = bisect.bisect_left(self.time_offsets, offset)
        del self.time_stamps[j:], self.time_offsets[j:]
        self._last_index_position = self.index_positions[-1] if self.index_positions else 0

    # -- reading -----------------------------------------------------------

    def frames_from(self, position: int, end: int) -> Iterator[tuple[int, codec.Header, bytes]]:
        """Validated frames from C{position} up to C{end}: (position, header, payload).

        Anything that does not decode or check inside this range is corruption
        of data the log already holds (raised as L{StorageCorrupted}).
        """
        buffer = b""
        buffer_at = position
        while position < end:
            rel = position - buffer_at
            if len(buffer) - rel < codec.HEADER_SIZE:
                buffer = self.pread(max(_READ_CHUNK, codec.HEADER_SIZE), position)
                buffer_at, rel = position, 0
            try:
                header = codec.decode_header(buffer[rel : rel + codec.HEADER_SIZE])
            except codec.FrameError as e:
                raise self.corrupted(position, str(e)) from None
            if position + header.frame_size > end:
                raise self.corrupted(position, f"frame of {header.frame_size} bytes runs past the end at {end}")
            if len(buffer) - rel < header.frame_size:
                # A frame larger than what is buffered: read its payload alone, into
                # its own bytes, so serving it does not copy a slice of the buffer.
                length = header.frame_size - codec.HEADER_SIZE
                payload = self.pread(length, position + codec.HEADER_SIZE)
                if len(payload) < length:
                    raise self.corrupted(position, "file shorter than expected")
                if not codec.check_parts(header, buffer[rel : rel + codec.HEADER_SIZE], payload):
                    raise self.corrupted(position, f"CRC mismatch in batch at offset {header.base_offset}")
                yield position, header, payload
                position += header.frame_size
                buffer, buffer_at = b"", position
                continue
            if not codec.check_frame(header, buffer, rel):
                raise self.corrupted(position, f"CRC mismatch in batch at offset {header.base_offset}")
            payload = buffer[rel + codec.HEADER_SIZE : rel + header.frame_size]
            yield position, header, payload
            position += header.frame_size

    def checked_position_for(self, offset: int) -> int:
        """L{position_for}, after checking that a frame of the indexed offset starts there.

        Raises L{IndexDamaged} if not: the index, not the data, may be wrong,
        and the caller rebuilds it from the data (which judges the data).
        """
        assert self.index_offsets is not None
        i = bisect.bisect_right(self.index_offsets, offset) - 1
        if i < 0:
            return 0
        position = self.index_positions[i]
        try:
            header = codec.decode_header(self.pread(codec.HEADER_SIZE, position))
        except codec.FrameError as e:
            raise IndexDamaged(f"{self.index_path}: entry {i} points at no frame ({e})") from None
        if header.base_offset != self.index_offsets[i]:
            raise IndexDamaged(f"{self.index_path}: entry {i} says offset {self.index_offsets[i]}, frame has {header.base_offset}")
        return position

    def batches_from(self, offset: int, end: int | None = None, position: int | None = None) -> Iterator[RecordBatch]:
        """Batches from the one containing C{offset} to the end of the segment."""
        end = self.size if end is None else end
        if position is None:
            position = self.position_for(offset)
        for _, header, payload in self.frames_from(position, end):
            if header.next_offset <= offset:
                continue
            yield codec.batch_from(header, payload)

    def frame_containing(self, offset: int, position: int) -> tuple[int, codec.Header, bytes]:
        """The frame holding C{offset}, scanning from C{position} (an indexed frame before it)."""
        for item in self.frames_from(position, self.size):
            if item[1].next_offset > offset:
                return item
        raise self.corrupted(self.size, f"offset {offset} not found")

    def first_header(self) -> codec.Header | None:
        if self.size < codec.HEADER_SIZE:
            return None
        try:
            return codec.decode_header(self.pread(codec.HEADER_SIZE, 0))
        except codec.FrameError as e:
            raise self.corrupted(0, str(e)) from None

"""One segment of a partition log: a data file and its two sparse indexes.

Files, named by the Raft index of the segment's first batch in 20 digits (so
they sort by name, and two segments can never share a name: every batch,
bookkeeping ones included, has an index of its own):

  - C{<first index>.log}: format-2 frames (L{streamlog.storage.codec}) back to back.
  - C{<first index>.index}: 20-byte entries C{(raft index i64, record offset
    i64, position u32)}, one per C{index_interval_bytes} of data; an entry
    names the first byte of a frame with that index and base offset.  Both
    columns are monotonic (indexes strictly, offsets non-decreasing: a
    bookkeeping batch has the offset of the record batch after it), so the
    one index serves lookups by either.  Position 0 is implied, never written.
  - C{<first index>.timeindex}: 16-byte entries C{(timestamp i64, raft index
    i64)}: every record in the batches up to and including the one at that
    index has a timestamp <= the entry's.  Written with an offset-index entry
    when the segment's maximum grew, and once more when the segment rolls, so
    a closed segment's last entry is its maximum timestamp.

Writes use C{os.write}/C{os.writev} on C{O_APPEND} descriptors: there is no
user-space buffer, so once an append returns, a crash of the process loses
nothing (a crash of the machine loses what was not fsynced).  Which
descriptors are synced, and when, is decided by L{streamlog.storage.durability}.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
from collections.abc import Iterator

import attrs
from twisted.logger import Logger

from streamlog.storage import codec, sync_failure
from streamlog.storage.base import RecordBatch
from streamlog.storage.checkpoint import datasync, write_all, write_atomically
from streamlog.storage.descriptors import ReadFiles
from streamlog.storage.errors import StorageCorrupted

INDEX_ENTRY = struct.Struct(">qqI")
TIME_ENTRY = struct.Struct(">qq")
_READ_CHUNK = 64 * 1024


class IndexDamaged(Exception):
    """An index entry does not point where it says; rebuild the index from the data."""


def _write(fd: int, data: bytes, path: str) -> None:
    """Append C{data} (an index entry) to C{path}'s descriptor: a failure, a short write
    included, is a failed log write (fail-stop, L{sync_failure})."""
    try:
        write_all(fd, data)
    except OSError as e:
        sync_failure.report_write(path, e)
        raise


def segment_name(first_index: int) -> str:
    return f"{first_index:020d}"


def parse_segment_name(name: str) -> int | None:
    """The first index of a C{<20 digits>.log} file name, or None."""
    if name.endswith(".log") and len(name) == 24 and name[:-4].isdigit():
        return int(name[:-4])
    return None


@attrs.define(eq=False)
class SegmentFiles:
    """The write descriptors of one segment.

    A rolled or cut-away segment's descriptors are C{retired}: they stay open
    until the next sync has synced and closed them, so a sync running in a
    worker thread never syncs a descriptor number the reactor has closed and
    reused.
    """

    log_fd: int
    index_fd: int
    timeindex_fd: int
    #: The three files' paths, for the message of a failed sync (a cut-away segment's are gone by then).
    paths: tuple[str, str, str]
    retired: bool = False
    closed: bool = False

    def sync(self, indexes: bool) -> None:
        datasync(self.log_fd, self.paths[0])
        if indexes:
            datasync(self.index_fd, self.paths[1])
            datasync(self.timeindex_fd, self.paths[2])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in (self.log_fd, self.index_fd, self.timeindex_fd):
                os.close(fd)


class Segment:
    """A segment's metadata and its in-memory copy of the sparse indexes.

    Called from the reactor thread only; the log's lock guards the fields a
    sync reads (C{size}, C{files}).  C{base_offset} is the record offset at the
    segment's start (its first batch's base offset); C{last_term} is None
    while the segment holds no frame.
    """

    _log = Logger()

    def __init__(
        self, directory: str, first_index: int, base_offset: int, index_interval_bytes: int, read_files: ReadFiles | None = None
    ) -> None:
        self.directory = directory
        #: Where this segment's read descriptor lives (node-wide, bounded); its own if None.
        self.read_files = read_files if read_files is not None else ReadFiles(1)
        self.first_index = first_index
        self.base_offset = base_offset
        self.index_interval_bytes = index_interval_bytes
        name = os.path.join(directory, segment_name(first_index))
        self.log_path = name + ".log"
        self.index_path = name + ".index"
        self.timeindex_path = name + ".timeindex"
        self.size = 0
        self.next_index = first_index
        self.next_offset = base_offset
        self.last_term: int | None = None
        self.first_timestamp: int | None = None  # of record batches only
        self.max_timestamp: int | None = None
        self.last_record_index: int | None = None
        self.index_rewrite_needed = True
        self.files: SegmentFiles | None = None
        # Sparse indexes; None until loaded (closed segments load lazily).
        self.idx_indexes: list[int] | None = None
        self.idx_offsets: list[int] = []
        self.idx_positions: list[int] = []
        self.time_stamps: list[int] = []
        self.time_indexes: list[int] = []
        self._last_index_position = 0

    @property
    def last_index(self) -> int:
        """The index of the last frame (C{first_index - 1} if it holds none)."""
        return self.next_index - 1

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
        self.files = SegmentFiles(fds[0], fds[1], fds[2], (self.log_path, self.index_path, self.timeindex_path))

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

    def unlink(self) -> None:
        """Remove the three files (the data file first: a crash then leaves only index leftovers)."""
        self.close_read()
        for path in (self.log_path, self.index_path, self.timeindex_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- appending ---------------------------------------------------------

    def write_frame(self, head: bytes, payload: bytes) -> int:
        """Write one frame at the end of the data file; return its size.

        A short write (a full disk) is completed or, if the rest fails, the
        file is cut back to where it was so no partial frame stays behind.
        Either way a failure is a failed log write (fail-stop, reported to
        L{sync_failure} before it is raised, once: if cutting back fails as
        well, the write's error is raised, with a note), and what the caller
        appended before this frame stays.
        """
        assert self.files is not None
        frame_size = len(head) + len(payload)
        fd = self.files.log_fd
        try:
            written = os.writev(fd, [head, payload])
            if written < frame_size:
                rest = memoryview(head + payload)[written:]
                while rest:
                    n = os.write(fd, rest)
                    rest = rest[n:]
        except OSError as e:
            sync_failure.report_write(self.log_path, e, "append to")
            try:
                os.ftruncate(fd, self.size)
            except OSError as cut:
                # The error raised stays the one told (the caller fails the log, tells no one again).
                e.add_note(f"cutting it back to {self.size} bytes failed too: {cut}")
            raise
        return frame_size

    def note_appended(self, h: codec.Header | RecordBatch, position: int, write: bool = True, frame_size: int = 0) -> None:
        """Account for a frame at C{position} and add index entries when due.

        Takes the header of a validated frame recovery replays, or the stored
        batch of an append (with its C{frame_size}): both say the same things.
        """
        if position == 0:
            self.base_offset = h.base_offset
        self.size = position + (frame_size or h.frame_size)  # type: ignore[union-attr]
        self.next_index = h.raft_index + 1
        self.next_offset = h.next_offset
        self.last_term = h.term
        if h.has_records:
            if self.first_timestamp is None:
                self.first_timestamp = h.first_timestamp
            if self.max_timestamp is None or h.max_timestamp > self.max_timestamp:
                self.max_timestamp = h.max_timestamp
            self.last_record_index = h.raft_index
        if position > 0 and position - self._last_index_position >= self.index_interval_bytes:
            self._add_index_entry(h.raft_index, h.base_offset, position, write)
            if self.max_timestamp is not None and (not self.time_stamps or self.max_timestamp > self.time_stamps[-1]):
                self._add_time_entry(self.max_timestamp, h.raft_index, write)

    def _add_index_entry(self, index: int, offset: int, position: int, write: bool) -> None:
        assert self.idx_indexes is not None
        self.idx_indexes.append(index)
        self.idx_offsets.append(offset)
        self.idx_positions.append(position)
        self._last_index_position = position
        if write:
            assert self.files is not None
            _write(self.files.index_fd, INDEX_ENTRY.pack(index, offset, position), self.index_path)

    def _add_time_entry(self, timestamp: int, index: int, write: bool) -> None:
        self.time_stamps.append(timestamp)
        self.time_indexes.append(index)
        if write:
            assert self.files is not None
            _write(self.files.timeindex_fd, TIME_ENTRY.pack(timestamp, index), self.timeindex_path)

    def seal_time_index(self, write: bool = True) -> None:
        """Add the final time-index entry (the segment's maximum), before rolling or after a rebuild."""
        if self.max_timestamp is not None and (not self.time_stamps or self.max_timestamp > self.time_stamps[-1]):
            assert self.last_record_index is not None
            self._add_time_entry(self.max_timestamp, self.last_record_index, write)

    # -- indexes -----------------------------------------------------------

    def reset_indexes(self) -> None:
        self.index_rewrite_needed = True
        self.idx_indexes = []
        self.idx_offsets = []
        self.idx_positions = []
        self.time_stamps = []
        self.time_indexes = []
        self._last_index_position = 0

    def load_indexes(self, limit_position: int | None = None, limit_index: int | None = None) -> bool:
        """Read both index files into memory; return False if they look damaged.

        Entries at or past C{limit_position}/C{limit_index} (a tail that was
        not checkpointed) are dropped, not judged.  Without limits (a closed
        segment) every entry must lie inside the segment.
        """
        end_pos = self.size if limit_position is None else limit_position
        end_index = self.next_index if limit_index is None else limit_index
        try:
            with open(self.index_path, "rb") as f:
                raw = f.read()
            with open(self.timeindex_path, "rb") as f:
                raw_time = f.read()
        except FileNotFoundError:
            return False
        indexes: list[int] = []
        offsets: list[int] = []
        positions: list[int] = []
        usable = len(raw) - len(raw) % INDEX_ENTRY.size
        for index, offset, pos in INDEX_ENTRY.iter_unpack(raw[:usable]):
            if pos >= end_pos or index >= end_index:
                if limit_position is None:
                    return False  # a closed segment's entry past its end
                break
            if (
                pos <= 0
                or index <= self.first_index
                or offset < self.base_offset
                or (positions and (pos <= positions[-1] or index <= indexes[-1] or offset < offsets[-1]))
            ):
                return False
            indexes.append(index)
            offsets.append(offset)
            positions.append(pos)
        if limit_position is None and usable != len(raw):
            return False
        stamps: list[int] = []
        tindexes: list[int] = []
        usable_time = len(raw_time) - len(raw_time) % TIME_ENTRY.size
        for ts, index in TIME_ENTRY.iter_unpack(raw_time[:usable_time]):
            if index >= end_index:
                if limit_index is None:
                    return False
                break
            if index < self.first_index or (stamps and (ts < stamps[-1] or index < tindexes[-1])):
                return False
            stamps.append(ts)
            tindexes.append(index)
        if limit_position is None and usable_time != len(raw_time):
            return False
        self.idx_indexes, self.idx_offsets, self.idx_positions = indexes, offsets, positions
        self.index_rewrite_needed = len(indexes) * INDEX_ENTRY.size != len(raw) or len(stamps) * TIME_ENTRY.size != len(raw_time)
        self.time_stamps, self.time_indexes = stamps, tindexes
        self._last_index_position = positions[-1] if positions else 0
        return True

    def write_index_files(self) -> None:
        """Replace both index files with the in-memory entries (after a rebuild or a cut).

        The active segment's index files are rewritten in place (its append descriptors
        stay valid) and appended to afterwards: a failure may leave one cut or half
        written, a failed log write (fail-stop, L{sync_failure}, naming the file that
        failed).  A closed segment's go to a temporary file renamed over the old one: a
        failed write or rename leaves the old file as it was and the entries right in
        memory, so it raises without telling (C{index_rewrite_needed} stays set; the
        temporary file is removed).  A failed sync is told by the sync helpers, as always.
        """
        assert self.idx_indexes is not None
        data = b"".join(INDEX_ENTRY.pack(*e) for e in zip(self.idx_indexes, self.idx_offsets, self.idx_positions))
        tdata = b"".join(TIME_ENTRY.pack(t, i) for t, i in zip(self.time_stamps, self.time_indexes))
        if self.files is not None:
            for fd, path, content in ((self.files.index_fd, self.index_path, data),
                                      (self.files.timeindex_fd, self.timeindex_path, tdata)):
                try:
                    os.ftruncate(fd, 0)
                    write_all(fd, content)
                    datasync(fd, path)
                except OSError as e:
                    sync_failure.report_write(path, e, "index rewrite of")
                    raise
            self.index_rewrite_needed = False
            return
        for path, content in ((self.index_path, data), (self.timeindex_path, tdata)):
            try:
                write_atomically(path, content)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(path + ".tmp")
                if sync_failure.told_of(e) is not None:
                    raise
                raise OSError(e.errno, f"index rewrite of {path} failed: {e.strerror or e}") from e
        self.index_rewrite_needed = False

    def rebuild_indexes(self) -> None:
        """Rebuild the indexes by reading the whole (synced) data file; raise if it is damaged."""
        self._log.warn("rebuilding the indexes of {path}", path=self.log_path)
        size = self.size
        expected = self.next_index
        self.reset_indexes()
        self.first_timestamp = self.max_timestamp = self.last_record_index = None
        result = codec.scan(self.pread(size, 0), 0, self.base_offset, self.first_index)
        if result.stop is not codec.Stop.END:
            raise self.corrupted(result.valid_end, f"{result.stop.value}: {result.reason}")
        if size and (result.next_index or self.first_index) != expected:
            raise self.corrupted(size, f"the data ends before index {result.next_index}, not {expected}")
        self.replay(result.frames)
        self.seal_time_index(write=False)
        self.size = size
        try:
            self.write_index_files()
        except OSError as e:
            if self.files is not None or sync_failure.told_of(e) is not None:
                raise  # the active segment's, or a failed sync: told, fail-stop
            # A closed segment's old files are as they were and the rebuilt entries are
            # right in memory: serve from them, and write them when next rebuilt.
            self._log.warn("the rebuilt indexes of {path} could not be written, kept in memory: {error}",
                           path=self.log_path, error=str(e))

    def replay(self, frames: list[codec.Frame]) -> None:
        """Account for validated frames (from a scan) without writing index files."""
        for frame in frames:
            self.note_appended(frame.header, frame.position, write=False)

    def position_for_index(self, index: int) -> int:
        """The position of an indexed frame at or before entry C{index} (at most one interval before it)."""
        assert self.idx_indexes is not None
        i = bisect.bisect_right(self.idx_indexes, index) - 1
        return self.idx_positions[i] if i >= 0 else 0

    def entry_for_index(self, index: int) -> int:
        """Which index entry to start from for entry C{index} (-1: the segment's start)."""
        assert self.idx_indexes is not None
        return bisect.bisect_right(self.idx_indexes, index) - 1

    def entry_for_offset(self, offset: int) -> int:
        """Which index entry to start from for record C{offset} (-1: the segment's start).

        The last entry whose offset is <= C{offset}: its frame starts at or
        before the record batch that holds C{offset} (offsets never go down).
        """
        assert self.idx_indexes is not None
        return bisect.bisect_right(self.idx_offsets, offset) - 1

    def time_lookup(self, timestamp: int) -> int:
        """A Raft index from which to scan for the first record with a timestamp >= C{timestamp}."""
        i = bisect.bisect_left(self.time_stamps, timestamp) - 1
        return self.time_indexes[i] if i >= 0 else self.first_index

    def cut_indexes(self, position: int, index: int) -> None:
        """Drop index entries at or past C{position}/C{index} (a truncation)."""
        assert self.idx_indexes is not None
        i = bisect.bisect_left(self.idx_positions, position)
        del self.idx_indexes[i:], self.idx_offsets[i:], self.idx_positions[i:]
        j = bisect.bisect_left(self.time_indexes, index)
        del self.time_stamps[j:], self.time_indexes[j:]
        self._last_index_position = self.idx_positions[-1] if self.idx_positions else 0

    def checked_position(self, entry: int) -> int:
        """The position of index entry C{entry}, after checking that its frame starts there.

        Raises L{IndexDamaged} if not: the index, not the data, may be wrong,
        and the caller rebuilds it from the data (which judges the data).
        """
        assert self.idx_indexes is not None
        if entry < 0:
            return 0
        position = self.idx_positions[entry]
        try:
            header = codec.decode_header(self.pread(codec.HEADER_SIZE, position))
        except codec.FrameError as e:
            raise IndexDamaged(f"{self.index_path}: entry {entry} points at no frame ({e})") from None
        if (header.raft_index, header.base_offset) != (self.idx_indexes[entry], self.idx_offsets[entry]):
            raise IndexDamaged(
                f"{self.index_path}: entry {entry} says index {self.idx_indexes[entry]} / offset {self.idx_offsets[entry]}, "
                f"the frame there has {header.raft_index} / {header.base_offset}"
            )
        return position

    # -- reading -----------------------------------------------------------

    def frames_from(self, position: int, end: int) -> Iterator[tuple[int, codec.Header, bytes, bytes]]:
        """Checked frames from C{position} up to C{end}: (position, header, header bytes, payload).

        Anything that does not decode or check inside this range is corruption
        of data the log already holds (raised as L{StorageCorrupted}).
        """
        buffer = b""
        buffer_at = position
        size = codec.HEADER_SIZE
        while position < end:
            rel = position - buffer_at
            if len(buffer) - rel < size:
                buffer = self.pread(max(_READ_CHUNK, size), position)
                buffer_at, rel = position, 0
            head = buffer[rel : rel + size]
            try:
                header = codec.decode_header(head)
            except codec.FrameError as e:
                raise self.corrupted(position, str(e)) from None
            if position + header.frame_size > end:
                raise self.corrupted(position, f"frame of {header.frame_size} bytes runs past the end at {end}")
            if len(buffer) - rel < header.frame_size:
                # A frame larger than what is buffered: read its payload alone, into
                # its own bytes, so serving it does not copy a slice of the buffer.
                length = header.payload_length
                payload = self.pread(length, position + size)
                if len(payload) < length:
                    raise self.corrupted(position, "file shorter than expected")
                if not codec.check_parts(header, head, payload):
                    raise self.corrupted(position, f"CRC mismatch in the batch at index {header.raft_index}")
                yield position, header, head, payload
                position += header.frame_size
                buffer, buffer_at = b"", position
                continue
            if not codec.check_frame(header, buffer, rel):
                raise self.corrupted(position, f"CRC mismatch in the batch at index {header.raft_index}")
            yield position, header, head, buffer[rel + size : rel + header.frame_size]
            position += header.frame_size

    def first_header(self) -> codec.Header | None:
        if self.size < codec.HEADER_SIZE:
            return None
        try:
            return codec.decode_header(self.pread(codec.HEADER_SIZE, 0))
        except codec.FrameError as e:
            raise self.corrupted(0, str(e)) from None

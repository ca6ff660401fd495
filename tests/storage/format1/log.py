"""The durable partition log: a directory of segments, recovered at start-up.

Layout of one partition directory::

    00000000000000000000.log        frames (streamlog.storage.codec)
    00000000000000000000.index      sparse offset index
    00000000000000000000.timeindex  time index
    00000000000000052817.log        ... one trio per segment, named by base offset
    recovery-checkpoint             JSON: the synced, validated prefix

The checkpoint says "every byte before C{position} of segment C{segment}, and
every earlier segment, was fsynced and validated, and so were the index
entries that point into it".  It is written (tmp, fsync, rename, fsync dir)
after a sync when the log rolled to a new segment or grew by
C{checkpoint_interval_bytes}, after a truncation that cut into it, and at a
clean close.  Recovery therefore reads only the tail after it: start-up does
not grow with total data.  Damage in that tail is cut off (it cannot be told
apart from a torn write); damage before it is synced data gone bad, and the
log refuses to serve (L{StorageCorrupted}) rather than drop acknowledged
records.

Threads: everything runs on the reactor thread except L{SegmentedLog.sync}
and L{SegmentedLog.checkpoint}, which a worker thread calls while the reactor
keeps appending.  C{_lock} guards what both sides touch (the segment list,
sizes, end and durable offsets); C{_sync_lock} serialises syncs and is the
only place write descriptors are closed, so a sync never fsyncs a descriptor
that was closed and reused; C{_checkpoint_lock} orders checkpoint writes
against truncation.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Iterable, Iterator

import attrs
import orjson
from twisted.logger import Logger

from format1 import codec
from format1.base import RECORD_SEPARATOR, ReadResult, RecordBatch, TopicConfig
from format1.checkpoint import CHECKPOINT_FILE, Checkpoint, fsync_dir, write_atomically
from format1.descriptors import DEFAULT_READ_FILES, ReadFiles
from format1.errors import StorageCorrupted, StorageError, StorageFailed
from format1.memory import fragment_records, read_batches, take_batches
from format1.segment import IndexDamaged, Segment, SegmentFiles, segment_name

DEFAULT_SEGMENT_BYTES = 128 * 1024 * 1024
DEFAULT_SEGMENT_MS = 7 * 24 * 3600 * 1000
DEFAULT_INDEX_INTERVAL_BYTES = 4096
DEFAULT_CACHE_BYTES = 4 * 1024 * 1024
DEFAULT_CHECKPOINT_INTERVAL_BYTES = 64 * 1024 * 1024
_SCAN_CHUNK = 8 * 1024 * 1024
#: Rolled segments whose write descriptors may wait for the next sync; past this, a roll fsyncs and closes the oldest.
MAX_RETIRED = 8


def effective_config(config: TopicConfig | None, defaults: TopicConfig | None) -> TopicConfig:
    """The topic's settings with the server defaults filled in where it says C{None}."""
    merged = (config or TopicConfig()).with_defaults(defaults).to_dict()
    if merged["segment_bytes"] is None:
        merged["segment_bytes"] = DEFAULT_SEGMENT_BYTES
    if merged["segment_ms"] is None:
        merged["segment_ms"] = DEFAULT_SEGMENT_MS
    return TopicConfig(**merged)


class SegmentedLog:
    """A durable L{streamlog.storage.base.PartitionLog} in one directory.

    @param directory: the partition directory (created if missing).
    @param config: the topic's settings; C{None} fields fall back to C{defaults}.
    @param defaults: the server-wide settings.
    @param index_interval_bytes: bytes of data between two sparse index entries,
        the most a read scans to find its place.
    @param cache_bytes: how much of the newest data to keep in memory for
        tailing readers.
    @param checkpoint_interval_bytes: the most data a sync may leave behind the
        recovery checkpoint, hence the most recovery reads after a crash
        (besides segments rolled since).
    @param start_offset: the first offset of a new, empty log.
    @param existing: the log must already exist (the storage opens a partition its
        C{topic.json} lists): a missing directory, or one without any segment, is
        synced data gone, and the log fails instead of starting empty.
    @param read_files: the node-wide cache of read descriptors (L{ReadFiles});
        the log gets its own, of the default size, if C{None}.
    """

    _log = Logger()

    def __init__(
        self,
        directory: str,
        config: TopicConfig | None = None,
        defaults: TopicConfig | None = None,
        *,
        index_interval_bytes: int = DEFAULT_INDEX_INTERVAL_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        checkpoint_interval_bytes: int = DEFAULT_CHECKPOINT_INTERVAL_BYTES,
        start_offset: int = 0,
        existing: bool = False,
        read_files: ReadFiles | None = None,
    ) -> None:
        self.directory = directory
        self.config = config or TopicConfig()
        self.defaults = defaults
        self._settings = effective_config(self.config, defaults)
        self._interval = index_interval_bytes
        self._read_files = read_files if read_files is not None else ReadFiles(DEFAULT_READ_FILES)
        self._cache_limit = cache_bytes
        self._checkpoint_interval = checkpoint_interval_bytes
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._checkpoint_lock = threading.RLock()
        self._segments: list[Segment] = []
        self._bases: list[int] = []
        self._retired: list[SegmentFiles] = []
        self._dir_dirty = False
        self._epoch = 0  # bumped by truncation: a sync that straddles one does not advance durability
        self._failed: StorageError | None = None
        self._closed = False
        self._cache: list[RecordBatch] = []
        self._cache_bases: list[int] = []
        self._cache_bytes = 0
        self._checkpoint: Checkpoint | None = None
        self._end = start_offset
        self._durable = start_offset
        try:
            if existing and not os.path.isdir(directory):
                raise StorageCorrupted(directory, 0, "the partition directory is missing (its topic.json lists it)")
            os.makedirs(directory, exist_ok=True)
            self._recover(start_offset, existing)
        except StorageCorrupted as e:
            self._fail(e)
        except BaseException:
            self._release()  # a failed open (EMFILE, EIO) leaves no descriptor behind
            raise

    # -- state ---------------------------------------------------------------

    @property
    def start_offset(self) -> int:
        return self._bases[0] if self._bases else self._end

    @property
    def end_offset(self) -> int:
        return self._end

    @property
    def durable_offset(self) -> int:
        return self._durable

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failed(self) -> StorageError | None:
        """Why this log refuses to serve, or C{None}."""
        return self._failed

    def _fail(self, error: StorageError) -> None:
        if self._failed is None:
            self._failed = error
            self._log.error("partition log {directory} failed and refuses to serve: {error}", directory=self.directory, error=error)

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise StorageFailed(f"{self.directory}: log is closed")

    # -- recovery --------------------------------------------------------------

    def _recover(self, start_offset: int, existing: bool = False) -> None:
        names = os.listdir(self.directory)
        bases = sorted(int(n[:-4]) for n in names if n.endswith(".log") and len(n) == 24 and n[:-4].isdigit())
        for n in names:
            stem = n.split(".", 1)[0]
            if n.endswith(".tmp") or (
                n.endswith((".index", ".timeindex")) and stem.isdigit() and int(stem) not in bases
            ):
                os.unlink(os.path.join(self.directory, n))  # leftovers of an interrupted write or delete
        if not bases and existing:
            # A log always keeps at least one segment (retention and truncation keep the active one).
            raise StorageCorrupted(self.directory, 0, "no segment file: the partition's data is gone")
        checkpoint = self._read_checkpoint()
        if checkpoint is not None and checkpoint.segments is not None:
            bases = self._check_chain(checkpoint, bases)
        if checkpoint is not None and checkpoint.segment not in bases:
            raise StorageCorrupted(
                os.path.join(self.directory, segment_name(checkpoint.segment) + ".log"),
                0,
                f"segment file missing: the recovery checkpoint is in it ({checkpoint.position} synced bytes)",
            )
        if not bases:
            segment = Segment(self.directory, start_offset, self._interval, self._read_files)
            segment.reset_indexes()
            segment.open_for_append()
            self._segments, self._bases = [segment], [start_offset]
            fsync_dir(self.directory)
            return
        segments = [Segment(self.directory, b, self._interval, self._read_files) for b in bases]
        for i, segment in enumerate(segments):
            segment.size = segment.file_size()
            if i + 1 < len(segments):
                segment.next_offset = bases[i + 1]
        self._segments, self._bases = segments, list(bases)
        if checkpoint is not None and checkpoint.segments is not None:
            for segment, (base, size) in zip(segments, checkpoint.segments):
                assert segment.base_offset == base, (segment.base_offset, base)  # _check_chain kept exactly the chain
                if segment.size < size:
                    raise segment.corrupted(segment.size, f"synced data missing: file has {segment.size} bytes, {size} were synced")
                if segment.size > size:
                    self._log.warn(
                        "ignoring {extra} bytes after the synced end of closed segment {path} (nothing is appended there)",
                        extra=segment.size - size,
                        path=segment.log_path,
                    )
                    segment.size = size
        if checkpoint is None:
            first = 0
            tail_position, expected = 0, bases[0]
            segments[0].reset_indexes()
            segments[0].size = 0
            segments[0].next_offset = bases[0]
        else:
            first = bases.index(checkpoint.segment)
            segment = segments[first]
            if segment.size < checkpoint.position:
                raise segment.corrupted(
                    segment.size, f"synced data missing: file has {segment.size} bytes, {checkpoint.position} were synced"
                )
            segment.size = checkpoint.position
            segment.next_offset = checkpoint.next_offset
            if not segment.load_indexes(checkpoint.position, checkpoint.next_offset):
                segment.rebuild_indexes(segment.base_offset)  # reads [0, position), all synced: damage raises
                data_end = segment.next_offset
            else:
                header = segment.first_header()
                segment.first_timestamp = header.first_timestamp if header else None
                data_end = self._recompute_tail_stats(segment)
            if data_end != checkpoint.next_offset:
                raise StorageCorrupted(
                    os.path.join(self.directory, CHECKPOINT_FILE),
                    0,
                    f"the checkpoint says the records before byte {checkpoint.position} of {segment.log_path} end at "
                    f"offset {checkpoint.next_offset}, but they end at {data_end}",
                )
            segment.next_offset = checkpoint.next_offset
            tail_position, expected = checkpoint.position, checkpoint.next_offset
        self._checkpoint = checkpoint
        repaired = self._validate_tail(first, tail_position, expected)
        active = self._segments[-1]
        for segment in self._segments[first:-1]:
            segment.seal_time_index_memory(segment.last_base_offset)
        for segment in self._segments[first:]:
            if segment.index_rewrite_needed:
                segment.write_index_files()
        active.open_for_append()
        self._end = self._durable = active.next_offset
        if repaired or checkpoint is None or len(self._segments) - 1 > first or active.size != tail_position:
            # What was read back may still be only in the page cache (a process
            # crash): make it durable and checkpoint it before serving.
            self._retired = []
            self._dir_dirty = True
            self._sync(force_checkpoint=True, extra=[s for s in self._segments[first:-1]])

    def _check_chain(self, checkpoint: Checkpoint, bases: list[int]) -> list[int]:
        """Hold the segment files found against the chain the checkpoint vouches for; return the bases to open.

        A vouched segment that is missing is synced data gone (L{StorageCorrupted},
        naming the file).  Segments before the chain's first are what an
        interrupted retention had not deleted yet (retention writes the shorter
        chain before it unlinks): they are deleted now.  A segment file between
        vouched ones that the chain does not list is not part of the log: it is
        left alone and ignored.  Segments after the checkpoint's are the tail.
        """
        chain = checkpoint.segments or ()
        vouched = [b for b, _ in chain] + [checkpoint.segment]
        found = set(bases)
        for base, size in chain:
            if base not in found:
                raise StorageCorrupted(
                    os.path.join(self.directory, segment_name(base) + ".log"),
                    0,
                    f"segment file missing: the recovery checkpoint lists it ({size} synced bytes from offset {base})",
                )
        first = vouched[0]
        for base in bases:
            if base < first:
                self._log.info(
                    "removing segment {base} of {directory}: retention had deleted it from the log before a restart",
                    base=base,
                    directory=self.directory,
                )
                for ext in (".log", ".index", ".timeindex"):
                    try:
                        os.unlink(os.path.join(self.directory, segment_name(base) + ext))
                    except FileNotFoundError:
                        pass
            elif base < checkpoint.segment and base not in vouched:
                self._log.warn(
                    "ignoring stray segment file {path}: the recovery checkpoint does not list it, it is not part of the log",
                    path=os.path.join(self.directory, segment_name(base) + ".log"),
                )
        listed = set(vouched)
        return [b for b in bases if b in listed or b > checkpoint.segment]

    def _read_checkpoint(self) -> Checkpoint | None:
        path = os.path.join(self.directory, CHECKPOINT_FILE)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return Checkpoint.decode(data)
        except (ValueError, KeyError, TypeError) as e:
            raise StorageCorrupted(path, 0, f"unreadable checkpoint: {e}") from None

    def _validate_tail(self, first: int, position: int, expected: int) -> bool:
        """Scan from (segment C{first}, C{position}) to the end; cut at the first bad frame.

        Returns whether anything was cut.
        """
        for i in range(first, len(self._segments)):
            segment = self._segments[i]
            if i > first:
                segment.reset_indexes()
                segment.size = 0
                segment.next_offset = segment.base_offset
                position = 0
                if segment.base_offset != expected:
                    self._drop_segments_from(i, expected, f"segment base {segment.base_offset}, expected {expected}")
                    return True
            file_size = segment.file_size()
            if file_size == position:
                continue  # nothing after the checkpoint (a clean shutdown)
            stop, reason, valid_end = self._scan_segment(segment, position, file_size, expected)
            expected = segment.next_offset
            if stop is not codec.Stop.END:
                cut = file_size - valid_end
                self._log.warn(
                    "recovery cut {bytes} bytes ({stop}: {reason}) from {path} at byte {position}: "
                    "records from offset {offset} on are gone",
                    bytes=cut,
                    stop=stop.value,
                    reason=reason,
                    path=segment.log_path,
                    position=valid_end,
                    offset=expected,
                )
                os.truncate(segment.log_path, valid_end)
                segment.size = valid_end
                if i + 1 < len(self._segments):
                    self._drop_segments_from(i + 1, expected, "they follow a cut")
                return True
        return False

    def _scan_segment(self, segment: Segment, position: int, file_size: int, expected: int) -> tuple[codec.Stop, str, int]:
        """Validate C{segment} from C{position} in chunks, replaying its frames into the index."""
        while True:
            chunk = segment.pread(min(_SCAN_CHUNK, file_size - position), position)
            result = codec.scan(chunk, 0, expected)
            for frame in result.frames:
                segment.replay([codec.Frame(position + frame.position, frame.header)])
            at_eof = position + len(chunk) >= file_size
            valid_end = position + result.valid_end
            if result.frames:
                expected = result.next_offset  # type: ignore[assignment]
            if result.stop is codec.Stop.END and at_eof:
                return codec.Stop.END, "", valid_end
            if result.stop in (codec.Stop.END, codec.Stop.TORN) and not at_eof:
                if result.frames or result.stop is codec.Stop.END:
                    position = valid_end
                    continue
                # One frame larger than a chunk: read it whole.
                header = codec.decode_header(chunk[: codec.HEADER_SIZE])
                big = segment.pread(header.frame_size, position)
                result = codec.scan(big, 0, expected)
                if not result.frames:
                    return result.stop, result.reason, position
                segment.replay([codec.Frame(position, result.frames[0].header)])
                expected = result.next_offset  # type: ignore[assignment]
                position += result.frames[0].header.frame_size
                continue
            return result.stop, result.reason, valid_end

    def _drop_segments_from(self, i: int, offset: int, why: str) -> None:
        for segment in self._segments[i:]:
            self._log.warn(
                "recovery removed segment {path} ({bytes} bytes) because {why}; records from offset {offset} on are gone",
                path=segment.log_path,
                bytes=segment.file_size(),
                why=why,
                offset=offset,
            )
            segment.close_read()
            for path in (segment.log_path, segment.index_path, segment.timeindex_path):
                if os.path.exists(path):
                    os.unlink(path)
        del self._segments[i:], self._bases[i:]
        fsync_dir(self.directory)

    def _ensure_index(self, segment: Segment) -> None:
        """Load a closed segment's indexes on first use; rebuild them if missing or damaged."""
        if segment.index_offsets is not None:
            return
        if segment.load_indexes():
            segment.max_timestamp = segment.time_stamps[-1] if segment.time_stamps else None
            return
        try:
            segment.rebuild_indexes(segment.base_offset)
        except StorageCorrupted as e:
            self._fail(e)
            raise

    def _position(self, segment: Segment, offset: int) -> int:
        """Where to start reading C{segment} for C{offset}; a wrong index is rebuilt, not trusted."""
        self._ensure_index(segment)
        try:
            return segment.checked_position_for(offset)
        except IndexDamaged as e:
            self._log.warn("{problem}; rebuilding it", problem=str(e))
        try:
            segment.rebuild_indexes(segment.base_offset)
        except StorageCorrupted as e:
            self._fail(e)
            raise
        return segment.position_for(offset)

    # -- appending ---------------------------------------------------------------

    def append(self, batch: RecordBatch) -> None:
        self._check()
        if batch.base_offset != self._end:
            raise ValueError(f"batch base offset {batch.base_offset} != log end {self._end}")
        active = self._segments[-1]
        frame_size = codec.HEADER_SIZE + len(batch.payload)
        settings = self._settings
        if active.size > 0 and (
            active.size + frame_size > settings.segment_bytes  # type: ignore[operator]
            or batch.max_timestamp - active.first_timestamp >= settings.segment_ms  # type: ignore[operator]
        ):
            self._roll()
            active = self._segments[-1]
        position = active.size
        try:
            written = active.write_batch(batch)
            with self._lock:
                active.note_appended(batch, position, written)
                self._end = batch.next_offset
        except OSError as e:
            error = StorageFailed(f"{active.log_path}: append failed: {e}")
            self._fail(error)
            raise error from e
        self._cache.append(batch)
        self._cache_bases.append(batch.base_offset)
        self._cache_bytes += len(batch.payload)
        if self._cache_bytes > self._cache_limit:
            drop = 0
            while drop < len(self._cache) - 1 and self._cache_bytes > self._cache_limit:
                self._cache_bytes -= len(self._cache[drop].payload)
                drop += 1
            del self._cache[:drop], self._cache_bases[:drop]

    def _roll(self) -> None:
        """Start a new segment at the log end; the old one is closed to writes."""
        old = self._segments[-1]
        try:
            old.seal_time_index(old.last_base_offset)
            new = Segment(self.directory, self._end, self._interval, self._read_files)
            new.reset_indexes()
            new.open_for_append()
        except OSError as e:
            error = StorageFailed(f"{self.directory}: roll failed: {e}")
            self._fail(error)
            raise error from e
        with self._lock:
            assert old.files is not None
            old.files.retired = True
            self._retired.append(old.files)
            old.files = None
            self._segments.append(new)
            self._bases.append(new.base_offset)
            self._dir_dirty = True  # the new files' names are made durable by the next sync
            overflow = len(self._retired) > MAX_RETIRED
        if overflow:
            self._settle_retired()
        self._log.info("rolled {directory} to a new segment at offset {offset}", directory=self.directory, offset=new.base_offset)

    def _settle_retired(self) -> None:
        """Fsync and close rolled segments' descriptors here, when syncs have not come for them.

        With C{--fsync never} (or a long interval) and small segments, rolls
        could otherwise pile up three open descriptors each until the next
        background checkpoint.  Holding the sync lock, no sync can take its
        snapshot between these files leaving the list and being fsynced.
        """
        with self._sync_lock:
            with self._lock:
                settle, self._retired = self._retired[:-MAX_RETIRED], self._retired[-MAX_RETIRED:]
            try:
                for f in settle:
                    f.fsync(indexes=True)
            except OSError as e:
                error = StorageFailed(f"{self.directory}: fsync failed: {e}")
                with self._lock:
                    self._fail(error)
                raise error from e
            finally:
                for f in settle:
                    f.close()

    def roll(self) -> None:
        """Close the active segment to writes and start a new one (if it holds anything)."""
        self._check()
        if self._segments[-1].size > 0:
            self._roll()

    # -- durability ----------------------------------------------------------------

    def sync(self) -> int:
        """Fsync what was appended before this call; return the durable offset.  Thread-safe."""
        return self._sync(force_checkpoint=False)

    def checkpoint(self) -> int:
        """Sync, then write the recovery checkpoint at the synced end (bounds recovery work)."""
        return self._sync(force_checkpoint=True)

    def _sync(self, force_checkpoint: bool, extra: Iterable[Segment] = ()) -> int:
        with self._sync_lock:
            with self._lock:
                self._check()
                active = self._segments[-1]
                target = self._end
                epoch = self._epoch
                files = active.files
                retired, self._retired = self._retired, []
                dir_dirty, self._dir_dirty = self._dir_dirty, False
                candidate = Checkpoint(active.base_offset, active.size, target, active.max_timestamp)
            try:
                for segment in extra:  # recovery: closed segments read back from the page cache
                    for path in (segment.log_path, segment.index_path, segment.timeindex_path):
                        fd = os.open(path, os.O_RDONLY)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                for f in retired:
                    if not f.closed:
                        f.fsync(indexes=True)
                if files is not None:
                    files.fsync(indexes=False)
                if dir_dirty:
                    fsync_dir(self.directory)
            except OSError as e:
                error = StorageFailed(f"{self.directory}: fsync failed: {e}")
                with self._lock:
                    self._fail(error)
                raise error from e
            finally:
                for f in retired:
                    f.close()
            with self._lock:
                if epoch == self._epoch:
                    self._durable = max(self._durable, target)
            previous = self._checkpoint
            if (
                force_checkpoint
                or previous is None
                or previous.segment != candidate.segment
                or candidate.position - previous.position >= self._checkpoint_interval
            ):
                self._write_checkpoint(candidate, epoch, files)
            return self._durable

    def _write_checkpoint(self, checkpoint: Checkpoint, epoch: int | None, files: SegmentFiles | None) -> None:
        """Write C{checkpoint} with the chain of segments before its own, as they are now.

        The chain is taken here, under the checkpoint lock that retention and
        truncation hold while they change the segment list, so a checkpoint
        never lists a segment that is already gone.
        """
        with self._checkpoint_lock:
            if epoch is not None and epoch != self._epoch:
                return  # a truncation ran meanwhile and wrote its own
            with self._lock:
                chain = tuple((s.base_offset, s.size) for s in self._segments if s.base_offset < checkpoint.segment)
            checkpoint = attrs.evolve(checkpoint, segments=chain)
            if checkpoint == self._checkpoint:
                return  # nothing moved since the last one (an idle log's periodic checkpoint)
            try:
                if files is not None and not files.closed:
                    os.fsync(files.index_fd)
                    os.fsync(files.timeindex_fd)
                write_atomically(os.path.join(self.directory, CHECKPOINT_FILE), checkpoint.encode())
            except OSError as e:
                error = StorageFailed(f"{self.directory}: checkpoint failed: {e}")
                self._fail(error)
                raise error from e
            self._checkpoint = checkpoint

    # -- reading -----------------------------------------------------------------------

    def _segment_index(self, offset: int) -> int:
        return max(bisect.bisect_right(self._bases, offset) - 1, 0)

    def _iter_batches(self, offset: int) -> Iterator[RecordBatch]:
        """Batches from the one holding C{offset} on, each checked to follow the one before.

        Offsets are dense, so a batch that does not start where the previous
        one ended (or a first batch that does not hold C{offset}) means records
        are missing on disk, e.g. a segment file gone: that is corruption, and
        raises rather than serving a hole, a record twice, or an empty answer.
        """
        cache, bases = self._cache, self._cache_bases
        if cache and offset >= bases[0]:
            yield from cache[max(bisect.bisect_right(bases, offset) - 1, 0) :]
            return
        expected: int | None = None  # where the next batch must start
        for segment in self._segments[self._segment_index(offset) :]:
            if expected is not None and segment.base_offset != expected:
                raise segment.corrupted(
                    0, f"segment starts at offset {segment.base_offset}, but the one before ends at {expected}: records are missing"
                )
            want = offset if expected is None else segment.base_offset
            for batch in segment.batches_from(want, position=self._position(segment, want)):
                if expected is None and batch.base_offset > offset:
                    raise segment.corrupted(0, f"offset {offset} is missing: the first batch found after it starts at {batch.base_offset}")
                if expected is not None and batch.base_offset != expected:
                    raise segment.corrupted(0, f"batch at offset {batch.base_offset} follows one that ends at {expected}")
                if cache and batch.base_offset >= bases[0]:
                    yield from cache[bisect.bisect_left(bases, batch.base_offset) :]
                    return
                yield batch
                expected = batch.next_offset
            if expected is not None and expected != segment.next_offset:
                raise segment.corrupted(
                    segment.size, f"data ends at offset {expected}, but the segment should reach {segment.next_offset}: records are missing"
                )

    def _guard(self, items: Iterator[RecordBatch]) -> Iterator[RecordBatch]:
        try:
            yield from items
        except StorageCorrupted as e:
            self._fail(e)
            raise

    def read(self, offset: int, max_records: int, max_bytes: int) -> ReadResult:
        self._check()
        if offset >= self._end or max_records <= 0:
            return ReadResult(fragments=[], count=0, next_offset=offset, size=0)
        return read_batches(self._guard(self._iter_batches(offset)), offset, max_records, max_bytes)

    def batches(self, offset: int, max_bytes: int) -> Iterable[RecordBatch]:
        self._check()
        if offset >= self._end:
            return []
        return take_batches(self._guard(self._iter_batches(offset)), max_bytes)

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        self._check()
        for segment in self._segments:
            self._ensure_index(segment)
            if segment.max_timestamp is None or segment.max_timestamp < timestamp_ms:
                continue
            start = segment.time_lookup(timestamp_ms)
            for batch in self._guard(segment.batches_from(start, position=self._position(segment, start))):
                if batch.max_timestamp >= timestamp_ms:
                    for i, record in enumerate(fragment_records(batch, batch.base_offset, batch.count)):
                        if orjson.loads(record)["timestamp"] >= timestamp_ms:
                            return max(batch.base_offset + i, self.start_offset)
        return self._end

    # -- truncation and retention ---------------------------------------------------------

    def truncate_suffix(self, offset: int) -> None:
        """Remove every record at or after C{offset}; made durable before returning.

        Rare (Raft conflict resolution), so it fsyncs on the calling thread.  A
        cut inside a batch rewrites that batch's head as a new frame; a power
        loss during the call can lose that head (see docs/storage.md).
        """
        self._check()
        if offset >= self._end:
            return
        if offset < self.start_offset:
            raise ValueError(f"cannot truncate to {offset}, before log start {self.start_offset}")
        try:
            partial = self._truncate(offset)
        except StorageCorrupted as e:
            self._fail(e)
            raise
        except OSError as e:
            error = StorageFailed(f"{self.directory}: truncation failed: {e}")
            self._fail(error)
            raise error from e
        if partial is not None:
            # The records before the cut inside that batch were (maybe) durable:
            # make them durable again at once.  Until this sync returns, a power
            # loss can lose them; Raft truncates at batch boundaries, so this
            # path is for completeness of the contract.
            self.append(partial)
            self._sync(force_checkpoint=False)

    def _truncate(self, offset: int) -> RecordBatch | None:
        with self._checkpoint_lock:
            k = bisect.bisect_right(self._bases, offset) - 1
            if k > 0 and self._bases[k] == offset:
                k -= 1
            segment = self._segments[k]
            self._ensure_index(segment)
            partial = None
            if offset >= segment.next_offset:
                position, cut_offset = segment.size, segment.next_offset
            else:
                position, header, payload = segment.frame_containing(offset, self._position(segment, offset))
                cut_offset = header.base_offset
                if header.base_offset < offset:
                    partial = _head_of(codec.batch_from(header, payload), offset - header.base_offset)
            if self._checkpoint is not None and self._checkpoint.covers(segment.base_offset, position):
                # Move the checkpoint back before cutting, so a crash mid-cut never
                # finds a checkpoint past the end of the data (which means corruption).
                # Everything before the cut was behind the old checkpoint: synced.
                max_ts = segment.max_timestamp if segment.next_offset <= cut_offset else None
                self._write_checkpoint(Checkpoint(segment.base_offset, position, cut_offset, max_ts), None, None)
            doomed = self._segments[k + 1 :]
            with self._lock:
                del self._segments[k + 1 :], self._bases[k + 1 :]
                for gone in doomed:
                    if gone.files is not None:
                        gone.files.retired = True
                        self._retired.append(gone.files)
                        gone.files = None
                if segment.files is None:
                    segment.open_for_append()
                assert segment.files is not None
                os.ftruncate(segment.files.log_fd, position)
                segment.size = position
                segment.next_offset = cut_offset
                segment.cut_indexes(position, cut_offset)
                self._end = cut_offset
                self._durable = min(self._durable, cut_offset)
                self._epoch += 1
            for gone in doomed:
                gone.close_read()
                for path in (gone.log_path, gone.index_path, gone.timeindex_path):
                    os.unlink(path)
            files = segment.files
            os.ftruncate(files.index_fd, len(segment.index_offsets or ()) * 8)
            os.ftruncate(files.timeindex_fd, len(segment.time_stamps) * 12)
            self._recompute_tail_stats(segment)
            files.fsync(indexes=True)
            fsync_dir(self.directory)
            cut = bisect.bisect_left(self._cache_bases, cut_offset)
            for batch in self._cache[cut:]:
                self._cache_bytes -= len(batch.payload)
            del self._cache[cut:], self._cache_bases[cut:]
            self._log.info(
                "truncated {directory} at offset {offset} (segment {segment}, byte {position})",
                directory=self.directory,
                offset=offset,
                segment=segment.base_offset,
                position=position,
            )
            return partial

    def _recompute_tail_stats(self, segment: Segment) -> int:
        """Redo a cut segment's maximum timestamp from its index and at most one interval of data.

        Returns the offset after the last frame read (the segment's base if it
        is empty), which recovery holds against the checkpoint's.
        """
        segment.max_timestamp = segment.time_stamps[-1] if segment.time_stamps else None
        if segment.size == 0:
            segment.first_timestamp = None
            return segment.base_offset
        if segment.first_timestamp is None:  # a closed segment loaded lazily, reopened by a cut
            header = segment.first_header()
            segment.first_timestamp = header.first_timestamp if header else None
        start = segment.index_positions[-1] if segment.index_positions else 0
        end = segment.index_offsets[-1] if segment.index_offsets else segment.base_offset
        for _, header, _ in segment.frames_from(start, segment.size):
            if segment.max_timestamp is None or header.max_timestamp > segment.max_timestamp:
                segment.max_timestamp = header.max_timestamp
            segment.last_base_offset = header.base_offset
            end = header.next_offset
        return end

    def apply_retention(self, now_ms: int) -> int:
        """Delete whole old segments per retention_ms / retention_bytes; return the start offset.

        The active segment is never deleted; one idle for C{segment_ms} is rolled
        first so that it can expire.  Only segments wholly before the recovery
        checkpoint are deleted, so recovery never has to re-read surviving
        segments because the checkpoint's segment went away.

        A failed log deletes nothing (its files are evidence) and does not
        raise, so one damaged partition does not stop retention of the others.
        """
        if self._failed is not None:
            return self.start_offset
        self._check()
        settings = self._settings
        active = self._segments[-1]
        if active.size > 0 and active.first_timestamp is not None and now_ms - active.first_timestamp >= settings.segment_ms:  # type: ignore[operator]
            self._roll()
        checkpoint = self._checkpoint
        if checkpoint is None:
            return self.start_offset
        total = self.size_bytes
        drop = 0
        for segment in self._segments[:-1]:
            if segment.base_offset >= checkpoint.segment:
                break
            self._ensure_index(segment)
            too_old = (
                settings.retention_ms is not None
                and segment.max_timestamp is not None
                and segment.max_timestamp < now_ms - settings.retention_ms
            )
            too_big = settings.retention_bytes is not None and total > settings.retention_bytes
            if not (too_old or too_big):
                break
            total -= segment.size
            drop += 1
        if drop:
            doomed = self._segments[:drop]
            with self._checkpoint_lock:
                with self._lock:
                    del self._segments[:drop], self._bases[:drop]
                    self._dir_dirty = True
                # The shorter chain is on disk before any file goes: a segment the
                # checkpoint lists is never missing unless the disk lost it.
                current = self._checkpoint  # the sync thread may have moved it on meanwhile
                assert current is not None
                self._write_checkpoint(current, None, None)
            for segment in doomed:
                segment.close_read()
                for path in (segment.log_path, segment.index_path, segment.timeindex_path):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            start = self.start_offset
            cut = bisect.bisect_left(self._cache_bases, start)
            for batch in self._cache[:cut]:
                self._cache_bytes -= len(batch.payload)
            del self._cache[:cut], self._cache_bases[:cut]
            self._log.info(
                "retention deleted {count} segments of {directory}; log starts at {start}",
                count=drop,
                directory=self.directory,
                start=start,
            )
        return self.start_offset

    # -- closing --------------------------------------------------------------------------

    def close(self, sync: bool = True) -> None:
        """Sync, checkpoint (a clean shutdown: the next start reads nothing back), release files.

        C{sync=False} only releases the files (a topic being deleted: its data is
        about to go, fsyncing it would only cost time).
        """
        if self._closed:
            return
        try:
            if sync and self._failed is None:
                self._sync(force_checkpoint=True)
        finally:
            self._release()

    def _release(self) -> None:
        """Close every descriptor of this log, syncing nothing; the log is closed."""
        with self._sync_lock, self._lock:
            self._closed = True
            for f in self._retired:
                f.close()
            self._retired = []
            for segment in self._segments:
                if segment.files is not None:
                    segment.files.close()
                    segment.files = None
                segment.close_read()
            self._cache, self._cache_bases, self._cache_bytes = [], [], 0


def _head_of(batch: RecordBatch, count: int) -> RecordBatch:
    """The first C{count} records of C{batch} as a batch (a truncation inside a batch)."""
    records = batch.records()[:count]
    return RecordBatch(
        base_offset=batch.base_offset,
        count=count,
        term=batch.term,
        first_timestamp=batch.first_timestamp,
        max_timestamp=max(int(orjson.loads(r)["timestamp"]) for r in records),
        payload=RECORD_SEPARATOR.join(records),
        producer_id=batch.producer_id,
        producer_epoch=batch.producer_epoch,
        base_sequence=batch.base_sequence,
    )

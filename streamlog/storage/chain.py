"""The segment chain: a partition log's segments in order, what memory knows of them, and reads.

Kept apart from the code that changes the log (appends, truncation,
retention, recovery) because every one of those needs the same few
questions answered, the same way: which segment holds Raft index I or
record offset O, where in it to start reading, which term entry I has, which
configuration was in force at I, and what the batches from there on are.
Reads check what they read: each batch must follow the one before it (next
Raft index, record offset where the previous one ended), each segment must
start where the previous one ended, so a segment file gone or emptied on
disk is reported as corruption (L{StorageCorrupted}) instead of served as a
hole.

In memory: the list of segments (first index, first record offset), the
Raft term of every run of entries (one pair per term change), the
configuration entries (rare), the log start (L{LogStart}: what retention or
a snapshot left), the log end, and a tail cache of the newest batches, as
stored, so that tailing readers and a leader replicating to its followers
rarely read the disk (it holds between three quarters of C{cache_bytes} and
all of it, trimmed in steps).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import orjson
from twisted.logger import Logger

from streamlog.raft.log import Entry, Members
from streamlog.storage import codec
from streamlog.storage.base import BatchType, RecordBatch
from streamlog.storage.checkpoint import LogStart
from streamlog.storage.descriptors import ReadFiles
from streamlog.storage.segment import IndexDamaged, Segment


def config_members(payload: bytes) -> Members:
    """The member ids a configuration batch's payload holds; C{ValueError} if it is not a JSON array of strings."""
    value = orjson.loads(payload)
    if not isinstance(value, list) or not all(type(m) is str for m in value):
        raise ValueError("a configuration payload is a JSON array of member ids")
    return tuple(value)


def entry_of(batch: RecordBatch) -> Entry:
    """The Raft entry a stored batch is: records keep their batch (stored bytes and all)."""
    if batch.type == BatchType.RECORDS:
        return Entry(batch.raft_index, batch.term, batch)  # type: ignore[arg-type]  # data: bytes or RecordBatch
    if batch.type == BatchType.CONFIG:
        return Entry(batch.raft_index, batch.term, b"", config_members(batch.payload))
    if batch.type == BatchType.DATA:
        return Entry(batch.raft_index, batch.term, batch.payload)
    return Entry(batch.raft_index, batch.term, b"")


class SegmentChain:
    """The segments of one log, oldest first, with their in-memory bookkeeping (see the module docstring)."""

    _log = Logger()

    def __init__(self, directory: str, index_interval_bytes: int, read_files: ReadFiles, cache_limit: int) -> None:
        self.directory = directory
        self.interval = index_interval_bytes
        self.read_files = read_files
        self.segments: list[Segment] = []
        self.firsts: list[int] = []  # first Raft index of each segment
        self.offsets: list[int] = []  # first record offset of each segment
        self.start = LogStart()
        self.last_index = 0
        self.last_term = 0
        self.end_offset = 0
        self._term_firsts: list[int] = []  # first index of each run of one term
        self._terms: list[int] = []
        self._config_indexes: list[int] = []
        self._configs: list[Members] = []
        self.cache: list[RecordBatch] = []
        self._cache_offsets: list[int] = []
        self.cache_first = 0  # Raft index of cache[0]
        self._cache_bytes = 0
        self._cache_limit = cache_limit

    # -- the segment list ------------------------------------------------------------

    def new_segment(self, first_index: int, base_offset: int) -> Segment:
        return Segment(self.directory, first_index, base_offset, self.interval, self.read_files)

    def set_segments(self, segments: list[Segment]) -> None:
        self.segments = segments
        self.refresh()

    def refresh(self) -> None:
        """Re-read the lookup lists from the segments (after the list or a base offset changed)."""
        self.firsts = [s.first_index for s in self.segments]
        self.offsets = [s.base_offset for s in self.segments]

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    def segment_for_index(self, index: int) -> int:
        return max(bisect.bisect_right(self.firsts, index) - 1, 0)

    def segment_for_offset(self, offset: int) -> int:
        return max(bisect.bisect_right(self.offsets, offset) - 1, 0)

    # -- terms and configurations ------------------------------------------------------

    def set_history(self, terms: tuple[tuple[int, int], ...], configs: tuple[tuple[int, Members], ...]) -> None:
        self._term_firsts = [i for i, _ in terms]
        self._terms = [t for _, t in terms]
        self._config_indexes = [i for i, _ in configs]
        self._configs = [m for _, m in configs]

    def note_entry(self, index: int, term: int, config: Members | None) -> None:
        """An entry was added at the end (an append, or recovery replaying the tail)."""
        if not self._terms or term != self._terms[-1]:
            self._term_firsts.append(index)
            self._terms.append(term)
        if config is not None:
            self._config_indexes.append(index)
            self._configs.append(config)

    def term_at(self, index: int) -> int | None:
        if index == self.start.index - 1:
            return self.start.term
        if not self.start.index <= index <= self.last_index:
            return None
        return self._terms[bisect.bisect_right(self._term_firsts, index) - 1]

    def config_at(self, index: int) -> tuple[int, Members] | None:
        pos = bisect.bisect_right(self._config_indexes, index)
        if pos:
            return self._config_indexes[pos - 1], self._configs[pos - 1]
        if self.start.config is not None and index >= self.start.index - 1:
            return self.start.index - 1, self.start.config
        return None

    def history_before(
        self, index: int, start_index: int | None = None
    ) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, Members], ...]]:
        """The term runs and configuration entries of the entries before C{index} (for a checkpoint).

        With C{start_index}: as they will be once the log starts there (L{trim_history}), for
        the checkpoint retention writes before it changes anything in memory.
        """
        if start_index is None:
            term_firsts, terms, config_indexes, configs = self._term_firsts, self._terms, self._config_indexes, self._configs
        else:
            term_firsts, terms, config_indexes, configs = self._trimmed(start_index)
        n = bisect.bisect_left(term_firsts, index)
        c = bisect.bisect_left(config_indexes, index)
        return (tuple(zip(term_firsts[:n], terms[:n])), tuple(zip(config_indexes[:c], configs[:c])))

    def cut_history(self, from_index: int) -> None:
        """Forget the terms and configurations of entries >= C{from_index} (a truncation)."""
        n = bisect.bisect_left(self._term_firsts, from_index)
        del self._term_firsts[n:], self._terms[n:]
        c = bisect.bisect_left(self._config_indexes, from_index)
        del self._config_indexes[c:], self._configs[c:]

    def trim_history(self, start_index: int) -> None:
        """Forget what lies before C{start_index} (the log start moved); the run it falls in starts there."""
        self._term_firsts, self._terms, self._config_indexes, self._configs = self._trimmed(start_index)

    def _trimmed(self, start_index: int) -> tuple[list[int], list[int], list[int], list[Members]]:
        """The history lists as L{trim_history}C{(start_index)} leaves them (new lists; this chain's unchanged)."""
        term_firsts, terms = self._term_firsts[:], self._terms[:]
        n = bisect.bisect_right(term_firsts, start_index) - 1
        if n > 0:
            del term_firsts[:n], terms[:n]
        if term_firsts and term_firsts[0] < start_index:
            term_firsts[0] = start_index
        if term_firsts and start_index > self.last_index:
            term_firsts, terms = [], []
        c = bisect.bisect_left(self._config_indexes, start_index)
        return term_firsts, terms, self._config_indexes[c:], self._configs[c:]

    # -- the tail cache ----------------------------------------------------------------

    def cache_append(self, batch: RecordBatch) -> None:
        if self._cache_limit <= 0:
            return
        if not self.cache:
            self.cache_first = batch.raft_index
        self.cache.append(batch)
        self._cache_offsets.append(batch.base_offset)
        self._cache_bytes += len(batch.payload) + codec.HEADER_SIZE
        if self._cache_bytes > self._cache_limit:
            # Trim to three quarters of the limit at once: list heads are shifted rarely, not per append.
            drop, keep = 0, self._cache_limit * 3 // 4
            while drop < len(self.cache) - 1 and self._cache_bytes > keep:
                self._cache_bytes -= len(self.cache[drop].payload) + codec.HEADER_SIZE
                drop += 1
            del self.cache[:drop], self._cache_offsets[:drop]
            self.cache_first += drop

    def cache_cut(self, from_index: int) -> None:
        """Drop cached batches with an index >= C{from_index}."""
        keep = max(0, from_index - self.cache_first)
        for batch in self.cache[keep:]:
            self._cache_bytes -= len(batch.payload) + codec.HEADER_SIZE
        del self.cache[keep:], self._cache_offsets[keep:]

    def cache_trim(self, start_index: int) -> None:
        """Drop cached batches with an index < C{start_index}."""
        drop = min(len(self.cache), max(0, start_index - self.cache_first))
        for batch in self.cache[:drop]:
            self._cache_bytes -= len(batch.payload) + codec.HEADER_SIZE
        del self.cache[:drop], self._cache_offsets[:drop]
        self.cache_first += drop

    def cache_clear(self) -> None:
        self.cache, self._cache_offsets, self._cache_bytes = [], [], 0

    # -- indexes -------------------------------------------------------------------------

    def ensure_index(self, segment: Segment) -> None:
        """Load a closed segment's indexes on first use; rebuild them if missing or damaged (raises on bad data)."""
        if segment.idx_indexes is not None:
            return
        if segment.load_indexes():
            segment.max_timestamp = segment.time_stamps[-1] if segment.time_stamps else None
            segment.last_record_index = segment.time_indexes[-1] if segment.time_indexes else None
            return
        segment.rebuild_indexes()

    def position_for(self, segment: Segment, index: int | None = None, offset: int | None = None) -> int:
        """Where to start reading C{segment} for entry C{index} (or record C{offset}): an indexed frame at or before it.

        The index entry is checked against the frame it points at; a wrong
        index is rebuilt from the data, not trusted (the rebuild judges the data).
        """
        self.ensure_index(segment)

        def entry() -> int:
            return segment.entry_for_index(index) if index is not None else segment.entry_for_offset(offset or 0)

        try:
            return segment.checked_position(entry())
        except IndexDamaged as e:
            self._log.warn("{problem}; rebuilding it", problem=str(e))
        segment.rebuild_indexes()
        return segment.checked_position(entry())

    # -- reading ---------------------------------------------------------------------------

    def batches_from_index(self, index: int) -> Iterator[RecordBatch]:
        """Stored batches from entry C{index} (which the log holds) on, checked to follow each other."""
        if self.cache and index >= self.cache_first:
            yield from self.cache[index - self.cache_first :]
            return
        k = self.segment_for_index(index)
        segment = self.segments[k]
        position = self.position_for(segment, index=index)
        first = True
        for batch in self._batches(k, position):
            if batch.raft_index < index:
                continue
            if first and batch.raft_index != index:
                raise segment.corrupted(0, f"entry {index} is missing: the first batch found after it has index {batch.raft_index}")
            first = False
            yield batch

    def batches_from_offset(self, offset: int) -> Iterator[RecordBatch]:
        """Stored batches from the one holding record C{offset} on (the caller skips what ends before it)."""
        if self.cache and offset >= self._cache_offsets[0]:
            yield from self.cache[max(bisect.bisect_right(self._cache_offsets, offset) - 1, 0) :]
            return
        k = self.segment_for_offset(offset)
        position = self.position_for(self.segments[k], offset=offset)
        yield from self._batches(k, position)

    def _batches(self, k: int, position: int) -> Iterator[RecordBatch]:
        """Batches from byte C{position} of segment C{k} to the log end, switching to the cache when it is reached.

        Each batch must carry the next Raft index and start at the record
        offset where the one before ended; each segment must start where the
        one before ended and hold what memory says it does.
        """
        expected: tuple[int, int] | None = None  # (next index, next offset)
        cache = self.cache
        for segment in self.segments[k:]:
            if expected is not None:
                if (segment.first_index, segment.base_offset) != expected:
                    raise segment.corrupted(
                        0,
                        f"segment starts at index {segment.first_index} / offset {segment.base_offset}, but the one before "
                        f"ends at {expected[0]} / {expected[1]}: entries are missing",
                    )
                position = 0
            for _, header, head, payload in segment.frames_from(position, segment.size):
                if expected is not None and (header.raft_index, header.base_offset) != expected:
                    raise segment.corrupted(
                        0,
                        f"the batch at index {header.raft_index} / offset {header.base_offset} follows one that ends at "
                        f"{expected[0]} / {expected[1]}",
                    )
                if cache and header.raft_index >= self.cache_first:
                    yield from cache[header.raft_index - self.cache_first :]
                    return
                yield codec.batch_from(header, payload, head)
                expected = (header.raft_index + 1, header.next_offset)
            if expected is None:  # started at the segment's end
                expected = (segment.next_index, segment.next_offset)
            elif expected != (segment.next_index, segment.next_offset):
                raise segment.corrupted(
                    segment.size,
                    f"the data ends at index {expected[0]} / offset {expected[1]}, but the segment should reach "
                    f"{segment.next_index} / {segment.next_offset}: entries are missing",
                )

    def batch_at(self, index: int) -> RecordBatch:
        """The stored batch of entry C{index} (held by the log)."""
        if self.cache and index >= self.cache_first:
            return self.cache[index - self.cache_first]
        return next(self.batches_from_index(index))

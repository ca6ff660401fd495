"""The durable partition log (storage format 2): a directory of segments keyed by Raft index.

A partition's Raft log I{is} its storage log (ARCHITECTURE.md decision 10):
L{SegmentedLog} implements L{streamlog.raft.log.RaftLog} (one stored batch
per entry, its header carrying the Raft index, term and type besides the
record base offset) and the offset API readers use (L{ReplicatedLog}).
Record offsets stay dense because bookkeeping batches hold no records.

Layout of one partition directory::

    00000000000000000001.log        frames (streamlog.storage.codec), named by first Raft index
    00000000000000000001.index      sparse index: Raft index and record offset -> position
    00000000000000000001.timeindex  time index
    00000000000000052817.log        ... one trio per segment
    recovery-checkpoint             JSON: the synced, validated prefix and what a clean start needs

This module is the facade; the work is done along the seams, one module each:
L{streamlog.storage.recovery} (opening, torn tails, damage),
L{streamlog.storage.chain} (the segments in memory, lookups and reads),
L{streamlog.storage.appends} (appends and rolls; a roll out of descriptors
is a refusal, and rolled segments' files are bounded node-wide),
L{streamlog.storage.truncation} (suffix, prefix, retention, reset) and
L{streamlog.storage.durability} (syncs, the synced mark, checkpoints; the
only part other threads call).

Threads: everything runs on the reactor thread except L{SegmentedLog.sync}
and L{SegmentedLog.checkpoint}, which workers call while the reactor keeps
appending (see L{streamlog.storage.durability} for the locks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import orjson
from twisted.logger import Logger

from streamlog.raft.log import Entry, Members
from streamlog.storage import appends, truncation
from streamlog.storage.base import BatchType, ReadResult, RecordBatch, TopicConfig
from streamlog.storage.chain import SegmentChain, entry_of
from streamlog.storage.checkpoint import CHECKPOINT_FILE
from streamlog.storage.descriptors import DEFAULT_READ_FILES, ReadFiles, RetiredFiles
from streamlog.storage.durability import Durability
from streamlog.storage.errors import StorageCorrupted, StorageError, StorageFailed
from streamlog.storage.memory import fragment_records, read_batches
from streamlog.storage.recovery import finish_sync, recover

__all__ = ["CHECKPOINT_FILE", "SegmentedLog", "effective_config"]

DEFAULT_SEGMENT_BYTES = 128 * 1024 * 1024
DEFAULT_SEGMENT_MS = 7 * 24 * 3600 * 1000
DEFAULT_INDEX_INTERVAL_BYTES = 4096
DEFAULT_CACHE_BYTES = 4 * 1024 * 1024
DEFAULT_CHECKPOINT_INTERVAL_BYTES = 64 * 1024 * 1024
MAX_RETIRED = appends.MAX_RETIRED


def effective_config(config: TopicConfig | None, defaults: TopicConfig | None) -> TopicConfig:
    """The topic's settings with the server defaults filled in where it says C{None}."""
    merged = (config or TopicConfig()).with_defaults(defaults).to_dict()
    if merged["segment_bytes"] is None:
        merged["segment_bytes"] = DEFAULT_SEGMENT_BYTES
    if merged["segment_ms"] is None:
        merged["segment_ms"] = DEFAULT_SEGMENT_MS
    return TopicConfig(**merged)


class SegmentedLog:
    """A durable partition log in one directory: a L{streamlog.raft.log.RaftLog} and a record log.

    @param directory: the partition directory (created if missing).
    @param config: the topic's settings; C{None} fields fall back to C{defaults}.
    @param defaults: the server-wide settings.
    @param index_interval_bytes: bytes of data between two sparse index entries,
        the most a read scans to find its place.
    @param cache_bytes: how much of the newest data to keep in memory for
        tailing readers and replication.
    @param checkpoint_interval_bytes: how far the synced end may move past the
        last checkpoint before a new one is due, hence about the most recovery
        reads after a crash (besides segments rolled since).
    @param start_offset: the first record offset of a new, empty log.  Until
        its first entry only the checkpoint records it (recovery without the
        checkpoint starts an empty log at 0): the upgrade appends a no-op.
    @param existing: the log must already exist (the storage opens a partition its
        C{topic.json} lists): a missing directory, or one without any segment, is
        synced data gone, and the log fails instead of starting empty.
    @param read_files: the node-wide cache of read descriptors (L{ReadFiles});
        the log gets its own, of the default size, if C{None}.
    @param retired_files: the node-wide pool of rolled segments whose write
        descriptors wait for a sync (L{RetiredFiles}); without one, only this
        log's own bound (C{MAX_RETIRED}) holds.
    @param defer_recovery_sync: leave recovery's last step (sync what was
        read back, write a checkpoint) to L{finish_recovery}, which the
        caller must run before the log is used (the storage runs many logs'
        at once, on threads); by default it is done here.
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
        retired_files: RetiredFiles | None = None,
        defer_recovery_sync: bool = False,
    ) -> None:
        self.directory = directory
        self.recovery_sync_deferred = defer_recovery_sync
        #: What recovery left to L{finish_recovery} (the rolled segments it read back), or C{None}.
        self.recovery_owed: tuple[str, ...] | None = None
        self.retired_files = retired_files
        self.config = config or TopicConfig()
        self.defaults = defaults
        self.settings = effective_config(self.config, defaults)
        read_files = read_files if read_files is not None else ReadFiles(DEFAULT_READ_FILES)
        self.chain = SegmentChain(directory, index_interval_bytes, read_files, cache_bytes)
        self.durability = Durability(directory, checkpoint_interval_bytes)
        self._failed: StorageError | None = None
        self._closed = False
        try:
            if existing and not os.path.isdir(directory):
                raise StorageCorrupted(directory, 0, "the partition directory is missing (its topic.json lists it)")
            os.makedirs(directory, exist_ok=True)
            recover(self, start_offset, existing)
        except StorageCorrupted as e:
            self.fail(e)
        except BaseException:
            self._release()  # a failed open (EMFILE, EIO) leaves no descriptor behind
            raise

    def finish_recovery(self) -> None:
        """Recovery's last step if it was deferred: sync what was read back, checkpoint it.  Thread-safe.

        Raises what the sync raises (L{StorageFailed}: the disk failed; the log
        is failed and its files are released, as a failed open is).
        """
        owed, self.recovery_owed = self.recovery_owed, None
        if owed is None or self._failed is not None:
            return
        try:
            finish_sync(self, owed)
        except BaseException:
            self._release()
            raise

    # -- state ------------------------------------------------------------------------

    @property
    def start_index(self) -> int:
        return self.chain.start.index

    @property
    def prefix_term(self) -> int:
        return self.chain.start.term

    @property
    def prefix_config(self) -> Members | None:
        return self.chain.start.config

    @property
    def producer_state(self) -> bytes:
        """The producer state the last snapshot installed (L{reset}) carried; opaque here."""
        return self.chain.start.producer_state

    @property
    def last_index(self) -> int:
        return self.chain.last_index

    @property
    def last_term(self) -> int:
        return self.chain.last_term

    @property
    def start_offset(self) -> int:
        return self.chain.start.offset

    @property
    def end_offset(self) -> int:
        return self.chain.end_offset

    @property
    def durable_index(self) -> int:
        return self.durability.durable_index

    @property
    def durable_offset(self) -> int:
        return self.durability.durable_offset

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.chain.segments)

    @property
    def segment_count(self) -> int:
        return len(self.chain.segments)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failed(self) -> StorageError | None:
        """Why this log refuses to serve, or C{None}."""
        return self._failed

    @property
    def checkpoint_due(self) -> bool:
        """Whether a checkpoint should be written (L{checkpoint}C{(sync=False)}), outside any commit round."""
        return self._failed is None and not self._closed and self.durability.checkpoint_due

    def fail(self, error: StorageError) -> None:
        if self._failed is None:
            self._failed = error
            self._log.error("partition log {directory} failed and refuses to serve: {error}", directory=self.directory, error=error)

    def check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise StorageFailed(f"{self.directory}: log is closed")

    def _guard(self, items: Iterator[RecordBatch]) -> Iterator[RecordBatch]:
        try:
            yield from items
        except StorageCorrupted as e:
            self.fail(e)
            raise

    # -- the Raft log ---------------------------------------------------------------------

    def term_at(self, index: int) -> int | None:
        return self.chain.term_at(index)

    def config_at(self, index: int) -> tuple[int, Members] | None:
        return self.chain.config_at(index)

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries C{lo <= index < hi}, stopping before C{max_bytes} of data (always at least one).

        Record entries carry their stored batch (header bytes included), so a
        sender can pass them on as raw frames.
        """
        self.check()
        chain = self.chain
        lo = max(lo, chain.start.index)
        hi = min(hi, chain.last_index + 1)
        out: list[Entry] = []
        if lo >= hi:
            return out
        size = 0
        for batch in self._guard(chain.batches_from_index(lo)):
            if batch.raft_index >= hi:
                break
            entry = entry_of(batch)
            size += len(entry.data)
            if out and size > max_bytes:
                break
            out.append(entry)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        """Append C{entries} (see L{streamlog.storage.appends}); in the OS when this returns, durable after L{sync}."""
        appends.append(self, entries)

    def make_room(self, batch: RecordBatch) -> None:
        """Roll now if appending C{batch} as the next entry would, so that the append itself cannot be refused.

        The broker calls this (through L{streamlog.storage.local.LocalLog}) for
        every partition of a request before it appends to any: a roll refused
        for want of descriptors (L{streamlog.storage.errors.OutOfDescriptors})
        then leaves the whole request unappended.
        """
        appends.make_room(self, batch)

    def truncate_suffix(self, from_index: int) -> None:
        """Remove every entry with index >= C{from_index}; durable before it returns."""
        truncation.truncate_suffix(self, from_index)

    def truncate_prefix(self, upto_index: int, producer_state: Callable[[int], bytes] | None = None) -> None:
        """Remove whole segments of entries <= C{upto_index} behind the synced mark (C{start_index <= upto_index + 1} after).

        C{producer_state(i)}: the producer state as of entry C{i}, kept with
        the new start (entry C{i + 1}) as L{reset} keeps a snapshot's; None
        keeps what the start had.
        """
        truncation.truncate_prefix(self, upto_index, producer_state)

    def reset(
        self, index: int, term: int, config: Members | None = None, *, next_offset: int | None = None, producer_state: bytes = b""
    ) -> None:
        """Drop every entry: the log starts after (C{index}, C{term}) at record offset C{next_offset} (snapshot install).

        C{next_offset} defaults to the offset after entry C{index} if the log
        holds it, else to the log end.  Durable before it returns.
        """
        truncation.reset(self, index, term, config, next_offset, producer_state)

    # -- records ------------------------------------------------------------------------------

    def next_offset_after(self, index: int) -> int:
        """The record offset following entry C{index} (C{start_index - 1 <= index <= last_index})."""
        chain = self.chain
        if index == chain.last_index:
            return chain.end_offset
        if index == chain.start.index - 1:
            return chain.start.offset
        if not chain.start.index <= index <= chain.last_index:
            raise ValueError(f"entry {index} is outside [{chain.start.index - 1}, {chain.last_index}]")
        self.check()
        batch = next(self._guard(chain.batches_from_index(index)))
        return batch.next_offset

    def index_for_offset(self, offset: int) -> int | None:
        """The Raft index of the record batch holding C{offset}, or None outside [start_offset, end_offset)."""
        if not self.start_offset <= offset < self.end_offset:
            return None
        self.check()
        for batch in self._guard(self.chain.batches_from_offset(offset)):
            if batch.next_offset > offset:
                return batch.raft_index
        raise self.chain.active.corrupted(self.chain.active.size, f"offset {offset} not found")

    def read(self, offset: int, max_records: int, max_bytes: int) -> ReadResult:
        self.check()
        if offset >= self.chain.end_offset or max_records <= 0:
            return ReadResult(fragments=[], count=0, next_offset=offset, size=0)
        return read_batches(self._guard(self.chain.batches_from_offset(offset)), offset, max_records, max_bytes)

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        self.check()
        chain = self.chain
        for segment in chain.segments:
            try:
                chain.ensure_index(segment)
            except StorageCorrupted as e:
                self.fail(e)
                raise
            if segment.max_timestamp is None or segment.max_timestamp < timestamp_ms:
                continue
            start = max(segment.time_lookup(timestamp_ms), segment.first_index)
            if start >= segment.next_index:
                continue
            for batch in self._guard(chain.batches_from_index(start)):
                if batch.raft_index >= segment.next_index:
                    break
                if batch.type == BatchType.RECORDS and batch.max_timestamp >= timestamp_ms:
                    for i, record in enumerate(fragment_records(batch, batch.base_offset, batch.count)):
                        if orjson.loads(record)["timestamp"] >= timestamp_ms:
                            return max(batch.base_offset + i, self.start_offset)
        return self.end_offset

    # -- retention ----------------------------------------------------------------------------

    def retention_point(self, now_ms: int) -> int:
        """The Raft index up to which retention would remove entries now (C{start_index - 1}: none)."""
        return truncation.retention_point(self, now_ms)

    def apply_retention(self, now_ms: int) -> int:
        """Remove what retention allows now (no Raft group to ask); return the new start offset.

        A failed log deletes nothing (its files are evidence) and does not
        raise, so one damaged partition does not stop retention of the others.
        """
        if self._failed is not None:
            return self.start_offset
        point = self.retention_point(now_ms)
        if point >= self.start_index:
            self.truncate_prefix(point)
        return self.start_offset

    def roll(self) -> None:
        """Close the active segment to writes and start a new one (if it holds anything)."""
        self.check()
        if self.chain.active.size > 0:
            appends.roll(self)

    # -- durability --------------------------------------------------------------------------

    def sync(self) -> int:
        """Make what was written before this call durable; return the durable Raft index.  Thread-safe."""
        return self.durability.sync(self)

    def checkpoint(self, sync: bool = True) -> bool:
        """Write the recovery checkpoint at the synced end (after a L{sync} unless C{sync=False}).  Thread-safe.

        Bounds what recovery reads after a crash.  Returns whether a file was
        written (an idle log's checkpoint costs nothing).
        """
        if sync:
            self.sync()
        return self.durability.write_checkpoint(self)

    @property
    def background_due(self) -> bool:
        """Whether the periodic background pass has work here: data not synced yet, or a synced end
        no checkpoint vouches for (L{background_checkpoint}).  Cheap: the reactor asks it of every log."""
        if self._failed is not None or self._closed:
            return False
        return self.durability.unsynced(self) or self.durability.checkpoint_stale(self)

    def background_checkpoint(self) -> bool:
        """The periodic pass for this log: sync only if something is unsynced, then write the
        checkpoint only if it changed.  Thread-safe; returns whether a checkpoint file was written."""
        if self.durability.unsynced(self):
            self.sync()
        return self.durability.write_checkpoint(self)

    # -- closing -----------------------------------------------------------------------------

    def close(self, sync: bool = True) -> None:
        """Sync, checkpoint (a clean shutdown: the next start reads nothing back), release files.

        C{sync=False} only releases the files (a topic being deleted: its data is
        about to go, syncing it would only cost time).
        """
        if self._closed:
            return
        try:
            if sync and self._failed is None:
                self.checkpoint()
        finally:
            self._release()

    def _release(self) -> None:
        """Close every descriptor of this log, syncing nothing; the log is closed.

        Takes the checkpoint lock first (the locks' order), so a checkpoint
        being written on a worker ends before the log is closed, and none
        starts after (L{Durability.write_checkpoint} checks C{closed}).
        """
        durability = self.durability
        with durability.checkpoint_lock, durability.sync_lock, durability.lock:
            self._closed = True
            for f in durability.retired:
                f.close()
            durability.retired = []
            for segment in self.chain.segments:
                if segment.files is not None:
                    segment.files.close()
                    segment.files = None
                segment.close_read()
            self.chain.cache_clear()

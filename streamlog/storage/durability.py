"""Durability of one segmented log: syncs, the synced mark, and recovery checkpoints.

Kept apart because it is the one part that runs on other threads: a sync
worker calls L{Durability.sync} and a checkpoint worker L{Durability.write_checkpoint}
while the reactor keeps appending.  Three locks, always taken in this order:

  - C{checkpoint_lock} orders checkpoint writes against truncation,
    retention and reset (which change the segment list a checkpoint lists),
    and against closing (a closed log writes no checkpoint);
  - C{sync_lock} serialises syncs, and is the only place write descriptors
    are closed, so a sync never syncs a descriptor number that was closed and
    reused (a rolled segment's descriptors are I{retired}: the next sync syncs
    and closes them);
  - C{lock} guards what both sides touch (the segment list, sizes, the log
    end, the durable index and offset).

A sync makes everything written before it durable (C{fdatasync} of the data
files: an append changes the size, which C{fdatasync} writes too, and
nothing else about the file matters for reading it back; C{fsync} of the
directory when segments were created or deleted), then records the
I{synced mark}: where the durable prefix ends.  It never writes a
checkpoint: a checkpoint (a small file replaced atomically, two to three
more flushes) is written apart, at the synced mark, when one is due (the log
rolled or grew by C{checkpoint_interval_bytes} since the last), by a worker
that does not hold up commits.  A sync that straddles a truncation (the
C{epoch} moved) does not advance anything.
"""

from __future__ import annotations

import os
import threading
from functools import partial
from typing import TYPE_CHECKING

import attrs

from streamlog.storage import sync_failure
from streamlog.storage.checkpoint import CHECKPOINT_FILE, Checkpoint, LogStart, datasync_path, fsync_dir, write_atomically
from streamlog.storage.errors import StorageFailed
from streamlog.storage.segment import SegmentFiles

if TYPE_CHECKING:
    from streamlog.storage.log import SegmentedLog


@attrs.frozen
class Mark:
    """The end of the durable prefix: segment C{segment} (first index; first offset C{segment_offset})
    up to byte C{position}, where entry C{next_index} / record C{next_offset} would start, after term
    C{last_term}.  C{epoch} is the truncation epoch it was taken in."""

    segment: int
    segment_offset: int
    position: int
    next_index: int
    next_offset: int
    last_term: int
    max_timestamp: int | None
    epoch: int


class Durability:
    """The sync and checkpoint state of one log (see the module docstring)."""

    def __init__(self, directory: str, checkpoint_interval_bytes: int) -> None:
        self.directory = directory
        self.checkpoint_interval = checkpoint_interval_bytes
        self.lock = threading.Lock()
        self.sync_lock = threading.Lock()
        self.checkpoint_lock = threading.RLock()
        self.retired: list[SegmentFiles] = []
        self.dir_dirty = False
        self.epoch = 0
        self.durable_index = 0
        self.durable_offset = 0
        self.mark: Mark | None = None
        self.checkpoint: Checkpoint | None = None
        self.syncs = 0  # completed syncs (for tests and metrics)

    def mark_of(self, log: SegmentedLog) -> Mark:
        """The end of the log as it is now (call under C{lock}, or where nothing else runs)."""
        chain = log.chain
        active = chain.active
        return Mark(active.first_index, active.base_offset, active.size, chain.last_index + 1, chain.end_offset,
                    chain.last_term, active.max_timestamp, self.epoch)

    def set_durable(self, mark: Mark) -> None:
        """Everything before C{mark} is durable (a sync, recovery, or an operation that synced itself)."""
        self.mark = mark
        self.durable_index = mark.next_index - 1
        self.durable_offset = mark.next_offset

    @property
    def checkpoint_due(self) -> bool:
        """Whether the synced mark moved far enough past the last checkpoint to write a new one."""
        mark, cp = self.mark, self.checkpoint
        if mark is None:
            return False
        if cp is None:
            return True
        return mark.segment != cp.segment or mark.position - cp.position >= self.checkpoint_interval

    def unsynced(self, log: SegmentedLog) -> bool:
        """Whether anything was written (or a file created, deleted or rolled) since the last sync."""
        with self.lock:
            mark = self.mark
            return (mark is None or bool(self.retired) or self.dir_dirty or mark.epoch != self.epoch
                    or mark != self.mark_of(log))

    def checkpoint_stale(self, log: SegmentedLog) -> bool:
        """Whether the synced end (or the log start) moved since the last checkpoint was written.

        A cheap look at what L{write_checkpoint} would compare in full: the
        periodic pass skips a log for which both this and L{unsynced} are
        false (an idle log costs it nothing, not even an fsync).
        """
        with self.lock:
            mark, cp = self.mark, self.checkpoint
            if mark is None or mark.epoch != self.epoch:
                return False  # nothing synced yet (or a truncation's own checkpoint is on its way)
            return (cp is None or cp.segment != mark.segment or cp.position != mark.position
                    or cp.next_index != mark.next_index or cp.start != log.chain.start)

    # -- sync -------------------------------------------------------------------------

    def sync(self, log: SegmentedLog, extra: tuple[str, ...] = ()) -> int:
        """Make everything written before this call durable; return the durable Raft index.  Thread-safe.

        C{extra}: more files to sync first (recovery: segments read back from the page cache).
        """
        with self.sync_lock:
            with self.lock:
                log.check()
                files = log.chain.active.files
                retired, self.retired = self.retired, []
                dir_dirty, self.dir_dirty = self.dir_dirty, False
                mark = self.mark_of(log)
            try:
                for path in extra:
                    datasync_path(path)
                for f in retired:
                    if not f.closed:
                        f.sync(indexes=True)
                if files is not None:
                    files.sync(indexes=False)
                if dir_dirty:
                    fsync_dir(self.directory)
            except OSError as e:
                error = StorageFailed(f"{self.directory}: fsync failed: {e}")
                with self.lock:
                    log.fail(error)
                raise error from e
            finally:
                for f in retired:
                    f.close()
            with self.lock:
                self.syncs += 1
                if mark.epoch == self.epoch and (self.mark is None or mark.next_index >= self.mark.next_index):
                    self.set_durable(mark)
                return self.durable_index

    def retire(self, log: SegmentedLog, files: SegmentFiles) -> None:
        """A rolled or cut-away segment's write descriptors wait for the next sync (call under C{lock}).

        They also join the node-wide pool of such segments (the log's
        C{retired_files}, if any), which settles the oldest, across logs, when
        it is full (L{streamlog.storage.descriptors.RetiredFiles}).
        """
        files.retired = True
        self.retired.append(files)
        pool = log.retired_files
        if pool is not None:
            pool.add(log, files, partial(self.settle_retired, log, 0))

    def settle_retired(self, log: SegmentedLog, keep: int) -> None:
        """Sync and close all but the newest C{keep} retired descriptors here, when no sync came for them.

        With C{--fsync never} (or a long interval) and small segments, rolls
        could otherwise pile up three open descriptors each until the next
        background checkpoint.  Holding the sync lock, no sync can take its
        snapshot between these files leaving the list and being synced.
        C{keep=0} settles them all (the node-wide pool is full).
        """
        with self.sync_lock:
            with self.lock:
                cut = max(0, len(self.retired) - keep)
                settle, self.retired = self.retired[:cut], self.retired[cut:]
            try:
                for f in settle:
                    f.sync(indexes=True)
            except OSError as e:
                error = StorageFailed(f"{self.directory}: fsync failed: {e}")
                with self.lock:
                    log.fail(error)
                raise error from e
            finally:
                for f in settle:
                    f.close()

    # -- checkpoints ------------------------------------------------------------------

    def write_checkpoint(self, log: SegmentedLog, mark: Mark | None = None, *, drop: int = 0,
                         start: LogStart | None = None) -> bool:
        """Write the checkpoint at C{mark} (the synced mark if None); return whether a file was written.

        With C{drop} and C{start}: the checkpoint of the log as it will be once its first
        C{drop} segments are gone and it starts at C{start}, written before the memory changes
        (retention: L{streamlog.storage.truncation.truncate_prefix}, which holds the
        checkpoint lock until it has changed it, so no other checkpoint comes between).

        Everything C{mark} vouches for must be durable.  The segment chain,
        the log start and the history are taken here, under the checkpoint
        lock that truncation, retention and reset hold while they change
        them, so a checkpoint never lists a segment that is already gone.
        The index files of the mark's segment are synced first, with
        descriptors of our own: they may have been written since the sync.

        A closed or failed log writes nothing (C{False}), checked under the
        checkpoint lock, which closing takes too: a worker that was handed a
        due checkpoint before its topic was deleted (and perhaps created
        again under the same name) never writes into that directory.
        """
        with self.checkpoint_lock:
            with self.lock:
                if log.closed or log.failed is not None:
                    return False
                if mark is None:
                    mark = self.mark
                if mark is None or mark.epoch != self.epoch:
                    return False  # nothing synced yet, or a truncation ran meanwhile and wrote its own
                chain = log.chain
                kept = chain.segments[drop:]
                before = tuple((s.first_index, s.base_offset, s.size) for s in kept if s.first_index < mark.segment)
                terms, configs = chain.history_before(mark.next_index, None if start is None else start.index)
                start = chain.start if start is None else start
                index_paths = [s.index_path for s in kept if s.first_index == mark.segment]
                index_paths += [s.timeindex_path for s in kept if s.first_index == mark.segment]
            checkpoint = Checkpoint(
                segment=mark.segment,
                segment_offset=mark.segment_offset,
                position=mark.position,
                next_index=mark.next_index,
                next_offset=mark.next_offset,
                last_term=mark.last_term,
                max_timestamp=mark.max_timestamp,
                start=start,
                segments=before,
                terms=terms,
                configs=configs,
            )
            if checkpoint == self.checkpoint:
                return False  # nothing moved since the last one (an idle log's periodic checkpoint)
            try:
                for path in index_paths:
                    if os.path.exists(path):
                        datasync_path(path)
                write_atomically(os.path.join(self.directory, CHECKPOINT_FILE), checkpoint.encode())
            except OSError as e:
                # A failed write is fail-stop too (a failed sync was reported already): the
                # log's memory may already be past the checkpoint on disk (a truncation's).
                sync_failure.report_write(os.path.join(self.directory, CHECKPOINT_FILE), e, "checkpoint write to")
                error = StorageFailed(f"{self.directory}: checkpoint failed: {e}")
                log.fail(error)
                raise error from e
            self.checkpoint = checkpoint
            return True

"""Removing entries from a segmented log: a conflicting tail, an old prefix, or everything (a snapshot).

Kept apart because each of these changes the segment list while a sync or a
checkpoint may be running on another thread, and each must leave the files
in a state recovery reads back as the log before the change or the log
after it, never a mix, whatever instant a crash picks:

  - L{truncate_suffix} (Raft conflict resolution: entries from a batch on)
    moves the checkpoint back first if it lay past the cut (a checkpoint
    beyond the data's end means corruption to recovery), truncates the
    segment holding the cut at that batch, then deletes later segments, and
    syncs, all before it returns (rare; on the calling thread).
  - L{truncate_prefix} (retention, through C{RaftNode.compact}, or
    L{apply_retention} directly) deletes whole segments, only ones wholly
    before the synced mark, and writes the shorter chain and the new log
    start (the term and configuration of the last entry removed, the first
    record offset kept) to the checkpoint before it changes the log in
    memory and before it deletes any file.
  - L{reset} (snapshot install) removes what follows the snapshot point
    durably first, then creates the new empty segment, writes the checkpoint
    that names it, and only then deletes the old segments: recovery deletes
    segments before the checkpoint's chain (an interrupted deletion) and
    drops an empty segment out of sequence after it.

A failed write, truncation, rename or removal in any of them is a failed log
write: reported to the fail-stop handler (L{streamlog.storage.sync_failure})
before it is raised, the log failed.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from twisted.logger import Logger

from streamlog.raft.log import Members
from streamlog.storage import codec, sync_failure
from streamlog.storage.appends import roll
from streamlog.storage.checkpoint import LogStart, fsync_dir
from streamlog.storage.durability import Mark
from streamlog.storage.errors import StorageCorrupted, StorageFailed
from streamlog.storage.segment import INDEX_ENTRY, TIME_ENTRY, Segment

if TYPE_CHECKING:
    from streamlog.storage.log import SegmentedLog

_log = Logger()


def truncate_suffix(log: SegmentedLog, from_index: int) -> None:
    """Remove every entry with index >= C{from_index}; durable before it returns."""
    log.check()
    chain = log.chain
    if from_index > chain.last_index:
        return
    if from_index < chain.start.index:
        raise ValueError(f"truncate_suffix({from_index}) below the log start {chain.start.index}")
    try:
        _cut(log, from_index)
    except StorageCorrupted as e:
        log.fail(e)
        raise
    except OSError as e:
        # Fail-stop (sync_failure): the cut may be half done on disk (the data file cut, its
        # indexes not, a later segment still there) while the Raft core's memory is not
        # told the log shrank, and could answer for entries no longer on disk.
        sync_failure.report_write(e.filename or log.directory, e, "truncation of")
        error = StorageFailed(f"{log.directory}: truncation failed: {e}")
        log.fail(error)
        raise error from e


def _cut(log: SegmentedLog, from_index: int) -> None:
    chain, durability = log.chain, log.durability
    with durability.checkpoint_lock:
        k = bisect.bisect_right(chain.firsts, from_index) - 1
        if k > 0 and chain.firsts[k] == from_index:
            k -= 1  # cut at the end of the segment before: it becomes the active one again
        segment = chain.segments[k]
        chain.ensure_index(segment)
        if from_index >= segment.next_index:
            position, cut_offset = segment.size, segment.next_offset
        else:
            position, cut_offset = _frame_of(chain.position_for(segment, index=from_index), segment, from_index)
        last_term = chain.term_at(from_index - 1)
        assert last_term is not None
        cut = Mark(segment.first_index, segment.base_offset, position, from_index, cut_offset, last_term, None, durability.epoch)
        checkpoint = durability.checkpoint
        if checkpoint is not None and checkpoint.covers(segment.first_index, position):
            # Move the checkpoint back before cutting, so a crash mid-cut never finds a
            # checkpoint past the end of the data (which means corruption).  Everything
            # before the cut was behind the old checkpoint: synced.
            durability.write_checkpoint(log, cut)
        doomed = chain.segments[k + 1 :]
        if segment.files is None and log.retired_files is not None:
            log.retired_files.make_room()  # it reopens a closed segment, and the cut-away active one's files wait for a sync
        with durability.lock:
            del chain.segments[k + 1 :]
            chain.refresh()
            for gone in doomed:
                if gone.files is not None:
                    durability.retire(log, gone.files)
                    gone.files = None
            if segment.files is None:
                segment.open_for_append()
            assert segment.files is not None
            os.ftruncate(segment.files.log_fd, position)
            segment.size = position
            segment.next_index, segment.next_offset = from_index, cut_offset
            segment.last_term = last_term if position else None
            segment.cut_indexes(position, from_index)
            chain.last_index, chain.last_term, chain.end_offset = from_index - 1, last_term, cut_offset
            chain.cut_history(from_index)
            durability.epoch += 1
            mark = durability.mark
            if mark is not None:
                # A mark at or past the cut moves back to it (what lay before it was synced).
                # Compared by place, as the checkpoint is, not by next index: after a roll
                # and a sync the mark sits at byte 0 of a segment starting at the cut index,
                # a segment this cut deletes, and a checkpoint written at it would name it.
                moved = (mark.segment, mark.position) >= (cut.segment, cut.position)
                durability.mark = attrs.evolve(cut if moved else mark, epoch=durability.epoch)
            durability.durable_index = min(durability.durable_index, from_index - 1)
            durability.durable_offset = min(durability.durable_offset, cut_offset)
        for gone in doomed:
            gone.unlink()
        files = segment.files
        os.ftruncate(files.index_fd, len(segment.idx_indexes or ()) * INDEX_ENTRY.size)
        os.ftruncate(files.timeindex_fd, len(segment.time_stamps) * TIME_ENTRY.size)
        recompute_tail_stats(segment)
        files.sync(indexes=True)
        fsync_dir(log.directory)
        chain.cache_cut(from_index)
        _log.info(
            "truncated {directory} from index {index} (offset {offset}; segment {segment}, byte {position})",
            directory=log.directory, index=from_index, offset=cut_offset, segment=segment.first_index, position=position,
        )


def _frame_of(position: int, segment: Segment, index: int) -> tuple[int, int]:
    """(position, base offset) of the frame of entry C{index}, scanning C{segment} from C{position}."""
    for at, header, _, _ in segment.frames_from(position, segment.size):
        if header.raft_index == index:
            return at, header.base_offset
        if header.raft_index > index:
            break
    raise segment.corrupted(segment.size, f"entry {index} not found")


def recompute_tail_stats(segment: Segment) -> tuple[int, int, int | None]:
    """Redo a segment's maximum timestamp and end from its index and at most one interval of data.

    Returns (next index, next offset, last term) after the last frame read
    (the segment's start if it is empty), which recovery holds against the
    checkpoint's.
    """
    segment.max_timestamp = segment.time_stamps[-1] if segment.time_stamps else None
    segment.last_record_index = segment.time_indexes[-1] if segment.time_indexes else None
    if segment.size == 0:
        segment.first_timestamp = None
        return segment.first_index, segment.base_offset, None
    start = segment.idx_positions[-1] if segment.idx_positions else 0
    if segment.first_timestamp is None:  # a closed segment loaded lazily, or a recovered one
        segment.first_timestamp = first_record_timestamp(segment)
    end: tuple[int, int, int | None] = (segment.first_index, segment.base_offset, None)
    if segment.idx_indexes:
        end = (segment.idx_indexes[-1], segment.idx_offsets[-1], None)
    for _, header, _, _ in segment.frames_from(start, segment.size):
        if header.has_records:
            if segment.max_timestamp is None or header.max_timestamp > segment.max_timestamp:
                segment.max_timestamp = header.max_timestamp
            if segment.first_timestamp is None:
                segment.first_timestamp = header.first_timestamp
            segment.last_record_index = header.raft_index
        end = (header.raft_index + 1, header.next_offset, header.term)
    return end


def first_record_timestamp(segment: Segment) -> int | None:
    """The first timestamp of the segment's first record batch, from frame headers only (no payload read).

    Usually the first frame; bookkeeping batches before it are stepped over
    (at most one index interval, then the time index's first entry stands in).
    """
    position = 0
    limit = min(segment.size, segment.idx_positions[0] if segment.idx_positions else segment.size)
    while position < limit:
        try:
            header = codec.decode_header(segment.pread(codec.HEADER_SIZE, position))
        except codec.FrameError as e:
            raise segment.corrupted(position, str(e)) from None
        if header.has_records:
            return header.first_timestamp
        position += header.frame_size
    return segment.time_stamps[0] if segment.time_stamps else None


def retention_point(log: SegmentedLog, now_ms: int) -> int:
    """The Raft index up to which retention would remove entries (C{start_index - 1}: none).

    Whole segments only, oldest first: while a segment's newest record is
    older than C{retention_ms} (a segment without records counts as old), or
    the partition holds more than C{retention_bytes}.  Never the active
    segment, and only segments wholly before the synced mark, so recovery
    never needs one that is gone.  An active segment idle for C{segment_ms}
    is rolled first, so an idle topic can expire.
    """
    chain = log.chain
    if log.failed is not None:
        return chain.start.index - 1
    log.check()
    settings = log.settings
    active = chain.active
    if active.size > 0 and active.first_timestamp is not None and now_ms - active.first_timestamp >= settings.segment_ms:  # type: ignore[operator]
        roll(log)
    mark = log.durability.mark
    point = chain.start.index - 1
    if mark is None:
        return point
    total = log.size_bytes
    for segment in chain.segments[:-1]:
        if segment.first_index >= mark.segment:
            break
        chain.ensure_index(segment)
        too_old = settings.retention_ms is not None and (
            segment.max_timestamp is None or segment.max_timestamp < now_ms - settings.retention_ms
        )
        too_big = settings.retention_bytes is not None and total > settings.retention_bytes
        if not (too_old or too_big):
            break
        total -= segment.size
        point = segment.last_index
    return point


def truncate_prefix(log: SegmentedLog, upto_index: int, producer_state: Callable[[int], bytes] | None = None) -> None:
    """Remove whole segments whose entries are all <= C{upto_index} (and behind the synced mark).

    A segment that holds C{upto_index} and later entries stays, so the log
    may keep a few entries at or below it: C{start_index <= upto_index + 1}
    afterwards, never more.
    """
    log.check()
    chain, durability = log.chain, log.durability
    if upto_index < chain.start.index:
        return
    if upto_index > chain.last_index:
        raise ValueError(f"truncate_prefix({upto_index}) past the last index {chain.last_index}")
    mark = durability.mark
    if mark is None:
        return
    drop = 0
    for segment in chain.segments[:-1]:
        if segment.last_index > upto_index or segment.first_index >= mark.segment:
            break
        drop += 1
    if not drop:
        return
    keep = chain.segments[drop]
    new_index = keep.first_index
    term = chain.term_at(new_index - 1)
    assert term is not None
    found = chain.config_at(new_index - 1)
    state = producer_state(new_index - 1) if producer_state is not None else chain.start.producer_state
    start = LogStart(new_index, term, keep.base_offset, found[1] if found else None, state)
    doomed = chain.segments[:drop]
    with durability.checkpoint_lock:
        # The shorter chain is on disk before anything changes in memory and before any file
        # goes: a segment the checkpoint lists is never missing unless the disk lost it, and a
        # checkpoint that cannot be written (reported to the fail-stop handler, the log failed)
        # leaves the memory the log the checkpoint on disk names.  Held until the memory has
        # changed: no other checkpoint (a worker's) is written from the old chain in between.
        if not durability.write_checkpoint(log, durability.mark, drop=drop, start=start):
            return  # not written (no synced mark of this epoch): nothing may go yet
        with durability.lock:
            del chain.segments[:drop]
            chain.refresh()
            chain.start = start
            chain.trim_history(new_index)
            durability.dir_dirty = True
    try:
        for segment in doomed:
            segment.unlink()
    except OSError as e:
        sync_failure.report_write(e.filename or log.directory, e, "removal of")
        error = StorageFailed(f"{log.directory}: retention failed: {e}")
        log.fail(error)
        raise error from e
    chain.cache_trim(new_index)
    _log.info(
        "retention deleted {count} segments of {directory}; the log starts at index {index}, offset {offset}",
        count=drop, directory=log.directory, index=new_index, offset=start.offset,
    )


def reset(
    log: SegmentedLog, index: int, term: int, config: Members | None, next_offset: int | None, producer_state: bytes
) -> None:
    """Drop every entry; the log starts after (C{index}, C{term}) with record offset C{next_offset} (snapshot install)."""
    log.check()
    chain, durability = log.chain, log.durability
    if next_offset is None:
        next_offset = log.next_offset_after(index) if chain.start.index - 1 <= index <= chain.last_index else chain.end_offset
    try:
        log.checkpoint()  # a checkpoint to fall back on, whatever instant a crash picks below
        if chain.last_index >= max(index + 1, chain.start.index):
            _cut(log, max(index + 1, chain.start.index))  # durable: nothing after the snapshot comes back
        start = LogStart(index + 1, term, next_offset, config, producer_state)
        active = chain.active
        if active.size == 0 and active.first_index == index + 1:
            # The (empty) active segment already has the new log's name: it becomes the new log.
            new = active
        else:
            if log.retired_files is not None:
                log.retired_files.make_room()  # the old active segment's files wait for a sync
            new = chain.new_segment(index + 1, next_offset)
            new.reset_indexes()
            new.open_for_append()
            fsync_dir(log.directory)
        with durability.checkpoint_lock:
            with durability.lock:
                old = [s for s in chain.segments if s is not new]
                chain.segments = [new]
                for segment in old:
                    if segment.files is not None:
                        durability.retire(log, segment.files)
                        segment.files = None
                new.base_offset = new.next_offset = next_offset
                _restart(log, start)
            durability.write_checkpoint(log, durability.mark)
        for segment in old:
            segment.unlink()
        if old:
            fsync_dir(log.directory)
    except StorageCorrupted as e:
        log.fail(e)
        raise
    except OSError as e:
        sync_failure.report_write(e.filename or log.directory, e, "snapshot install (reset) of")
        error = StorageFailed(f"{log.directory}: reset failed: {e}")
        log.fail(error)
        raise error from e
    _log.info("reset {directory}: the log starts after index {index} (term {term}), at offset {offset}",
              directory=log.directory, index=index, term=term, offset=next_offset)


def _restart(log: SegmentedLog, start: LogStart) -> None:
    """The in-memory state of a log that is empty at C{start} (call under the lock)."""
    chain, durability = log.chain, log.durability
    chain.refresh()
    chain.start = start
    chain.last_index, chain.last_term, chain.end_offset = start.index - 1, start.term, start.offset
    chain.set_history((), ())
    chain.cache_clear()
    durability.epoch += 1
    durability.set_durable(durability.mark_of(log))

"""Opening a segmented log at start-up: what is on disk, held against what the checkpoint vouches for.

Kept apart because it runs once, before anything else touches the log, and
decides what every byte on disk means.  The checkpoint (L{Checkpoint})
promises that everything before its position, every segment it lists and the
index entries pointing into them were synced and validated, and says what a
clean start needs to know without reading data (the log start, term changes,
configuration entries).  So:

  1. Leftovers go: C{*.tmp}, index files without a C{.log}.  A partition
     C{topic.json} lists whose directory, or every segment file, is missing
     is synced data gone: the log fails (a log always keeps a segment).
  2. The segment files are held against the checkpoint's chain, by name and
     size only: a listed one missing or shorter than listed fails the log;
     longer, the extra bytes are ignored; ones before the chain are what an
     interrupted retention or reset had not deleted yet (deleted now); one
     between listed ones is not part of the log (left alone).
  3. The checkpoint segment's indexes are loaded (rebuilt if damaged), and
     at most one index interval of data read: it must end where the
     checkpoint says (index, offset, term), or the log fails.
  4. The I{tail} after it is validated frame by frame (header, CRC, next
     Raft index, dense record offsets, terms never going down, configuration
     payloads that parse); at the first frame that is torn, damaged or out of
     sequence the file is cut there and every later segment deleted, each cut
     logged (warn) with the file, byte, bytes cut, first index lost and why.
  5. What was read back is synced (after a process crash it may be only in
     the page cache) and a new checkpoint written before the log serves.
     Opened by the storage (L{SegmentedLog} with C{defer_recovery_sync}),
     the log leaves this step owed (C{recovery_owed}) and the storage does
     it for every log at once on several threads
     (L{SegmentedLog.finish_recovery}): at start-up after a crash it is a
     few fsyncs per log, and one log after another that was most of the
     start-up time of a thousand partitions on a busy disk.

Without a checkpoint (a crash before the first sync, or the file lost) every
segment is validated; a log whose first segment starts after index 1 then
fails, because the term of the entry before its start (which Raft needs) is
known only from the checkpoint.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from twisted.logger import Logger

from streamlog.raft.log import Members
from streamlog.storage import codec
from streamlog.storage.base import BatchType
from streamlog.storage.chain import config_members
from streamlog.storage.checkpoint import CHECKPOINT_FILE, Checkpoint, LogStart, fsync_dir
from streamlog.storage.errors import StorageCorrupted
from streamlog.storage.segment import Segment, parse_segment_name, segment_name
from streamlog.storage.truncation import recompute_tail_stats

if TYPE_CHECKING:
    from streamlog.storage.log import SegmentedLog

_log = Logger()
#: How much of a tail segment recovery reads at once.
SCAN_CHUNK = 8 * 1024 * 1024


def recover(log: SegmentedLog, start_offset: int, existing: bool) -> None:
    """Open the log in C{log.directory} (see the module docstring); raise L{StorageCorrupted} if it must fail."""
    directory = log.directory
    chain, durability = log.chain, log.durability
    names = os.listdir(directory)
    firsts = sorted(i for i in map(parse_segment_name, names) if i is not None)
    for n in names:
        stem = n.split(".", 1)[0]
        if n.endswith(".tmp") or (n.endswith((".index", ".timeindex")) and stem.isdigit() and int(stem) not in firsts):
            os.unlink(os.path.join(directory, n))  # leftovers of an interrupted write or delete
    if not firsts and existing:
        raise StorageCorrupted(directory, 0, "no segment file: the partition's data is gone")
    checkpoint = _read_checkpoint(directory)
    if checkpoint is not None:
        firsts = _check_chain(directory, checkpoint, firsts)
        if checkpoint.segment not in firsts:
            raise StorageCorrupted(
                os.path.join(directory, segment_name(checkpoint.segment) + ".log"),
                0,
                f"segment file missing: the recovery checkpoint is in it ({checkpoint.position} synced bytes)",
            )
    if not firsts:
        _fresh(log, start_offset)
        return
    segments = [chain.new_segment(f, 0) for f in firsts]
    for i, segment in enumerate(segments):
        segment.size = segment.file_size()
        if i + 1 < len(segments):
            segment.next_index = firsts[i + 1]
    chain.segments = segments
    if checkpoint is not None:
        first, position, expected = _from_checkpoint(log, checkpoint)
    else:
        if firsts[0] != 1:
            raise StorageCorrupted(
                os.path.join(directory, CHECKPOINT_FILE),
                0,
                f"the recovery checkpoint is missing and the log starts at index {firsts[0]}: the term and configuration "
                "before its start are unknown",
            )
        first, position, expected = 0, 0, (1, None, 0)
        segments[0].reset_indexes()
        segments[0].size = 0
        segments[0].next_index = 1
    durability.checkpoint = checkpoint
    repaired, end_term = _validate_tail(log, first, position, expected, start_offset)
    if checkpoint is None:
        chain.start = LogStart(offset=chain.segments[0].base_offset)
    chain.refresh()
    active = chain.active
    for segment in chain.segments[first:-1]:
        segment.seal_time_index(write=False)
    for segment in chain.segments[first:]:
        if segment.index_rewrite_needed:
            segment.write_index_files()
    active.open_for_append()
    chain.last_index = active.next_index - 1
    chain.last_term = end_term
    chain.end_offset = active.next_offset
    mark = durability.mark_of(log)
    durability.set_durable(mark)
    if repaired or checkpoint is None or len(chain.segments) - 1 > first or active.size != position:
        # What was read back may still be only in the page cache (a process
        # crash): make it durable and checkpoint it before serving.
        extra = tuple(p for s in chain.segments[first:-1] for p in (s.log_path, s.index_path, s.timeindex_path))
        durability.dir_dirty = True
        if log.recovery_sync_deferred:
            log.recovery_owed = extra  # the storage syncs many logs at once (finish_recovery)
            return
        finish_sync(log, extra)


def finish_sync(log: SegmentedLog, extra: tuple[str, ...]) -> None:
    """Step 5: make what recovery read back durable (C{extra}: rolled segments read back) and checkpoint it."""
    log.durability.sync(log, extra)
    log.durability.write_checkpoint(log)


def _fresh(log: SegmentedLog, start_offset: int) -> None:
    """A new, empty log at index 1 and record offset C{start_offset}."""
    chain, durability = log.chain, log.durability
    segment = chain.new_segment(1, start_offset)
    segment.reset_indexes()
    segment.open_for_append()
    chain.set_segments([segment])
    chain.start = LogStart(offset=start_offset)
    chain.last_index, chain.last_term, chain.end_offset = 0, 0, start_offset
    fsync_dir(log.directory)
    durability.set_durable(durability.mark_of(log))
    if not chain.start.is_default:
        durability.write_checkpoint(log)  # a start offset only the checkpoint remembers


def _read_checkpoint(directory: str) -> Checkpoint | None:
    path = os.path.join(directory, CHECKPOINT_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return Checkpoint.decode(data)
    except (ValueError, KeyError, TypeError) as e:
        raise StorageCorrupted(path, 0, f"unreadable checkpoint: {e}") from None


def _check_chain(directory: str, checkpoint: Checkpoint, firsts: list[int]) -> list[int]:
    """Hold the segment files found against the chain the checkpoint vouches for; return the segments to open.

    A vouched segment that is missing is synced data gone (L{StorageCorrupted},
    naming the file).  Segments before the chain's first are what an
    interrupted retention or reset had not deleted yet (both write the
    checkpoint before they unlink): they are deleted now.  A segment file
    between vouched ones that the chain does not list is not part of the log:
    it is left alone and ignored.  Segments after the checkpoint's are the tail.
    """
    vouched = [f for f, _, _ in checkpoint.segments] + [checkpoint.segment]
    found = set(firsts)
    for first, offset, size in checkpoint.segments:
        if first not in found:
            raise StorageCorrupted(
                os.path.join(directory, segment_name(first) + ".log"),
                0,
                f"segment file missing: the recovery checkpoint lists it ({size} synced bytes from index {first}, offset {offset})",
            )
    for first in firsts:
        if first < vouched[0]:
            _log.info(
                "removing segment {first} of {directory}: retention or a reset had deleted it from the log before a restart",
                first=first, directory=directory,
            )
            for ext in (".log", ".index", ".timeindex"):
                try:
                    os.unlink(os.path.join(directory, segment_name(first) + ext))
                except FileNotFoundError:
                    pass
        elif first < checkpoint.segment and first not in vouched:
            _log.warn(
                "ignoring stray segment file {path}: the recovery checkpoint does not list it, it is not part of the log",
                path=os.path.join(directory, segment_name(first) + ".log"),
            )
    listed = set(vouched)
    return [f for f in firsts if f in listed or f > checkpoint.segment]


def _from_checkpoint(log: SegmentedLog, checkpoint: Checkpoint) -> tuple[int, int, tuple[int, int | None, int]]:
    """Apply the checkpoint; return (checkpoint segment's place, its position, what the tail must continue from)."""
    chain = log.chain
    segments = chain.segments
    for segment, (first, offset, size) in zip(segments, checkpoint.segments):
        assert segment.first_index == first, (segment.first_index, first)  # _check_chain kept exactly the chain
        segment.base_offset = offset
        if segment.size < size:
            raise segment.corrupted(segment.size, f"synced data missing: file has {segment.size} bytes, {size} were synced")
        if segment.size > size:
            _log.warn(
                "ignoring {extra} bytes after the synced end of closed segment {path} (nothing is appended there)",
                extra=segment.size - size, path=segment.log_path,
            )
            segment.size = size
    offsets = [o for _, o, _ in checkpoint.segments] + [checkpoint.segment_offset]
    for segment, following in zip(segments, offsets[1:]):
        segment.next_offset = following
    first = [s.first_index for s in segments].index(checkpoint.segment)
    segment = segments[first]
    if segment.size < checkpoint.position:
        raise segment.corrupted(segment.size, f"synced data missing: file has {segment.size} bytes, {checkpoint.position} were synced")
    segment.base_offset = checkpoint.segment_offset
    segment.size = checkpoint.position
    segment.next_index, segment.next_offset = checkpoint.next_index, checkpoint.next_offset
    chain.start = checkpoint.start
    chain.set_history(checkpoint.terms, checkpoint.configs)
    if not segment.load_indexes(checkpoint.position, checkpoint.next_index):
        segment.rebuild_indexes()  # reads [0, position), all synced: damage raises
        end = (segment.next_index, segment.next_offset, segment.last_term)
    else:
        end = recompute_tail_stats(segment)
    expected_end = (checkpoint.next_index, checkpoint.next_offset, checkpoint.last_term if checkpoint.position else None)
    if end[0] != expected_end[0] or end[1] != expected_end[1] or (end[2] is not None and end[2] != expected_end[2]):
        raise StorageCorrupted(
            os.path.join(log.directory, CHECKPOINT_FILE),
            0,
            f"the checkpoint says the entries before byte {checkpoint.position} of {segment.log_path} end at index "
            f"{expected_end[0]}, offset {expected_end[1]}, term {expected_end[2]}, but they end at {end[0]}, {end[1]}, {end[2]}",
        )
    segment.next_index, segment.next_offset = checkpoint.next_index, checkpoint.next_offset
    segment.last_term = checkpoint.last_term if checkpoint.position else None
    return first, checkpoint.position, (checkpoint.next_index, checkpoint.next_offset, checkpoint.last_term)


def _validate_tail(
    log: SegmentedLog, first: int, position: int, expected: tuple[int, int | None, int], start_offset: int
) -> tuple[bool, int]:
    """Scan from (segment C{first}, C{position}) to the end; cut at the first bad frame.

    Returns whether anything was cut, and the term of the last entry kept.
    """
    chain = log.chain
    index, offset, term = expected
    i = first
    while i < len(chain.segments):
        segment = chain.segments[i]
        if i > first or (i == 0 and position == 0):
            segment.reset_indexes()
            segment.size = 0
            segment.next_index = segment.first_index
            segment.base_offset = segment.next_offset = offset if offset is not None else start_offset
            segment.first_timestamp = segment.max_timestamp = segment.last_record_index = None
            position = 0
            if segment.first_index != index:
                _drop_segments_from(log, i, index, f"segment starts at index {segment.first_index}, expected {index}")
                return True, term
        file_size = segment.file_size()
        if file_size == position:
            i += 1
            continue  # nothing after the checkpoint (a clean shutdown)
        stop, reason, valid_end, (index, offset, term) = _scan_segment(log, segment, position, file_size, (index, offset, term))
        if stop is not codec.Stop.END:
            _log.warn(
                "recovery cut {bytes} bytes ({stop}: {reason}) from {path} at byte {position}: entries from index {index} "
                "(offset {offset}) on are gone",
                bytes=file_size - valid_end, stop=stop.value, reason=reason, path=segment.log_path, position=valid_end,
                index=index, offset=offset,
            )
            os.truncate(segment.log_path, valid_end)
            segment.size = valid_end
            if i + 1 < len(chain.segments):
                _drop_segments_from(log, i + 1, index, "they follow a cut")
            return True, term
        i += 1
    return False, term


def _scan_segment(
    log: SegmentedLog, segment: Segment, position: int, file_size: int, expected: tuple[int, int | None, int]
) -> tuple[codec.Stop, str, int, tuple[int, int | None, int]]:
    """Validate C{segment} from C{position} in chunks, replaying its frames into the index and the history.

    Returns (why it stopped, the reason, where the valid prefix ends, what
    the next frame would have had to continue from).
    """
    chain = log.chain
    index, offset, term = expected
    while True:
        chunk = segment.pread(min(SCAN_CHUNK, file_size - position), position)
        result = codec.scan(chunk, 0, offset, index, term)
        kept = 0
        for frame in result.frames:
            config = _config_of(frame, chunk)
            if config is _BAD:
                break
            h = frame.header
            segment.note_appended(h, position + frame.position, write=False)
            chain.note_entry(h.raft_index, h.term, config)  # type: ignore[arg-type]
            index, offset, term = h.raft_index + 1, h.next_offset, h.term
            kept += 1
        if kept < len(result.frames):
            return codec.Stop.CORRUPT, "a configuration batch whose payload is not a list of member ids", \
                position + result.frames[kept].position, (index, offset, term)
        at_eof = position + len(chunk) >= file_size
        valid_end = position + result.valid_end
        if result.stop is codec.Stop.END and at_eof:
            return codec.Stop.END, "", valid_end, (index, offset, term)
        if result.stop in (codec.Stop.END, codec.Stop.TORN) and not at_eof:
            if result.frames or result.stop is codec.Stop.END:
                position = valid_end
                continue
            # One frame larger than a chunk: read it whole.
            header = codec.decode_header(chunk[: codec.HEADER_SIZE])
            big = segment.pread(header.frame_size, position)
            one = codec.scan(big, 0, offset, index, term)
            config = _config_of(one.frames[0], big) if one.frames else _BAD
            if config is _BAD:
                return one.stop if not one.frames else codec.Stop.CORRUPT, one.reason, position, (index, offset, term)
            h = one.frames[0].header
            segment.note_appended(h, position, write=False)
            chain.note_entry(h.raft_index, h.term, config)  # type: ignore[arg-type]
            index, offset, term = h.raft_index + 1, h.next_offset, h.term
            position += h.frame_size
            continue
        return result.stop, result.reason, valid_end, (index, offset, term)


_BAD = object()


def _config_of(frame: codec.Frame, data: bytes) -> Members | None | object:
    """The members a configuration frame holds (None for other frames), or C{_BAD} if its payload does not parse."""
    if frame.header.type != BatchType.CONFIG:
        return None
    start = frame.position + codec.HEADER_SIZE
    try:
        return config_members(data[start : start + frame.header.payload_length])
    except ValueError:
        return _BAD


def _drop_segments_from(log: SegmentedLog, i: int, index: int, why: str) -> None:
    chain = log.chain
    for segment in chain.segments[i:]:
        _log.warn(
            "recovery removed segment {path} ({bytes} bytes) because {why}; entries from index {index} on are gone",
            path=segment.log_path, bytes=segment.file_size(), why=why, index=index,
        )
        segment.unlink()
    del chain.segments[i:]
    fsync_dir(log.directory)

"""Appends and rolls of a segmented log: Raft entries in, frames out.

Kept apart because this is the hot path, and because it is where an entry
becomes a stored batch: a record batch a leader proposes is stamped with its
entry's index and term and gets a new header; one received from a peer
(it carries the header it was stored with) is checked against the entry and
the log end and written as received, never re-encoded; a no-op, a
configuration (its member ids as a JSON array) or an opaque command becomes
a batch of no records at the current record offset, so record offsets stay
dense.  Every entry of a call is checked before the first is written.

A segment rolls before a frame would push it past C{segment_bytes}, or when a
record batch is C{segment_ms} newer than the segment's first record.  The new
segment is named by the Raft index of the entry about to be written, so two
segments never share a name however many batches hold no records.

A roll opens the new segment's three files before the old segment's are
closed; those wait for the log's next sync (L{streamlog.storage.durability}).
How many rolled segments may wait so is bounded node-wide
(L{streamlog.storage.descriptors.RetiredFiles}): a roll first makes room,
syncing and closing the oldest across logs when the pool is full.  Running out
of descriptors in a roll is a refusal (L{OutOfDescriptors}), not a disk fault:
nothing was written, the files it made are removed and the old segment stays
active.  L{make_room} lets a caller roll before it appends anything (the broker
does so for every partition of a request, so a refusal leaves the whole
request unappended).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
from twisted.logger import Logger

from streamlog.raft.log import Entry
from streamlog.storage import codec, sync_failure
from streamlog.storage.base import BatchType, RecordBatch
from streamlog.storage.errors import OutOfDescriptors, StorageFailed

if TYPE_CHECKING:
    from streamlog.storage.log import SegmentedLog

#: Rolled segments whose write descriptors may wait for the next sync; past this, a roll syncs and closes the oldest.
MAX_RETIRED = 8

_log = Logger()


def stored_batch(entry: Entry, offset: int) -> RecordBatch:
    """The batch C{entry} is stored as, at record offset C{offset}, header included (raise C{ValueError} if it cannot be)."""
    data = entry.data
    if isinstance(data, RecordBatch):
        if entry.config is not None:
            raise ValueError(f"entry {entry.index}: a configuration entry carries no record batch")
        if data.type != BatchType.RECORDS or data.count < 1:
            raise ValueError(f"entry {entry.index}: a record batch holds records ({data.type!r}, count {data.count})")
        if data.base_offset != offset:
            raise ValueError(f"entry {entry.index}: batch base offset {data.base_offset} != log end {offset}")
        if data.header is not None:
            # Received as stored bytes: it must be the entry it claims to be, and whole.
            header = codec.decode_header(data.header)
            if (header.raft_index, header.term, data.raft_index, data.term) != (entry.index, entry.term) * 2:
                raise ValueError(
                    f"entry {entry.index} (term {entry.term}) carries a frame of index {header.raft_index} (term {header.term})"
                )
            if (header.base_offset, header.count, header.payload_length) != (data.base_offset, data.count, len(data.payload)):
                raise ValueError(f"entry {entry.index}: its frame header does not describe its batch")
            if not codec.check_parts(header, data.header, data.payload):
                raise ValueError(f"entry {entry.index}: CRC mismatch between its frame header and payload")
            return data
        if data.raft_index not in (-1, entry.index):
            raise ValueError(f"entry {entry.index} carries a batch stamped with index {data.raft_index}")
        return codec.stamp(data, entry.index, entry.term)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if entry.config is not None:
            if data:
                raise ValueError(f"entry {entry.index}: a configuration entry carries no data")
            kind, payload = BatchType.CONFIG, orjson.dumps(list(entry.config))
        elif data:
            kind, payload = BatchType.DATA, bytes(data)
        else:
            kind, payload = BatchType.NOOP, b""
        return codec.stamp(RecordBatch(offset, 0, entry.term, -1, -1, payload, type=kind), entry.index, entry.term)
    raise TypeError(f"entry {entry.index}: data must be bytes or a RecordBatch, not {type(data).__name__}")


def append(log: SegmentedLog, entries: Sequence[Entry]) -> None:
    """Append C{entries}; the first must have index C{last_index + 1}, terms never go down.

    A roll refused for want of descriptors raises L{OutOfDescriptors} before
    the entry that needed it is written; the entries of the same call before
    it stay appended (the log holds a prefix of the call, as after a crash).
    """
    log.check()
    chain = log.chain
    index, offset, term = chain.last_index + 1, chain.end_offset, chain.last_term
    prepared: list[tuple[RecordBatch, Entry]] = []
    for entry in entries:
        if entry.index != index:
            raise ValueError(f"append at {entry.index}, expected {index}")
        if entry.term < term:
            raise ValueError(f"entry {entry.index} of term {entry.term} after term {term}: terms never go down")
        batch = stored_batch(entry, offset)
        prepared.append((batch, entry))
        index, offset, term = index + 1, batch.next_offset, entry.term
    durability = log.durability
    for batch, entry in prepared:
        if rolls_for(log, batch):
            roll(log)
        active = chain.active
        frame_size = codec.HEADER_SIZE + len(batch.payload)
        position = active.size
        try:
            assert batch.header is not None
            active.write_frame(batch.header, batch.payload)
            with durability.lock:
                active.note_appended(batch, position, frame_size=frame_size)
                chain.last_index, chain.last_term, chain.end_offset = entry.index, entry.term, batch.next_offset
                chain.note_entry(entry.index, entry.term, entry.config)
        except OSError as e:
            # Fail-stop (sync_failure; the segment's writes report their own file first): the
            # frame may be partly in the file (if cutting it back failed too) or whole with an
            # index entry missing, and the entries of this call before it stay appended while
            # the caller's memory (the Raft core's) is a step behind; the next sync must not
            # vouch for any of it.
            sync_failure.report_write(active.log_path, e, "append to")
            error = StorageFailed(f"{active.log_path}: append failed: {e}")
            log.fail(error)
            raise error from e
        chain.cache_append(batch)


def rolls_for(log: SegmentedLog, batch: RecordBatch) -> bool:
    """Whether appending C{batch} (stamped or not: the frame size is the same) starts a new segment."""
    active = log.chain.active
    settings = log.settings
    return active.size > 0 and (
        active.size + codec.HEADER_SIZE + len(batch.payload) > settings.segment_bytes  # type: ignore[operator]
        or (
            batch.type == BatchType.RECORDS
            and active.first_timestamp is not None
            and batch.max_timestamp - active.first_timestamp >= settings.segment_ms  # type: ignore[operator]
        )
    )


def make_room(log: SegmentedLog, batch: RecordBatch) -> None:
    """Roll now if appending C{batch} as the next entry would, so that its append cannot be refused.

    Raises L{OutOfDescriptors} (nothing changed) if the roll cannot open its files.
    """
    log.check()
    if rolls_for(log, batch):
        roll(log)


def roll(log: SegmentedLog) -> None:
    """Start a new segment at the log end; the old one is closed to writes.

    The node-wide pool of rolled segments makes room first.  Running out of
    descriptors raises L{OutOfDescriptors}: the empty files the roll made are
    removed, the old segment stays active untouched and the log serves on, so
    a retry rolls again.  Any other error is a disk fault (L{StorageFailed};
    the log fails).
    """
    chain = log.chain
    durability = log.durability
    old = chain.active
    if log.retired_files is not None:
        log.retired_files.make_room()
    new = chain.new_segment(chain.last_index + 1, chain.end_offset)
    try:
        new.reset_indexes()
        new.open_for_append()
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            # Not a write failure: nothing was written, the empty files are removed, and the log
            # (memory and files) is as before the roll.
            _remove_empty(new.log_path, new.index_path, new.timeindex_path)
            raise OutOfDescriptors(f"{log.directory}: cannot roll to a new segment: {e}") from e
        sync_failure.report_write(new.log_path, e, "roll to")
        error = StorageFailed(f"{log.directory}: roll failed: {e}")
        log.fail(error)
        raise error from e
    try:
        old.seal_time_index()
    except OSError as e:
        assert new.files is not None
        new.files.close()
        # (reported to the fail-stop handler as it was raised: Segment's index writes)
        error = StorageFailed(f"{log.directory}: roll failed: {e}")
        log.fail(error)
        raise error from e
    with durability.lock:
        assert old.files is not None
        durability.retire(log, old.files)
        old.files = None
        chain.segments.append(new)
        chain.firsts.append(new.first_index)
        chain.offsets.append(new.base_offset)
        durability.dir_dirty = True  # the new files' names are made durable by the next sync
        overflow = len(durability.retired) > MAX_RETIRED
    if overflow:
        durability.settle_retired(log, MAX_RETIRED)
    _log.info("rolled {directory} to a new segment at index {index}", directory=log.directory, index=new.first_index)


def _remove_empty(*paths: str) -> None:
    """Remove the files a roll that gave up had created (empty: nothing was written to them)."""
    for path in paths:
        try:
            if os.path.getsize(path) == 0:
                os.unlink(path)
        except OSError:
            pass  # not created, or gone; recovery takes an empty segment at the log end as the active one

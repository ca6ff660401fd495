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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
from twisted.logger import Logger

from streamlog.raft.log import Entry
from streamlog.storage import codec
from streamlog.storage.base import BatchType, RecordBatch
from streamlog.storage.errors import StorageFailed

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
    """Append C{entries}; the first must have index C{last_index + 1}, terms never go down."""
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
    settings = log.settings
    durability = log.durability
    for batch, entry in prepared:
        active = chain.active
        frame_size = codec.HEADER_SIZE + len(batch.payload)
        if active.size > 0 and (
            active.size + frame_size > settings.segment_bytes  # type: ignore[operator]
            or (
                batch.type == BatchType.RECORDS
                and active.first_timestamp is not None
                and batch.max_timestamp - active.first_timestamp >= settings.segment_ms  # type: ignore[operator]
            )
        ):
            roll(log)
            active = chain.active
        position = active.size
        try:
            assert batch.header is not None
            active.write_frame(batch.header, batch.payload)
            with durability.lock:
                active.note_appended(batch, position, frame_size=frame_size)
                chain.last_index, chain.last_term, chain.end_offset = entry.index, entry.term, batch.next_offset
                chain.note_entry(entry.index, entry.term, entry.config)
        except OSError as e:
            error = StorageFailed(f"{active.log_path}: append failed: {e}")
            log.fail(error)
            raise error from e
        chain.cache_append(batch)


def roll(log: SegmentedLog) -> None:
    """Start a new segment at the log end; the old one is closed to writes."""
    chain = log.chain
    durability = log.durability
    old = chain.active
    try:
        old.seal_time_index()
        new = chain.new_segment(chain.last_index + 1, chain.end_offset)
        new.reset_indexes()
        new.open_for_append()
    except OSError as e:
        error = StorageFailed(f"{log.directory}: roll failed: {e}")
        log.fail(error)
        raise error from e
    with durability.lock:
        assert old.files is not None
        old.files.retired = True
        durability.retired.append(old.files)
        old.files = None
        chain.segments.append(new)
        chain.firsts.append(new.first_index)
        chain.offsets.append(new.base_offset)
        durability.dir_dirty = True  # the new files' names are made durable by the next sync
        overflow = len(durability.retired) > MAX_RETIRED
    if overflow:
        durability.settle_retired(log, MAX_RETIRED)
    _log.info("rolled {directory} to a new segment at index {index}", directory=log.directory, index=new.first_index)

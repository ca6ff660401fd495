"""L{LocalLog}: today's single-node broker's view of a partition log that is a Raft log.

The broker (until it runs partitions as Raft replicas) appends record
batches and reads by offset; the logs underneath are keyed by Raft index
(L{streamlog.storage.base.ReplicatedLog}).  This thin adapter turns each
batch into the next entry, of the log's last term (a node alone writes every
entry of its logs), and passes the rest through.  It goes away when the
broker is rewired over replicas, which talk to the logs directly.
"""

from __future__ import annotations

from typing import Any

from streamlog.raft.log import Entry
from streamlog.storage.base import ReadResult, RecordBatch


class LocalLog:
    """A L{streamlog.storage.base.PartitionLog} over a L{streamlog.storage.base.ReplicatedLog} (C{log})."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def append(self, batch: RecordBatch) -> None:
        """Append C{batch} as the next entry; its C{base_offset} must equal C{end_offset}."""
        log = self.log
        log.append([Entry(log.last_index + 1, log.last_term, batch)])  # type: ignore[arg-type]  # data: a RecordBatch

    def make_room(self, batch: RecordBatch) -> None:
        """Roll now if appending C{batch} would (a log that rolls segments), so its append cannot be refused.

        The broker calls this for every partition of a request before
        appending to any (L{streamlog.storage.log.SegmentedLog.make_room}); a
        log without segments has nothing to do.
        """
        make_room = getattr(self.log, "make_room", None)
        if make_room is not None:
            make_room(batch)

    @property
    def start_offset(self) -> int:
        return int(self.log.start_offset)

    @property
    def end_offset(self) -> int:
        return int(self.log.end_offset)

    @property
    def durable_offset(self) -> int:
        return int(self.log.durable_offset)

    @property
    def failed(self) -> Exception | None:
        return getattr(self.log, "failed", None)

    @property
    def closed(self) -> bool:
        return bool(self.log.closed)

    @property
    def checkpoint_due(self) -> bool:
        return bool(getattr(self.log, "checkpoint_due", False))

    def sync(self) -> int:
        """Make everything appended durable; return the durable offset."""
        self.log.sync()
        return int(self.log.durable_offset)

    def checkpoint(self, sync: bool = True) -> bool:
        return bool(self.log.checkpoint(sync))

    @property
    def background_due(self) -> bool:
        return bool(getattr(self.log, "background_due", True))

    def background_checkpoint(self) -> bool:
        own = getattr(self.log, "background_checkpoint", None)
        return bool(own()) if own is not None else self.checkpoint()

    def read(self, offset: int, max_records: int, max_bytes: int) -> ReadResult:
        result: ReadResult = self.log.read(offset, max_records, max_bytes)
        return result

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        return int(self.log.offset_for_timestamp(timestamp_ms))

    def apply_retention(self, now_ms: int) -> int:
        return int(self.log.apply_retention(now_ms))

    def close(self, sync: bool = True) -> None:
        self.log.close(sync)

    def __getattr__(self, name: str) -> Any:
        # Everything else (segment_count, directory, entries, term_at, ...) is the log's own.
        return getattr(self.log, name)

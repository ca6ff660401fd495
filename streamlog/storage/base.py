"""The storage contract between the broker and a partition log.

A partition log is an append-only sequence of I{record batches}.  Each batch
holds records that are already encoded as the JSON object a consumer will be
served (ARCHITECTURE.md decision 3), so the read path only joins bytes.

Encoding of a batch payload: the records, each one JSON object of the form
C{{"offset":..,"timestamp":..,"key":..,"value":..,"headers":{..}}}, joined by
a single C{b"\\n"} (a JSON encoder never emits a raw newline).  A reader
serving a whole batch turns the newlines into commas (C{bytes.replace}) and
splits only where it needs part of a batch.

Offsets are dense: batch N+1 starts at batch N's C{base_offset + count}.  Each
batch carries the Raft term it was written in so that replication can
compare and truncate logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs

from streamlog.topic_config import TopicConfig  # noqa: F401 (re-exported: the storage takes it)

#: Payload record separator (see module docstring).
RECORD_SEPARATOR = b"\n"


@attrs.frozen
class RecordBatch:
    """One batch of encoded records, the unit of append, replication and fsync."""

    base_offset: int
    count: int
    term: int
    first_timestamp: int
    max_timestamp: int
    payload: bytes
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1

    @property
    def next_offset(self) -> int:
        """The offset that follows the last record of this batch."""
        return self.base_offset + self.count

    def records(self) -> list[bytes]:
        """The encoded records, one C{bytes} each (allocates; for slow paths)."""
        if not self.count:
            return []
        return self.payload.split(RECORD_SEPARATOR)


@attrs.frozen
class ReadResult:
    """What a read returns.

    C{b",".join(fragments)} is the body of a JSON array of C{count} records
    starting at the requested offset; C{next_offset} is where the next read
    continues.
    """

    fragments: list[bytes]
    count: int
    next_offset: int
    size: int  # total bytes of the fragments


class PartitionLog(Protocol):
    """One partition's log.  Called only from the reactor thread, except C{sync}."""

    @property
    def start_offset(self) -> int:
        """The first offset still held (retention moves it forward)."""

    @property
    def end_offset(self) -> int:
        """The offset the next appended record will get (log end offset)."""

    @property
    def durable_offset(self) -> int:
        """Records below this offset are on stable storage (fsynced)."""

    def append(self, batch: RecordBatch) -> None:
        """Append C{batch}; its C{base_offset} must equal C{end_offset}.

        The batch is in the OS (readable, and safe from a process crash) when
        this returns; it is durable against power loss only after L{sync}.
        """

    def sync(self) -> int:
        """Make everything appended so far durable; return the new durable offset.

        May block; the broker calls it from a worker thread while the reactor
        thread keeps appending, so it must be safe against concurrent
        L{append} (it syncs at least what was appended before it was called).
        """

    def read(self, offset: int, max_records: int, max_bytes: int) -> ReadResult:
        """Read up to C{max_records} records from C{offset}.

        C{start_offset <= offset <= end_offset} (the caller checks).  At least
        one record is returned if any exist at C{offset}, even when it is larger
        than C{max_bytes}, so that a consumer can always make progress.
        """

    def batches(self, offset: int, max_bytes: int) -> Iterable[RecordBatch]:
        """Whole batches from the one containing C{offset} on (for replication)."""

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        """The first offset whose record timestamp is >= C{timestamp_ms}, or C{end_offset}."""

    def truncate_suffix(self, offset: int) -> None:
        """Remove every record at or after C{offset} (Raft conflict resolution)."""

    def apply_retention(self, now_ms: int) -> int:
        """Drop whole old batches/segments per the topic's retention; return the new start offset."""

    def close(self) -> None:
        """Release files; the log is unusable afterwards."""


class Storage(Protocol):
    """Owns the partition logs of every topic and the record of which topics exist."""

    def load(self) -> dict[str, tuple[TopicConfig, Sequence[PartitionLog]]]:
        """Open (and recover) everything that exists; called once at start-up."""

    def create_topic(self, name: str, partitions: int, config: TopicConfig) -> list[PartitionLog]:
        """Create a topic's logs and persist that it exists."""

    def delete_topic(self, name: str) -> None:
        """Close and remove a topic's logs."""

    def close(self) -> None:
        """Close every log."""

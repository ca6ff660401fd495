"""The storage contract: record batches, and what the broker and Raft ask of a partition log.

A partition log is a sequence of I{stored batches}, one per Raft entry
(ARCHITECTURE.md decision 10).  A I{record} batch holds records that are
already encoded as the JSON object a consumer will be served (decision 3), so
the read path only joins bytes; I{bookkeeping} batches (the new leader's
no-op, a membership configuration) and opaque I{data} batches (a state
machine's command, e.g. the metadata group's) hold no records.

Encoding of a record batch payload: the records, each one JSON object of the
form C{{"offset":..,"timestamp":..,"key":..,"value":..,"headers":{..}}},
joined by a single C{b"\\n"} (a JSON encoder never emits a raw newline).  A
reader serving a whole batch turns the newlines into commas
(C{bytes.replace}) and splits only where it needs part of a batch.

Two numberings, both dense: the I{Raft index} counts batches (every entry,
bookkeeping included: it goes up by one per batch), the I{record offset}
counts records (a record batch of N records moves it by N, any other batch by
nothing).  Each batch carries both (C{raft_index}, C{base_offset}) and the
Raft C{term} it was written in.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from streamlog.raft.log import Entry, Members
from streamlog.topic_config import TopicConfig  # noqa: F401 (re-exported: the storage takes it)

#: Payload record separator (see module docstring).
RECORD_SEPARATOR = b"\n"


class BatchType(enum.IntEnum):
    """What a stored batch holds (the C{type} byte of a format-2 frame)."""

    RECORDS = 0  #: encoded records (count >= 1)
    NOOP = 1  #: a new leader's no-op: nothing (count 0, empty payload)
    CONFIG = 2  #: a membership configuration: the JSON array of member ids (count 0)
    DATA = 3  #: an opaque state-machine command, e.g. a metadata-group entry (count 0)


@attrs.frozen
class RecordBatch:
    """One stored batch: the unit of append, replication and fsync.

    C{raft_index} is -1 until the batch is appended (the log stamps it, and
    the term, from the Raft entry it is stored as).  C{header} is the frame
    header exactly as stored (format 2), set on batches read from a log or
    decoded from a frame: a batch that carries it is written and sent as
    these bytes, never re-encoded.  It takes no part in equality.
    """

    base_offset: int
    count: int
    term: int
    first_timestamp: int
    max_timestamp: int
    payload: bytes
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    raft_index: int = -1
    type: BatchType = BatchType.RECORDS
    header: bytes | None = attrs.field(default=None, eq=False, repr=False)

    def __len__(self) -> int:
        """Payload bytes: what a Raft batching budget counts."""
        return len(self.payload)

    @property
    def next_offset(self) -> int:
        """The offset that follows the last record of this batch."""
        return self.base_offset + self.count

    @property
    def has_records(self) -> bool:
        return self.type == BatchType.RECORDS

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
    """One partition's log as the single-node broker sees it (L{streamlog.storage.local.LocalLog}).

    Called only from the reactor thread, except C{sync}.  Goes away when the
    broker runs every partition as a Raft replica over a L{ReplicatedLog}.
    """

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
        """Append C{batch} (a record batch); its C{base_offset} must equal C{end_offset}.

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

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        """The first offset whose record timestamp is >= C{timestamp_ms}, or C{end_offset}."""

    def apply_retention(self, now_ms: int) -> int:
        """Drop whole old batches/segments per the topic's retention; return the new start offset."""

    def close(self) -> None:
        """Release files; the log is unusable afterwards."""


class ReplicatedLog(Protocol):
    """A partition's log as its Raft group and its readers see it: the Raft log I{is} the storage log.

    The L{streamlog.raft.log.RaftLog} part (C{start_index}, C{prefix_term},
    C{last_index}, C{last_term}, C{term_at}, C{entries}, C{append},
    C{truncate_suffix}, C{truncate_prefix}, C{reset}, C{config_at}) is keyed
    by Raft index; the rest by record offset, for readers (Poll, ListOffsets)
    and for turning a commit index into a high watermark.  Implemented by
    L{streamlog.storage.log.SegmentedLog} and L{streamlog.storage.memory.MemoryLog}
    (one contract suite, tests/storage/test_storage_contract.py).
    """

    start_index: int
    prefix_term: int
    last_index: int
    last_term: int
    start_offset: int
    end_offset: int
    durable_index: int
    durable_offset: int

    def term_at(self, index: int) -> int | None: ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]: ...

    def append(self, entries: Sequence[Entry]) -> None: ...

    def truncate_suffix(self, from_index: int) -> None: ...

    def truncate_prefix(self, upto_index: int, producer_state: Callable[[int], bytes] | None = None) -> None: ...

    def reset(
        self, index: int, term: int, config: Members | None = None, *, next_offset: int | None = None, producer_state: bytes = b""
    ) -> None: ...

    def config_at(self, index: int) -> tuple[int, Members] | None: ...

    def next_offset_after(self, index: int) -> int:
        """The record offset that follows entry C{index} (a commit index -> a high watermark)."""

    def index_for_offset(self, offset: int) -> int | None:
        """The Raft index of the record batch holding C{offset}, or None outside [start_offset, end_offset)."""

    def read(self, offset: int, max_records: int, max_bytes: int) -> ReadResult: ...

    def offset_for_timestamp(self, timestamp_ms: int) -> int: ...

    def retention_point(self, now_ms: int) -> int:
        """The Raft index up to which retention would remove entries (C{start_index - 1}: none)."""

    def sync(self) -> int:
        """Make everything written so far durable; return the durable Raft index."""

    def close(self) -> None: ...


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

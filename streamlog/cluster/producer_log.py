"""L{ProducerTrackingLog}: a partition's Raft log, seen through its producer-state table (issue 10).

The Raft core writes a partition's log directly (the log I{is} the Raft
log), so the one place that sees every batch a replica stores, in index
order, whoever decided it (this node as leader, or a leader it follows), is
the log itself.  This adapter is what the group's Raft node writes through:
it passes every call on to the storage log and keeps the replica's
L{ProducerStateTable} in step with it:

  - C{append}: each record batch is applied (its header's producer fields,
    its Raft index, its C{max_timestamp} as the time), in the same call,
    so a leader's next check already sees the batch it just appended;
  - C{truncate_suffix(i)}: the table forgets the batches from C{i} on first
    (exactly, from its undo journal);
  - C{truncate_prefix} (retention, below the commit index): the log's new
    start keeps the table as of the entry before it, so that a restart
    still knows the producers whose batches retention removed;
  - C{install_snapshot} (a follower too far behind the leader's log start):
    the snapshot data carries the record offset after the snapshot and the
    leader's table as of it (L{streamlog.cluster.catchup.PartitionSnapshot},
    decoded by L{streamlog.cluster.replica.ReplicaStorage.install_snapshot});
    the log is reset with both and the table restored from them.

At start-up L{rebuild} reads the table back: the producer state the log's
start kept, then every record batch of the log (docs/storage.md,
"Idempotent producers").  The read-only calls go straight to the log: they
are bound once, so the Raft core pays nothing for the indirection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger

from streamlog.cluster.catchup import PartitionSnapshot, snapshot_of
from streamlog.idempotence.table import ProducerStateConfig, ProducerStateTable
from streamlog.raft.log import Entry, Members
from streamlog.storage.base import RecordBatch

#: Bytes read per step while rebuilding the table from the log.
REBUILD_STEP_BYTES = 4 * 1024 * 1024

def rebuild(log: Any, config: ProducerStateConfig | None = None) -> ProducerStateTable:
    """The table of C{log}: what its start kept (C{producer_state}), then every record batch it holds."""
    table = ProducerStateTable.restore(getattr(log, "producer_state", b""), config)
    index, last = log.start_index, log.last_index
    while index <= last:
        entries = log.entries(index, last + 1, REBUILD_STEP_BYTES)
        for entry in entries:
            data = entry.data
            if isinstance(data, RecordBatch) and data.has_records and entry.index > table.applied_index:
                table.apply(data.producer_id, data.producer_epoch, data.base_sequence, data.count,
                            data.base_offset, entry.index, data.max_timestamp)
        index = entries[-1].index + 1
    return table


class ProducerTrackingLog:
    """The Raft log of one partition replica: C{log}'s calls, with C{table} kept in step."""

    _log = Logger()

    def __init__(self, log: Any, table: ProducerStateTable) -> None:
        self.raw = log
        self.table = table
        # The reads, bound once (the Raft core calls them on every message).
        self.term_at = log.term_at
        self.entries = log.entries
        self.config_at = log.config_at

    @property
    def start_index(self) -> int:
        value: int = self.raw.start_index
        return value

    @property
    def prefix_term(self) -> int:
        value: int = self.raw.prefix_term
        return value

    @property
    def last_index(self) -> int:
        value: int = self.raw.last_index
        return value

    @property
    def last_term(self) -> int:
        value: int = self.raw.last_term
        return value

    def append(self, entries: Sequence[Entry]) -> None:
        self.raw.append(entries)
        apply = self.table.apply
        for entry in entries:
            data = entry.data
            if isinstance(data, RecordBatch) and data.has_records:
                apply(data.producer_id, data.producer_epoch, data.base_sequence, data.count,
                      data.base_offset, entry.index, data.max_timestamp)

    def truncate_suffix(self, from_index: int) -> None:
        if not self.table.truncate_after(from_index - 1):
            self._log.warn("producer state above index {index} could not be restored exactly "
                           "(its undo journal was shorter); the older batches it displaced are forgotten",
                           index=from_index - 1)
        self.raw.truncate_suffix(from_index)

    def truncate_prefix(self, upto_index: int) -> None:
        self.raw.truncate_prefix(upto_index, producer_state=self.table.snapshot)

    def reset(self, index: int, term: int, config: Members | None = None) -> None:
        """A snapshot without partition data (the leader sent none): the log and the table start empty."""
        self.install_snapshot(index, term, config, None)

    def install_snapshot(self, index: int, term: int, config: Members | None,
                         snapshot: PartitionSnapshot | None) -> None:
        """A snapshot is installed: the log is reset after C{index} at the snapshot's record offset
        with its producers, and the table restored from them (None: the log's own end, no producers)."""
        if snapshot is None:
            self.raw.reset(index, term, config)
            state = b""
        else:
            state = snapshot.producer_state
            self.raw.reset(index, term, config, next_offset=snapshot.next_offset, producer_state=state)
        self.table = ProducerStateTable.restore(state, self.table.config)

    def __getattr__(self, name: str) -> Any:
        # Everything else (next_offset_after, failed, durable_index, ...) is the log's own.
        return getattr(self.raw, name)

    def snapshot_data(self, index: int) -> bytes:
        """What a leader sends a follower that needs a snapshot at C{index} (its log start - 1)."""
        return snapshot_of(self.raw, index, self.table.snapshot(index))

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

At start-up L{rebuild} reads the table back: from the newest producer-state
snapshot file that still matches the log (L{streamlog.idempotence.snapshot_file})
and the record batches after it, or, without one, from the producer state the
log's start kept and every record batch of the log (docs/storage.md,
"Idempotent producers"); a file it does not believe is deleted.  A snapshot
file is written when a segment rolls (seen after an C{append}: the log's
segment count moved), every interval of batches, and at a clean close
(L{ProducerTrackingLog.write_snapshot}, called by the node before its storage
closes), always as of the commit index and no later than what is durable
here (L{ProducerTrackingLog.mark_committed}): an entry that can never be
replaced.  The
read-only calls go straight to the log: they are bound once, so the Raft core
pays nothing for the indirection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.logger import Logger

from streamlog.cluster.catchup import PartitionSnapshot, snapshot_of
from streamlog.idempotence import snapshot_file
from streamlog.idempotence.table import CorruptProducerState, ProducerStateConfig, ProducerStateTable
from streamlog.raft.log import Entry, Members
from streamlog.storage import producer_snapshots
from streamlog.storage.base import RecordBatch

#: Bytes read per step while rebuilding the table from the log.
REBUILD_STEP_BYTES = 4 * 1024 * 1024

_log = Logger()


@attrs.frozen
class Rebuilt:
    """How L{rebuild} got a table: from the snapshot file as of C{snapshot_index} (None: the
    log's start), then C{entries_read} entries of the log; C{ignored}: why newer files were not used."""

    snapshot_index: int | None
    entries_read: int
    ignored: tuple[str, ...] = ()


def rebuild(log: Any, config: ProducerStateConfig | None = None) -> ProducerStateTable:
    """The table of C{log} (see L{rebuild_with_report})."""
    return rebuild_with_report(log, config)[0]


def rebuild_with_report(log: Any, config: ProducerStateConfig | None = None) -> tuple[ProducerStateTable, Rebuilt]:
    """The table of C{log}: the newest snapshot file that matches it and the record batches after
    it; without one, what its start kept (C{producer_state}) and every record batch it holds."""
    table, after, used, ignored = _from_snapshot(log, config)
    if table is None:
        table = ProducerStateTable.restore(getattr(log, "producer_state", b""), config)
        after = table.applied_index
    index, last = max(log.start_index, after + 1), log.last_index
    read = 0
    while index <= last:
        entries = log.entries(index, last + 1, REBUILD_STEP_BYTES)
        read += len(entries)
        for entry in entries:
            data = entry.data
            if isinstance(data, RecordBatch) and data.has_records and entry.index > table.applied_index:
                table.apply(data.producer_id, data.producer_epoch, data.base_sequence, data.count,
                            data.base_offset, entry.index, data.max_timestamp)
        index = entries[-1].index + 1
    return table, Rebuilt(used, read, tuple(ignored))


def _from_snapshot(log: Any, config: ProducerStateConfig | None
                   ) -> tuple[ProducerStateTable | None, int, int | None, list[str]]:
    """The table from the newest usable snapshot file of C{log}: C{(table, its index, its index, why
    newer ones were ignored)}, or C{(None, 0, None, reasons)} if none is usable.

    Every file not believed is deleted (and the directory synced), so that a file once refused
    can never be believed later: a file past the log's end (a tail a crash cut), of another
    term, before the log's start, or that does not decode.  Such a file could otherwise match
    again once the log holds the same (index, term) with other entries (review of issue 10,
    finding 1; files are now written only at committed, durable indexes, so this is a second
    line of defence for files an older version left).
    """
    directory = getattr(log, "directory", None)
    ignored: list[str] = []
    if not isinstance(directory, str):
        return None, 0, None, ignored
    refused: list[str] = []
    found: tuple[ProducerStateTable, int] | None = None
    for index, path in producer_snapshots.listing(directory):
        if found is not None:
            if index < log.start_index:
                refused.append(path)  # older than the log holds: it can never serve again
            continue
        try:
            at, term, data = snapshot_file.decode(producer_snapshots.read(path))
            if at != index:
                raise CorruptProducerState(f"it says index {at}, its name {index}")
            if not snapshot_file.matches_log(at, term, log.start_index, log.last_index, log.term_at):
                ignored.append(f"{path}: entry {at} of term {term} is not in the log (it holds "
                               f"{log.start_index}-{log.last_index})")
                refused.append(path)
                continue
            found = ProducerStateTable.restore(data, config), at
        except (OSError, CorruptProducerState) as e:
            ignored.append(f"{path}: {e}")
            refused.append(path)
    _remove_refused(directory, refused)
    for reason in ignored:
        _log.warn("producer-state snapshot ignored and removed: {reason}{rest}", reason=reason,
                  rest="" if found is not None else "; reading the whole log")
    if found is None:
        return None, 0, None, ignored
    return found[0], found[1], found[1], ignored


def _remove_refused(directory: str, paths: list[str]) -> None:
    if not paths:
        return
    try:
        producer_snapshots.remove_all(directory, paths)
    except OSError as e:  # the next open checks (and tries to remove) them again
        _log.warn("removing refused producer-state snapshots in {directory} failed: {error}",
                  directory=directory, error=e)


class ProducerTrackingLog:
    """The Raft log of one partition replica: C{log}'s calls, with C{table} kept in step."""

    _log = Logger()

    def __init__(self, log: Any, table: ProducerStateTable) -> None:
        self.raw = log
        self.table = table
        #: Where snapshot files go (a log with a directory of its own), and its segment count seen last.
        directory = getattr(log, "directory", None)
        self._directory: str | None = directory if isinstance(directory, str) else None
        self._segments = self._segment_count()
        #: Record batches appended since the last snapshot file, and how many make the next one due.
        self._since_snapshot = 0
        self._interval = table.config.snapshot_interval_batches
        #: The highest commit index the node told (L{mark_committed}), durable here or not.
        self._commit_heard = 0
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
        applied = 0
        for entry in entries:
            data = entry.data
            if isinstance(data, RecordBatch) and data.has_records:
                apply(data.producer_id, data.producer_epoch, data.base_sequence, data.count,
                      data.base_offset, entry.index, data.max_timestamp)
                applied += 1
        if self._directory is not None:
            self._since_snapshot += applied
            if self._segment_count() != self._segments:
                self._segments = self._segment_count()
                self.write_snapshot()  # a segment rolled
            elif self._interval and self._since_snapshot >= self._interval:
                self.write_snapshot()  # bounds what an open after a crash replays

    def mark_committed(self, upto: int) -> None:
        """Entries up to C{upto} are committed: the table learns it only as far as they are durable here.

        A follower may hear of a commit before its own fsync of those
        entries; a snapshot file is written only as of an entry both
        committed and durable (L{write_snapshot}), so the undo journal is
        kept down to there: the table can then be taken exactly as of it.
        """
        self._commit_heard = max(self._commit_heard, upto)
        self.table.mark_committed(min(self._commit_heard, getattr(self.raw, "durable_index", upto)))

    def _segment_count(self) -> int:
        count = getattr(self.raw, "segment_count", 0) if self._directory is not None else 0
        return count if isinstance(count, int) else 0

    def write_snapshot(self, sync: bool = False) -> bool:
        """Write the table as of the newest entry that can never be replaced to a snapshot file
        (at a roll, every interval of batches, at a clean close).

        That entry is the commit index, and no later than what is durable
        locally (a follower may learn of a commit before its own fsync): a
        file for an entry a crash may cut, or a new leader replace, could be
        believed once the log holds another entry of the same index and term
        (a group of one can reuse a term), and loading one would leave the
        uncommitted tail out of the undo journal.  The entries after it are
        replayed (and journaled) at the next open.  Cheap (the table is small:
        at most C{max_producers} x C{window} batches); never fatal: a snapshot
        that cannot be written only makes the next start-up replay more.
        C{sync}: fsync the log first (a clean close, which fsyncs it anyway),
        so that the file can stand for the commit index whatever the fsync
        policy.  Returns whether one was written.
        """
        raw = self.raw
        if self._directory is None or getattr(raw, "failed", None) is not None or getattr(raw, "closed", False):
            return False
        self._since_snapshot = 0
        if sync:
            try:
                raw.sync()
            except Exception as e:  # StorageFailed: the log failed; its close reports it
                self._log.warn("syncing {directory} before its producer-state snapshot failed: {error}",
                               directory=self._directory, error=e)
                return False
        self.mark_committed(self._commit_heard)  # what became durable since the commit was heard
        table = self.table
        index = min(table.committed_index, raw.durable_index, raw.last_index)
        if index < raw.start_index or not table.exact_at(index):
            return False  # nothing committed and durable in the log yet, or the journal no longer reaches it
        try:
            producer_snapshots.write(self._directory, index,
                                     snapshot_file.encode(index, raw.term_at(index), table.snapshot(index)))
        except OSError as e:
            self._log.warn("writing a producer-state snapshot in {directory} failed: {error}",
                           directory=self._directory, error=e)
            return False
        return True

    def _forget_snapshots(self, from_index: int) -> None:
        if self._directory is not None:
            try:
                producer_snapshots.remove_from(self._directory, from_index)
            except OSError as e:  # a file left behind is checked against the log before any use
                self._log.warn("removing producer-state snapshots in {directory} failed: {error}",
                               directory=self._directory, error=e)

    def truncate_suffix(self, from_index: int) -> None:
        if not self.table.truncate_after(from_index - 1):
            self._log.warn("producer state above index {index} could not be restored exactly "
                           "(its undo journal was shorter); the older batches it displaced are forgotten",
                           index=from_index - 1)
        self._forget_snapshots(from_index)
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
        self._forget_snapshots(0)
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

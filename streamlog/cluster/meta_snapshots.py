"""Compaction of the metadata group's log: snapshots of the cluster state, and the prefix they replace.

Without it the controller's log grows with every registration, topic and
producer-id block forever, and a restarted or wiped node replays all of it.
L{MetadataCompactor} is what a node holds for it (pure but for its
L{streamlog.storage.snapshot_files.SnapshotStore}):

* every C{interval} applied entries it takes the state as of the last
  applied entry (applied means committed), and writes it once the node's own
  log is durable up to that index (a follower's or leader's commit index can
  run ahead of its own fsync, thesis section 10.2.1), atomically and fsynced:
  L{start_write} gives the bytes, the node saves them in a worker (a hung
  disk must not hold its reactor, and /ready sees the write in flight), and
  L{finish_write} takes them as the newest once they are durable; one write
  at a time, and no new snapshot is taken while one is being written;
* only then may the log drop a prefix, and only up to the *older* of the two
  snapshots kept (L{compaction_point}): a newest file found damaged at
  start-up then still has an older one and the log entries after it to fall
  back on;
* at start-up (L{restore}) it takes the newest file that decodes (frame, CRC,
  version, canonical state, this cluster's id) and reaches the log's start
  (its index >= start - 1); a damaged file is renamed aside with a warning.
  With none, a log whose prefix is gone cannot be rebuilt: the node refuses
  to start (L{MetadataRestoreError}) rather than run with a state missing
  what that prefix held;
* its newest file's bytes are what a leader sends in InstallSnapshot to a
  follower whose next entry it no longer has, and a follower checks and
  stores them (L{install}) before its log is reset.

The state in a snapshot is as of an index that may lie past the
InstallSnapshot's point (a segmented log drops whole segments, so its start
can be below the snapshot): the follower's log resumes after that point, and
the entries between are already in the state it installed (they are skipped
when they commit).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from streamlog.cluster import metadata as md
from streamlog.storage import snapshot_files
from streamlog.storage.snapshot_files import SnapshotFileError, SnapshotStore

#: Metadata entries applied between two snapshots (--metadata-snapshot-entries); 0: never.
DEFAULT_SNAPSHOT_ENTRIES = 1000


class MetadataSnapshotError(ValueError):
    """Bytes that are not a metadata snapshot of this cluster that this release reads."""


class MetadataRestoreError(Exception):
    """The node cannot rebuild its metadata state: one line for a person."""


def encode(state: md.ClusterState, term: int) -> bytes:
    """The snapshot file (and InstallSnapshot data) of C{state}, whose last applied entry has C{term}."""
    return snapshot_files.encode(state.applied_index, term, md.encode_snapshot(state))


def decode(data: bytes, cluster_id: str) -> tuple[snapshot_files.SnapshotFile, md.ClusterState]:
    """Check a metadata snapshot: its frame, its state (canonical, every invariant), its cluster."""
    try:
        frame = snapshot_files.decode(data)
        state = md.decode_snapshot(frame.payload)
    except (SnapshotFileError, md.SnapshotDecodeError) as e:
        raise MetadataSnapshotError(str(e)) from None
    if state.applied_index != frame.index:
        raise MetadataSnapshotError(f"the file says index {frame.index}, its state was applied to {state.applied_index}")
    if state.cluster_id != cluster_id:
        raise MetadataSnapshotError(f"the snapshot is of cluster {state.cluster_id}, this node's is {cluster_id}")
    return frame, state


class MetadataCompactor:
    """One node's metadata snapshots: when to take one, where they are, what to send."""

    _log = Logger()

    def __init__(self, store: SnapshotStore, interval: int = DEFAULT_SNAPSHOT_ENTRIES) -> None:
        if interval < 0:
            raise ValueError("the metadata snapshot interval is 0 (never) or more entries")
        self.store = store
        self.interval = interval
        #: The newest snapshot held (0: none) and its bytes (what InstallSnapshot carries).
        self.index = 0
        self.data = b""
        #: A snapshot taken, waiting for the log to be durable up to its index: (state, term).
        self.pending: tuple[md.ClusterState, int] | None = None
        #: The index of the snapshot being saved now (L{start_write}), or None.
        self.writing: int | None = None
        #: Counts for the simulator and the metrics: snapshots written; installed from a leader (stored
        #: as the newest: one not newer than the snapshot held changes nothing and is not counted);
        #: damaged files set aside (one that could not be is not counted: a warning says so).
        self.stats = {"written": 0, "installed": 0, "refused": 0}

    # --- start-up

    def restore(self, cluster_id: str, log: Any) -> md.ClusterState | None:
        """The state to start from: the newest readable snapshot reaching C{log}'s start, or
        None (no snapshot and a log from entry 1: replay it all).  Raises
        L{MetadataRestoreError} if the log's prefix is gone and no snapshot covers it."""
        first = log.start_index - 1  # every entry up to it is gone from the log
        problems: list[str] = []
        for index in self.store.listing():
            try:
                data = self.store.read(index)
                frame, state = decode(data, cluster_id)
            except (OSError, MetadataSnapshotError) as e:
                problems.append(f"snapshot {index}: {e}")
                self._refuse(index, str(e))
                continue
            if frame.index < first:
                problems.append(f"snapshot {index} is older than the log's start (entry {first + 1})")
                continue
            if frame.index <= log.last_index and log.term_at(frame.index) != frame.term:
                reason = f"entry {frame.index} has term {log.term_at(frame.index)} in the log, {frame.term} in the snapshot"
                problems.append(f"snapshot {index}: {reason}")
                self._refuse(index, reason)
                continue
            self.index, self.data = frame.index, data
            if problems:
                self._log.warn("metadata restored from the snapshot as of entry {index} instead of a newer one: "
                               "{problems}", index=index, problems="; ".join(problems))
            return state
        if first > 0:
            found = "; ".join(problems) if problems else "no snapshot file"
            raise MetadataRestoreError(
                f"the metadata log starts after entry {first} (its prefix was compacted) and no snapshot as of entry "
                f"{first} or later could be read ({found}): this node cannot rebuild the cluster metadata. Restore "
                "the snapshot file, or wipe the data dir to rejoin as a new member (docs/operations.md)")
        return None

    def _refuse(self, index: int, reason: str) -> None:
        self._log.warn("refusing the metadata snapshot file as of entry {index}: {reason} (set aside, never read "
                       "again)", index=index, reason=reason)
        try:
            self.store.refuse(index)
        except OSError as e:
            self._log.warn("could not set the metadata snapshot {index} aside: {error}", index=index, error=e)
            return
        self.stats["refused"] += 1

    # --- taking snapshots

    def due(self, applied_index: int) -> bool:
        """Whether a snapshot should be taken now that entries up to C{applied_index} are applied."""
        return (self.interval > 0 and self.pending is None and self.writing is None
                and applied_index - self.index >= self.interval)

    def take(self, state: md.ClusterState, term: int) -> None:
        """Snapshot C{state} (applied, so committed), whose last entry has C{term}; written by L{write}."""
        self.pending = (state, term)

    def write(self, durable_index: int) -> bool:
        """Write the pending snapshot here (blocking) if this node's log is durable up to its
        index: L{start_write}, the store's save, L{finish_write}.  Returns whether one was
        written (the log may then be compacted up to L{compaction_point})."""
        job = self.start_write(durable_index)
        if job is None:
            return False
        try:
            self.store.save(*job)  # durable before it returns
        except BaseException:
            self.abandon_write()
            raise
        return self.finish_write(*job)

    def start_write(self, durable_index: int) -> tuple[int, bytes] | None:
        """The pending snapshot's C{(index, file bytes)} for the store's C{save}, if this node's
        log is durable up to its index and no write is in flight; None if there is nothing to
        write now.  Until L{finish_write} or L{abandon_write} it is the write in flight."""
        if self.writing is not None or self.pending is None or self.pending[0].applied_index > durable_index:
            return None
        state, term = self.pending
        self.pending = None
        if state.applied_index <= self.index:
            return None  # a newer one was installed from the leader meanwhile
        self.writing = state.applied_index
        return state.applied_index, encode(state, term)

    def finish_write(self, index: int, data: bytes) -> bool:
        """The snapshot of L{start_write} is durable: it is the newest held unless a newer one
        was installed from the leader while it was being saved.  Returns whether it is (only
        then may the log be compacted)."""
        self.writing = None
        self.stats["written"] += 1
        if index <= self.index:
            return False
        self.index, self.data = index, data
        return True

    def abandon_write(self) -> None:
        """The save of L{start_write} failed: nothing changes, and the next snapshot tries again."""
        self.writing = None

    def compaction_point(self) -> int:
        """Up to which index the log may drop entries: the older of the snapshots kept (0: none)."""
        held = self.store.listing()
        return held[1] if len(held) > 1 else 0

    # --- InstallSnapshot

    def snapshot_for(self, index: int) -> bytes | None:
        """The bytes a follower needs to resume after entry C{index}: a snapshot as of it or later."""
        return self.data if self.data and self.index >= index else None

    def install(self, data: bytes, cluster_id: str, at_index: int) -> md.ClusterState:
        """A leader's snapshot, for a log about to resume after C{at_index}: checked, then stored
        durably (so that the reset log can be rebuilt after a crash); raises
        L{MetadataSnapshotError} before anything changes if it does not check out."""
        frame, state = decode(data, cluster_id)
        if frame.index < at_index:
            raise MetadataSnapshotError(f"the snapshot is as of entry {frame.index}, older than the log start "
                                        f"it comes with (entry {at_index + 1})")
        if frame.index > self.index:
            self.store.save(frame.index, bytes(data))
            self.index, self.data = frame.index, bytes(data)
            self.stats["installed"] += 1
        if self.pending is not None and self.pending[0].applied_index <= self.index:
            self.pending = None  # older than what is held now
        return state

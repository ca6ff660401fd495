"""What the simulator checks, beyond the client history: the replicas' insides.

L{Ledger} is the record of every committed entry of every Raft group, built
as the run goes from what each live replica says it has committed:

- one index holds one entry forever, the same bytes (term, type, base
  offset, records) on every replica that committed it (C{divergent});
- record offsets are dense: each committed batch starts where the one
  before it ended (C{offset-gap});
- a log never loses a committed entry: a suffix truncation (other than a
  crash losing what was never fsynced) never cuts the committed entry
  itself, nor below the truncating replica's own commit index
  (C{truncated-committed}; replacing an uncommitted entry that conflicts
  with the leader's is what Raft does);
- the high watermark a node serves never goes back (C{hw-back}), whether
  seen by sampling a leading replica or in a Poll answer;
- every committed batch holding an idempotent producer's message carries
  a producer id (C{unnumbered}): a batch without numbers is one a retry can
  store twice, whether or not this run's faults made it happen;
- one applied metadata index is one cluster state on every node
  (C{meta-divergent}): however a node got there (applying the log, restoring
  its snapshot, installing the controller's), the state as of index i is the
  same bytes (L{streamlog.cluster.metadata.encode_snapshot}) everywhere.

At the end (L{Ledger.final}) every replica's log, on every node, must
agree with the ledger wherever they overlap, and the final leader's log
must hold every committed entry.  Violations are collected as one-line
strings, in the order found, so that a failing seed prints what broke.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from streamlog.cluster.metadata import ClusterState, encode_snapshot
from streamlog.storage.base import RecordBatch

Key = tuple[int, int, int, int, bytes]


def batch_key(batch: RecordBatch) -> Key:
    return (batch.term, int(batch.type), batch.base_offset, batch.count, bytes(batch.payload))


class Ledger:
    """Committed entries per group, and the invariants above (see the module docstring)."""

    def __init__(self, limit: int = 20, idempotent_values: bytes | None = b'"value":"ip') -> None:
        #: The bytes a record of an idempotent producer holds (its values' prefix), or None.
        self.idempotent_values = idempotent_values
        self.entries: dict[str, dict[int, Key]] = {}
        self.committed: dict[str, int] = {}
        self.violations: list[str] = []
        self.limit = limit
        self._checked: dict[tuple[int, int, str], int] = {}
        self._served: dict[tuple[int, str, str], int] = {}
        #: Metadata index -> (digest of the state as of it, the node that first held it).
        self.meta_states: dict[int, tuple[bytes, int]] = {}
        self._meta_seen: dict[tuple[int, int], int] = {}
        self.now = 0.0

    def violation(self, text: str) -> None:
        if len(self.violations) < self.limit:
            self.violations.append(f"t={self.now:.4f} {text}")

    # --- during the run

    def observe(self, node: int, generation: int, group: str, log: Any, commit_index: int) -> None:
        """Replica C{node} (in its C{generation}-th life) has committed up to C{commit_index}."""
        seen = self._checked.get((node, generation, group), log.start_index - 1)
        if commit_index <= seen:
            return
        ledger = self.entries.setdefault(group, {})
        for index in range(max(seen + 1, log.start_index), commit_index + 1):
            key = batch_key(log._at(index))
            known = ledger.get(index)
            if known is None:
                marker = self.idempotent_values
                if marker is not None and key[3] and marker in key[4]:
                    batch = log._at(index)
                    if batch.producer_id < 0:
                        self.violation(f"unnumbered: {group} entry {index} (offsets {key[2]}..{key[2] + key[3] - 1}) "
                                       "holds an idempotent producer's messages without a producer id")
                before = ledger.get(index - 1)
                if before is not None and key[2] != before[2] + before[3]:
                    self.violation(f"offset-gap: {group} entry {index} starts at offset {key[2]}, "
                                   f"entry {index - 1} ended at {before[2] + before[3]} (node {node})")
                ledger[index] = key
            elif known != key:
                self.violation(f"divergent: {group} entry {index} at node {node} is term {key[0]} offset {key[2]}, "
                               f"committed elsewhere as term {known[0]} offset {known[2]}")
        self._checked[(node, generation, group)] = commit_index
        if commit_index > self.committed.get(group, 0):
            self.committed[group] = commit_index

    def truncating(self, node: int, group: str, log: Any, from_index: int, own_commit: int = 0) -> None:
        """Replica C{node} is about to cut its log from C{from_index} (not a crash).

        Raft lets a follower replace entries that conflict with its leader's,
        and those were never committed; so a cut is wrong only if it reaches
        what this replica itself knows is committed (C{own_commit}), or an entry
        that I{is} the committed one (the same bytes as the ledger's there; by
        Log Matching, checking where the cut begins covers every entry after it).
        """
        if from_index <= own_commit:
            self.violation(f"truncated-committed: node {node} cut {group} from entry {from_index}, "
                           f"below its own commit index {own_commit}")
            return
        known = self.entries.get(group, {}).get(from_index)
        if known is not None and log.start_index <= from_index <= log.last_index \
                and batch_key(log._at(from_index)) == known:
            self.violation(f"truncated-committed: node {node} cut {group} from entry {from_index}, "
                           f"which holds the committed entry (term {known[0]}, offset {known[2]})")

    def metadata(self, node: int, generation: int, state: ClusterState) -> None:
        """Node C{node} (in its C{generation}-th life) holds C{state} as its applied metadata."""
        index = state.applied_index
        if self._meta_seen.get((node, generation)) == index:
            return  # unchanged since the last sample: metadata moves rarely, encoding it is not free
        self._meta_seen[(node, generation)] = index
        digest = hashlib.sha256(encode_snapshot(state)).digest()
        known = self.meta_states.setdefault(index, (digest, node))
        if known[0] != digest:
            self.violation(f"meta-divergent: node {node}'s metadata as of entry {index} differs from node "
                           f"{known[1]}'s")

    def served(self, node: int, group: str, high_watermark: int, how: str) -> None:
        # Kept per observer: answers to different clients may arrive in another order than made.
        last = self._served.get((node, group, how), 0)
        if high_watermark < last:
            self.violation(f"hw-back: node {node} served {group} with high watermark {high_watermark} "
                           f"after {last} ({how})")
        else:
            self._served[(node, group, how)] = high_watermark

    # --- at the end

    def final(self, logs: Iterable[tuple[int, str, Any]], leaders: dict[str, Any]) -> None:
        """Every log agrees with the ledger; each group's final leader holds every committed entry."""
        for node, group, log in logs:
            ledger = self.entries.get(group, {})
            for index in range(log.start_index, log.last_index + 1):
                known = ledger.get(index)
                if known is not None and batch_key(log._at(index)) != known:
                    self.violation(f"divergent: at the end node {node} holds another entry {index} of {group} "
                                   "than the one committed")
                    break
        for group, log in leaders.items():
            for index in sorted(self.entries.get(group, {})):
                if index >= log.start_index and index > log.last_index:
                    self.violation(f"lost-committed: the final leader of {group} ends at entry {log.last_index}, "
                                   f"entry {index} was committed")
                    break

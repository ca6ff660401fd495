"""The syncs (fsyncs) a node has handed to a worker and not seen finish, by kind.

A hung disk does not fail an fsync, it never finishes one, so nothing that
counts finished syncs (a histogram, a failure) can see it: only the age of the
oldest sync still in flight does.  Every kind of sync counts, because each
stalls something.  A C{log} sync holds back the writes that wait for it.  A
C{hard_state} save (a Raft term and vote, L{streamlog.storage.hardstate})
holds back every vote and message of that term, so a group cannot elect.  A
C{checkpoint} holds back the log's next checkpoint and, through the
checkpoint lock it writes under, the log's truncation, retention and close
(on the reactor thread: the whole node waits if one comes); the periodic
pass's (its sync and checkpoint of a log, on a sync worker) also holds back
that log's later syncs and the pass's other logs, while a due one (written by
a worker of its own) lets the log's syncs go on.  A C{meta_snapshot} (a
cluster node's snapshot of the metadata state, written and fsynced before the
metadata log may drop the prefix it stands for,
L{streamlog.cluster.meta_snapshots}) holds back that compaction and the next
snapshot.  One L{SyncsInFlight} per node is shared by
the group committer (which runs the metadata snapshot writes too) and the
hard-state store; C{/ready} and C{streamlog_fsync_oldest_in_flight_seconds}
read it.  Only syncs in a worker can be seen here: the readers run on the
reactor thread, which a sync run there blocks until it is over.  Sans-io: it
only reads the clock it is given.
"""

from __future__ import annotations

import itertools
from typing import Any

#: The kinds of sync, in the order /metrics lists them.
LOG = "log"
HARD_STATE = "hard_state"
CHECKPOINT = "checkpoint"
META_SNAPSHOT = "meta_snapshot"
KINDS = (LOG, HARD_STATE, CHECKPOINT, META_SNAPSHOT)


class SyncsInFlight:
    """When each sync in flight began, and of which kind; C{clock} is an C{IReactorTime}."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._began: dict[int, tuple[float, str]] = {}
        self._tokens = itertools.count()

    def begin(self, kind: str) -> int:
        """A sync of C{kind} is handed to a worker now: the token L{end} takes."""
        if kind not in KINDS:
            raise ValueError(f"unknown sync kind {kind!r}")
        token = next(self._tokens)
        self._began[token] = (self.clock.seconds(), kind)
        return token

    def end(self, token: int) -> None:
        """The sync of C{token} is back (done or failed); ending it twice is harmless."""
        self._began.pop(token, None)

    def oldest(self) -> tuple[float, str] | None:
        """(seconds, kind) of the oldest sync in flight, or None when none is."""
        if not self._began:
            return None
        began, kind = min(self._began.values())
        return max(0.0, self.clock.seconds() - began), kind

    def oldest_seconds(self, kind: str | None = None) -> float:
        """Seconds the oldest sync in flight (of C{kind}, if given) has taken so far; 0.0 when none."""
        times = [began for began, k in self._began.values() if kind is None or k == kind]
        return max(0.0, self.clock.seconds() - min(times)) if times else 0.0

"""File descriptors: how many the storage holds, and the node-wide bounds on them.

A partition holds three descriptors while it lives, the write descriptors of
its active segment (data, offset index, time index).  A roll opens the new
segment's three before the old one's are closed, and those stay open
(C{retired}) until the log's next sync has fsynced them, so that the sync
thread never fsyncs a descriptor number the reactor has closed and reused.
How many rolled segments may wait so is bounded node-wide (L{RetiredFiles},
C{RETIRED_SEGMENTS}); past that, a roll fsyncs and closes the oldest first,
across logs.  Descriptors for reading are opened on demand, for any segment,
and kept in one node-wide least-recently-used set of at most
C{--read-file-cache} entries (L{ReadFiles}).  The node holds two more for
as long as it runs (C{NODE_FILES}: the data directory's lock and the
hard-state file, L{streamlog.storage.hardstate}).  Everything else (client
connections, the listening socket, the log file, short-lived opens during
recovery, checkpoints, hard-state compactions and the roll itself) comes on
top.  L{plan} divides an open-file limit between them.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import attrs

#: Descriptors a partition holds while it lives: its active segment's data, index and time index.
FILES_PER_PARTITION = 3
#: Descriptors kept aside for everything that is neither a partition, a connection, a cached
#: read descriptor, a rolled segment nor one of C{NODE_FILES}: the listening socket, the log
#: file, the reactor's own, standard streams, and the files recovery, checkpoints (one worker
#: each), a hard-state compaction and a roll open for a moment.
RESERVED = 128
#: Descriptors the storage holds open for the node's whole run besides its partitions' and
#: the read cache's: the data directory's C{.lock} and the hard-state file.
NODE_FILES = 2
#: Default size of the read-descriptor cache (C{--read-file-cache}).
DEFAULT_READ_FILES = 1024
#: Rolled segments, node-wide, whose three write descriptors may wait for their log's next sync.
RETIRED_SEGMENTS = 256
#: The fewest partitions a node is worth starting with: below this the open-file limit is a mistake.
MIN_PARTITIONS = 64


def partitions_within(open_file_limit: int, connections: int, read_files: int,
                      retired: int = RETIRED_SEGMENTS) -> int:
    """The most partitions a node can hold within C{open_file_limit} descriptors.

    With C{connections} client connections open, the read cache full,
    C{retired} rolled segments waiting for a sync and the C{NODE_FILES} open,
    C{RESERVED} descriptors are still free.
    """
    spare = open_file_limit - connections - read_files - retired * FILES_PER_PARTITION - NODE_FILES - RESERVED
    return max(0, spare // FILES_PER_PARTITION)


def descriptors_needed(partitions: int, connections: int, read_files: int, retired: int = RETIRED_SEGMENTS) -> int:
    """Descriptors a node needs at C{partitions}, C{connections}, a full read cache and
    C{retired} rolled segments waiting (C{NODE_FILES} and C{RESERVED} included)."""
    return (partitions + retired) * FILES_PER_PARTITION + connections + read_files + NODE_FILES + RESERVED


@attrs.frozen
class Plan:
    """How a node divides its open-file limit (L{plan})."""

    connections: int
    read_files: int
    retired: int
    partitions: int
    #: Whether connections, the read cache or the rolled-segment pool were cut to fit.
    shrunk: bool = False

    @property
    def descriptors(self) -> int:
        return descriptors_needed(self.partitions, self.connections, self.read_files, self.retired)


class TooFewDescriptors(ValueError):
    """The open-file limit cannot hold a useful node (L{MIN_PARTITIONS} partitions)."""


def plan(open_file_limit: int, connections: int, read_files: int, partitions: int) -> Plan:
    """Fit a node's connections, read cache, rolled segments and partitions in C{open_file_limit}.

    1. If the limit holds everything as configured, nothing changes.
    2. Else, if lowering only the partition cap leaves at least
       C{MIN_PARTITIONS} (or the configured cap, if smaller), that is done.
    3. Else the limit is shared out: at most a quarter to connections, an
       eighth to the read cache and an eighth to rolled segments (never more
       than configured), the rest to partitions.  A hard limit of 1,024 with
       the defaults (1,024 connections, 1,024 read files) so gives 224
       connections, 112 read files, 37 rolled segments and 149 partitions,
       where it once gave 0 partitions.
    4. If even that leaves fewer than C{MIN_PARTITIONS} (or the configured
       cap), raise L{TooFewDescriptors}: the node refuses to start.

    A negative limit is unlimited (C{RLIM_INFINITY}).
    """
    found = _fit(open_file_limit, connections, read_files, partitions)
    if found is not None:
        return found
    least = open_file_limit + 1
    while _fit(least, connections, read_files, partitions) is None:
        least += 1
    raise TooFewDescriptors(
        f"the open-file limit ({open_file_limit}) is too low: even with fewer connections and read files it holds "
        f"fewer than {min(partitions, MIN_PARTITIONS)} partitions; raise it to at least {least} "
        "(ulimit -Hn, LimitNOFILE=)"
    )


def _fit(open_file_limit: int, connections: int, read_files: int, partitions: int) -> Plan | None:
    """Steps 1-3 of L{plan}; None for step 4."""
    full = Plan(connections, read_files, RETIRED_SEGMENTS, partitions)
    if open_file_limit < 0 or full.descriptors <= open_file_limit:
        return full
    wanted = min(partitions, MIN_PARTITIONS)
    room = partitions_within(open_file_limit, connections, read_files)
    if room >= wanted:
        return attrs.evolve(full, partitions=room)
    usable = max(0, open_file_limit - RESERVED)
    shares = Plan(
        connections=min(connections, usable // 4),
        read_files=min(read_files, max(1, usable // 8)),
        retired=min(RETIRED_SEGMENTS, usable // (8 * FILES_PER_PARTITION)),
        partitions=0,
        shrunk=True,
    )
    room = partitions_within(open_file_limit, shares.connections, shares.read_files, shares.retired)
    if room < wanted or shares.connections < 1:
        return None
    return attrs.evolve(shares, partitions=min(partitions, room))


class RetiredFiles:
    """The rolled segments, node-wide, whose write descriptors wait for their log's next sync.

    A roll registers the old segment's files (L{add}) and, before it opens
    the new segment's, makes room (L{make_room}): once C{limit} are open, the
    oldest are fsynced and closed at once, each log's all together (through
    the C{settle} its log gave), until half the pool is free.  That blocks
    the reactor for a few fsyncs per rolled segment, which only happens when
    segments roll faster than syncs come (tiny segments, C{--fsync never}).

    Files are closed by the sync thread (it sets their C{closed} flag) or by a
    settle; the pool only reads the flag, and its own list is touched by the
    reactor thread alone.
    """

    def __init__(self, limit: int = RETIRED_SEGMENTS) -> None:
        self.limit = limit
        self._entries: list[tuple[Any, Any, Callable[[], None]]] = []  # (owner, files, settle), oldest first
        self.settled = 0  # rolled segments this pool fsynced and closed itself (for tests and metrics)

    def add(self, owner: Any, files: Any, settle: Callable[[], None]) -> None:
        """C{owner}'s rolled segment C{files} (with a C{closed} flag) stays open until its sync;
        C{settle()} fsyncs and closes every such file of C{owner}."""
        self._entries.append((owner, files, settle))

    def open_count(self) -> int:
        """How many registered segments' files are still open."""
        self._prune()
        return len(self._entries)

    def make_room(self) -> None:
        """Before a roll opens files: if the pool is full, settle the oldest until half of it is free.

        Raises what a settle raises (L{streamlog.storage.errors.StorageFailed}
        when an fsync fails: a disk fault).
        """
        if len(self._entries) < self.limit:
            return
        self._prune()
        if len(self._entries) < self.limit:
            return
        per_owner = Counter(id(owner) for owner, _, _ in self._entries)
        remaining = len(self._entries)
        target = self.limit // 2
        done: set[int] = set()
        for owner, _, settle in list(self._entries):
            if remaining <= target:
                break
            if id(owner) in done:
                continue
            done.add(id(owner))
            settle()
            self.settled += per_owner[id(owner)]
            remaining -= per_owner[id(owner)]
        self._prune()

    def _prune(self) -> None:
        self._entries = [entry for entry in self._entries if not entry[1].closed]


class ReadFiles:
    """Read descriptors of segment data files, at most C{limit} open, least recently used closed first.

    Keyed by the segment object.  Reads happen on the reactor thread only, so
    a descriptor this cache closes is never in use; the lock only keeps the
    table whole should a close come from another thread.
    """

    def __init__(self, limit: int = DEFAULT_READ_FILES) -> None:
        if limit < 1:
            raise ValueError(f"the read-descriptor cache needs room for at least one file, not {limit}")
        self.limit = limit
        self._open: OrderedDict[Any, int] = OrderedDict()
        self._lock = threading.Lock()
        self.opened = 0  # descriptors opened so far (for tests and metrics)

    def __len__(self) -> int:
        return len(self._open)

    def fd(self, owner: Any, path: str) -> int:
        """A read descriptor of C{path} for C{owner}, opened if it has none."""
        with self._lock:
            fd = self._open.get(owner)
            if fd is not None:
                self._open.move_to_end(owner)
                return fd
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self.opened += 1
            self._open[owner] = fd
            while len(self._open) > self.limit:
                _, old = self._open.popitem(last=False)
                os.close(old)
            return fd

    def close(self, owner: Any) -> None:
        """Close C{owner}'s descriptor if it has one (its file is being deleted or the log closed)."""
        with self._lock:
            fd = self._open.pop(owner, None)
        if fd is not None:
            os.close(fd)

"""File descriptors: how many the storage holds, and a node-wide bound on those it reads with.

A partition holds three descriptors while it lives, the write descriptors of
its active segment (data, offset index, time index).  Descriptors for
reading are opened on demand, for any segment, and kept in one node-wide
least-recently-used set of at most C{--read-file-cache} entries
(L{ReadFiles}), so reading old data from many segments costs no more
descriptors than that.  Everything else (client connections, the listening
socket, the log file, short-lived opens during recovery and checkpoints)
comes on top, which is what L{partitions_within} budgets for.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

#: Descriptors a partition holds while it lives: its active segment's data, index and time index.
FILES_PER_PARTITION = 3
#: Descriptors kept aside for everything that is neither a partition, a connection nor a cached
#: read descriptor: the listening socket, the log file, the reactor's own, standard streams, and
#: the files recovery, checkpoints and rolls open for a moment.
RESERVED = 128
#: Default size of the read-descriptor cache (C{--read-file-cache}).
DEFAULT_READ_FILES = 1024


def partitions_within(open_file_limit: int, connections: int, read_files: int) -> int:
    """The most partitions a node can hold within C{open_file_limit} descriptors.

    With C{connections} client connections open and the read cache full,
    C{RESERVED} descriptors are still free.
    """
    return max(0, (open_file_limit - connections - read_files - RESERVED) // FILES_PER_PARTITION)


def descriptors_needed(partitions: int, connections: int, read_files: int) -> int:
    """Descriptors a node needs at C{partitions}, C{connections} and a full read cache (RESERVED included)."""
    return partitions * FILES_PER_PARTITION + connections + read_files + RESERVED


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

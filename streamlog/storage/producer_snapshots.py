"""The files of a partition's producer-state snapshots (their bytes: L{streamlog.idempotence.snapshot_file}).

They live in the partition directory beside the segments, named by the Raft index they stand
for (C{<20 digits>.producer-state}).  Written whole to a C{.tmp} file and renamed (recovery
removes C{.tmp} leftovers); not fsynced: a file stands for a committed entry already durable
(L{streamlog.cluster.producer_log}), so it stays true whatever a power failure keeps; lost or
torn, it only costs the next start-up a longer replay, since a file that does not decode, or no
longer matches the log, is refused (and removed, the removal fsynced: L{remove_all}).  Only the
newest L{KEEP} are kept.
"""

from __future__ import annotations

import os

from streamlog.storage.checkpoint import fsync_dir
from streamlog.storage.snapshot_files import indexed_name, parse_indexed_name

#: The file's suffix (its stem is the Raft index, 20 digits, as a segment's name).
SUFFIX = ".producer-state"
#: Snapshot files a partition keeps (the newest; an older one still serves if a new leader's log
#: replaced the entry the newest stands for).
KEEP = 2


def file_name(index: int) -> str:
    """The name of the snapshot file as of Raft index C{index}."""
    return indexed_name(index, SUFFIX)


def parse_file_name(name: str) -> int | None:
    """The Raft index of a snapshot file's name, or None if C{name} is not one."""
    return parse_indexed_name(name, SUFFIX)


def listing(directory: str) -> list[tuple[int, str]]:
    """C{(index, path)} of the snapshot files in C{directory}, newest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(i, os.path.join(directory, n)) for n in names if (i := parse_file_name(n)) is not None]
    return sorted(found, reverse=True)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(directory: str, index: int, data: bytes) -> None:
    """Write the snapshot file as of C{index} (replacing one of that index), then drop all but the newest L{KEEP}."""
    path = os.path.join(directory, file_name(index))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    for _, old in listing(directory)[KEEP:]:
        remove(old)


def remove_from(directory: str, index: int) -> None:
    """Remove the snapshot files as of C{index} or later (those entries are being truncated)."""
    for i, path in listing(directory):
        if i >= index:
            remove(path)


def remove_all(directory: str, paths: list[str]) -> None:
    """Remove C{paths} (files of C{directory}) and make the removals durable, so that none comes back."""
    for path in paths:
        remove(path)
    fsync_dir(directory)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

"""State-machine snapshot files: a Raft group's state as of one index, framed and checked.

The metadata group (the controller) keeps its state machine apart from its
log, so compacting the log (dropping a committed prefix) needs the state as
of the cut to be on disk first.  This module knows the file and its frame,
not what the state means (L{streamlog.cluster.meta_snapshots} does):

    magic   8 bytes  b"SLSNAP\\r\\n"
    version u16      1
    index   u64      the Raft index the state is as of (every entry <= it applied)
    term    u64      that entry's term
    length  u32      bytes of payload
    crc     u32      CRC32C of everything before it and of the payload
    payload          the state's bytes

The same bytes travel in the metadata group's InstallSnapshot, so a follower
checks what it is sent exactly as a node checks its own files at start-up.

A store keeps the newest L{KEEP} files of one group, named by index
(C{<20 digits>.snapshot}).  L{DirectorySnapshots.save} writes a file
atomically and durably (temporary file, fdatasync, rename, directory fsync)
before it returns: a caller may drop the log prefix the file stands for as
soon as it does.  A failed fsync raises L{SyncFailed} (fail-stop: never
retried); a failed write (C{ENOSPC}) raises its C{OSError}, the temporary
file removed, so that a later save may try again.  A leftover temporary
file (C{.snapshot.tmp}, a crash mid-save) is removed at start-up by the
recovery of the log whose directory holds the files.  A file that fails its
checks is renamed aside (C{.refused}), kept as evidence, and never read
again.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Protocol, TypeVar

import attrs

from streamlog.storage import sync_failure
from streamlog.storage.checkpoint import datasync, fsync_dir
from streamlog.storage.codec import crc32c

_Arg = TypeVar("_Arg")

MAGIC = b"SLSNAP\r\n"
VERSION = 1
_HEADER = struct.Struct(">8sHQQI")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _CRC.size
#: The file's suffix (its stem is the Raft index, 20 digits, as a segment's name).
SUFFIX = ".snapshot"
#: What a refused file is renamed to (suffix added), so it is kept but never read again.
REFUSED_SUFFIX = ".refused"
#: Snapshot files a group keeps: the newest, and one older to fall back on if the newest is damaged.
KEEP = 2


class SnapshotFileError(ValueError):
    """The bytes are not a whole, undamaged snapshot file of a version this release reads."""


@attrs.frozen
class SnapshotFile:
    """A decoded snapshot file: the state's bytes as of Raft entry (C{index}, C{term})."""

    index: int
    term: int
    payload: bytes


def encode(index: int, term: int, payload: bytes) -> bytes:
    """The file's bytes for C{payload}, the state as of entry (C{index}, C{term})."""
    header = _HEADER.pack(MAGIC, VERSION, index, term, len(payload))
    return header + _CRC.pack(crc32c(payload, crc32c(header))) + payload


def decode(data: bytes) -> SnapshotFile:
    """Check and unframe a snapshot file; L{SnapshotFileError} names what is wrong."""
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise SnapshotFileError(f"{len(data)} bytes: shorter than a snapshot header ({HEADER_SIZE})")
    magic, version, index, term, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotFileError("not a snapshot file (bad magic)")
    if version != VERSION:
        raise SnapshotFileError(f"snapshot file version {version}: this release reads version {VERSION}")
    if len(data) != HEADER_SIZE + length:
        raise SnapshotFileError(f"the header announces {length} bytes of state, the file holds "
                                f"{len(data) - HEADER_SIZE} (torn or truncated)")
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    payload = data[HEADER_SIZE:]
    if crc32c(payload, crc32c(data[: _HEADER.size])) != crc:
        raise SnapshotFileError("CRC mismatch: the snapshot file is damaged")
    return SnapshotFile(index, term, payload)


def indexed_name(index: int, suffix: str) -> str:
    """A file named by the Raft index it stands for: 20 digits (as a segment's name), then C{suffix}."""
    return f"{index:020d}{suffix}"


def parse_indexed_name(name: str, suffix: str) -> int | None:
    """The Raft index of an L{indexed_name} with C{suffix}, or None if C{name} is not one."""
    stem = name[: -len(suffix)]
    if name.endswith(suffix) and len(stem) == 20 and stem.isdigit():
        return int(stem)
    return None


def file_name(index: int) -> str:
    return indexed_name(index, SUFFIX)


def parse_file_name(name: str) -> int | None:
    """The index of a snapshot file's name, or None if C{name} is not one."""
    return parse_indexed_name(name, SUFFIX)


class SnapshotStore(Protocol):
    """Where one group's snapshot files live (a directory, or memory for tests and the simulator)."""

    def save(self, index: int, data: bytes) -> None:
        """Store C{data} as the snapshot as of C{index}, durably before returning; keep the newest L{KEEP}."""

    def listing(self) -> list[int]:
        """The indexes of the files held, newest first."""

    def read(self, index: int) -> bytes:
        """The bytes of the file as of C{index}."""

    def refuse(self, index: int) -> None:
        """Set the file as of C{index} aside: it failed its checks and is never read again."""


class DirectorySnapshots:
    """The snapshot files of one group in C{directory} (the directory of its log)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, index: int) -> str:
        return os.path.join(self.directory, file_name(index))

    def save(self, index: int, data: bytes) -> None:
        """Write the file (tmp, fdatasync, rename, fsync of the directory), then prune the
        oldest.  L{SyncFailed} if an fsync failed (fail-stop); the C{OSError} of a failed
        write, rename or removal (C{ENOSPC}: nothing is lost, a later save tries again)."""
        os.makedirs(self.directory, exist_ok=True)
        path = self.path(index)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                _discard(tmp)  # a full disk: do not keep what cannot be used
                raise
            _synced(lambda f: datasync(f, tmp), fd, tmp)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError:
            _discard(tmp)
            raise
        _synced(fsync_dir, self.directory, self.directory)
        old = self.listing()[KEEP:]
        for i in old:
            try:
                os.unlink(self.path(i))
            except FileNotFoundError:
                pass  # another save's pruning (a write in a worker while a snapshot is installed) took it
        if old:
            _synced(fsync_dir, self.directory, self.directory)

    def listing(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted((i for n in names if (i := parse_file_name(n)) is not None), reverse=True)

    def read(self, index: int) -> bytes:
        with open(self.path(index), "rb") as f:
            return f.read()

    def refuse(self, index: int) -> None:
        path = self.path(index)
        os.replace(path, path + REFUSED_SUFFIX)
        fsync_dir(self.directory)


def _synced(sync: Callable[[_Arg], None], arg: _Arg, what: str) -> None:
    """C{sync(arg)}, its failure raised as L{SyncFailed} (never to be retried)."""
    try:
        sync(arg)
    except OSError as e:  # already told to the fail-stop handler by the sync helper
        raise sync_failure.describe(what, e) from e


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # start-up's recovery removes what is left


class MemorySnapshots:
    """Snapshot files in memory: durable as soon as saved (a test's, or the simulated disk's)."""

    def __init__(self) -> None:
        self.files: dict[int, bytes] = {}
        self.refused: dict[int, bytes] = {}
        self.saves = 0

    def save(self, index: int, data: bytes) -> None:
        self.files[index] = bytes(data)
        self.saves += 1
        for i in self.listing()[KEEP:]:
            del self.files[i]

    def listing(self) -> list[int]:
        return sorted(self.files, reverse=True)

    def read(self, index: int) -> bytes:
        return self.files[index]

    def refuse(self, index: int) -> None:
        self.refused[index] = self.files.pop(index)

"""Errors raised by the durable storage.

Kept in the storage package so the storage layer imports nothing above it;
the broker maps L{StorageCorrupted} to its wire error (the partition is
unavailable), L{InvalidTopicName} to C{INVALID_TOPIC}, L{OutOfDescriptors} to
a refusal (C{TOO_MANY_PARTITIONS}), and treats L{StorageFailed} as fail-stop.
L{CannotLoad} stops the server at start-up with its one-line message.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of storage errors."""


class StorageCorrupted(StorageError):
    """Data that was already synced is damaged; the partition refuses to serve.

    The files are left in place, untouched, for an operator to inspect (see
    docs/storage.md, "Corruption"): dropping them would silently lose records
    that were acknowledged as durable.
    """

    def __init__(self, path: str, position: int, reason: str) -> None:
        super().__init__(f"{path} at byte {position}: {reason}")
        self.path = path
        self.position = position
        self.reason = reason


class StorageFailed(StorageError):
    """A write or fsync failed; nothing written afterwards can be trusted (fail-stop)."""


class SyncFailed(StorageFailed):
    """An fsync (a file's fdatasync, a directory's fsync) failed.

    Never retried: the kernel may have dropped the dirty pages and marked them
    clean, so a second sync that succeeds proves nothing.  A failed write is
    not one of these (L{WriteFailed}).

    C{path} is the file or directory whose sync failed and C{errno} its
    error number, where known (L{streamlog.storage.sync_failure}).
    """

    def __init__(self, message: str, path: str | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class WriteFailed(StorageFailed):
    """A write to a log's files (an append, an index entry, a truncation, a rename, the
    recovery checkpoint) failed, with C{EIO} or C{ENOSPC} alike.

    What the handler of L{streamlog.storage.sync_failure} is told (fail-stop, as for a
    failed sync): part of the write may be in the file (a torn frame in the middle of a
    segment), and the log's memory may be a step ahead of it or behind, so a later sync
    that succeeds would vouch for what is not there.  A write to a temporary file that is
    renamed only once whole (a metadata or producer-state snapshot) is not one of these:
    its failure leaves the old file and the memory as they were, and is tried again.

    C{path} is the file (or directory) written and C{errno} the error number.
    """

    def __init__(self, message: str, path: str | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class InvalidTopicName(StorageError, ValueError):
    """A topic name this data directory cannot hold (bad characters, or too long for its file system)."""


class NameTaken(InvalidTopicName):
    """A topic name the data directory already holds something else under: a file, a
    directory with data but no C{topic.json}, or a topic this node did not load.

    Refused (C{INVALID_TOPIC}) without touching it: it is not the storage's to remove.
    """


class OutOfDescriptors(StorageError):
    """The process ran out of file descriptors while creating a topic.

    Not a disk fault: what the creation had opened was closed and its
    directory removed, so the node is as it was before and keeps serving.
    """


class CannotLoad(StorageError):
    """The data directory cannot be opened as it is; the server refuses to start.

    The message is one line saying which file and what to do: the damage is
    of a kind that serving around it would lose or invent data (a topic's
    C{topic.json}), or the machine cannot hold the data (open-file limit).
    """

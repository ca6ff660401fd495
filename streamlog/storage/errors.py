"""Errors raised by the durable storage.

Kept in the storage package so the storage layer imports nothing above it;
the broker maps L{StorageCorrupted} to its wire error (the partition is
unavailable), and treats L{StorageFailed} as fail-stop.
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

"""An exclusive lock on a data directory, so two servers never share one log.

Two nodes appending to the same partition files both acknowledge the same
offsets with different records, and leave a log neither can read back.  So
whoever opens a data directory for writing first takes an exclusive
C{flock} on C{<data_dir>/.lock} and keeps it for as long as it runs.

Why C{flock} and not the file's existence: the kernel drops the lock when
the process dies, however it dies (SIGKILL, power loss of a network client,
C{os._exit} in fail-stop), so a stale file left behind never blocks the next
start.  Why C{flock} and not C{fcntl} (POSIX) locks: a C{flock} belongs to
the open file, not to the process, so it survives twistd's fork into the
background, and a second attempt from the same process (a test, an
embedding application) is refused like any other.

The file is never removed or replaced (a lock is on the inode: unlinking it
would let a third process lock a new file while the second still holds the
old one).  Its content says who holds it (pid, host, start time, listen
address), rewritten in place by the holder; once nobody holds the lock the
content is only history.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

import orjson

LOCK_FILE = ".lock"


class DataDirLocked(Exception):
    """Another process holds the lock; C{holder} is what its lock file says (or None)."""

    def __init__(self, data_dir: str, holder: dict[str, Any] | None) -> None:
        self.data_dir = data_dir
        self.holder = holder
        super().__init__(f"the data dir {data_dir} is locked by another streamlog server ({describe_holder(holder)})")


def describe_holder(holder: dict[str, Any] | None) -> str:
    """One phrase for a person: who holds the lock, as its lock file says."""
    if not holder or not isinstance(holder, dict):
        return "its lock file does not say which"
    parts = [f"pid {holder.get('pid', '?')}" + (f" on {holder['host']}" if holder.get("host") else "")]
    if holder.get("listen"):
        parts.append(f"listening on {holder['listen']}")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    return ", ".join(parts)


class DataDirLock:
    """An exclusive C{flock} on C{<data_dir>/.lock}, held until L{release}.

    Take it with L{acquire} before opening anything else in the directory.
    """

    def __init__(self, data_dir: str, fd: int) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, LOCK_FILE)
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: str, holder: dict[str, Any]) -> DataDirLock:
        """Lock C{data_dir} (which must exist) and record C{holder} in the lock file.

        Raises L{DataDirLocked} if another process holds it, having changed
        nothing in the directory (the file is opened without truncation and
        only the holder writes it); C{OSError} if the file cannot be opened.
        """
        path = os.path.join(data_dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirLocked(data_dir, read_holder(data_dir)) from None
            raise
        lock = cls(data_dir, fd)
        try:
            lock.update(holder)
        except BaseException:
            lock.release()
            raise
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def update(self, holder: dict[str, Any]) -> None:
        """Rewrite who holds the lock (in place: the lock is on this very inode)."""
        if self._fd is None:
            raise ValueError("the lock was released")
        data = orjson.dumps(holder) + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Let the next server in (closing the file drops the lock); the file stays."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def read_holder(data_dir: str) -> dict[str, Any] | None:
    """What the lock file of C{data_dir} says about its holder (None if unreadable or empty)."""
    try:
        with open(os.path.join(data_dir, LOCK_FILE), "rb") as f:
            holder = orjson.loads(f.read())
    except (OSError, ValueError):  # no file, or read while its holder rewrote it
        return None
    return holder if isinstance(holder, dict) else None

"""A failed durability sync or log write is fatal: the one road from either to fail-stop.

After a failed C{fsync} / C{fdatasync} the page cache is in an unknown state:
Linux may have dropped the dirty pages and marked them clean, so a retry can
"succeed" without the data ever reaching the disk, and a node that goes on
(answering an error, retrying later, serving what it holds) can report as
durable what a power cut then loses (the "fsyncgate" lesson, PostgreSQL
2018; PostgreSQL now PANICs inside its fsync wrapper for this reason).

So a sync failure is never left to the code that asked for the sync: every
durability sync goes through the helpers of L{streamlog.storage.checkpoint}
(C{datasync}, C{datasync_path}, C{fsync_dir}), and they report a failed one
here, on whatever thread it ran, I{before} they raise.  The handler the
server installs (L{streamlog.broker.service.fail_stop}: log the path and the
errno critically, exit status 70) stops the process there and then, so no
C{except} clause above, on the reactor thread or in a worker, can log the
error and carry on, retry the sync, or turn it into an error answer.  The
error is still raised for whoever runs with no handler (start-up, tools,
tests), exactly as before.

A failed I{write} to a log's files (L{report_write}: an append, an index
entry, a truncation, a rename, the recovery checkpoint) takes the same road,
to the same handler, for the same reason: part of it may be in the file (a
torn frame in the middle of a segment) while the log's memory is a step
ahead or behind, and a later sync that succeeds would then vouch for what is
not on disk, or the next append would follow garbage.  C{ENOSPC} is no
different from C{EIO} here (Kafka and Redpanda stop on a failed log write
too).  The storage's write sites report their failure before they raise,
as the sync helpers do; a site that can show both its memory and its file
are exactly as before the write (a temporary file not yet renamed, a roll
refused for want of descriptors) raises without reporting, and says why.

Start-up installs a handler of its own that only records (L{Recorder}):
L{streamlog.broker.service.BrokerService.open} then refuses to start
(exit status 1, one line naming the file and the errno) even where a caller
caught the error and went on.

Kept in the storage package, importing nothing above it: the broker installs
its handler with L{install}, and a test replaces it the same way.
"""

from __future__ import annotations

import errno as errno_codes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from streamlog.storage.errors import StorageFailed, SyncFailed, WriteFailed

Handler = Callable[[StorageFailed], object]

_handler: Handler | None = None


def install(handler: Handler | None) -> Handler | None:
    """Make C{handler} the one called on every failed durability sync and log write; return the one before."""
    global _handler
    previous, _handler = _handler, handler
    return previous


def installed() -> Handler | None:
    """The handler called on a failed durability sync or log write now (C{None}: the error is only raised)."""
    return _handler


def _code(error: OSError) -> str:
    return errno_codes.errorcode.get(error.errno or 0, str(error.errno))


def describe(what: str, error: OSError) -> SyncFailed:
    """The L{SyncFailed} for C{error}, the failed sync of C{what} (a path), naming the errno."""
    return SyncFailed(f"fsync of {what} failed: {error.strerror or error} ({_code(error)})", path=what, errno=error.errno)


def describe_write(what: str, error: OSError, action: str = "write of") -> WriteFailed:
    """The L{WriteFailed} for C{error}, the failed C{action} C{what} (a path: "append to
    /d/t/0/00000000000000000001.log failed: ..."), naming the errno."""
    return WriteFailed(f"{action} {what} failed: {error.strerror or error} ({_code(error)})", path=what,
                       errno=error.errno)


def report(what: str, error: OSError) -> SyncFailed:
    """A sync of C{what} failed with C{error}: tell the handler (which, in a server, does not return).

    Returns the L{SyncFailed} it was told, for a caller that raises it.
    """
    return _tell(error, describe(what, error))


def report_write(what: str, error: OSError, action: str = "write of") -> StorageFailed:
    """A write to the log file C{what} (C{action}: "append to", "truncation of", ...) failed with
    C{error}: tell the handler (which, in a server, does not return).

    An C{error} that was told already (a sync helper's, raised through the write site's
    C{except}) is not told again.  Returns what the handler was told.
    """
    told = told_of(error)
    if told is not None:
        return told
    return _tell(error, describe_write(what, error, action))


def told_of(error: BaseException) -> StorageFailed | None:
    """What the handler was told of C{error} (by L{report} or L{report_write}), or C{None}."""
    return getattr(error, _TOLD, None)


def tell(failure: StorageFailed) -> StorageFailed:
    """Tell the handler of C{failure}, a storage fault that is no C{OSError} (a write that could
    not even be handed to its worker).  Returns it."""
    handler = _handler
    if handler is not None:
        handler(failure)
    return failure


_TOLD = "_streamlog_fail_stop_told"

_F = TypeVar("_F", bound=StorageFailed)


def _tell(error: OSError, failure: _F) -> _F:
    """Tell the handler of C{failure}; C{error} (raised on to the callers) remembers it was told."""
    try:
        setattr(error, _TOLD, failure)
    except AttributeError:
        pass  # an exception type without a __dict__: it may be told twice, which costs nothing
    tell(failure)
    return failure


def descriptor_path(fd: int) -> str:
    """The path behind descriptor C{fd}, for a message (Linux's C{/proc}; else the number)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"file descriptor {fd}"


class Recorder:
    """A handler that keeps the failures it is told, from any thread (start-up's, a test's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures: list[StorageFailed] = []

    def __call__(self, failure: StorageFailed) -> None:
        with self._lock:
            self.failures.append(failure)

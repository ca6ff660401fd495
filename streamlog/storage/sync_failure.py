"""A failed durability sync is fatal: the one road from a failed fsync to fail-stop.

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

from streamlog.storage.errors import SyncFailed

Handler = Callable[[SyncFailed], object]

_handler: Handler | None = None


def install(handler: Handler | None) -> Handler | None:
    """Make C{handler} the one called on every failed durability sync; return the one before."""
    global _handler
    previous, _handler = _handler, handler
    return previous


def installed() -> Handler | None:
    """The handler called on a failed durability sync now (C{None}: the error is only raised)."""
    return _handler


def describe(what: str, error: OSError) -> SyncFailed:
    """The L{SyncFailed} for C{error}, the failed sync of C{what} (a path), naming the errno."""
    code = errno_codes.errorcode.get(error.errno or 0, str(error.errno))
    return SyncFailed(f"fsync of {what} failed: {error.strerror or error} ({code})", path=what, errno=error.errno)


def report(what: str, error: OSError) -> SyncFailed:
    """A sync of C{what} failed with C{error}: tell the handler (which, in a server, does not return).

    Returns the L{SyncFailed} it was told, for a caller that raises it.
    """
    failure = describe(what, error)
    handler = _handler
    if handler is not None:
        handler(failure)
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
        self.failures: list[SyncFailed] = []

    def __call__(self, failure: SyncFailed) -> None:
        with self._lock:
            self.failures.append(failure)

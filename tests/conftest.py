"""Shared fixtures (helpers such as result_of live in streamlog.testing)."""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Any

import pytest
from twisted.internet.task import Clock

from streamlog.http.site import HTTP_LISTEN_ENV
from streamlog.testing import ClusterHarness

# No server a test starts binds the HTTP listener's fixed default port (9644) of this shared
# machine unasked: its children inherit this; a test that wants HTTP gives --http-listen tcp:0.
os.environ[HTTP_LISTEN_ENV] = "none"


@pytest.fixture(autouse=True)
def _sync_failure_handler_restored():
    """Every test ends with the handler of failed syncs it began with: a test that started a
    BrokerService (which installs fail_stop, exit 70) must not leave it to a later test that
    injects EIO on purpose."""
    from streamlog.storage import sync_failure

    before = sync_failure.installed()
    yield
    sync_failure.install(before)


@pytest.fixture
def sync_failures():
    """A L{sync_failure.Recorder} installed as the handler of failed durability syncs (what a
    server's fail_stop would be told), for the test's length."""
    from streamlog.storage import sync_failure

    recorder = sync_failure.Recorder()
    sync_failure.install(recorder)
    yield recorder


@pytest.fixture
def clock():
    """A task.Clock; the test fails if it leaves timers pending (stop what you start)."""
    c = Clock()
    yield c
    leftover = [call for call in c.getDelayedCalls() if call.active()]
    assert not leftover, f"timers left pending: {leftover}"


@pytest.fixture
def cluster():
    """Three cluster nodes (memory storage, in-memory peer links) on a Clock of their own, formed."""
    c = ClusterHarness(3)
    c.run_until_formed()
    yield c
    c.stop()


class FailingSyncs:
    """Replaces C{os.fsync} and C{os.fdatasync}: a sync of a path C{match} accepts fails with
    EIO (a disk fault), every other sync is real.  C{failed} lists the paths refused."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.match: Any = None
        self.failed: list[str] = []
        real_fsync, real_fdatasync = os.fsync, os.fdatasync
        monkeypatch.setattr(os, "fsync", lambda fd: self._sync(real_fsync, fd))
        monkeypatch.setattr(os, "fdatasync", lambda fd: self._sync(real_fdatasync, fd))

    def __call__(self, match: Any) -> FailingSyncs:
        """Fail the syncs of paths C{match} accepts (a path's start, a predicate; None: none)."""
        self.match = match
        return self

    def _sync(self, real: Any, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        match = self.match
        if match is not None and (match(path) if callable(match) else path.startswith(str(match))):
            self.failed.append(path)
            raise OSError(errno.EIO, "Input/output error")
        real(fd)


@pytest.fixture
def eio_syncs(monkeypatch):
    """L{FailingSyncs}: call it with a path (or a predicate) whose syncs are to fail with EIO."""
    return FailingSyncs(monkeypatch)


#: How long a probe dial must stay unanswered to call the listener a black hole (seconds).
PROBE = 0.3


@pytest.fixture
def black_hole():
    """The port of a listener on 127.0.0.1 that answers no dial (its accept queue is full: the
    kernel drops further SYNs, as a host powered off does; tests/client/test_connect_blackhole.py);
    skips the test if it cannot be made."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    held = []
    port = None
    try:
        for _ in range(8):  # fill the accept queue; bounded: a kernel that answers every dial ends it
            dial = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            dial.setblocking(False)
            held.append(dial)
            dial.connect_ex(address)
            _, answered, _ = select.select([], [dial], [], PROBE)
            if not answered:  # the queue is full: this SYN (and the next ones) are dropped
                port = address[1]
                break
        if port is None:
            pytest.skip("dials to a listener with a full accept queue are answered here: no black hole")
        yield port
    finally:
        for dial in held:
            dial.close()
        listener.close()


class FailingWrites:
    """Replaces the calls that change a file (C{os.write}, C{os.writev}, C{os.ftruncate},
    C{os.replace}, C{os.rename}, C{os.unlink}, C{os.open} with C{O_CREAT}): one on a path
    C{match} accepts fails with C{error} (ENOSPC unless told), every other is real.
    C{failed} lists (call, path) of those refused.  Syncs are untouched (L{FailingSyncs})."""

    _CALLS = ("write", "writev", "ftruncate", "replace", "rename", "unlink", "open")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.match: Any = None
        self.calls: tuple[str, ...] = self._CALLS
        self.error = errno.ENOSPC
        self.failed: list[tuple[str, str]] = []
        for name in self._CALLS:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def __call__(self, match: Any, calls: tuple[str, ...] | None = None, error: int = errno.ENOSPC) -> FailingWrites:
        """Fail C{calls} (all by default) on paths C{match} accepts (a path's start, a predicate; None: none)."""
        self.match, self.calls, self.error = match, calls or self._CALLS, error
        return self

    def _fails(self, name: str, path: str) -> bool:
        match = self.match
        return (match is not None and name in self.calls
                and (match(path) if callable(match) else path.startswith(str(match))))

    def _wrap(self, name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            first = args[0]
            if name == "open" and not (args[1] if len(args) > 1 else kwargs.get("flags", 0)) & os.O_CREAT:
                return real(*args, **kwargs)
            path = os.readlink(f"/proc/self/fd/{first}") if isinstance(first, int) else os.fspath(first)
            if self._fails(name, path):
                self.failed.append((name, path))
                raise OSError(self.error, os.strerror(self.error))
            return real(*args, **kwargs)

        return call


@pytest.fixture
def failing_writes(monkeypatch):
    """L{FailingWrites}: call it with a path (or a predicate) whose writes are to fail (ENOSPC)."""
    return FailingWrites(monkeypatch)

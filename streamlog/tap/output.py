"""Writing messages out as whole lines, knowing exactly how many got there.

A consumer may only move its position past messages it delivered.  A
buffered file object cannot tell it that: after a short write or an error
(EPIPE from a closed pipe, ENOSPC from a full disk) some unknown part of the
buffer went out.  L{LineOutput} writes straight to the file descriptor and
counts the bytes the kernel took, so after a failure it knows which lines
were written whole; on a regular file it also cuts a torn last line, so that
the file only ever holds whole lines and a restarted consumer appends after
them.

It also notices a pipe whose reader went away (C{| head -1}) before the next
write fails: the write end of a pipe polls as C{POLLERR} once no reader is
left, so an idle consumer can stop instead of waiting forever for a message
to write.
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
from collections.abc import Callable, Sequence


class OutputFailed(Exception):
    """Writing failed after C{lines} whole lines of the batch were written.

    @ivar lines: how many of the lines given to L{LineOutput.write_lines} were written whole.
    @ivar reason: what went wrong, for a log line.
    @ivar errno: the C{OSError}'s errno (C{EPIPE}: the reader went away), None if the write took nothing.
    """

    def __init__(self, lines: int, reason: str, errno: int | None = None) -> None:
        super().__init__(reason)
        self.lines = lines
        self.reason = reason
        self.errno = errno


class LineOutput:
    """Lines to a file descriptor, with an exact count of what was written.

    @param fd: where to write (blocking or not: a full pipe is waited for,
        which also holds back the consumer, as it should).
    @param name: how log lines name it ("standard output", a path).
    @param write: C{os.write}, or a stand-in that fails on purpose (tests).
    @param cut_torn_line: on a failure, truncate a regular file back to the
        end of the last whole line.
    """

    def __init__(self, fd: int, name: str, write: Callable[[int, memoryview], int] = os.write,
                 cut_torn_line: bool = False, owns_fd: bool = False) -> None:
        self.fd = fd
        self.name = name
        self._write = write
        self._owns_fd = owns_fd
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            mode = 0
        self._regular = stat.S_ISREG(mode)
        self._pipe = stat.S_ISFIFO(mode)
        self._cut = cut_torn_line and self._regular

    @classmethod
    def stdout(cls) -> LineOutput:
        """The process's real standard output (fd 1, whatever twistd did to C{sys.stdout})."""
        return cls(1, "standard output", cut_torn_line=True)

    @classmethod
    def append_to(cls, path: str) -> LineOutput:
        """A file, appended to (created if missing)."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return cls(fd, path, cut_torn_line=True, owns_fd=True)

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Write every line (each ending in C{\\n}) or raise L{OutputFailed} saying how many were."""
        data = b"".join(lines)
        start = self._position() if self._cut else 0
        view = memoryview(data)
        done = 0
        while done < len(data):
            try:
                n = self._write(self.fd, view[done:])
            except BlockingIOError:  # a non-blocking descriptor that is full: wait until it takes more
                select.select([], [self.fd], [], 1.0)
                continue
            except OSError as e:
                self._failed(data, done, start, f"writing to {self.name} failed: {e.strerror or e}", e.errno)
            if n <= 0:
                self._failed(data, done, start, f"writing to {self.name} failed: it took no bytes", None)
            done += n

    def _position(self) -> int:
        """Where the next write lands in the regular file: its end when appending, else the offset."""
        if fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_APPEND:
            return os.fstat(self.fd).st_size
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def _failed(self, data: bytes, done: int, start: int, reason: str, error_number: int | None) -> None:
        whole = data.count(b"\n", 0, done)
        if self._cut and whole < len(data) and done:
            kept = data.rfind(b"\n", 0, done) + 1  # 0 if not even the first line is whole
            if kept < done:
                try:
                    os.ftruncate(self.fd, start + kept)
                    reason += f" (the torn last line was cut: {done - kept} bytes)"
                except OSError as e:
                    reason += f" (could not cut the torn last line: {e.strerror or e})"
        raise OutputFailed(whole, reason, error_number)

    def closed(self) -> str | None:
        """Why nothing written now could be read, if that is already known (a pipe without a reader)."""
        if not self._pipe:
            return None
        poller = select.poll()
        poller.register(self.fd, 0)  # no events asked: POLLERR and POLLHUP are always reported
        for _, events in poller.poll(0):
            if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                return f"the reader of {self.name} went away (the pipe is closed)"
        return None

    def close(self) -> None:
        if self._owns_fd:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self._owns_fd = False


def output_closed(fd: int) -> bool:
    """Whether C{fd} is a pipe whose reader went away (for C{streamlog consume --follow | head})."""
    return LineOutput(fd, "fd").closed() is not None

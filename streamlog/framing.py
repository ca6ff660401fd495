"""JSON-lines framing shared by the server and the client: lines split in linear time.

Its own module so that the client (C{streamlog.client}) can frame lines
without importing the server's protocol, broker or storage (ARCHITECTURE.md
decision 13).
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.basic import LineReceiver


class FastLineReceiver(LineReceiver):
    """A LineReceiver that splits a read into lines in linear time.

    Twisted's C{LineReceiver.dataReceived} re-splits the remaining buffer once
    per line, so N small pipelined lines in one read cost O(N^2) bytes copied.
    This walks the buffer with C{find} instead; pausing (C{pauseProducing}),
    raw mode and C{MAX_LENGTH} behave as in the base class.
    """

    delimiter = b"\n"

    #: A partial line arriving in many reads, accumulated in one buffer: appending to a
    #: bytearray is amortized O(1) and holds one object, where a list of the reads held
    #: one bytes object (and its ~33-byte header) per read: a peer dripping 1-byte
    #: segments cost tens of bytes of server memory per byte it sent.
    _partial: bytearray | None = None

    def dataReceived(self, data: bytes) -> Any:
        if self._busyReceiving:
            self._buffer += data
            return None
        if (
            data
            and self.line_mode
            and not self.paused
            and self.delimiter not in data
            and (self._partial is not None or self.delimiter not in self._buffer)
        ):
            # Still inside one long line: keep the reads in one buffer and split it once,
            # when the line ends, instead of copying the growing buffer on every read.
            if self._partial is None:
                self._partial = bytearray(self._buffer)
                self._buffer = b""
            self._partial += data
            if len(self._partial) > self.MAX_LENGTH:
                rest = bytes(self._partial)
                self._partial = None
                return self.lineLengthExceeded(rest)
            return None
        if self._partial is not None:
            self._partial += data
            data = bytes(self._partial)
            self._partial = None
        self._busyReceiving = True
        try:
            buffer = self._buffer + data if self._buffer else data
            self._buffer = b""
            while True:
                buffer, why = self._consume(buffer)
                if why is not None:
                    return why
                if self._buffer:  # data that arrived while we were busy
                    buffer += self._buffer
                    self._buffer = b""
                    if not self.paused:
                        continue
                break
            self._buffer = buffer
            return None
        finally:
            self._busyReceiving = False

    def has_partial_line(self) -> bool:
        """Whether an incomplete line is waiting for its end (complete lines
        held back while reading is paused do not count)."""
        if self._partial is not None:
            return True
        return bool(self._buffer) and self.delimiter not in self._buffer

    def end_input(self) -> None:
        """The input ended (the peer half-closed): its last line needs no newline.

        A non-blank partial line is ended as if its newline had come (and is
        handled now, or when reading resumes if it is paused); a blank one is
        dropped.
        """
        if not self.line_mode:
            return
        if self._partial is not None:
            tail = bytes(self._partial)
        else:
            tail = self._buffer.rpartition(self.delimiter)[2]
        if tail.strip():
            self.dataReceived(self.delimiter)
        elif self._partial is not None:
            self._partial = None
        elif tail:
            self._buffer = self._buffer[: len(self._buffer) - len(tail)]

    def has_unread_input(self) -> bool:
        """Whether received bytes still wait to be handled (complete lines held back, or a partial one)."""
        return self._partial is not None or bool(self._buffer)

    def _consume(self, buffer: bytes) -> tuple[bytes, Any]:
        delimiter = self.delimiter
        limit = self.MAX_LENGTH
        pos = 0
        while not self.paused:
            if not self.line_mode:
                rest = buffer[pos:]
                if rest:
                    why = self.rawDataReceived(rest)
                    if why:
                        return b"", why
                return b"", None
            end = buffer.find(delimiter, pos)
            if end < 0:
                if len(buffer) - pos > limit:
                    return b"", self.lineLengthExceeded(buffer[pos:])
                break
            if end - pos > limit:
                return b"", self.lineLengthExceeded(buffer[pos:])
            line = buffer[pos:end]
            pos = end + len(delimiter)
            why = self.lineReceived(line)
            if why or (self.transport is not None and self.transport.disconnecting):
                return buffer[pos:], why
        return buffer[pos:], None

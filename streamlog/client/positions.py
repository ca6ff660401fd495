"""Where a reader starts in a partition: the C{--from} forms, parsed once for every client.

The consumer daemon, C{streamlog consume} and the library's L{Consumer} all
accept the same forms::

    earliest        the first message still stored (the log start)
    latest          the end: only messages that arrive from now on
    N               offset N
    -N              N messages before the end (the log start if fewer are stored)
    @MS             the first message stored at or after MS (milliseconds since the epoch)
    2026-12-01T10:00:00Z, 2026-12-01 10:00, 2026-12-01
                    the same, as an ISO 8601 date or time (without a zone: local time)

A L{Start} is resolved per partition: "earliest", "latest" and a timestamp by
a C{ListOffsets}, "N before the end" from the partition's log start and high
watermark.  So with several partitions, C{-10} means the last ten of each.
Parsing and the arithmetic are pure; the clients do the requests.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import attrs

#: The kinds of L{Start}.
KINDS = ("earliest", "latest", "offset", "back", "timestamp")

FORMS = "earliest, latest, an offset N, -N (N before the end), @MS or an ISO 8601 time"


@attrs.frozen
class Start:
    """Where to start: C{kind} is one of L{KINDS}; C{value} the offset, count or timestamp (ms)."""

    kind: str
    value: int = 0

    def __attrs_post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown start kind {self.kind!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < 0:
            raise ValueError(f"a start value must be an integer >= 0, got {self.value!r}")

    @property
    def at(self) -> str | int | None:
        """The C{at} of the C{ListOffsets} that resolves it, or None if none does."""
        if self.kind in ("earliest", "latest"):
            return self.kind
        if self.kind == "timestamp":
            return self.value
        return None

    def offset_in(self, log_start_offset: int, high_watermark: int) -> int | None:
        """The offset in a partition holding [log_start_offset, high_watermark), if no request is needed.

        None for a timestamp (only the server knows which offset holds it).
        """
        if self.kind == "earliest":
            return log_start_offset
        if self.kind == "latest":
            return high_watermark
        if self.kind == "offset":
            return self.value
        if self.kind == "back":
            return max(log_start_offset, high_watermark - self.value)
        return None

    def __str__(self) -> str:
        if self.kind in ("earliest", "latest"):
            return self.kind
        if self.kind == "offset":
            return f"offset {self.value}"
        if self.kind == "back":
            return f"{self.value} before the end"
        when = _dt.datetime.fromtimestamp(self.value / 1000, _dt.UTC).isoformat(timespec="milliseconds")
        return f"time {when.replace('+00:00', 'Z')}"


EARLIEST = Start("earliest")
LATEST = Start("latest")


def parse_start(text: Any) -> Start:
    """A L{Start} from one of the forms above (an int >= 0 is an offset; a L{Start} is returned as is).

    @raise ValueError: with a message that names the accepted forms.
    """
    if isinstance(text, Start):
        return text
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"an offset must be 0 or more, got {text} (for N before the end, pass the string '-N')")
        return Start("offset", text)
    if not isinstance(text, str):
        raise ValueError(f"cannot start from {text!r}: use {FORMS}")
    s = text.strip()
    if s in ("earliest", "latest"):
        return Start(s)
    if s.isdigit():
        return Start("offset", int(s))
    if s.startswith("-") and s[1:].isdigit():
        return Start("back", int(s[1:]))
    if s.startswith("@") and s[1:].isdigit():
        return Start("timestamp", int(s[1:]))
    try:
        when = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"cannot start from {text!r}: use {FORMS}") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as date(1) reads it
    ms = int(when.timestamp() * 1000)
    if ms < 0:
        raise ValueError(f"cannot start from {text!r}: it is before 1970")
    return Start("timestamp", ms)

"""What the producer and consumer daemons share: where to connect, and the checks of it.

Each daemon's C{Options} extends L{ClientOptions} (Twisted merges the
C{optParameters} of the classes) with its own C{--topic}, C{--interval} and
C{--count} help texts and other parameters, and calls C{super().postOptions()}.
"""

from __future__ import annotations

from twisted.python import usage

from streamlog import errors, wire
from streamlog.client.connection import DEFAULT_ADDRESS


class ClientOptions(usage.Options):
    synopsis = "--topic TOPIC [options]"

    optParameters = [
        ["connect", "c", DEFAULT_ADDRESS, "Server to connect to: an endpoint (tcp:HOST:PORT) or HOST:PORT."],
        ["timeout", None, 10.0, "Seconds to wait for a connection and an answer.", float],
        ["retry-max", None, 10.0, "Longest backoff between reconnects (and resends), in seconds.", float],
    ]

    def postOptions(self) -> None:
        if self["topic"] is None:
            raise usage.UsageError("--topic is required")
        try:
            wire.check_topic_name(self["topic"])
        except errors.StreamlogError as e:
            raise usage.UsageError(f"--topic: {e.message}") from None
        if self["interval"] <= 0:
            raise usage.UsageError("--interval must be positive")
        if self["count"] is not None and self["count"] < 1:
            raise usage.UsageError("--count must be at least 1")
        if self["timeout"] <= 0 or self["retry-max"] <= 0:
            raise usage.UsageError("--timeout and --retry-max must be positive")

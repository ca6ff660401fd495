"""C{twistd streamlog-consumer}: poll one partition periodically, print each message as a JSON line.

Each message goes to the process's real standard output (fd 1, not
twistd's redirected C{sys.stdout}) as one JSON object per line:
C{{"offset", "timestamp", "key", "value", "headers"}}, exactly as the server
serves it; log lines go to twistd's log, never to that stream.

A C{LoopingCall} ticks every C{--interval} seconds; a tick with no Poll
outstanding asks for the next messages, waiting up to C{--max-wait-ms} on the
server (long poll), and while the answers are full it asks again at once to
catch up.  The position lives in the L{Consumer}: it only moves past
messages once they are printed, so a reconnect resumes where printing
stopped, and no message is printed twice.

Errors:
  - unreachable server, lost connection, timeout, C{UNKNOWN_TOPIC},
    C{UNKNOWN_PARTITION}, C{PARTITION_UNAVAILABLE}, C{NOT_LEADER}: logged
    (once per kind of trouble), retried on the next tick, from the same position.
  - C{OFFSET_OUT_OF_RANGE}, with C{--on-out-of-range reset} (the default): a
    position before the log start (retention removed those messages) moves to
    the log start; a position past the end (C{--from N} ahead of the log, or
    the log was lost, e.g. a restarted C{--storage memory} server) moves to the
    end.  Either jump is logged with the offsets.  With C{exit}, it stops with status 1.
  - anything else (e.g. C{INVALID_PARAMS}): logged, exit status 1.

Exit status: 0 after C{--count N} messages are printed; 1 after a permanent
error; otherwise it runs until stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson
from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from streamlog import errors, wire
from streamlog.client.connection import StreamlogClient
from streamlog.client.consumer import Consumer
from streamlog.tap.client_daemon import ClientOptions, LoopingClientService

#: Errors after which the consumer simply polls again on the next tick.
TRANSIENT = (
    errors.ConnectionLost, errors.Timeout, errors.UnknownTopic, errors.UnknownPartition,
    errors.PartitionUnavailable, errors.NotLeader, errors.TooManyConnections, errors.Internal,
    errors.StorageError,
)


class Options(ClientOptions):
    longdesc = (
        "Poll a streamlog partition every --interval seconds and print each message as one "
        "JSON line on standard output (logs go to twistd's log). Keeps its position across "
        "reconnects and never prints a message twice. Exit status 0 after --count messages, "
        "1 after a permanent error."
    )

    optParameters = [
        ["topic", "t", None, "Topic to read (required)."],
        ["partition", "p", 0, "Partition to read.", int],
        ["from", "f", "earliest", "Where to start: earliest, latest or an offset."],
        ["interval", "i", 1.0, "Seconds between polls.", float],
        ["max-wait-ms", "w", 500, "How long a poll waits on the server for new messages (long poll), in ms.", int],
        ["max-messages", None, None, "Most messages per poll (default: the server's).", int],
        ["count", "n", None, "Stop (exit status 0) after printing this many messages.", int],
        ["on-out-of-range", None, "reset",
         "On OFFSET_OUT_OF_RANGE: reset (jump to the log start or end, logged) or exit (status 1)."],
        ["output", "o", "-", "Where to write the JSON lines: - for the real standard output (fd 1), or a file "
                             "(appended). Note: twistd -n logs to stdout too unless given --logfile."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        start = self["from"]
        if start not in ("earliest", "latest"):
            try:
                start = int(start)
            except ValueError:
                raise usage.UsageError("--from must be earliest, latest or an offset") from None
            if start < 0:
                raise usage.UsageError("--from offset must be 0 or more")
        self["start"] = start
        if self["partition"] < 0:
            raise usage.UsageError("--partition must be 0 or more")
        if not 0 <= self["max-wait-ms"] <= wire.DEFAULT_LIMITS.max_wait_ms:
            raise usage.UsageError(f"--max-wait-ms must be between 0 and {wire.DEFAULT_LIMITS.max_wait_ms}")
        if self["max-messages"] is not None and self["max-messages"] < 1:
            raise usage.UsageError("--max-messages must be at least 1")
        if self["on-out-of-range"] not in ("reset", "exit"):
            raise usage.UsageError("--on-out-of-range must be 'reset' or 'exit'")


def real_stdout() -> BinaryIO:
    """The process's standard output, whatever twistd did to C{sys.stdout}."""
    return sys.__stdout__.buffer  # type: ignore[union-attr]


class ConsumerService(LoopingClientService):
    """The consumer daemon's logic (testable with an injected client, clock and output)."""

    _log = Logger()
    role = "consumer"

    def __init__(self, options: Options, client: StreamlogClient | None = None, clock: Any = None,
                 reactor: Any = None, out: BinaryIO | None = None,
                 on_finish: Callable[[int], object] | None = None) -> None:
        super().__init__(options, client, clock, reactor, on_finish)
        self.out = out
        self.consumer: Consumer | None = None
        self.printed = 0
        self._polling = False
        self._trouble: str | None = None

    def _started(self) -> None:
        if self.out is None:
            self.out = real_stdout() if self.options["output"] == "-" else open(self.options["output"], "ab")
        self.consumer = Consumer(
            self.client, self.options["topic"], self.options["partition"], start=self.options["start"],
            max_messages=self.options["max-messages"], max_wait_ms=self.options["max-wait-ms"],
            prefetch=False,
        )

    def _stop(self) -> None:
        super()._stop()
        if self.consumer is not None:
            self.consumer.close()

    def _tick(self) -> None:
        if self._polling or self._finished:
            return
        self._polling = True
        d = self.consumer.poll()
        d.addCallbacks(self._got, self._failed)
        d.addErrback(lambda f: self._log.failure("handling a poll failed", f))

    def _got(self, messages: list[dict[str, Any]]) -> None:
        self._polling = False
        if self._trouble is not None:
            self._log.info("polling {topic}/{partition} works again at offset {offset}",
                           topic=self.options["topic"], partition=self.options["partition"],
                           offset=self.consumer.position)
            self._trouble = None
        count = self.options["count"]
        if count is not None:
            messages = messages[: count - self.printed]
        if messages:
            self.out.write(b"".join(orjson.dumps(m) + b"\n" for m in messages))
            self.out.flush()
            self.printed += len(messages)
        if count is not None and self.printed >= count:
            self._finish(0)
            return
        consumer = self.consumer
        if messages and consumer.high_watermark is not None and consumer.position < consumer.high_watermark:
            self._tick()  # more is there: catch up without waiting for the next tick

    def _failed(self, failure: Failure) -> None:
        self._polling = False
        if self._finished:
            return
        error = failure.value
        if isinstance(error, errors.OffsetOutOfRange):
            self._out_of_range(error)
            return
        if isinstance(error, TRANSIENT):
            kind = error.code
            if kind != self._trouble:
                self._log.warn("polling {topic}/{partition} failed ({code}: {error}); retrying every tick "
                               "from offset {offset}", topic=self.options["topic"],
                               partition=self.options["partition"], code=kind, error=error,
                               offset=self.consumer.position)
                self._trouble = kind
            return
        code = getattr(error, "code", type(error).__name__)
        self._log.error("polling failed permanently: {code}: {error}; stopping", code=code, error=error)
        self._finish(1)

    def _out_of_range(self, error: errors.OffsetOutOfRange) -> None:
        consumer = self.consumer
        position = consumer.position
        start = error.details.get("log_start_offset")
        end = error.details.get("high_watermark")
        if self.options["on-out-of-range"] == "exit" or not isinstance(start, int) or not isinstance(end, int):
            self._log.error("offset {offset} is out of range [{start}, {end}]: {error}; stopping",
                            offset=position, start=start, end=end, error=error)
            self._finish(1)
            return
        target = start if position is not None and position < start else end
        self._log.warn("offset {offset} is out of range (the log holds [{start}, {end})): moving to {target}; "
                       "{skipped}", offset=position, start=start, end=end, target=target,
                       skipped=(f"{start - position} messages were removed by retention"
                                if position is not None and position < start
                                else "the log is shorter than this consumer's position"))
        consumer.seek(target)


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return ConsumerService(options, reactor=reactor)

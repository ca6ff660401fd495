"""C{twistd streamlog-producer}: send messages to a topic periodically, log each acknowledgement.

A C{LoopingCall} ticks every C{--interval} seconds.  Without C{--stdin} each
tick makes one message (C{--message TEXT}, or C{"message N"} with a counter
from 1); with C{--stdin} each input line is one message, read by a daemon
thread so the reactor never blocks, and each tick sends what has arrived.

Delivery: messages wait in one ordered queue; at most one batch (the
queue's head, up to C{--batch-size}) is handed at a time to an idempotent
L{streamlog.client.Producer} (C{--no-idempotence} turns that off).  When it
is acknowledged, each message's partition and offset are logged and the
messages leave the queue.  The Producer resends what a lost connection, a
timeout or a leader change left unanswered with the same sequence numbers,
so the partition stores it once and answers with its first offsets; it
follows a moving leader (L{streamlog.client.cluster}).  When a batch still
fails with a transient error (partition unavailable, unknown topic, a
delivery timeout) the same messages are handed over again, in the same
order, after an exponential backoff with jitter: nothing is dropped.  Only
such a second hand-over of a batch whose first may have landed (a delivery
timeout after a lost answer, a storage error) can store it twice, and the
log says so.  An error that cannot heal by waiting (message too large,
invalid parameters, the producer fenced) is logged and the producer stops
with exit status 1.

Exit status: 0 once C{--count N} messages are acknowledged, or, with
C{--stdin}, once standard input ended and every line was acknowledged;
1 after a permanent error (logged); otherwise it runs until stopped.
"""

from __future__ import annotations

import random
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from twisted.application import service
from twisted.internet.defer import DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client.producer import Producer
from streamlog.client.retry import backoff_policy
from streamlog.tap.client_daemon import ClientOptions, LoopingClientService

#: Errors after which the same request is sent again (after a backoff).
TRANSIENT = (
    errors.ConnectionLost, errors.Timeout, errors.PartitionUnavailable, errors.NotLeader,
    errors.LeaderNotAvailable, errors.NotController, errors.UnknownTopic, errors.TooManyConnections,
    errors.StorageError, errors.Internal, errors.ShuttingDown, errors.TooManyOpenFiles,
)
# KEY_TOO_LARGE, MESSAGE_TOO_LARGE, TOO_MANY_PARTITIONS, UNKNOWN_PARTITION, INVALID_PARAMS, ...:
# waiting cannot heal them, so they stop the producer (status 1).

#: Transient errors after which the batch may have been appended: handing it over again can duplicate.
#: The others are refusals (nothing of the request was appended), or carry C{sent=False}.
MAYBE_APPENDED = (errors.ConnectionLost, errors.Timeout, errors.StorageError, errors.Internal)


def may_have_landed(error: errors.StreamlogError) -> bool:
    """Whether a failed batch may still have been appended (so that sending it again may duplicate it)."""
    return isinstance(error, MAYBE_APPENDED) and error.details.get("sent", True) is not False


#: Seconds the Producer retries a batch itself (resends keep their numbers) before the daemon hands
#: it over again: an hour, so that only a very long outage needs a second hand-over.
DELIVERY_TIMEOUT = 3600.0


#: Lines read from stdin but not yet acknowledged, at most (the reader thread waits beyond it).
MAX_BUFFERED_LINES = 10_000


class Options(ClientOptions):
    longdesc = (
        "Send messages to a streamlog topic every --interval seconds and log each "
        "acknowledgement (partition, offset). Retries with backoff while the server is "
        "unreachable and never drops a message; an idempotent producer, so a resend after a "
        "lost connection or a leader change is stored once. Exit status 0 after --count "
        "acknowledged messages (or the end of --stdin), 1 after a permanent error."
    )

    optParameters = [
        ["topic", "t", None, "Topic to send to (required)."],
        ["interval", "i", 1.0, "Seconds between sends (with --stdin: between batches of the lines read).", float],
        ["count", "n", None, "Stop (exit status 0) once this many messages are acknowledged.", int],
        ["key", "k", None, "Key of every message (messages with one key go to one partition)."],
        ["partition", "p", None, "Send to this partition instead of letting the server choose.", int],
        ["message", "m", None, 'Value of every message (default: "message N", N counting from 1).'],
        ["acks", "a", "all", "Acknowledgement to wait for: all (durable) or leader."],
        ["batch-size", None, 1000, "Most messages in one request (when catching up on --stdin).", int],
    ]
    optFlags = [
        ["stdin", None, "Send each line of standard input as one message; end after EOF once all are acknowledged."],
        ["json", "j", "Parse --message (or each --stdin line) as JSON and send the value; "
                      "without it the text is sent as a JSON string."],
        ["no-idempotence", None, "Send without producer ids and sequence numbers (a resend after a lost "
                                 "connection may then store a message twice)."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if self["message"] is not None and self["stdin"]:
            raise usage.UsageError("--message and --stdin exclude each other")
        if self["partition"] is not None and self["partition"] < 0:
            raise usage.UsageError("--partition must be 0 or more")
        if self["acks"] not in ("all", "leader"):
            raise usage.UsageError("--acks must be 'all' or 'leader' (the producer logs every acknowledgement)")
        if self["batch-size"] < 1:
            raise usage.UsageError("--batch-size must be at least 1")
        if self["json"] and self["message"] is None and not self["stdin"]:
            raise usage.UsageError("--json needs --message or --stdin")
        if self["json"] and self["message"] is not None:
            try:
                self["value"] = orjson.loads(self["message"])
            except orjson.JSONDecodeError as e:
                raise usage.UsageError(f"--message is not valid JSON: {e}") from None
        elif self["message"] is not None:
            self["value"] = self["message"]
        else:
            self["value"] = None


class _Queued:
    __slots__ = ("number", "message")

    def __init__(self, number: int, message: dict[str, Any]) -> None:
        self.number = number
        self.message = message


class ProducerService(LoopingClientService):
    """The producer daemon's logic (testable with an injected client and clock).

    @param on_finish: called with the exit status when the producer is done
        (default: stop the reactor with that status).
    """

    _log = Logger()
    role = "producer"

    def __init__(self, options: Options, client: Any = None, clock: Any = None,
                 reactor: Any = None, on_finish: Callable[[int], object] | None = None,
                 read_stdin: bool = True, rng: random.Random | None = None) -> None:
        super().__init__(options, client, clock, reactor, on_finish)
        self.read_stdin = read_stdin
        self._backoff = backoff_policy(0.1, options["retry-max"], rng)
        self._queue: deque[_Queued] = deque()
        self._made = 0            # messages created (numbered from 1)
        self.acknowledged = 0
        self._in_flight = 0       # messages in the request in flight
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._eof = False
        self._slots = threading.Semaphore(MAX_BUFFERED_LINES)
        self.producer: Producer | None = None

    # --- life -----------------------------------------------------------------------

    def _started(self) -> None:
        if self.options["stdin"] and self.read_stdin:
            thread = threading.Thread(target=self._read_stdin, name="streamlog-producer-stdin", daemon=True)
            thread.start()

    def _stop(self) -> None:
        super()._stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _finished_with(self, status: int) -> None:
        if status == 0:
            self._log.info("done: {n} messages acknowledged", n=self.acknowledged)
        else:
            self._say_unacknowledged()

    def _stopped_on_request(self) -> None:
        self._log.info("stopping: {n} message(s) acknowledged", n=self.acknowledged)
        self._say_unacknowledged()

    def _say_unacknowledged(self) -> None:
        if not self._queue:
            return
        first, last = self._queue[0].number, self._queue[-1].number
        in_flight = ""
        if self._in_flight:
            upto = self._queue[self._in_flight - 1].number
            # Not connected: the request is still waiting in the client for a connection, never written.
            in_flight = (f"; messages {first}-{upto} were in flight and may or may not have been appended"
                         if self.client is not None and self.client.connected
                         else f"; messages {first}-{upto} were waiting for a connection (never sent)")
        self._log.warn("messages {first}-{last} were not acknowledged{in_flight}", first=first, last=last,
                       in_flight=in_flight)

    # --- input --------------------------------------------------------------------------

    def _read_stdin(self) -> None:
        """Runs in a daemon thread: blocking reads, handed to the reactor line by line."""
        reactor = self._reactor
        try:
            stream = sys.__stdin__.buffer if sys.__stdin__ is not None else open(0, "rb", closefd=False)
            for line in stream:
                self._slots.acquire()
                reactor.callFromThread(self.line_received, line)
        except Exception as e:  # a read error ends the input like EOF, and says so
            reactor.callFromThread(self._log.error, "reading stdin failed: {error}", error=e)
        reactor.callFromThread(self.input_ended)

    def line_received(self, line: bytes) -> None:
        """One line of input (with or without its newline) becomes one queued message."""
        if self._finished:
            return
        count = self.options["count"]
        if count is not None and self._made >= count:
            return
        text = line.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace")
        if self.options["json"]:
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                self._log.error("input line {n} is not valid JSON ({error}); stopping", n=self._made + 1, error=e)
                self._finish(1)
                return
        else:
            value = text
        self._enqueue(value)

    def input_ended(self) -> None:
        self._eof = True
        self._log.info("end of input after {n} lines", n=self._made)
        self._maybe_done()

    # --- sending --------------------------------------------------------------------------

    def _message(self, value: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"value": value}
        if self.options["key"] is not None:
            message["key"] = self.options["key"]
        if self.options["partition"] is not None:
            message["partition"] = self.options["partition"]
        return message

    def _enqueue(self, value: Any) -> None:
        self._made += 1
        self._queue.append(_Queued(self._made, self._message(value)))

    def _tick(self) -> None:
        try:
            if not self.options["stdin"]:
                count = self.options["count"]
                if count is None or self._made < count:
                    value = self.options["value"]
                    self._enqueue(value if value is not None else f"message {self._made + 1}")
            self._send()
        except Exception:
            self._log.failure("producer tick failed")

    def _producer(self) -> Producer:
        if self.producer is None:
            assert self.client is not None
            self.producer = Producer(self.client, linger_ms=0, batch_size=self.options["batch-size"],
                                     max_in_flight=1, acks=self.options["acks"], delivery_timeout=DELIVERY_TIMEOUT,
                                     idempotent=not self.options["no-idempotence"])
        return self.producer

    def _send(self) -> None:
        if self._in_flight or self._retry is not None or self._finished or not self._queue:
            return
        batch = [self._queue[i] for i in range(min(len(self._queue), self.options["batch-size"]))]
        self._in_flight = len(batch)
        producer = self._producer()
        topic = self.options["topic"]
        ds = [producer.send(topic, q.message["value"], key=q.message.get("key"),
                            partition=q.message.get("partition")) for q in batch]
        d = DeferredList(ds, consumeErrors=True)
        d.addCallback(self._answered, batch)
        d.addErrback(lambda f: self._log.failure("handling an answer failed", f))

    def _answered(self, outcomes: list[tuple[bool, Any]], batch: list[_Queued]) -> None:
        """Log the acknowledged head of the batch; the rest, from the first failure on, goes again."""
        acked = 0
        for ok, _ in outcomes:
            if not ok:
                break
            acked += 1
        if acked:
            self._acked([placed for _, placed in outcomes[:acked]], batch[:acked])
        if acked < len(batch):
            failure = outcomes[acked][1]
            self._failed(failure, batch[acked:])

    def _acked(self, placed: list[tuple[int, int]], batch: list[_Queued]) -> None:
        self._in_flight = 0
        self._failures = 0
        durability = "acks=" + self.options["acks"]
        for q, (partition, offset) in zip(batch, placed):
            self._queue.popleft()
            self._log.info("message {number} acknowledged: topic {topic} partition {partition} offset "
                           "{offset} ({durability})", number=q.number, topic=self.options["topic"],
                           partition=partition, offset=offset, durability=durability)
            if self.options["stdin"]:
                self._slots.release()
        self.acknowledged += len(batch)
        if not self._maybe_done():
            if self._queue and self.options["stdin"]:
                self._send()  # catch up on lines that arrived meanwhile

    def _maybe_done(self) -> bool:
        count = self.options["count"]
        if count is not None and self.acknowledged >= count:
            self._finish(0)
            return True
        if self.options["stdin"] and self._eof and not self._queue and not self._in_flight:
            self._finish(0)
            return True
        return False

    def _failed(self, failure: Failure, batch: list[_Queued]) -> None:
        if self._finished or not self.running:
            return  # stopping: a request cut short by closing the client is not trouble (the stop says so)
        self._in_flight = 0
        error = failure.value
        if not isinstance(error, TRANSIENT):
            code = getattr(error, "code", type(error).__name__)
            self._log.error("sending messages {first}-{last} failed permanently: {code}: {error}; stopping",
                            first=batch[0].number, last=batch[-1].number, code=code, error=error)
            self._finish(1)
            return
        self._failures += 1
        delay = self._backoff(self._failures)
        caveat = ("; the first attempt may have been appended, so the resend may duplicate them"
                  if may_have_landed(error) else "; nothing of it was appended")
        if self.producer is not None and self.producer.closed is not None:
            self.producer = None  # fenced or closed: a fresh one (a new producer id) for the resend
        self._log.warn("sending messages {first}-{last} failed ({code}: {error}); resending in {delay:.2f}s{caveat}",
                       first=batch[0].number, last=batch[-1].number, code=error.code, error=error, delay=delay,
                       caveat=caveat)
        self._retry = self.clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._send()


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return ProducerService(options, reactor=reactor)

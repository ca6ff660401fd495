"""C{twistd streamlog-consumer}: poll a topic's partitions periodically, print each message as a JSON line.

Each message goes to the process's real standard output (fd 1, not
twistd's redirected C{sys.stdout}), or to C{--output FILE}, as one JSON
object per line: C{{"partition", "offset", "timestamp", "key", "value",
"headers"}}; log lines go to twistd's log, never to that stream.

Without C{--partition} it reads every partition of the topic (found in the
cluster's metadata, waited for while the topic does not exist, and read too
when the metadata later shows more of them), merged in the
order the answers come; the order within one partition is the log's.  With
C{--partition P}, only that one.

A C{LoopingCall} ticks every C{--interval} seconds; on a tick each partition
with no Poll outstanding asks for its next messages, waiting up to
C{--max-wait-ms} on the server (long poll), and while the answers show more
is there it asks again at once to catch up.  Each partition's position lives
in its L{Consumer} and only ever covers what was written: the output is
written straight to its file descriptor (L{LineOutput}), so after a short
write or an error (EPIPE from a closed pipe, ENOSPC) the daemon knows which
messages were written whole, moves the position back to the first one that
was not, logs where it stopped and exits with status 1.  A pipe whose
reader went away (C{| head -1}) is noticed on the next tick even when
nothing is being written.  Positions are not stored: a restarted daemon
starts again from C{--from}, in every partition.

Errors:
  - C{NOT_LEADER}, C{LEADER_NOT_AVAILABLE}, a lost connection, a timeout,
    C{TOO_MANY_WAITING_POLLS}: the Consumer asks again itself, at the
    partition's (new) leader, with backoff, logging the first such trouble
    once; if that does not work within C{--timeout} (plus the long poll),
    the error comes here:
  - unreachable server, lost connection, timeout, C{UNKNOWN_TOPIC},
    C{UNKNOWN_PARTITION}, C{PARTITION_UNAVAILABLE}, C{NOT_LEADER},
    C{TOO_MANY_WAITING_POLLS}: logged (once per kind of trouble and
    partition), retried on the next tick, from the same position.
  - C{OFFSET_OUT_OF_RANGE}, with C{--on-out-of-range reset} (the default): a
    position before the log start (retention removed those messages) moves to
    the log start; a position past the end (C{--from N} ahead of the log, or
    the log was lost, e.g. a restarted C{--storage memory} server) moves to the
    end.  Either jump is logged with the offsets.  With C{exit}, it stops with status 1.
  - the output cannot be written: logged, status 1 (see above).
  - anything else (e.g. C{INVALID_PARAMS}): logged, exit status 1.

Exit status: 0 after C{--count N} messages are printed; 1 after a permanent
error; otherwise it runs until stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from streamlog import errors, wire
from streamlog.client import positions
from streamlog.client.consumer import Consumer
from streamlog.client.group import check_member_settings
from streamlog.tap.client_daemon import ClientOptions, LoopingClientService
from streamlog.tap.output import LineOutput, OutputFailed

#: Errors after which the consumer simply polls again on the next tick.
TRANSIENT = (
    errors.ConnectionLost, errors.Timeout, errors.UnknownTopic, errors.UnknownPartition,
    errors.PartitionUnavailable, errors.NotLeader, errors.LeaderNotAvailable, errors.ShuttingDown,
    errors.TooManyConnections, errors.Internal, errors.StorageError, errors.TooManyWaitingPolls,
)


class Options(ClientOptions):
    longdesc = (
        "Poll the partitions of a streamlog topic every --interval seconds and print each message as "
        "one JSON line on standard output (logs go to twistd's log). Keeps its positions across "
        "reconnects, never prints a message twice and never moves past a message it could not write. "
        "Exit status 0 after --count messages, 1 after a permanent error or a failed output."
    )

    optParameters = [
        ["topic", "t", None, "Topic to read (required)."],
        ["partition", "p", None, "Partition to read (default: every partition of the topic, merged).", int],
        ["from", "f", "earliest", "Where to start in each partition: earliest, latest, an offset N, -N "
                                  "(N before the end), @MS or an ISO 8601 time (the first message at or after it)."],
        ["interval", "i", 1.0, "Seconds between polls.", float],
        ["max-wait-ms", "w", 500, "How long a poll waits on the server for new messages (long poll), in ms.", int],
        ["max-messages", None, None, "Most messages per poll (default: the server's).", int],
        ["count", "n", None, "Stop (exit status 0) after printing this many messages.", int],
        ["on-out-of-range", None, "reset",
         "On OFFSET_OUT_OF_RANGE: reset (jump to the log start or end, logged) or exit (status 1)."],
        ["output", "o", "-", "Where to write the JSON lines: - for the real standard output (fd 1), or a file "
                             "(appended). Note: twistd -n logs to stdout too unless given --logfile."],
        ["group", "g", None, "Consume as a member of this consumer group: read the partitions its coordinator "
                             "assigns, from the group's committed offsets (--from where none is), and commit "
                             "what was written."],
        ["group-instance-id", None, None, "With --group: static membership (a restart within the session "
                                          "timeout gets the same partitions back, without a rebalance)."],
        ["session-timeout-ms", None, 10_000, "With --group: the member's session timeout, in ms (the server "
                                             "allows 1000 to 1800000 by default).", int],
        ["commit-interval", None, 5.0, "With --group: seconds between commits of what was written.", float],
        ["events", None, None, "With --group: append the member's events (assigned, revoked, lost, processed, "
                               "committed) to this file, one JSON line each (docs/clients.md)."],
    ]

    optFlags = [
        ["commit-each-batch", None, "With --group: commit after each batch is written (and wait for the commit "
                                    "before reading on) instead of every --commit-interval."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        try:
            self["start"] = positions.parse_start(self["from"])
        except ValueError as e:
            raise usage.UsageError(f"--from: {e}") from None
        if self["partition"] is not None and self["partition"] < 0:
            raise usage.UsageError("--partition must be 0 or more")
        if not 0 <= self["max-wait-ms"] <= wire.DEFAULT_LIMITS.max_wait_ms:
            raise usage.UsageError(f"--max-wait-ms must be between 0 and {wire.DEFAULT_LIMITS.max_wait_ms}")
        most = wire.DEFAULT_LIMITS.max_poll_messages
        if self["max-messages"] is not None and not 1 <= self["max-messages"] <= most:
            raise usage.UsageError(f"--max-messages must be between 1 and {most} (the server's --max-poll-messages)")
        if self["on-out-of-range"] not in ("reset", "exit"):
            raise usage.UsageError("--on-out-of-range must be 'reset' or 'exit'")
        self._check_group()
        if self["output"] != "-":
            try:  # a typo in the path is a usage error, not a traceback once running
                LineOutput.append_to(self["output"]).close()
            except OSError as e:
                raise usage.UsageError(f"--output: cannot open {self['output']}: {e.strerror or e}") from None

    def _check_group(self) -> None:
        if self["group"] is None:
            for name in ("group-instance-id", "events"):
                if self[name] is not None:
                    raise usage.UsageError(f"--{name} needs --group")
            if self["commit-each-batch"]:
                raise usage.UsageError("--commit-each-batch needs --group")
            return
        if self["partition"] is not None:
            raise usage.UsageError("--partition and --group exclude each other: the group assigns the partitions")
        try:
            check_member_settings(self["group"], self["group-instance-id"], self["session-timeout-ms"],
                                  self["commit-interval"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["events"] is not None:
            try:
                open(self["events"], "ab").close()
            except OSError as e:
                raise usage.UsageError(f"--events: cannot open {self['events']}: {e.strerror or e}") from None


class _Reader:
    """One partition being read: its Consumer, whether a Poll is out, the trouble last logged."""

    __slots__ = ("partition", "consumer", "polling", "trouble")

    def __init__(self, partition: int, consumer: Consumer) -> None:
        self.partition = partition
        self.consumer = consumer
        self.polling = False
        self.trouble: str | None = None


class ConsumerService(LoopingClientService):
    """The consumer daemon's logic (testable with an injected client, clock and output).

    @param out: where the lines go (default: from C{--output}).
    """

    _log = Logger()
    role = "consumer"

    def __init__(self, options: Options, client: Any = None, clock: Any = None,
                 reactor: Any = None, out: LineOutput | None = None,
                 on_finish: Callable[[int], object] | None = None) -> None:
        super().__init__(options, client, clock, reactor, on_finish)
        self.out = out
        self.topic: str = options["topic"]
        #: partition -> reader; None until the topic's partitions are known.
        self.readers: dict[int, _Reader] | None = None
        self.printed = 0
        self._describing = False
        self._waiting_for: str | None = None  # why discovery waits, as last logged

    # --- life -----------------------------------------------------------------------

    def _started(self) -> None:
        if not self._open_output():
            return
        if self.options["partition"] is not None:
            self._read([self.options["partition"]])

    def _open_output(self) -> bool:
        """Open C{--output} (unless a test gave one); False (and finishing with 1) if it cannot be."""
        if self.out is not None:
            return True
        output = self.options["output"]
        try:
            self.out = LineOutput.stdout() if output == "-" else LineOutput.append_to(output)
        except OSError as e:
            self._log.error("cannot open {output}: {error}; stopping", output=output, error=e.strerror or e)
            self.out = LineOutput(-1, output)  # nothing is written: the first tick finds us finished
            self.clock.callLater(0, self._finish, 1)
            return False
        return True

    def _consumer(self, partition: int) -> Consumer:
        return Consumer(self.client, self.topic, partition, start=self.options["start"],
                        max_messages=self.options["max-messages"], max_wait_ms=self.options["max-wait-ms"],
                        prefetch=False)

    def _read(self, partitions: list[int]) -> None:
        self.readers = {p: _Reader(p, self._consumer(p)) for p in partitions}
        which = (f"partition {partitions[0]}" if len(partitions) == 1 and self.options["partition"] is not None
                 else f"{len(partitions)} partition(s)")
        self._log.info("reading {topic} ({which}) from {start}, writing to {output}", topic=self.topic,
                       which=which, start=str(self.options["start"]), output=self.out.name)

    def _stop(self) -> None:
        super()._stop()
        for reader in (self.readers or {}).values():
            reader.consumer.close()
        if self.out is not None:
            self.out.close()  # nothing is written after a stop

    def _finished_with(self, status: int) -> None:
        self._log.info("stopping after {n} message(s) written; positions: {positions}", n=self.printed,
                       positions=self.positions_text())

    def _stopped_on_request(self) -> None:
        self._log.info("stopping after {n} message(s) written; positions: {positions}", n=self.printed,
                       positions=self.positions_text())

    def positions_text(self) -> str:
        """Each partition's position, for the log: C{t/0 offset 5, t/1 offset 3}."""
        if not self.readers:
            return "none yet"
        return ", ".join(f"{self.topic}/{p} {self._where(r)}" for p, r in sorted(self.readers.items()))

    def _where(self, reader: _Reader) -> str:
        position = reader.consumer.position
        return f"offset {position}" if position is not None else f"{reader.consumer.start} (not resolved yet)"

    # --- ticks ----------------------------------------------------------------------

    def _tick(self) -> None:
        if self._finished or not self.running:
            return
        gone = self.out.closed()
        if gone is not None:
            self._log.error("{reason}; stopping", reason=gone)
            self._finish(1)
            return
        if self.readers is None:
            self._discover()
            return
        self._more_partitions()
        for reader in self.readers.values():
            self._poll(reader)

    def _more_partitions(self) -> None:
        """Partitions the metadata shows now and this consumer does not read yet (the topic was
        re-created with more of them): read them too, from C{--from}."""
        if self.options["partition"] is not None or self.readers is None:
            return
        info = self.client.view.topics.get(self.topic)
        if info is None or info.count <= len(self.readers):
            return
        new = [p for p in range(info.count) if p not in self.readers]
        for p in new:
            self.readers[p] = _Reader(p, self._consumer(p))
        self._log.info("{topic} has {n} partition(s) now: reading {new} too, from {start}", topic=self.topic,
                       n=info.count, new=", ".join(map(str, new)), start=str(self.options["start"]))

    def _discover(self) -> None:
        if self._describing:
            return
        self._describing = True
        d = self.client.topic(self.topic)  # the metadata (DescribeTopic on a single node)
        d.addCallbacks(self._discovered, self._discovery_failed)
        d.addErrback(lambda f: self._log.failure("finding the partitions of {topic} failed", f, topic=self.topic))

    def _discovered(self, info: Any) -> None:
        self._describing = False
        if self._finished or not self.running or self.readers is not None:
            return
        if self._waiting_for is not None:
            self._log.info("topic {topic} is there now", topic=self.topic)
        self._read(list(range(info.count)))
        for reader in self.readers.values():
            self._poll(reader)

    def _discovery_failed(self, failure: Failure) -> None:
        self._describing = False
        if self._finished or not self.running:
            return
        self._waiting_for = self._wait_or_stop(
            failure.value, TRANSIENT, self._waiting_for,
            "cannot read the partitions of {topic} yet ({code}: {error}); asking again every tick",
            "finding the partitions of {topic} failed permanently: {code}: {error}; stopping", topic=self.topic)

    def _wait_or_stop(self, error: Any, transient: tuple[type[Exception], ...], trouble: str | None,
                      waiting: str, stopping: str, **fields: Any) -> str | None:
        """After a failed request: an error of C{transient} is waited out (logged with C{waiting}
        once per code; the next tick asks again), any other stops the daemon with status 1 (logged
        with C{stopping}).  Returns the trouble to remember (the code waited out)."""
        if isinstance(error, transient):
            if error.code != trouble:
                self._log.warn(waiting, code=error.code, error=error, **fields)
            return str(error.code)
        code = getattr(error, "code", type(error).__name__)
        self._log.error(stopping, code=code, error=error, **fields)
        self._finish(1)
        return trouble

    def _poll(self, reader: _Reader) -> None:
        if reader.polling or self._finished:
            return
        reader.polling = True
        d = reader.consumer.poll()
        d.addCallbacks(self._got, self._failed, callbackArgs=(reader,), errbackArgs=(reader,))
        d.addErrback(lambda f: self._log.failure("handling a poll failed", f))

    # --- answers --------------------------------------------------------------------

    def _got(self, messages: list[dict[str, Any]], reader: _Reader) -> None:
        reader.polling = False
        consumer = reader.consumer
        if self._finished or not self.running:
            if messages:  # handed over but never written: the position must not cover them
                consumer.seek(messages[0]["offset"])
            return
        if reader.trouble is not None:
            self._log.info("polling {topic}/{partition} works again from offset {offset}", topic=self.topic,
                           partition=reader.partition,
                           offset=messages[0]["offset"] if messages else consumer.position)
            reader.trouble = None
        count = self.options["count"]
        keep = messages if count is None else messages[: count - self.printed]
        if keep:
            lines = [orjson.dumps({"partition": reader.partition, **m}) + b"\n" for m in keep]
            try:
                self.out.write_lines(lines)
            except OutputFailed as e:
                self._output_failed(reader, keep, e)
                return
            self.printed += len(keep)
        if len(keep) < len(messages):
            consumer.seek(messages[len(keep)]["offset"])  # the rest was not written
        if count is not None and self.printed >= count:
            self._finish(0)
            return
        if messages and consumer.high_watermark is not None and consumer.position < consumer.high_watermark:
            self._poll(reader)  # more is there: catch up without waiting for the next tick

    def _output_failed(self, reader: _Reader, messages: list[dict[str, Any]], e: OutputFailed) -> None:
        self.printed += e.lines
        reader.consumer.seek(messages[e.lines]["offset"])
        self._log.error("{reason}; stopping: {topic}/{partition} stays at offset {offset} ({written} of the "
                        "{n} message(s) of this batch were written)", reason=e.reason, topic=self.topic,
                        partition=reader.partition, offset=reader.consumer.position, written=e.lines,
                        n=len(messages))
        self._finish(1)

    def _failed(self, failure: Failure, reader: _Reader) -> None:
        reader.polling = False
        if self._finished or not self.running:
            return  # stopping: the polls cut short by closing the client are not trouble
        error = failure.value
        if isinstance(error, errors.OffsetOutOfRange):
            self._out_of_range(reader, error)
            return
        if isinstance(error, TRANSIENT):
            if error.code != reader.trouble:
                self._log.warn("polling {topic}/{partition} failed ({code}: {error}); retrying every tick "
                               "from {where}", topic=self.topic, partition=reader.partition, code=error.code,
                               error=error, where=self._where(reader))
                reader.trouble = error.code
            return
        code = getattr(error, "code", type(error).__name__)
        self._log.error("polling {topic}/{partition} failed permanently: {code}: {error}; stopping",
                        topic=self.topic, partition=reader.partition, code=code, error=error)
        self._finish(1)

    def _out_of_range(self, reader: _Reader, error: errors.OffsetOutOfRange) -> None:
        consumer = reader.consumer
        position = consumer.position
        start = error.details.get("log_start_offset")
        end = error.details.get("high_watermark")
        if self.options["on-out-of-range"] == "exit" or not isinstance(start, int) or not isinstance(end, int):
            self._log.error("{topic}/{partition}: offset {offset} is out of range [{start}, {end}]: {error}; "
                            "stopping", topic=self.topic, partition=reader.partition, offset=position,
                            start=start, end=end, error=error)
            self._finish(1)
            return
        target = start if position is not None and position < start else end
        self._log.warn("{topic}/{partition}: offset {offset} is out of range (the log holds [{start}, {end})): "
                       "moving to {target}; {skipped}", topic=self.topic, partition=reader.partition,
                       offset=position, start=start, end=end, target=target,
                       skipped=(f"{start - position} messages were removed by retention"
                                if position is not None and position < start
                                else "the log is shorter than this consumer's position"))
        consumer.seek(target)


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    if options["group"] is not None:
        from streamlog.tap.group_reading import GroupConsumerService

        return GroupConsumerService(options, reactor=reactor)
    return ConsumerService(options, reactor=reactor)

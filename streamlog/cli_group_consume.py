"""C{streamlog consume TOPIC --group G}: print what a consumer group assigns this member, commit it.

The rest of C{streamlog} is blocking; a group member heartbeats while the
application works, so this one command runs the Twisted L{GroupConsumer} on
the reactor (once per process) and prints its batches as they come, in the
formats of C{streamlog consume} (tab-separated fields, or C{--json} lines).

It resumes from the group's committed offsets (C{--from} only for
partitions without one).  Without C{--follow} it stops, committing, once an
idle C{poll()} finds every partition it holds read to its high watermark;
with C{--follow} it runs until C{--count} messages or Ctrl-C.  What counts
as processed is what standard output took: after a failed write
(C{| head} went away: EPIPE) the member is moved back to the first message
not written whole before the last commit, and the command exits 141 without
a traceback (1 for another write error); C{--follow} notices a closed pipe
within a second even when nothing comes.  Lines taken by a pipe but never
read by the program behind it count as processed (as for any consumer):
use C{--count} for an exact number.

Exit status as for the other commands: 0, 1 (an error: its code on stderr),
130 (interrupted: it still commits and leaves), 141 (the output closed).
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Any

import orjson

from streamlog import errors
from streamlog.client import requests
from streamlog.client.addresses import check_bootstrap
from streamlog.tap.output import LineOutput, OutputFailed

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 130, 141
#: The long poll without --follow: short, as the command stops once the partitions are read to their end.
CATCH_UP_WAIT_MS = 200


def line_for(message: dict[str, Any], as_json: bool) -> bytes:
    """One output line: as C{streamlog consume} prints it (C{partition} first, no C{topic})."""
    from streamlog.cli import format_message

    if as_json:
        return orjson.dumps({k: v for k, v in message.items() if k != "topic"}) + b"\n"
    return (format_message(message["partition"], message) + "\n").encode()


class GroupPrinter:
    """One member's loop: poll, print, commit; L{status} once it is done.

    @param out: where the lines go (standard output's fd 1).
    """

    def __init__(self, args: argparse.Namespace, reactor: Any, out: LineOutput) -> None:
        self.args = args
        self.reactor = reactor
        self.out = out
        self.status: int | None = None
        self.printed = 0
        self.client: Any = None
        self.member: Any = None
        self._watch: Any = None

    def start(self) -> None:
        from twisted.internet.task import LoopingCall

        from streamlog.client.cluster import ClusterClient
        from streamlog.client.group import GroupConsumer

        args = self.args
        self.client = ClusterClient(check_bootstrap(args.connect), reactor=self.reactor,
                                    request_timeout=args.timeout, connect_timeout=args.connect_timeout)
        wanted = None if args.count is None else min(args.count, requests.MAX_POLL_MESSAGES)
        self.member = GroupConsumer(
            self.client, args.group, [args.topic], session_timeout_ms=args.session_timeout_ms,
            group_instance_id=args.group_instance_id, start=args.start,
            auto_commit_interval=None if args.commit_each_batch else args.commit_interval,
            max_messages=wanted, max_wait_ms=args.max_wait_ms if args.follow else CATCH_UP_WAIT_MS)
        if args.follow:
            self._watch = LoopingCall(self._check_output)
            self._watch.clock = self.reactor
            self._watch.start(1.0, now=False)
        self._next()

    def _check_output(self) -> None:
        if self.status is None and self.out.closed() is not None:
            self.finish(EXIT_BROKEN_PIPE)

    def _next(self) -> None:
        if self.status is not None:
            return
        d = self.member.poll()
        d.addCallbacks(self._batch, self._failed)
        d.addErrback(self._failed)

    def _batch(self, batch: list[dict[str, Any]]) -> None:
        if self.status is not None:
            if batch:  # never printed: not processed
                self._seek_back(batch[0])
            return
        if not batch:
            if not self.args.follow and self._caught_up():
                self.finish(EXIT_OK)
            else:
                self._next()
            return
        keep = batch if self.args.count is None else batch[: self.args.count - self.printed]
        try:
            self.out.write_lines([line_for(m, self.args.json) for m in keep])
        except OutputFailed as e:
            self.printed += e.lines
            self._seek_back(keep[e.lines])
            broken = e.errno == errno.EPIPE
            if not broken:
                print(f"error: {e.reason}", file=sys.stderr)
            self.finish(EXIT_BROKEN_PIPE if broken else EXIT_ERROR)
            return
        self.printed += len(keep)
        if len(keep) < len(batch):
            self._seek_back(batch[len(keep)])
        if self.args.count is not None and self.printed >= self.args.count:
            self.finish(EXIT_OK)
            return
        if self.args.commit_each_batch:
            self.member.commit().addCallbacks(lambda _: self._next(), self._failed)
        else:
            self._next()

    def _caught_up(self) -> bool:
        """Joined, nothing being granted or waited for, and every partition held read up to its high watermark."""
        member = self.member
        if member.member_id is None or member.granting or member.pending:
            return False
        return all(c.high_watermark is not None and c.position is not None and c.position >= c.high_watermark
                   for c in member.consumers.values())

    def _seek_back(self, first_not_written: dict[str, Any]) -> None:
        tp = (first_not_written["topic"], first_not_written["partition"])
        if tp in self.member.consumers:
            self.member.seek(tp[0], tp[1], first_not_written["offset"])

    def _failed(self, failure: Any) -> None:
        if self.status is not None:
            return
        error = failure.value
        if isinstance(error, errors.StreamlogError):
            print(f"error: {error.code}: {error.message}", file=sys.stderr)
        else:
            print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        self.finish(EXIT_ERROR)

    def finish(self, status: int) -> None:
        if self.status is None:
            self.status = status
        if self.reactor.running:
            self.reactor.stop()  # the shutdown trigger commits and leaves

    def shut_down(self) -> Any:
        """Before the reactor stops: commit what was printed, leave (a static member stays), close;
        at most C{--timeout}."""
        from twisted.internet.defer import Deferred, succeed

        if self.status is None:
            self.status = EXIT_INTERRUPTED  # Ctrl-C (or SIGTERM)
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        if self.member is None:
            return succeed(None)
        done: Deferred = Deferred()
        closing: list[bool] = []

        def closed(_: Any = None) -> None:
            if closing:  # the member closed, or the time ran out: whichever came first
                return
            closing.append(True)
            if timer.active():
                timer.cancel()
            self.client.close().addBoth(lambda _: done.callback(None))

        timer = self.reactor.callLater(self.args.timeout, closed)
        self.member.close().addBoth(closed)
        return done


def run(args: argparse.Namespace) -> int:
    """Run the member on the global reactor until it is done; the exit status."""
    from twisted.internet import reactor

    printer = GroupPrinter(args, reactor, LineOutput.stdout())
    reactor.addSystemEventTrigger("before", "shutdown", printer.shut_down)  # type: ignore[attr-defined]
    reactor.callWhenRunning(printer.start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return printer.status if printer.status is not None else EXIT_INTERRUPTED

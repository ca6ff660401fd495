"""C{twistd streamlog-consumer --group G}: the consumer daemon as one member of a consumer group.

The partitions it reads are the ones the group's coordinator assigns it
(L{GroupConsumer}): several daemons with the same C{--group} share the
topic's partitions, and a restarted one resumes from the group's committed
offsets (C{--from} only says where to start in a partition nothing was
committed for).  The output is the same as without C{--group}: one JSON
line per message, C{{"partition", "offset", ...}}, to the real standard
output or C{--output FILE}.

What it commits is what it wrote: a batch is handed to the output as a
whole, and only the messages the kernel took count as processed (after a
short write the member is moved back to the first message not written, as
without C{--group}).  Commits go out every C{--commit-interval} seconds, on
a rebalance (before a partition is given up), and on a stop (SIGTERM, or
C{--count} reached); with C{--commit-each-batch} after each written batch,
the next batch waiting for that commit.  So delivery is at least once: what
a SIGKILL (or a lost session) leaves written but not committed is written
again, by this member or the next owner of the partition; nothing is
skipped.

Reading is a loop of C{poll()}s (each waits up to C{--max-wait-ms}); the
C{--interval} tick notices a pipe whose reader went away, and asks again to
join after a first join that failed.  A join refused for good
(C{INVALID_PARAMS}: a session timeout outside the server's bounds) stops
the daemon with status 1; an unreachable or moving coordinator is waited
for, every tick.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client.group import GroupConsumer, TopicPartition
from streamlog.tap.consumer import TRANSIENT, ConsumerService, Options
from streamlog.tap.group_events import MemberEvents
from streamlog.tap.output import LineOutput, OutputFailed

#: Errors of a join (or of a poll) after which the daemon asks again on the next tick.
JOIN_TRANSIENT = TRANSIENT + (errors.NotCoordinator, errors.CoordinatorNotAvailable, errors.GroupFull)


def output_line(message: dict[str, Any]) -> bytes:
    """The daemon's line for a group member's message: as without C{--group}, C{partition} first."""
    return orjson.dumps({k: v for k, v in message.items() if k != "topic"}) + b"\n"


class GroupConsumerService(ConsumerService):
    """The consumer daemon reading what its group assigns it (testable as L{ConsumerService} is)."""

    _log = Logger()
    role = "group consumer"

    def __init__(self, options: Options, client: Any = None, clock: Any = None,
                 reactor: Any = None, out: LineOutput | None = None, on_finish: Any = None) -> None:
        super().__init__(options, client, clock, reactor, out, on_finish)
        self.group: str = options["group"]
        self.member: GroupConsumer | None = None
        self._reading = False
        self._trouble: str | None = None  # the join trouble last logged
        self.events: MemberEvents | None = None

    def _started(self) -> None:
        if not self._open_output():
            return
        each = self.options["commit-each-batch"]
        if self.options["events"] is not None:
            self.events = MemberEvents(self.options["events"], self.clock)
        self.member = GroupConsumer(
            self.client, self.group, [self.topic], session_timeout_ms=self.options["session-timeout-ms"],
            group_instance_id=self.options["group-instance-id"], start=self.options["start"],
            auto_commit_interval=None if each else self.options["commit-interval"],
            max_messages=self.options["max-messages"], max_wait_ms=self.options["max-wait-ms"],
            on_assigned=lambda tps: self._moved("reading", tps), on_revoked=lambda tps: self._moved("gave up", tps),
            on_lost=self._lost, on_committed=self._committed_offsets)
        assert self.out is not None
        commits = "after each batch" if each else f"every {self.options['commit-interval']:g}s"
        self._log.info("joining group {group} for {topic} (partitions without a committed offset from {start}), "
                       "writing to {output}, committing {commits}", group=self.group, topic=self.topic,
                       start=str(self.options["start"]), output=self.out.name, commits=commits)
        self._read_next()

    def _moved(self, what: str, tps: list[TopicPartition]) -> None:
        self._log.info("group {group}: {what} {partitions}", group=self.group, what=what,
                       partitions=", ".join(f"{t}/{p}" for t, p in tps))
        if self.events is not None and self.member is not None:
            self.events.moved(self.member, "assigned" if what == "reading" else "revoked", tps)

    def _committed_offsets(self, offsets: dict[TopicPartition, int], sent: float) -> None:
        if self.events is not None and self.member is not None:
            self.events.committed(self.member, offsets, sent)

    def _lost(self, tps: list[TopicPartition]) -> None:
        if self.events is not None and self.member is not None:
            self.events.moved(self.member, "lost", tps)
        self._log.warn("group {group}: lost {partitions} without a commit (the member's session ended, or "
                       "its coordinator forgot it); what was written since the last commit will be read again",
                       group=self.group, partitions=", ".join(f"{t}/{p}" for t, p in tps))

    # --- the loop -------------------------------------------------------------------

    def _tick(self) -> None:
        if self._finished or not self.running:
            return
        assert self.out is not None
        gone = self.out.closed()
        if gone is not None:
            self._log.error("{reason}; stopping", reason=gone)
            self._finish(1)
            return
        self._read_next()  # after a join that failed: try again

    def _read_next(self) -> None:
        if self._reading or self._finished or not self.running or self.member is None:
            return
        self._reading = True
        d = self.member.poll()
        d.addCallbacks(self._handle_batch, self._read_failed)
        d.addErrback(lambda f: self._log.failure("handling a batch of group {group} failed", f, group=self.group))

    def _handle_batch(self, batch: list[dict[str, Any]]) -> None:
        self._reading = False
        member = self.member
        assert member is not None and self.out is not None
        if self._finished or not self.running:
            if batch:  # handed out but never written: it must not count as processed
                self._seek_back(batch[0])
            return
        if self._trouble is not None:
            self._log.info("group {group}: joined", group=self.group)
            self._trouble = None
        if not batch:
            self._read_next()
            return
        count = self.options["count"]
        keep = batch if count is None else batch[: count - self.printed]
        try:
            self.out.write_lines([output_line(m) for m in keep])
        except OutputFailed as e:
            if self.events is not None:
                self.events.processed(member, keep[:e.lines])
            self.printed += e.lines
            self._seek_back(keep[e.lines])
            self._log.error("{reason}; stopping: {topic}/{partition} stays at offset {offset} ({written} of the {n} "
                            "message(s) of this batch were written)", reason=e.reason, topic=self.topic,
                            partition=keep[0]["partition"], offset=keep[e.lines]["offset"], written=e.lines,
                            n=len(keep))
            self._finish(1)
            return
        if self.events is not None:
            self.events.processed(member, keep)
        self.printed += len(keep)
        if len(keep) < len(batch):
            self._seek_back(batch[len(keep)])
        if count is not None and self.printed >= count:
            self._finish(0)
            return
        if not self.options["commit-each-batch"]:
            self._read_next()
            return
        self._reading = True
        d = member.commit()
        d.addErrback(lambda f: self._log.warn("group {group}: commit failed: {error}", group=self.group,
                                              error=f.value))
        d.addCallback(self._committed)

    def _committed(self, _: Any) -> None:
        self._reading = False
        self._read_next()

    def _seek_back(self, first_not_written: dict[str, Any]) -> None:
        assert self.member is not None
        tp = (first_not_written["topic"], first_not_written["partition"])
        if tp in self.member.consumers:
            self.member.seek(tp[0], tp[1], first_not_written["offset"])

    def _read_failed(self, failure: Failure) -> None:
        self._reading = False
        if self._finished or not self.running:
            return
        self._trouble = self._wait_or_stop(
            failure.value, JOIN_TRANSIENT, self._trouble,
            "group {group}: cannot join yet ({code}: {error}); asking again every tick",
            "group {group}: joining failed permanently: {code}: {error}; stopping", group=self.group)

    # --- stopping -------------------------------------------------------------------

    def _before_close(self) -> Deferred:
        """Commit what was written and leave the group (a static member stays), for at most C{--timeout}."""
        if self.member is None:
            return succeed(None)
        done: Deferred = Deferred()

        def settle(_: Any = None, late: bool = False) -> None:
            if done.called:
                return
            if late:
                self._log.warn("group {group}: the last commit and leave took longer than {timeout:g}s; "
                               "stopping without them", group=self.group, timeout=self.options["timeout"])
            elif timer.active():
                timer.cancel()
            if self.events is not None:
                self.events.close()
            done.callback(None)

        timer = self.clock.callLater(self.options["timeout"], settle, late=True)
        self.member.close().addBoth(settle)
        return done

    def positions_text(self) -> str:
        """What was written and committed per partition held, for the log."""
        member = self.member
        if member is None or not (member.positions or member.committed):
            return "none yet"
        held = sorted(set(member.positions) | set(member.committed))
        return ", ".join(f"{t}/{p} written up to {member.positions.get((t, p), '-')}, committed "
                         f"{member.committed.get((t, p), '-')}" for t, p in held)

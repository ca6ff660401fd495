"""The group consumer: a member of a consumer group, reading the partitions the coordinator
assigns it, committing what the application has processed (docs/clients.md, "Consumer groups").

L{GroupConsumer} joins the group at its coordinator (found with
C{FindCoordinator}), heartbeats on the interval the coordinator gives, and
follows each answer (docs/groups.md): it first stops reading each partition
it must revoke, commits its position there, calls C{on_revoked}, and says so
in an immediate heartbeat; then it starts reading each partition granted to
it from the group's committed offset (or C{start} if none), and calls
C{on_assigned}.  Each partition is read by a L{Consumer} (leader-following,
with prefetch), so the member reads across leaders.

What counts as processed: everything handed out by the previous C{poll()}
(the application asked for more), or by the callback style's handler once
it returned (its Deferred fired).  Auto-commit commits the processed
positions every C{auto_commit_interval} seconds, on revoke and on close;
C{commit()} commits everything handed out so far.  So delivery is at least
once: after a crash or a lost partition, what was handed out but not
committed is handed out again, to this member or another.

If the member cannot heartbeat for its session timeout (the coordinator is
unreachable, or moved and forgot it), it stops reading everything, calls
C{on_lost} (no commit: its commits would be refused) and joins again: by
then the coordinator may have given its partitions to others.  A commit
refused with C{UNKNOWN_MEMBER} does the same at once.

The member's session is a lease: the coordinator counts it from when it got
the last heartbeat, so the member counts it from when it sent the last one
that was answered (L{session_end}), which is never later.  Past it, the member
hands out nothing more before it has given its partitions up (C{on_lost}):
one that was stopped (SIGSTOP) or starved past its session and resumes does
not process a partition the coordinator may have given to another member.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import positions
from streamlog.client.cluster import as_cluster_client
from streamlog.client.consumer import Consumer

TopicPartition = tuple[str, int]
Hook = Callable[[list[TopicPartition]], object]
#: C{on_committed(offsets, sent_at)}: the commit of C{offsets} sent at C{sent_at} (clock time) was acknowledged.
CommitHook = Callable[[dict[TopicPartition, int], float], object]


def _partitions(wire: list[dict[str, Any]]) -> set[TopicPartition]:
    return {(entry["topic"], p) for entry in wire for p in entry["partitions"]}


def _to_wire(tps: Iterable[TopicPartition]) -> list[dict[str, Any]]:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(tps):
        by_topic.setdefault(topic, []).append(partition)
    return [{"topic": t, "partitions": ps} for t, ps in by_topic.items()]


#: The longest group or instance name the coordinator takes (as for topics).
MAX_NAME_LENGTH = 249


def check_member_settings(group: str, group_instance_id: str | None = None, session_timeout_ms: int = 10_000,
                          auto_commit_interval: float | None = 5.0) -> None:
    """Raise C{ValueError} saying what is wrong with these L{GroupConsumer} settings (for the
    daemon's and the command's usage errors, before anything is sent)."""
    for what, name in (("the group", group), ("the group instance id", group_instance_id)):
        if name is not None and not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise ValueError(f"{what} must be 1 to {MAX_NAME_LENGTH} characters")
    if session_timeout_ms <= 0:
        raise ValueError("the session timeout must be positive (the server takes 1000 to 1800000 ms by default)")
    if auto_commit_interval is not None and auto_commit_interval <= 0:
        raise ValueError("the commit interval must be positive")


class GroupConsumer:
    """One member of consumer group C{group} over C{topics}.

    @param client: a L{ClusterClient} (or one L{StreamlogClient}).
    @param start: where to start a partition the group has no committed offset for
        ("earliest", "latest", ...: L{streamlog.client.positions}).
    @param auto_commit_interval: seconds between automatic commits; None: only
        C{commit()} (and commits on revoke and close).
    @param group_instance_id: static membership: a restart within the session
        timeout gets the same partitions back, without a rebalance; C{close}
        then does not leave the group.
    @param on_assigned, on_revoked, on_lost: called with the partitions
        (sorted C{(topic, partition)}) the member starts reading, gives up after
        committing, or lost without a commit.
    @param on_committed: called with the offsets of each acknowledged commit and the
        clock time it was sent.
    """

    _log = Logger()

    def __init__(self, client: Any, group: str, topics: list[str], *, session_timeout_ms: int = 10_000,
                 rebalance_timeout_ms: int = 30_000, group_instance_id: str | None = None,
                 assignor: str | None = None, start: str | int = "earliest",
                 auto_commit_interval: float | None = 5.0, max_messages: int | None = None,
                 max_wait_ms: int = 1000, on_assigned: Hook | None = None, on_revoked: Hook | None = None,
                 on_lost: Hook | None = None, on_committed: CommitHook | None = None) -> None:
        self.client = as_cluster_client(client)
        self.clock = self.client.clock
        self.group = group
        self.topics = sorted(topics)
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.group_instance_id = group_instance_id
        self.assignor = assignor
        self.start = positions.parse_start(start)
        self.auto_commit_interval = auto_commit_interval
        self.max_messages = max_messages
        self.max_wait_ms = max_wait_ms
        self.on_assigned, self.on_revoked, self.on_lost = on_assigned, on_revoked, on_lost
        self.on_committed = on_committed
        self.member_id: str | None = None
        self.generation = 0
        self.heartbeat_interval = session_timeout_ms / 3000.0
        #: The coordinator's client address (None: ask any node, e.g. a node alone).
        self.coordinator: str | None = None
        #: The partitions being read, each by its Consumer.
        self.consumers: dict[TopicPartition, Consumer] = {}
        #: Offset after the last message handed out, per partition.
        self.positions: dict[TopicPartition, int] = {}
        #: Offset after the last message processed (handed out by an earlier poll), per partition.
        self.processed: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        #: Granted, their committed offsets being fetched: owned already (reported in heartbeats).
        self.granting: set[TopicPartition] = set()
        #: Assigned to this member but not granted yet (their previous owner still holds them).
        self.pending: set[TopicPartition] = set()
        #: Counters: rebalances seen (answers that revoked or granted), commits made.
        self.stats = {"assigned": 0, "revoked": 0, "lost": 0, "commits": 0, "joins": 0}
        self._ready: deque[tuple[TopicPartition, Consumer, list[dict[str, Any]]]] = deque()
        self._polling: set[TopicPartition] = set()
        self._waiter: Deferred | None = None
        self._heartbeat_timer: Any = None
        self._commit_timer: Any = None
        self._beating = False
        self._last_ok = self.clock.seconds()
        #: Clock time until which this member's session is known renewed (the last answered
        #: JoinGroup or Heartbeat's send time plus the session timeout); it owns nothing past it.
        self.session_end = 0.0
        self._closed = False
        self._closing = False  # close() started: a refused last commit is no reason to rejoin
        self._joined: Deferred | None = None
        self._join_failed = False  # the last join asked by start_consuming failed

    # --- membership ------------------------------------------------------------------

    def start_consuming(self) -> Deferred:
        """Join the group (done by the first C{poll()} too); fires once joined.

        A first join that failed (the coordinator unreachable, ...) fails this and the
        C{poll()} that asked; the next call tries to join again."""
        if self._joined is None or (self._join_failed and self.member_id is None):
            self._join_failed = False
            self._start_join(retry=False)
        assert self._joined is not None
        # A fresh Deferred per caller: callbacks added to the shared one would chain every
        # caller's work (the next poll included) into it.
        d: Deferred = Deferred()

        def relay(box: list[Any]) -> list[Any]:
            if isinstance(box[0], Failure):
                d.errback(box[0])
            else:
                d.callback(None)
            return box

        self._joined.addCallback(relay)
        return d

    def _start_join(self, retry: bool) -> None:
        """Join; C{self._joined} fires with C{[outcome]} (never fails); on failure with
        C{retry}, join again later."""
        def settled(result: Any) -> list[Any]:
            if isinstance(result, Failure):
                if retry:
                    self._rejoin_failed(result)
                else:
                    self._join_failed = True
            return [result]

        self._joined = self._join().addBoth(settled)

    def _join(self) -> Deferred:
        params: dict[str, Any] = {"group": self.group, "topics": self.topics,
                                  "session_timeout_ms": self.session_timeout_ms,
                                  "rebalance_timeout_ms": self.rebalance_timeout_ms}
        if self.group_instance_id is not None:
            params["group_instance_id"] = self.group_instance_id
        if self.assignor is not None:
            params["assignor"] = self.assignor
        sent = self.clock.seconds()
        d = self._coordinated("JoinGroup", params)

        def joined(answer: dict[str, Any]) -> None:
            self.member_id = answer["member_id"]
            self.stats["joins"] += 1
            self._last_ok = self.clock.seconds()
            self.session_end = sent + self.session_timeout_ms / 1000.0
            self._log.info("joined group {group} as {member} (generation {generation})", group=self.group,
                           member=self.member_id, generation=answer["generation"])
            self._follow(answer)
            if self.auto_commit_interval is not None and self._commit_timer is None:
                self._commit_timer = self.clock.callLater(self.auto_commit_interval, self._auto_commit)

        return d.addCallback(joined)

    def _coordinated(self, method: str, params: dict[str, Any], attempts: int = 20,
                     timeout: float | None = None) -> Deferred:
        """C{method} at the group's coordinator, following C{NOT_COORDINATOR} hints and
        waiting out C{COORDINATOR_NOT_AVAILABLE} (with the client's backoff); each attempt
        within C{timeout} (default: the client's request timeout)."""
        resend = method != "JoinGroup" or self.group_instance_id is not None  # a resent join makes a ghost member
        d = self.client._run(method, params, self._coordinator_target, timeout, resend,
                             on_retry=self._attempt_failed)

        def failed(failure: Failure) -> Any:
            error = failure.value
            if not isinstance(error, (errors.NotCoordinator, errors.CoordinatorNotAvailable)) or attempts <= 1 \
                    or self._closed:
                return failure
            self.coordinator = error.details.get("coordinator_address") if isinstance(
                error, errors.NotCoordinator) else None
            delay = self.client.backoff(21 - attempts)
            later: Deferred = Deferred()
            self.clock.callLater(delay, later.callback, None)
            return later.addCallback(lambda _: self._coordinated(method, params, attempts - 1, timeout))

        return d.addErrback(failed)

    def _attempt_failed(self, error: errors.StreamlogError, delay: float) -> None:
        """An attempt at the coordinator failed and is retried: after a lost or refused connection
        (or no answer) the coordinator may be dead, so the retry asks C{FindCoordinator} (at any
        node) again instead of going back to the cached address until the call's timeout."""
        if isinstance(error, (errors.ConnectionLost, errors.Timeout)):
            self.coordinator = None

    def _coordinator_target(self) -> Any:
        if self.coordinator is not None:
            return self.client._target(self.coordinator)

        def found(answer: dict[str, Any]) -> Any:
            self.coordinator = answer.get("coordinator_address")
            return self.client._target(self.coordinator) if self.coordinator else self.client._any_target()

        return self.client.call("FindCoordinator", {"group": self.group}).addCallback(found)

    def _schedule_heartbeat(self, delay: float) -> None:
        if self._closed:
            return
        if self._heartbeat_timer is not None and self._heartbeat_timer.active():
            self._heartbeat_timer.cancel()
        self._heartbeat_timer = self.clock.callLater(delay, self._heartbeat)

    def _heartbeat(self) -> None:
        self._heartbeat_timer = None
        if self._closed or self._beating or self.member_id is None:
            return
        self._beating = True
        params = {"group": self.group, "member_id": self.member_id,
                  "owned": _to_wire(set(self.consumers) | self.granting)}
        # Bounded well inside the session: a member cut off must notice before others get its partitions.
        limit = self.session_timeout_ms / 3000.0
        sent = self.clock.seconds()
        d = self._coordinated("Heartbeat", params, attempts=1, timeout=limit)

        def answered(answer: dict[str, Any]) -> None:
            self._beating = False
            if self.member_id != params["member_id"]:
                return  # the member gave up meanwhile (its session ended) and joins again
            self._last_ok = self.clock.seconds()
            self.session_end = max(self.session_end, sent + self.session_timeout_ms / 1000.0)
            self._follow(answer)

        def failed(failure: Failure) -> None:
            self._beating = False
            if self._closed or self.member_id != params["member_id"]:
                return  # closed, or given up meanwhile (its session ended) and joining again
            error = failure.value
            if isinstance(error, errors.UnknownMember):
                self._lose("the coordinator no longer knows this member")
                return
            if isinstance(error, (errors.NotCoordinator, errors.CoordinatorNotAvailable)):
                self.coordinator = error.details.get("coordinator_address") if isinstance(
                    error, errors.NotCoordinator) else None
            elif isinstance(error, (errors.ConnectionLost, errors.Timeout)):
                self.coordinator = None  # the node may be dead: ask FindCoordinator (any node) again
            self._log.warn("heartbeat of group {group} failed: {error}", group=self.group, error=error)
            if self.clock.seconds() - self._last_ok >= self.session_timeout_ms / 1000.0:
                self._lose("no heartbeat went through for the session timeout")
                return
            self._schedule_heartbeat(min(self.heartbeat_interval, 0.5))

        d.addCallbacks(answered, failed)
        d.addErrback(lambda f: self._log.failure("following a heartbeat answer failed", f))

    def _follow(self, answer: dict[str, Any]) -> None:
        """Act on a JoinGroup or Heartbeat answer (docs/groups.md, "What a member does")."""
        self.generation = answer["generation"]
        self.heartbeat_interval = answer["heartbeat_interval_ms"] / 1000.0
        self.pending = _partitions(answer.get("pending", []))
        assignment = _partitions(answer["assignment"])
        holding = set(self.consumers) | self.granting
        revoke = _partitions(answer["revoke"]) | (holding - assignment)
        granted = assignment - holding
        if revoke:
            self._revoke(sorted(revoke))
            return  # tell the coordinator at once; the grants come in that answer again
        if granted:
            self._assign(sorted(granted))
        self._schedule_heartbeat(self.heartbeat_interval)

    def _revoke(self, tps: list[TopicPartition]) -> None:
        offsets = {tp: self.processed[tp] for tp in tps if tp in self.processed and tp in self.consumers}
        self._stop_reading(tps)
        self.stats["revoked"] += len(tps)
        d = self._commit(offsets) if offsets else succeed(None)

        def released(result: Any) -> None:
            if isinstance(result, Failure):
                self._log.warn("commit on revoke in group {group} failed: {error}", group=self.group,
                               error=result.value)
            self._call_hook(self.on_revoked, tps)
            self._schedule_heartbeat(0)

        d.addBoth(released)

    def _stop_reading(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.granting.discard(tp)
            consumer = self.consumers.pop(tp, None)
            if consumer is not None:
                consumer.close()
            self.positions.pop(tp, None)
            self.processed.pop(tp, None)
            self.paused.discard(tp)
        self._ready = deque(r for r in self._ready if r[0] in self.consumers)

    def _assign(self, tps: list[TopicPartition]) -> None:
        self.granting.update(tps)
        d = self._coordinated("FetchOffsets", {"group": self.group, "topics": sorted({t for t, _ in tps})})

        def fetched(answer: dict[str, Any]) -> None:
            committed = {(o["topic"], o["partition"]): o["offset"] for o in answer["offsets"]}
            started = []
            for tp in tps:
                if tp not in self.granting or self._closed:
                    continue  # revoked (or lost) while its offset was fetched
                self.granting.discard(tp)
                started.append(tp)
                offset = committed.get(tp)
                start: Any = offset if offset is not None else self.start
                self.consumers[tp] = Consumer(self.client, tp[0], tp[1], start=start,
                                              max_messages=self.max_messages, max_wait_ms=self.max_wait_ms)
                if offset is not None:
                    self.positions[tp] = self.processed[tp] = self.committed[tp] = offset
            self.stats["assigned"] += len(started)
            if started:
                self._call_hook(self.on_assigned, started)
            self._wake()

        def failed(failure: Failure) -> None:
            # Not reading them: the next heartbeat's owned list releases them, and they come again.
            self.granting.difference_update(tps)
            self._log.warn("fetching the offsets of group {group} failed: {error}", group=self.group,
                           error=failure.value)

        d.addCallbacks(fetched, failed)

    def _lose(self, why: str) -> None:
        lost = sorted(set(self.consumers) | self.granting)
        self._log.warn("group {group}: member {member} lost its partitions ({why}); joining again",
                       group=self.group, member=self.member_id, why=why)
        self._stop_reading(lost)
        self.stats["lost"] += len(lost)
        self.member_id = None
        self.coordinator = None
        if lost:
            self._call_hook(self.on_lost, lost)
        self._start_join(retry=True)

    def _rejoin_failed(self, failure: Failure) -> None:
        if self._closed:
            return
        self._log.warn("joining group {group} again failed: {error}; retrying", group=self.group, error=failure.value)
        later = self.clock.callLater(self.heartbeat_interval, self._retry_join)
        self._heartbeat_timer = later

    def _retry_join(self) -> None:
        self._heartbeat_timer = None
        if not self._closed and self.member_id is None:
            self._start_join(retry=True)

    def _call_hook(self, hook: Hook | None, tps: list[TopicPartition]) -> None:
        if hook is None:
            return
        try:
            hook(tps)
        except Exception:
            self._log.failure("a group consumer hook failed")

    # --- reading ----------------------------------------------------------------------

    def poll(self) -> Deferred:
        """Fires with the next messages of any assigned partition (each with its C{topic} and
        C{partition}), or [] after C{max_wait_ms} with nothing.  What the previous poll handed
        out counts as processed from now on."""
        if self._closed:
            return fail(errors.ConnectionLost("the group consumer is closed"))
        if self._waiter is not None:
            return fail(RuntimeError("GroupConsumer.poll called while a poll is in progress"))
        self.processed.update({tp: p for tp, p in self.positions.items() if tp in self.consumers})
        return self.start_consuming().addCallback(lambda _: self._next())

    def _next(self) -> Deferred:
        self._check_session()
        if self._ready:
            return succeed(self._hand_out())
        self._start_polls()
        self._waiter = Deferred()
        timer = self.clock.callLater(self.max_wait_ms / 1000.0, self._wake)

        def done(_: Any) -> Any:
            if timer.active():
                timer.cancel()
            self._check_session()
            return self._hand_out() if self._ready else []

        return self._waiter.addCallback(done)

    def _start_polls(self) -> None:
        for tp, consumer in list(self.consumers.items()):
            if tp in self._polling or tp in self.paused or any(r[0] == tp for r in self._ready):
                continue
            self._polling.add(tp)
            consumer.poll().addBoth(self._came, tp, consumer)

    def _came(self, outcome: Any, tp: TopicPartition, consumer: Consumer) -> None:
        self._polling.discard(tp)
        if self.consumers.get(tp) is not consumer:  # revoked (or lost) meanwhile: nobody gets it
            if isinstance(outcome, Failure):
                outcome.trap(Exception)
            return
        if isinstance(outcome, Failure):
            if isinstance(outcome.value, errors.OffsetOutOfRange):
                self._out_of_range(tp, consumer, outcome.value)
                return
            # Asked again by the next poll() (after this one's max_wait_ms): never at once, as a
            # Poll failing at once (no connection) would loop here.
            self._log.warn("reading {topic}/{partition} failed: {error}; asking again", topic=tp[0],
                           partition=tp[1], error=outcome.value)
            return
        if outcome:
            self._ready.append((tp, consumer, outcome))
            self._wake()
            return
        if self._waiter is not None and not self._closed:
            self._start_polls()  # an empty long poll: the next one (it waits on the server)

    def _out_of_range(self, tp: TopicPartition, consumer: Consumer, error: errors.OffsetOutOfRange) -> None:
        """The position is outside the log: before its start (retention removed those messages, e.g.
        under an old committed offset) it moves to the log start, past its end to the end; logged."""
        start, end = error.details.get("log_start_offset"), error.details.get("high_watermark")
        position = consumer.position
        if not isinstance(start, int) or not isinstance(end, int):
            self._log.warn("reading {topic}/{partition} failed: {error}; asking again", topic=tp[0],
                           partition=tp[1], error=error)
            return
        target = start if position is None or position < start else end
        self._log.warn("group {group}: {topic}/{partition} offset {offset} is outside the log [{start}, {end}): "
                       "reading from {target}", group=self.group, topic=tp[0], partition=tp[1], offset=position,
                       start=start, end=end, target=target)
        self.seek(tp[0], tp[1], target)
        if self._waiter is not None and not self._closed:
            self._start_polls()

    def _check_session(self) -> None:
        """Past the session's end, give everything up before handing anything out (see the
        module docstring): the coordinator may have expired this member already."""
        if self.member_id is not None and not self._closed and (self.consumers or self.granting) \
                and self.clock.seconds() >= self.session_end:
            self._lose("its session may have ended: no heartbeat was answered in time")

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _hand_out(self) -> list[dict[str, Any]]:
        tp, consumer, messages = self._ready.popleft()
        self.positions[tp] = messages[-1]["offset"] + 1
        return [{"topic": tp[0], "partition": tp[1], **m} for m in messages]

    def run(self, handler: Callable[[list[dict[str, Any]]], Any]) -> Deferred:
        """The callback style: hand every batch to C{handler} (which may return a Deferred) until
        L{close}; fires when closed (or fails with the error that stopped it)."""
        def loop(_: Any = None) -> Any:
            if self._closed:
                return None
            return self.poll().addCallback(lambda batch: handler(batch) if batch else None).addCallback(loop)

        return loop()

    def __aiter__(self) -> GroupConsumer:
        return self

    async def __anext__(self) -> list[dict[str, Any]]:
        if self._closed:
            raise StopAsyncIteration
        batch: list[dict[str, Any]] = await self.poll()
        return batch

    def pause(self, topic: str, partition: int) -> None:
        """Stop reading one assigned partition (it stays assigned) until L{resume}."""
        self.paused.add((topic, partition))

    def resume(self, topic: str, partition: int) -> None:
        self.paused.discard((topic, partition))

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read an assigned partition from C{offset} on (committed at the next commit)."""
        tp = (topic, partition)
        self.consumers[tp].seek(offset)
        self._ready = deque(r for r in self._ready if r[0] != tp)
        self.positions[tp] = self.processed[tp] = offset

    # --- committing -------------------------------------------------------------------

    def commit(self) -> Deferred:
        """Commit the position after everything handed out so far (the application processed it)."""
        return self._commit({tp: p for tp, p in self.positions.items() if tp in self.consumers})

    def _commit(self, offsets: dict[TopicPartition, int], retried: bool = False) -> Deferred:
        offsets = {tp: o for tp, o in offsets.items() if self.committed.get(tp) != o}
        if not offsets or self.member_id is None:
            return succeed(None)
        params = {"group": self.group, "member_id": self.member_id, "generation": self.generation,
                  "offsets": [{"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(offsets.items())]}

        sent = self.clock.seconds()

        def done(_: Any) -> None:
            self.stats["commits"] += 1
            for tp, o in offsets.items():
                if o > self.committed.get(tp, -1):
                    self.committed[tp] = o
            if self.on_committed is not None:
                try:
                    self.on_committed(dict(offsets), sent)
                except Exception:
                    self._log.failure("a group consumer on_committed hook failed")

        def failed(failure: Failure) -> Any:
            if failure.check(errors.StaleGeneration) and not retried:
                # Our generation is behind: the committed generation is the current one (docs/groups.md).
                self.generation = failure.value.details.get("generation", self.generation)
                return self._commit(offsets, retried=True)
            if failure.check(errors.UnknownMember) and params["member_id"] == self.member_id \
                    and not (self._closed or self._closing):
                # The coordinator forgot this member (its session expired, or it was removed): no
                # commit of it can succeed again, so it stops reading, rejoins and goes on with
                # whatever it is assigned then (the heartbeat may notice only an interval later).
                self._lose("the coordinator refused a commit: not a member any more")
            return failure

        return self._coordinated("CommitOffsets", params).addCallbacks(done, failed)

    def _auto_commit(self) -> None:
        self._commit_timer = None
        if self._closed:
            return
        d = self._commit({tp: p for tp, p in self.processed.items() if tp in self.consumers})
        d.addErrback(lambda f: self._log.warn("auto-commit of group {group} failed: {error}", group=self.group,
                                              error=f.value))
        assert self.auto_commit_interval is not None
        self._commit_timer = self.clock.callLater(self.auto_commit_interval, self._auto_commit)

    # --- closing ----------------------------------------------------------------------

    def close(self) -> Deferred:
        """Commit what was processed (all that was handed out: the application is done), leave
        the group (unless static), stop reading.  The client stays open: it is the caller's."""
        if self._closed:
            return succeed(None)
        self._closing = True
        self.processed.update(self.positions)
        d = self._commit({tp: p for tp, p in self.processed.items() if tp in self.consumers})
        d.addErrback(lambda f: self._log.warn("the last commit of group {group} failed: {error}",
                                              group=self.group, error=f.value))

        def leave(_: Any) -> Any:
            self._closed = True
            for timer in (self._heartbeat_timer, self._commit_timer):
                if timer is not None and timer.active():
                    timer.cancel()
            self._heartbeat_timer = self._commit_timer = None
            tps = sorted(self.consumers)
            self._stop_reading(tps)
            if tps:
                self._call_hook(self.on_revoked, tps)
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                waiter.callback(None)
            if self.member_id is None or self.group_instance_id is not None:
                return None
            left = self._coordinated("LeaveGroup", {"group": self.group, "member_id": self.member_id}, attempts=1)
            return left.addErrback(lambda f: None)  # its session expires anyway

        return d.addCallback(leave).addCallback(lambda _: None)


__all__ = ["GroupConsumer", "check_member_settings"]

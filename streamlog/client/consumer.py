"""The Consumer: reads one partition in order from its leader, keeping its position, with prefetch;
and the TopicConsumer, which reads several partitions (or all) of a topic.

L{Consumer.poll} fires with the next list of messages (possibly empty after
a long poll that found nothing).  Each Poll goes to the partition's leader
(L{ClusterClient}); where leadership moved (C{NOT_LEADER},
C{LEADER_NOT_AVAILABLE}), the node died (a lost connection, a timeout), it
is stopping, or it has too many polls parked (C{TOO_MANY_WAITING_POLLS}),
the same Poll, for the same offset, is asked again at the new leader after
a backoff, within the poll's C{timeout}.  The first such trouble is logged
once per kind (and the recovery once), not per retry.

Prefetch keeps Polls in flight ahead of the application: as soon as one
answers, the Poll for its C{next_offset} goes out; and while the partition
holds a backlog of at least a full batch beyond that, one more goes out for
the offset after it (a full batch later), so that the server reads the next
batch while this process decodes the current one.  Such a speculative Poll
is only used if its offset is where the previous batch really ended (a
batch cut short by C{max_bytes} moves the end); otherwise it is dropped and
asked again.

The position only moves when a batch is handed to the application, so a
Poll that fails for good (its timeout passed, or C{UNKNOWN_TOPIC},
C{OFFSET_OUT_OF_RANGE}) fails C{poll()} and leaves the position: calling
C{poll()} again asks from the same offset.  Nothing is skipped and nothing
is handed out twice, whichever node answers: a new leader serves only
committed messages, which the old one served too.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import positions
from streamlog.client.cluster import ClusterClient, as_cluster_client


class _Fetch:
    """One Poll in flight for C{offset}; C{outcome} holds its result (or Failure) once settled."""

    __slots__ = ("offset", "deferred", "outcome")

    def __init__(self, offset: int, deferred: Deferred) -> None:
        self.offset = offset
        self.deferred = deferred
        self.outcome: list[Any] | None = None


class Consumer:
    """Reads C{topic}/C{partition} from C{start}, from the partition's leader.

    @param client: a L{ClusterClient} (or one L{StreamlogClient}, wrapped in one).
    @param start: "earliest", "latest", an offset (int >= 0), "-N" (N before
        the end), "@MS" or an ISO 8601 time (the first message at or after
        it), or a L{positions.Start}; see L{streamlog.client.positions}.
    @param max_wait_ms: how long each Poll waits on the server for new data.
    @param prefetch: send the next Poll as soon as one answers.
    @param timeout: how long one Poll may keep being asked again (following
        leadership, waiting out a dead node) before C{poll()} fails with the
        last error; default: the client's request timeout plus C{max_wait_ms}.

    @ivar position: offset of the next message the application will get
        (None until a start other than an offset has been resolved).
    """

    _log = Logger()

    def __init__(self, client: ClusterClient | Any, topic: str, partition: int = 0,
                 start: str | int | positions.Start = "earliest", max_messages: int | None = None,
                 max_bytes: int | None = None, max_wait_ms: int = 1000, prefetch: bool = True,
                 timeout: float | None = None) -> None:
        self.start = positions.parse_start(start)  # ValueError for anything else
        self.client: Any = as_cluster_client(client) if client is not None else None
        self.timeout = timeout
        #: The kind of trouble last logged (None: all is well), so that it is logged once.
        self.trouble: str | None = None
        self.topic = topic
        self.partition = partition
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_wait_ms = max_wait_ms
        self.prefetch = prefetch
        self.position: int | None = self.start.value if self.start.kind == "offset" else None
        self.high_watermark: int | None = None
        self.log_start_offset: int | None = None
        #: Polls in flight (or settled, not yet handed out), in offset order.
        self._fetches: deque[_Fetch] = deque()
        self._polling = False
        self._closed = False

    #: Polls in flight at most with prefetch (the exact one and one speculative).
    depth = 2

    def seek(self, offset: int) -> None:
        """Move the position; prefetched batches for other offsets are dropped."""
        self.position = offset
        self._drop_fetches()

    def _drop_fetches(self) -> None:
        fetches, self._fetches = self._fetches, deque()
        for fetch in fetches:
            if not fetch.deferred.called:
                fetch.deferred.cancel()

    def _resolve_start(self) -> Deferred:
        if self.position is not None:
            return succeed(self.position)

        def resolved(offset: int) -> int:
            if self.position is None:
                self.position = offset
            return self.position

        at = self.start.at
        if at is not None:
            d = self.client.list_offsets(self.topic, self.partition, at, on_retry=self._retrying)
        else:  # N before the end: from the leader's log start and high watermark
            d = self.client.list_offsets(self.topic, self.partition, "earliest", on_retry=self._retrying)

            def with_end(first: int) -> Deferred:
                return self.client.list_offsets(self.topic, self.partition, "latest",
                                                on_retry=self._retrying).addCallback(
                    lambda end: self.start.offset_in(first, end))

            d.addCallback(with_end)
        return d.addCallback(resolved)

    def _retrying(self, error: errors.StreamlogError, delay: float) -> None:
        """A Poll (or ListOffsets) is asked again: say so once per kind of trouble."""
        if error.code != self.trouble:
            self.trouble = error.code
            where = f"offset {self.position}" if self.position is not None else f"{self.start} (not resolved yet)"
            self._log.warn("polling {topic}/{partition} from {where}: {code}: {error}; asking again "
                           "(following the leader) with backoff", topic=self.topic, partition=self.partition,
                           where=where, code=error.code, error=error.message)

    def _worked(self) -> None:
        if self.trouble is not None:
            self._log.info("polling {topic}/{partition} works again", topic=self.topic, partition=self.partition)
            self.trouble = None

    def _start_fetch(self, offset: int) -> None:
        d = self.client.poll(self.topic, self.partition, offset, max_messages=self.max_messages,
                             max_bytes=self.max_bytes, max_wait_ms=self.max_wait_ms, timeout=self.timeout,
                             on_retry=self._retrying)
        fetch = _Fetch(offset, d)
        self._fetches.append(fetch)

        def settled(result: Any) -> None:
            if fetch not in self._fetches:  # dropped (seek, close, a wrong guess): nobody wants it
                if isinstance(result, Failure):
                    result.trap(Exception)
                return
            fetch.outcome = [result]
            self._top_up()

        d.addBoth(settled)

    def _top_up(self) -> None:
        """Send the next Polls once the last one in the queue has answered.

        The Poll for its C{next_offset} goes out, and, while the partition
        holds at least a full batch beyond that offset, a guess at the offset a
        full batch later.  At most C{depth} Polls are unanswered and C{depth+1}
        batches held (in flight or answered, not yet handed out).
        """
        if not self.prefetch or self._closed or not self._fetches:
            return
        tail = self._fetches[-1]
        if tail.outcome is None or isinstance(tail.outcome[0], Failure):
            return
        result = tail.outcome[0]
        if len(self._fetches) > self.depth:
            return
        next_offset = result["next_offset"]
        self._start_fetch(next_offset)
        hw = result.get("high_watermark")
        batch = self.max_messages
        if (batch and hw is not None and hw - next_offset >= batch
                and self._unanswered() < self.depth and len(self._fetches) <= self.depth):
            self._start_fetch(next_offset + batch)  # the backlog holds a full batch: guess its end

    def _unanswered(self) -> int:
        return sum(1 for f in self._fetches if f.outcome is None)

    def poll(self) -> Deferred:
        """Fires with the next messages (a list of C{{offset, timestamp, key, value, headers}}).

        Fails with the server's error (e.g. L{errors.UnknownTopic},
        L{errors.OffsetOutOfRange}) or a client one (L{errors.ConnectionLost},
        L{errors.Timeout}); the position is unchanged then, and calling
        C{poll} again retries from it.  One poll at a time.
        """
        if self._closed:
            return fail(errors.ConnectionLost("the consumer is closed"))
        if self._polling:
            return fail(RuntimeError("Consumer.poll called while a poll is in progress"))
        self._polling = True
        d = self._resolve_start().addCallback(lambda _: self._take())

        def done(result: Any) -> Any:
            self._polling = False
            return result

        return d.addBoth(done)

    def _take(self) -> Deferred:
        if self._closed:  # closed while "earliest"/"latest" was being resolved
            raise errors.ConnectionLost("the consumer is closed")
        if not self._fetches or self._fetches[0].offset != self.position:
            self._drop_fetches()
            assert self.position is not None
            self._start_fetch(self.position)
        head = self._fetches[0]
        if head.outcome is not None:
            return self._deliver()
        waiter: Deferred = Deferred()
        head.deferred.addBoth(lambda _: waiter.callback(None))
        return waiter.addCallback(lambda _: self._deliver())

    def _deliver(self) -> Any:
        head = self._fetches[0] if self._fetches else None
        if head is None or head.offset != self.position or head.outcome is None:
            # The fetch was dropped (seek/close) while we waited.
            if self._closed:
                raise errors.ConnectionLost("the consumer is closed")
            return self._take()
        self._fetches.popleft()
        (outcome,) = head.outcome
        if isinstance(outcome, Failure):
            self._drop_fetches()  # the ones behind it were asked on the same assumptions
            return outcome
        self._worked()
        messages = outcome["messages"]
        self.high_watermark = outcome.get("high_watermark")
        self.log_start_offset = outcome.get("log_start_offset")
        self.position = outcome["next_offset"]
        if self._fetches and self._fetches[0].offset != self.position:
            self._drop_fetches()  # a speculative Poll guessed the wrong offset
        if self.prefetch and not self._closed:
            if self._fetches:
                self._top_up()
            else:
                self._start_fetch(self.position)
        return messages

    def close(self) -> None:
        """Stop prefetching (the client stays open: it is the caller's)."""
        self._closed = True
        self._drop_fetches()


class TopicConsumer:
    """Reads several partitions of a topic (or all of them), each in order, merged as answers come.

    One L{Consumer} per partition (leader-following, with prefetch), all over
    one client.  L{poll} fires with the next batch of any partition, each
    message with a C{"partition"} field in front; an empty list once a long
    poll found nothing anywhere in C{max_wait_ms}.  A partition whose Poll
    fails for good makes one C{poll()} fail with that error (its
    C{details["partition"]} says which); that partition is asked again from
    its position by the next C{poll()}.

    @param partitions: the partitions to read; None: all of the topic's
        (learnt from the metadata at the first C{poll()}).
    @ivar positions: partition -> the offset of its next message (None until resolved).
    """

    def __init__(self, client: ClusterClient | Any, topic: str, partitions: list[int] | None = None,
                 start: str | int | positions.Start = "earliest", max_messages: int | None = None,
                 max_bytes: int | None = None, max_wait_ms: int = 1000, prefetch: bool = True,
                 timeout: float | None = None) -> None:
        self.start = positions.parse_start(start)
        self.client = as_cluster_client(client)
        self.topic = topic
        self._options: dict[str, Any] = {"start": self.start, "max_messages": max_messages, "max_bytes": max_bytes,
                         "max_wait_ms": max_wait_ms, "prefetch": prefetch, "timeout": timeout}
        self.consumers: dict[int, Consumer] = {}
        self._wanted = partitions
        if partitions is not None:
            self._make(partitions)
        #: Batches (or failures) that came in, not handed out yet: (partition, outcome).
        self._ready: deque[tuple[int, Any]] = deque()
        self._polling: set[int] = set()
        self._waiter: Deferred | None = None
        self._closed = False

    def _make(self, partitions: list[int]) -> None:
        for p in partitions:
            if p not in self.consumers:
                self.consumers[p] = Consumer(self.client, self.topic, p, **self._options)

    @property
    def positions(self) -> dict[int, int | None]:
        return {p: c.position for p, c in sorted(self.consumers.items())}

    def seek(self, partition: int, offset: int) -> None:
        """Move one partition's position (batches of it not handed out yet are dropped)."""
        self._ready = deque((p, o) for p, o in self._ready if p != partition)
        self.consumers[partition].seek(offset)

    def poll(self) -> Deferred:
        """Fires with the next messages of any partition (each with its C{partition}), or [] after a
        long poll that found nothing.  One poll at a time."""
        if self._closed:
            return fail(errors.ConnectionLost("the consumer is closed"))
        if self._waiter is not None:
            return fail(RuntimeError("TopicConsumer.poll called while a poll is in progress"))
        if not self.consumers:
            return self.client.topic(self.topic).addCallback(self._learnt)
        return self._next()

    def _learnt(self, info: Any) -> Deferred:
        self._make(list(range(info.count)))
        return self._next()

    def _next(self) -> Deferred:
        # An empty answer says nothing worth keeping: that partition is asked again now.
        self._ready = deque((p, o) for p, o in self._ready if isinstance(o, Failure) or o)
        for p, consumer in self.consumers.items():
            if p not in self._polling and not any(q == p for q, _ in self._ready):
                self._polling.add(p)
                consumer.poll().addBoth(self._came, p)
        return self._take()

    def _came(self, outcome: Any, partition: int) -> None:
        self._polling.discard(partition)
        if self._closed:
            if isinstance(outcome, Failure):
                outcome.trap(Exception)
            return
        self._ready.append((partition, outcome))
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _take(self) -> Deferred:
        # A non-empty batch first; an empty one only when nothing else came.
        for i, (p, outcome) in enumerate(self._ready):
            if isinstance(outcome, Failure) or outcome:
                del self._ready[i]
                return self._as_deferred(self._hand_out(p, outcome))
        if self._ready and (not self._polling or len(self._ready) >= len(self.consumers)):
            self._ready.clear()
            return succeed([])
        self._waiter = Deferred()
        return self._waiter.addCallback(lambda _: self._take_again())

    @staticmethod
    def _as_deferred(outcome: Any) -> Deferred:
        return fail(outcome) if isinstance(outcome, Failure) else succeed(outcome)

    def _take_again(self) -> Any:
        # Empty answers of some partitions while others still wait: hand out [] only when all are empty.
        for i, (p, outcome) in enumerate(self._ready):
            if isinstance(outcome, Failure) or outcome:
                del self._ready[i]
                return self._hand_out(p, outcome)
        if len(self._ready) >= len(self.consumers) or not self._polling:
            self._ready.clear()
            return []
        return self._take()  # some partitions answered [], others are still waiting

    @staticmethod
    def _hand_out(partition: int, outcome: Any) -> Any:
        if isinstance(outcome, Failure):
            if isinstance(outcome.value, errors.StreamlogError):
                outcome.value.details.setdefault("partition", partition)
            return outcome
        return [{"partition": partition, **m} for m in outcome]

    def close(self) -> None:
        """Stop every partition's prefetching (the client stays open: it is the caller's)."""
        self._closed = True
        for consumer in self.consumers.values():
            consumer.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.errback(errors.ConnectionLost("the consumer is closed"))

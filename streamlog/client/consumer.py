"""The Consumer: reads one partition in order, keeping its position, with prefetch.

L{Consumer.poll} fires with the next list of messages (possibly empty after
a long poll that found nothing).  Prefetch keeps Polls in flight ahead of the
application: as soon as one answers, the Poll for its C{next_offset} goes
out; and while the partition holds a backlog of at least a full batch beyond
that, one more goes out for the offset after it (a full batch later), so
that the server reads the next batch while this process decodes the current
one.  Such a speculative Poll is only used if its offset is where the
previous batch really ended (a batch cut short by C{max_bytes} moves the end);
otherwise it is dropped and asked again.

The position only moves when a batch is handed to the application, so a
Poll that fails (connection lost, timeout) is asked again from the same
offset: nothing is skipped and nothing is handed out twice.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import positions
from streamlog.client.connection import StreamlogClient


class _Fetch:
    """One Poll in flight for C{offset}; C{outcome} holds its result (or Failure) once settled."""

    __slots__ = ("offset", "deferred", "outcome")

    def __init__(self, offset: int, deferred: Deferred) -> None:
        self.offset = offset
        self.deferred = deferred
        self.outcome: list[Any] | None = None


class Consumer:
    """Reads C{topic}/C{partition} from C{start}.

    @param start: "earliest", "latest", an offset (int >= 0), "-N" (N before
        the end), "@MS" or an ISO 8601 time (the first message at or after
        it), or a L{positions.Start}; see L{streamlog.client.positions}.
    @param max_wait_ms: how long each Poll waits on the server for new data.
    @param prefetch: send the next Poll as soon as one answers.

    @ivar position: offset of the next message the application will get
        (None until a start other than an offset has been resolved).
    """

    def __init__(self, client: StreamlogClient, topic: str, partition: int = 0,
                 start: str | int | positions.Start = "earliest", max_messages: int | None = None,
                 max_bytes: int | None = None, max_wait_ms: int = 1000, prefetch: bool = True) -> None:
        self.start = positions.parse_start(start)  # ValueError for anything else
        self.client = client
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
            d = self.client.list_offsets(self.topic, self.partition, at)
        else:  # N before the end: from the partition's range
            d = self.client.describe_topic(self.topic).addCallback(self._offset_in_description)
        return d.addCallback(resolved)

    def _offset_in_description(self, description: dict[str, Any]) -> int:
        for p in description["partitions"]:
            if p["partition"] == self.partition:
                offset = self.start.offset_in(p["log_start_offset"], p["high_watermark"])
                assert offset is not None
                return offset
        raise errors.UnknownPartition(
            f"topic {self.topic!r} has {len(description['partitions'])} partition(s), not {self.partition}",
            topic=self.topic, partitions=len(description["partitions"]))

    def _start_fetch(self, offset: int) -> None:
        d = self.client.poll(self.topic, self.partition, offset, max_messages=self.max_messages,
                             max_bytes=self.max_bytes, max_wait_ms=self.max_wait_ms)
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

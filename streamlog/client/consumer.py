"""The Consumer: reads one partition in order, keeping its position, with prefetch.

L{Consumer.poll} fires with the next list of messages (possibly empty after
a long poll that found nothing).  As soon as one Poll answers, the next one
is sent (prefetch), so the server looks for the following batch while the
application works on the current one.  The position only moves when a batch
is handed to the application, so a Poll that fails (connection lost,
timeout) is simply asked again from the same offset: nothing is skipped and
nothing is handed out twice.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client.connection import StreamlogClient


class Consumer:
    """Reads C{topic}/C{partition} from C{start}: "earliest", "latest" or an offset.

    @param max_wait_ms: how long each Poll waits on the server for new data.
    @param prefetch: send the next Poll as soon as one answers.

    @ivar position: offset of the next message the application will get
        (None until "earliest"/"latest" has been resolved).
    """

    def __init__(self, client: StreamlogClient, topic: str, partition: int = 0,
                 start: str | int = "earliest", max_messages: int | None = None,
                 max_bytes: int | None = None, max_wait_ms: int = 1000, prefetch: bool = True) -> None:
        if not (start in ("earliest", "latest") or (isinstance(start, int) and start >= 0)):
            raise ValueError("start must be 'earliest', 'latest' or an offset >= 0")
        self.client = client
        self.topic = topic
        self.partition = partition
        self.start = start
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_wait_ms = max_wait_ms
        self.prefetch = prefetch
        self.position: int | None = start if isinstance(start, int) else None
        self.high_watermark: int | None = None
        self.log_start_offset: int | None = None
        #: The Poll in flight (or its settled outcome): (offset it asked for, Deferred).
        self._fetch: tuple[int, Deferred] | None = None
        self._fetched: list[Any] | None = None  # [result or Failure] once the fetch settled
        self._polling = False
        self._closed = False

    def seek(self, offset: int) -> None:
        """Move the position; a prefetched batch for another offset is dropped."""
        self.position = offset
        self._drop_fetch()

    def _drop_fetch(self) -> None:
        fetch, self._fetch, self._fetched = self._fetch, None, None
        if fetch is not None and not fetch[1].called:
            fetch[1].cancel()

    def _resolve_start(self) -> Deferred:
        if self.position is not None:
            return succeed(self.position)

        def resolved(offset: int) -> int:
            if self.position is None:
                self.position = offset
            return self.position

        return self.client.list_offsets(self.topic, self.partition, self.start).addCallback(resolved)

    def _start_fetch(self) -> None:
        assert self.position is not None
        offset = self.position
        d = self.client.poll(self.topic, self.partition, offset, max_messages=self.max_messages,
                             max_bytes=self.max_bytes, max_wait_ms=self.max_wait_ms)
        self._fetch = (offset, d)
        self._fetched = None

        def settled(result: Any) -> None:
            if self._fetch is not None and self._fetch[1] is d:
                self._fetched = [result]
            elif isinstance(result, Failure):
                result.trap(Exception)  # a dropped fetch: nobody wants it

        d.addBoth(settled)

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
        if self._fetch is None or self._fetch[0] != self.position:
            self._drop_fetch()
            self._start_fetch()
        assert self._fetch is not None
        if self._fetched is not None:
            return self._deliver()
        waiter: Deferred = Deferred()
        self._fetch[1].addBoth(lambda _: waiter.callback(None))
        return waiter.addCallback(lambda _: self._deliver())

    def _deliver(self) -> Any:
        if self._fetched is None:  # the fetch was dropped (seek/close) while we waited
            if self._closed:
                raise errors.ConnectionLost("the consumer is closed")
            return self._take()
        (outcome,) = self._fetched
        self._fetch = None
        self._fetched = None
        if isinstance(outcome, Failure):
            return outcome
        messages = outcome["messages"]
        self.high_watermark = outcome.get("high_watermark")
        self.log_start_offset = outcome.get("log_start_offset")
        self.position = outcome["next_offset"]
        if self.prefetch and not self._closed:
            self._start_fetch()
        return messages

    def close(self) -> None:
        """Stop prefetching (the client stays open: it is the caller's)."""
        self._closed = True
        self._drop_fetch()

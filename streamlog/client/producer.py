"""The batching Producer: many application sends become few SendBatch requests.

Each L{Producer.send} joins a pending batch and gets a Deferred of its
C{(partition, offset)}.  A batch goes out when it holds C{batch_size}
messages, when C{linger_ms} has passed since its first message, or on
L{Producer.flush}; at most C{max_in_flight} SendBatch requests are
outstanding, and batches wait in order behind them.

How a batch's answer is mapped back to its messages: SendBatch answers, per
partition touched, a C{base_offset} and C{count}, the messages that went
there holding C{base_offset, base_offset+1, ...} in request order.  To know
which message went where without a client-side copy of the partition count,
one SendBatch only carries messages of one I{routing class}: all with the
same explicit partition, or all with the same key, or all without key and
partition (the server puts those on one partition per request, "sticky").
Every request then touches one partition, and message i of it has offset
C{base_offset + i}.  Keyed traffic with many distinct keys therefore batches
less well; a metadata cache with a client-side partitioner is a later step.

Order: batches of one routing class are sent in the order their messages
were sent, over one connection that the server reads in order, so offsets
follow send order.  A failed request (e.g. L{errors.ConnectionLost}) fails
the Deferreds of all its messages; retrying is the application's choice and
may duplicate until idempotent producers land.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any

import orjson
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import requests
from streamlog.client.connection import StreamlogClient

#: Longest SendBatch request line, by default: the server's --max-line-bytes default.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024

#: Bytes of a SendBatch line besides its messages: id, method, acks, brackets
#: (generous; the topic's own length is added per batch).
REQUEST_OVERHEAD = 256


class _Batch:
    __slots__ = ("topic", "acks", "messages", "size", "deferreds", "waiters")

    def __init__(self, topic: str, acks: str) -> None:
        self.topic = topic
        self.acks = acks
        #: The messages, each already encoded as JSON (so the batch knows its size).
        self.messages: list[bytes] = []
        self.size = 0
        self.deferreds: list[Deferred] = []
        #: Deferreds of flush() calls waiting for this batch to settle.
        self.waiters: list[Deferred] = []


def _routing(key: str | None, partition: int | None) -> Hashable:
    if partition is not None:
        return ("partition", partition)
    if key is not None:
        return ("key", key)
    return ("sticky",)


class Producer:
    """Batches sends over a L{StreamlogClient}.

    @param linger_ms: how long a batch waits for more messages after its first
        (0: it goes out on the next reactor turn, still gathering every send
        made in the same turn).
    @param batch_size: messages per SendBatch at most (the server's default
        limit is 10,000).
    @param max_in_flight: SendBatch requests outstanding at most; beyond it
        ready batches queue, in order, in the Producer.
    @param max_request_bytes: the longest SendBatch request line to send: set it
        to the server's C{--max-line-bytes}.  Batches are cut so that their
        messages and the rest of the request fit; a single message that cannot
        fails at once with L{errors.MessageTooLarge}.
    """

    _log = Logger()

    def __init__(self, client: StreamlogClient, linger_ms: float = 5, batch_size: int = 1000,
                 max_in_flight: int = 8, acks: str = "all",
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        if batch_size < 1 or max_in_flight < 1 or linger_ms < 0:
            raise ValueError("batch_size and max_in_flight must be at least 1, linger_ms at least 0")
        self.client = client
        self.clock = client.clock
        self.linger_ms = linger_ms
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.acks = acks
        self.max_request_bytes = max_request_bytes
        self._open: dict[tuple[str, str, Hashable], _Batch] = {}
        self._ready: deque[_Batch] = deque()
        self._in_flight = 0
        self._timer: IDelayedCall | None = None
        # Batches whose messages are not settled yet.  Tracked per batch, not per
        # message: a callback per message cost more than the send itself.
        self._unsettled: set[_Batch] = set()
        self._pending = 0
        #: SendBatch requests made (for tests and metrics).
        self.requests_sent = 0

    def send(self, topic: str, value: Any, key: str | None = None, partition: int | None = None,
             headers: dict[str, str] | None = None, acks: str | None = None) -> Deferred:
        """Queue one message; fires with C{(partition, offset)} once acknowledged.

        With acks "none" it fires with C{(None, None)} once the request is written.
        """
        acks = acks or self.acks
        encoded = orjson.dumps(requests.message(value, key, partition, headers))
        budget = self.max_request_bytes - REQUEST_OVERHEAD - len(topic)
        if len(encoded) > budget:
            return fail(errors.MessageTooLarge(
                f"message of {len(encoded)} bytes (encoded) does not fit in a request of "
                f"max_request_bytes={self.max_request_bytes}",
                limit=budget, size=len(encoded),
            ))
        slot = (topic, acks, _routing(key, partition))
        batch = self._open.get(slot)
        if batch is not None and batch.size + len(encoded) + 1 > budget:
            self._seal(slot, batch)  # full by bytes: this message starts the next batch
            batch = None
        if batch is None:
            batch = self._open[slot] = _Batch(topic, acks)
            self._unsettled.add(batch)
        d = Deferred()
        batch.messages.append(encoded)
        batch.size += len(encoded) + 1
        batch.deferreds.append(d)
        self._pending += 1
        if len(batch.messages) >= self.batch_size:
            self._seal(slot, batch)
        elif self._timer is None:
            self._timer = self.clock.callLater(self.linger_ms / 1000.0, self._linger_over)
        return d

    def _seal(self, slot: tuple[str, str, Hashable], batch: _Batch) -> None:
        del self._open[slot]
        self._ready.append(batch)
        self._pump()

    def _linger_over(self) -> None:
        self._timer = None
        self._close_open()
        self._pump()

    def _close_open(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self._ready.extend(self._open.values())
        self._open.clear()

    def _pump(self) -> None:
        while self._ready and self._in_flight < self.max_in_flight:
            batch = self._ready.popleft()
            self._in_flight += 1
            self.requests_sent += 1
            messages = orjson.Fragment(b"[" + b",".join(batch.messages) + b"]")
            d = self.client.send_batch(batch.topic, messages, acks=batch.acks)
            d.addBoth(self._answered, batch)

    def _answered(self, result: Any, batch: _Batch) -> None:
        self._in_flight -= 1
        self._unsettled.discard(batch)
        self._pending -= len(batch.deferreds)
        try:
            if isinstance(result, Failure):
                for d in batch.deferreds:
                    d.errback(result)
            elif result is None:  # acks="none"
                for d in batch.deferreds:
                    d.callback((None, None))
            else:
                self._place(result, batch)
        except Exception:
            self._log.failure("delivering a batch result failed")
        for waiter in batch.waiters:
            waiter.callback(None)
        self._pump()

    def _place(self, result: dict[str, Any], batch: _Batch) -> None:
        placed = result.get("partitions") or []
        if len(placed) != 1 or placed[0].get("count") != len(batch.deferreds):
            error = errors.Internal(f"unexpected SendBatch answer for {len(batch.deferreds)} messages: {result!r}")
            for d in batch.deferreds:
                d.errback(error)
            return
        partition, base = placed[0]["partition"], placed[0]["base_offset"]
        for i, d in enumerate(batch.deferreds):
            d.callback((partition, base + i))

    def flush(self) -> Deferred:
        """Send everything queued now; fires once every message sent so far is settled.

        Fires with None even if some sends failed (their own Deferreds carry
        the failures).
        """
        self._close_open()
        self._pump()
        if not self._unsettled:
            return succeed(None)
        waits = []
        for batch in self._unsettled:
            waiter: Deferred = Deferred()
            batch.waiters.append(waiter)
            waits.append(waiter)
        return DeferredList(waits).addCallback(lambda _: None)

    @property
    def pending(self) -> int:
        """Messages sent to the Producer and not yet settled."""
        return self._pending

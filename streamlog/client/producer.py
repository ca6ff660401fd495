"""The batching Producer: it chooses each message's partition, batches per partition, and delivers
each batch to its partition's leader, retrying within a delivery timeout without reordering.

L{Producer.send} picks the partition itself (L{partitioning.Partitioner}:
the explicit one, murmur2 of the key as the server and Kafka do, else a
sticky partition that moves on when its batch closes) and adds the message
to that partition's open batch, so that messages with many distinct keys
still fill few, large requests: one C{SendBatch} per partition carries every
key that lands there.  A batch closes when it holds C{batch_size} messages,
when its next message would pass C{max_request_bytes}, when C{linger_ms} has
passed since the first message of the open batches, or on L{Producer.flush}.

Delivery.  Closed batches go out in order, at most C{max_in_flight} requests
in all and C{max_in_flight_per_partition} per partition, each to the node the
cluster metadata names as the partition's leader.  A batch that fails with
an error that may heal (L{retry.retriable}: C{NOT_LEADER},
C{LEADER_NOT_AVAILABLE}, C{SHUTTING_DOWN}, a lost connection, a timeout) is
sent again after the metadata is refreshed (or at once where a C{NOT_LEADER}
hint names the new leader), with exponential backoff and jitter, until its
C{delivery_timeout} passes; then its messages fail with
L{errors.DeliveryTimeout}.  Other errors fail the batch's messages at once.

Order within a partition.  Batches of one partition are written in order to
one node.  While a batch of a partition is being retried, nothing else of
that partition goes out: its batches still in flight are waited for (or
taken back if they were never written), then the oldest failed one is sent
again alone and, once it went through, the other failed ones together, in
order (as pipelined batches go), and only then do later batches follow.  A later
batch is never sent to a new leader while earlier ones are in flight at the
old one.  So a retried batch never lands behind a later one, except in one
case no client can rule out alone: a node refuses batch N (nothing appended)
and, before it reads batch N+1 sent right behind it, becomes leader again
and appends N+1.  That is logged as a warning and counted (C{reordered}: the
batches that landed ahead of an earlier one);
C{max_in_flight_per_partition=1} rules it out at the cost of pipelining.

Idempotence (on by default).  The producer asks any node for a producer id
and epoch (C{InitProducerId}) before its first batch, and numbers each
partition's records (C{base_sequence}, in L{streamlog.idempotence.rules}):
a batch keeps its numbers through every resend, so the partition leader
recognises a retry of a batch it (or an earlier leader) already stored and
answers it with the original offsets instead of storing it again, and
refuses a batch that would land ahead of a missing earlier one
(C{OUT_OF_ORDER_SEQUENCE}; the producer sends the earlier one first).  At
most 8 batches per partition (C{MAX_IN_FLIGHT}, the default C{max_in_flight})
are numbered from the oldest unacknowledged one on, the partition remembering
the last 8 at least (C{--producer-state-batches}): every retry is then of a
batch the partition remembers, and an idempotent producer pipelines as deep
as one without idempotence.
C{PRODUCER_FENCED} (a newer instance of the same C{producer_name} started)
is fatal: every pending and later send fails with
L{errors.ProducerFenced}.  A batch that fails for good (its delivery
timeout, a refusal that will not heal, C{UNKNOWN_PRODUCER_ID} after the
partition forgot an idle producer) leaves a gap in the numbers: the producer
then waits for its batches in flight, takes the next epoch and numbers from
0 again; a batch whose outcome it never learnt fails then
(L{errors.DeliveryTimeout} with C{sent: true}: it may be stored) rather
than being renumbered.  With C{idempotent=False} a resend after a lost
connection or a timeout may append a batch twice.

Memory.  The messages accepted and not settled yet (in batches, or waiting
for their topic's partitions) take at most C{buffer_bytes} of encoded JSON
(Kafka's C{buffer.memory}).  A send that would pass it waits, in send order,
until acknowledgements or failures make room, and fails with
L{errors.BufferFull} if none came within C{max_block} seconds (Kafka's
C{max.block.ms}); its delivery timeout starts once it is in.  While any send
waits, every later one waits behind it (a partition's order is kept).
L{Producer.when_room} fires once nothing waits and there is room: an
application that sends faster than the cluster takes waits on it, so that
what it holds stays bounded too.

A topic the metadata does not know yet.  An idempotent producer has it
created first, as a Send would auto-create it (C{CreateTopic} with
C{auto_create}: the server's C{--auto-create-topics} and
C{--default-partitions} decide, and a topic that exists is no error), then
learns its partitions, so that every batch, the first included, is numbered.
Without idempotence the messages are written without partitions, one request
at a time, the server choosing (and auto-creating), until the metadata knows
the topic.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any

import orjson
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client import requests, retry
from streamlog.client.cluster import ClusterClient, as_cluster_client
from streamlog.client.metadata import TopicInfo
from streamlog.idempotence.rules import MAX_IN_FLIGHT, SEQUENCE_MODULUS
from streamlog.partitioner import partition_for_key

#: Longest SendBatch request line, by default: the server's --max-line-bytes default.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024

#: Bytes of a SendBatch line besides its messages: id, method, acks, brackets
#: (generous; the topic's own length is added per batch).
REQUEST_OVERHEAD = 256

#: What a message's encoding may grow by once its partition is added (C{,"partition":N}).
PARTITION_FIELD_BYTES = 32

#: Default delivery timeout (seconds): as Kafka's delivery.timeout.ms.
DEFAULT_DELIVERY_TIMEOUT = retry.DEFAULT_DELIVERY_TIMEOUT

#: Default bound on the encoded bytes of accepted, unsettled messages: Kafka's buffer.memory.
DEFAULT_BUFFER_BYTES = 32 * 1024 * 1024

#: Default seconds a send waits for room in the buffer before it fails: Kafka's max.block.ms.
DEFAULT_MAX_BLOCK = 60.0


class _Batch:
    """Messages for one partition (or, C{partition} None, for the server to place), sent as one SendBatch."""

    __slots__ = ("topic", "partition", "acks", "messages", "size", "deferreds", "min_seq", "deadline",
                 "attempts", "last_error", "maybe_landed", "request", "route", "withdrawn", "seq",
                 "sequence", "epoch", "ordinal")

    def __init__(self, topic: str, partition: int | None, acks: str, deadline: float, seq: int) -> None:
        self.topic = topic
        self.partition = partition
        self.acks = acks
        #: The messages, each already encoded as JSON (so the batch knows its size).
        self.messages: list[bytes] = []
        self.size = 0
        self.deferreds: list[Deferred] = []
        #: The send order of the batch's first message (for flush) and of the batch itself (for order).
        self.min_seq = seq
        self.seq = seq
        self.deadline = deadline
        self.attempts = 0
        self.last_error: errors.StreamlogError | None = None
        self.maybe_landed = False
        #: The attempt's request once written (a L{Request}), and before that the Deferred of its route.
        self.request: Any = None
        self.route: Deferred | None = None
        self.withdrawn = False
        #: Idempotence: the base sequence and epoch it carries (None until numbered, at its first
        #: attempt; kept by every resend), and how many batches its partition numbered before it.
        self.sequence: int | None = None
        self.epoch = -1
        self.ordinal = 0


class _PartitionQueue:
    """One partition's batches: filling, closed and waiting, in flight, and failed (to retry, oldest first)."""

    __slots__ = ("topic", "partition", "open", "ready", "in_flight", "retry", "node", "failures", "timer",
                 "queued", "hinted", "draining", "next_sequence", "numbered", "unacked")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.open: _Batch | None = None
        self.ready: deque[_Batch] = deque()
        self.in_flight: list[_Batch] = []
        self.retry: list[_Batch] = []
        #: The node the batches in flight went to (a later one waits while they are there and the leader moved).
        self.node: str | None = None
        self.failures = 0
        self.timer: IDelayedCall | None = None
        self.queued = False
        self.hinted = 0
        #: The leader moved while batches were in flight at the old one: wait until they are settled.
        self.draining = False
        #: Idempotence: the next base sequence, batches numbered so far in this epoch, and the
        #: ordinals of the numbered batches not acknowledged yet (oldest first).
        self.next_sequence = 0
        self.numbered = 0
        self.unacked: list[int] = []

    def room(self) -> bool:
        """May another batch be numbered?  At most MAX_IN_FLIGHT from the oldest unacknowledged one on."""
        return not self.unacked or self.numbered - self.unacked[0] < MAX_IN_FLIGHT


class _Unplaced:
    """A message sent while its topic's partitions were not known yet."""

    __slots__ = ("value", "key", "partition", "headers", "acks", "deferred", "seq", "deadline", "size")

    def __init__(self, value: Any, key: str | None, partition: int | None, headers: dict[str, str] | None,
                 acks: str, deferred: Deferred, seq: int, deadline: float, size: int) -> None:
        self.value = value
        self.key = key
        self.partition = partition
        self.headers = headers
        self.acks = acks
        self.deferred = deferred
        self.seq = seq
        self.deadline = deadline
        #: What it counts in the buffer (its encoding, a separator and room for a partition field).
        self.size = size


class _Blocked:
    """A send waiting for room in the buffer: encoded for its partition, or (C{unplaced}) not placed yet."""

    __slots__ = ("state", "partition", "encoded", "acks", "seq", "deferred", "unplaced", "size", "until")

    def __init__(self, state: _TopicState, partition: int, encoded: bytes | None, acks: str, seq: int,
                 deferred: Deferred, unplaced: _Unplaced | None, size: int, until: float) -> None:
        self.state = state
        self.partition = partition
        self.encoded = encoded
        self.acks = acks
        self.seq = seq
        self.deferred = deferred
        self.unplaced = unplaced
        self.size = size
        #: When it fails with BufferFull if still waiting (its send time plus max_block).
        self.until = until


class _TopicState:
    __slots__ = ("topic", "info", "queues", "unplaced", "looking", "unrouted", "failures", "timer",
                 "key_partitions", "auto_created")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.info: TopicInfo | None = None
        #: key -> partition, for the partition count of C{info} (murmur2 in Python costs more than a send).
        self.key_partitions: dict[str, int] = {}
        self.queues: dict[int, _PartitionQueue] = {}
        self.unplaced: deque[_Unplaced] = deque()
        self.looking = False
        self.unrouted: _Batch | None = None
        self.failures = 0
        self.timer: IDelayedCall | None = None
        #: Idempotent: a CreateTopic auto_create answered (the topic exists; the metadata may lag).
        self.auto_created = False


_REQUEUED = object()

#: Refusals that concern an idempotent batch's numbers (see Producer._sequence_verdict).
_SEQUENCE_ERRORS = (errors.OutOfOrderSequence, errors.UnknownProducerId, errors.ProducerFenced,
                    errors.TooManyProducers)

#: Keys whose partition a topic remembers at most (then it starts again).
KEY_CACHE_SIZE = 65536

_UNKEYED = b'{"value":%b,"partition":%d}'
_KEYED = b'{"value":%b,"key":%b,"partition":%d}'


def _encode(value: Any, key: str | None, partition: int, headers: dict[str, str] | None) -> bytes:
    """One message of a SendBatch, as JSON: a template around the value, as the server's records are
    (the same bytes as dumping the message's dict, at half the cost)."""
    if headers:
        return orjson.dumps(requests.message(value, key, partition, headers))
    if key is None:
        return _UNKEYED % (orjson.dumps(value), partition)
    return _KEYED % (orjson.dumps(value), orjson.dumps(key), partition)


class Producer:
    """Batches sends over a L{ClusterClient} (or one L{StreamlogClient}, wrapped in one).

    @param linger_ms: how long the open batches wait for more messages after
        the first (0: they go out on the next reactor turn, still gathering
        every send made in the same turn).
    @param batch_size: messages per SendBatch at most (the server's default
        limit is 10,000).
    @param max_in_flight: SendBatch requests outstanding at most, over all
        partitions; beyond it closed batches wait, in order, in the Producer.
    @param max_in_flight_per_partition: requests outstanding per partition at
        most (default: C{max_in_flight}); 1 rules out any reordering (see the
        module docstring).
    @param max_request_bytes: the longest SendBatch request line to send: set
        it to the server's C{--max-line-bytes}.  A single message that cannot
        fit fails at once with L{errors.MessageTooLarge}.
    @param delivery_timeout: seconds from L{send} within which a message is
        acknowledged or fails (L{errors.DeliveryTimeout} once retries ran out
        of time).
    @param idempotent: number the batches so that no resend stores one twice
        (see the module docstring); needs acks "all" or "leader" and allows
        at most 8 requests in flight per partition (C{MAX_IN_FLIGHT}, the default
        C{max_in_flight}: what every partition remembers).
    @param producer_name: a stable name for this producer (idempotent only):
        starting another producer under the same name fences this one
        (L{errors.ProducerFenced}).
    @param buffer_bytes: the encoded bytes of accepted, unsettled messages
        at most (at least C{max_request_bytes}); a send past it waits for room.
    @param max_block: seconds a send waits for room before it fails with
        L{errors.BufferFull} (0: on the next reactor turn, unless room came first).
    """

    _log = Logger()

    def __init__(self, client: Any, linger_ms: float = 5, batch_size: int = 1000, max_in_flight: int = 8,
                 acks: str = "all", max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
                 max_in_flight_per_partition: int | None = None, idempotent: bool = True,
                 producer_name: str | None = None, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 max_block: float = DEFAULT_MAX_BLOCK) -> None:
        if batch_size < 1 or max_in_flight < 1 or linger_ms < 0 or delivery_timeout <= 0:
            raise ValueError("batch_size and max_in_flight must be at least 1, linger_ms at least 0, "
                             "delivery_timeout positive")
        if max_in_flight_per_partition is not None and max_in_flight_per_partition < 1:
            raise ValueError("max_in_flight_per_partition must be at least 1")
        if idempotent and acks == "none":
            raise ValueError("an idempotent producer needs answers: acks 'all' or 'leader' (or idempotent=False)")
        if producer_name is not None and not idempotent:
            raise ValueError("producer_name names an idempotent producer")
        if buffer_bytes < max_request_bytes or max_block < 0:
            raise ValueError(f"buffer_bytes ({buffer_bytes}) must be at least max_request_bytes "
                             f"({max_request_bytes}): every message that fits a request fits the buffer; "
                             "max_block at least 0")
        self.client: ClusterClient = as_cluster_client(client)
        self.clock = self.client.clock
        self.linger_ms = linger_ms
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_partition = max_in_flight_per_partition or max_in_flight
        self.idempotent = idempotent
        self.producer_name = producer_name
        if idempotent:
            self.max_in_flight_per_partition = min(self.max_in_flight_per_partition, MAX_IN_FLIGHT)
        #: (producer id, epoch) once InitProducerId answered (idempotent only).
        self.identity: tuple[int, int] | None = None
        self._init: Deferred | None = None
        self._init_failures = 0
        #: A batch failed for good and left a gap: the next epoch is taken once nothing numbered is in flight.
        self._bumping = False
        #: Epochs taken after the first (for tests and metrics).
        self.epoch_bumps = 0
        self.acks = acks
        self.max_request_bytes = max_request_bytes
        self.delivery_timeout = delivery_timeout
        self._partitioner = self.client.partitioner
        self._topics: dict[str, _TopicState] = {}
        self._runnable: deque[_PartitionQueue] = deque()
        self._in_flight = 0
        self._timer: IDelayedCall | None = None
        self._seq = 0
        # Batches whose messages are not settled yet.  Tracked per batch, not per
        # message: a callback per message cost more than the send itself.
        self._unsettled: set[_Batch] = set()
        self._flushes: list[tuple[int, Deferred]] = []
        self._pending = 0
        self.buffer_bytes = buffer_bytes
        self.max_block = max_block
        #: Encoded bytes of the accepted messages not settled yet, the sends waiting for room
        #: (oldest first), the timer failing the oldest one, and who waits in when_room().
        self._buffered = 0
        self._blocked: deque[_Blocked] = deque()
        self._block_timer: IDelayedCall | None = None
        self._admitting = False
        self._room_waiters: list[Deferred] = []
        #: Sends that waited for room (for tests and metrics), and those that failed waiting.
        self.blocked_sends = 0
        self.buffer_full = 0
        self._closed: errors.StreamlogError | None = None
        #: SendBatch requests made (for tests and metrics), and batches retried / appended out of order.
        self.requests_sent = 0
        self.retries = 0
        self.reordered = 0
        self.client.close_hooks.append(self._client_closed)

    # --- sending -------------------------------------------------------------------------

    def send(self, topic: str, value: Any, key: str | None = None, partition: int | None = None,
             headers: dict[str, str] | None = None, acks: str | None = None) -> Deferred:
        """Queue one message; fires with C{(partition, offset)} once acknowledged.

        With acks "none" it fires with C{(None, None)} once the request is written.
        """
        if self._closed is not None:
            return fail(self._closed)
        acks = acks or self.acks
        if acks == "none" and self.idempotent:
            return fail(errors.InvalidParams("an idempotent producer sends with acks 'all' or 'leader'", field="acks"))
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _TopicState(topic)
        info = state.info
        seq = self._seq
        self._seq = seq + 1
        budget = self.max_request_bytes - REQUEST_OVERHEAD - len(topic)
        if info is None:
            encoded = orjson.dumps(requests.message(value, key, partition, headers))
            if len(encoded) + PARTITION_FIELD_BYTES > budget:
                return fail(self._too_large(len(encoded), budget))
            d: Deferred = Deferred()
            self._pending += 1
            # Counted with room for its partition field: placed, it takes no more than that.
            m = _Unplaced(value, key, partition, headers, acks, d, seq, 0.0, len(encoded) + 1 + PARTITION_FIELD_BYTES)
            if self._blocked or self._buffered + m.size > self.buffer_bytes:
                self._block(_Blocked(state, -1, None, acks, seq, d, m, m.size, 0.0))
            else:
                self._take_unplaced(state, m)
            return d
        # The hot path: a few operations per message (see the module docstring of partitioning).
        if partition is not None:
            if not 0 <= partition < info.count:
                return fail(errors.UnknownPartition(
                    f"topic {topic!r} has {info.count} partition(s), not {partition}",
                    topic=topic, partitions=info.count))
            chosen = partition
        elif key is not None:
            chosen = state.key_partitions.get(key)  # type: ignore[assignment]
            if chosen is None:
                chosen = partition_for_key(key, info.count)
                if len(state.key_partitions) >= KEY_CACHE_SIZE:
                    state.key_partitions.clear()
                state.key_partitions[key] = chosen
        else:
            chosen = self._partitioner.sticky(topic, info.count)
        encoded = _encode(value, key, chosen, headers)
        if len(encoded) > budget:
            return fail(self._too_large(len(encoded), budget))
        if self._blocked or self._buffered + len(encoded) + 1 > self.buffer_bytes:
            d = Deferred()
            self._pending += 1
            self._block(_Blocked(state, chosen, encoded, acks, seq, d, None, len(encoded) + 1, 0.0))
            return d
        return self._add(state, chosen, encoded, acks, seq, None)

    def _take_unplaced(self, state: _TopicState, m: _Unplaced) -> None:
        """Accept a message whose topic's partitions are not known yet (its delivery timeout starts)."""
        m.deadline = self.clock.seconds() + self.delivery_timeout
        self._buffered += m.size
        state.unplaced.append(m)
        self._lookup(state)

    # --- the buffer's bound ----------------------------------------------------------------

    def _block(self, blocked: _Blocked) -> None:
        """A send past C{buffer_bytes} (or behind one that is): it waits for room, C{max_block} at most."""
        blocked.until = self.clock.seconds() + self.max_block
        self.blocked_sends += 1
        self._blocked.append(blocked)
        if self._block_timer is None:
            self._block_timer = self.clock.callLater(self.max_block, self._block_over)

    def _admit(self) -> None:
        """Let waiting sends in, oldest first, while they fit; fire when_room() once nothing waits."""
        if self._admitting:
            return
        self._admitting = True
        try:
            while self._blocked and self._closed is None:
                blocked = self._blocked[0]
                if self._buffered + blocked.size > self.buffer_bytes and self._buffered > 0:
                    break
                self._blocked.popleft()
                if blocked.unplaced is not None:
                    self._take_unplaced(blocked.state, blocked.unplaced)
                else:
                    assert blocked.encoded is not None
                    self._add(blocked.state, blocked.partition, blocked.encoded, blocked.acks, blocked.seq, None,
                              blocked.deferred)
        finally:
            self._admitting = False
        if not self._blocked and self._block_timer is not None:
            if self._block_timer.active():
                self._block_timer.cancel()
            self._block_timer = None
        if self._room_waiters and self._has_room():
            waiters, self._room_waiters = self._room_waiters, []
            for d in waiters:
                d.callback(None)

    def _block_over(self) -> None:
        """Fail the sends that waited C{max_block} for room; wait for the next one's turn."""
        self._block_timer = None
        now = self.clock.seconds()
        while self._blocked and self._blocked[0].until <= now:
            blocked = self._blocked.popleft()
            self._pending -= 1
            self.buffer_full += 1
            blocked.deferred.errback(errors.BufferFull(
                f"the Producer's buffer of buffer_bytes={self.buffer_bytes} held unsettled messages for "
                f"max_block={self.max_block:g}s: this message ({blocked.size} bytes) was never sent; send slower, "
                "wait on when_room(), or raise buffer_bytes", buffer_bytes=self.buffer_bytes,
                max_block=self.max_block, size=blocked.size, sent=False))
        if self._blocked:
            self._block_timer = self.clock.callLater(max(self._blocked[0].until - now, 0.0), self._block_over)
        self._admit()  # nothing may wait now: when_room() waiters are told
        self._check_flushes()

    def _has_room(self) -> bool:
        return not self._blocked and self._buffered < self.buffer_bytes

    def when_room(self) -> Deferred:
        """Fires (with None) once no send waits for room and the buffer is not full: an
        application sending faster than the cluster takes waits on it before its next sends."""
        if self._closed is not None:
            return fail(self._closed)
        if self._has_room():
            return succeed(None)
        d: Deferred = Deferred()
        self._room_waiters.append(d)
        return d

    @property
    def buffered(self) -> int:
        """Encoded bytes of the accepted messages not settled yet (at most C{buffer_bytes})."""
        return self._buffered
    def _too_large(self, size: int, budget: int) -> errors.MessageTooLarge:
        return errors.MessageTooLarge(
            f"message of {size} bytes (encoded) does not fit in a request of "
            f"max_request_bytes={self.max_request_bytes}", limit=budget, size=size)

    def _add(self, state: _TopicState, partition: int, encoded: bytes, acks: str, seq: int,
             deadline: float | None, d: Deferred | None = None) -> Deferred:
        """Add one encoded message to its partition's open batch (C{deadline}: its delivery
        deadline, None for "now + delivery_timeout", only looked at when it starts a batch)."""
        queue = state.queues.get(partition)
        if queue is None:
            queue = state.queues[partition] = _PartitionQueue(state.topic, partition)
        budget = self.max_request_bytes - REQUEST_OVERHEAD - len(state.topic)
        batch = queue.open
        if batch is not None and (batch.acks != acks or batch.size + len(encoded) + 1 > budget):
            self._seal(queue)  # another acks (order is kept across them), or full by bytes
            batch = None
        if batch is None:
            if deadline is None:
                deadline = self.clock.seconds() + self.delivery_timeout
            batch = queue.open = _Batch(state.topic, partition, acks, deadline, seq)
            self._unsettled.add(batch)
        elif seq < batch.min_seq:
            batch.min_seq = seq
        if d is None:
            d = Deferred()
            self._pending += 1
        batch.messages.append(encoded)
        batch.size += len(encoded) + 1
        self._buffered += len(encoded) + 1
        batch.deferreds.append(d)
        if len(batch.messages) >= self.batch_size:
            self._seal(queue)
        elif self._timer is None:
            self._timer = self.clock.callLater(self.linger_ms / 1000.0, self._linger_over)
        return d

    def _seal(self, queue: _PartitionQueue) -> None:
        batch = queue.open
        if batch is None:
            return
        queue.open = None
        queue.ready.append(batch)
        state = self._topics[queue.topic]
        if state.info is not None:
            self._partitioner.batch_closed(queue.topic, state.info.count, queue.partition)
        self._make_runnable(queue)
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
        for state in self._topics.values():
            for queue in state.queues.values():
                if queue.open is not None:
                    batch, queue.open = queue.open, None
                    queue.ready.append(batch)
                    self._make_runnable(queue)
                    if state.info is not None:
                        self._partitioner.batch_closed(state.topic, state.info.count, queue.partition)

    def _make_runnable(self, queue: _PartitionQueue) -> None:
        if not queue.queued:
            queue.queued = True
            self._runnable.append(queue)

    def _can_send(self, queue: _PartitionQueue) -> bool:
        if not (queue.ready and not queue.retry and queue.timer is None and not queue.draining
                and len(queue.in_flight) < self.max_in_flight_per_partition):
            return False
        if self.idempotent and queue.ready[0].sequence is None:
            return not self._bumping and queue.room()  # a new number: within the window
        return True

    def _pump(self) -> None:
        if self.idempotent and self.identity is None:
            self._init_producer()
            return
        while self._in_flight < self.max_in_flight and self._runnable:
            queue = self._runnable.popleft()
            queue.queued = False
            if not self._can_send(queue):
                continue  # made runnable again when what blocks it settles
            self._send(queue, queue.ready.popleft())
            if queue.ready:
                self._make_runnable(queue)
        if self._bumping:
            # A numbered batch that expired here or at its resend left a gap with nothing in flight
            # whose answer would take the next epoch: without this, nothing numbered goes out again.
            self._maybe_bump()

    # --- one attempt -------------------------------------------------------------------------

    def _send(self, queue: _PartitionQueue, batch: _Batch) -> None:
        if self._closed is not None:
            self._fail_batch(batch, self._closed)
            return
        if self.clock.seconds() >= batch.deadline:
            self._expire(batch)
            self._make_runnable(queue)
            return
        if self.idempotent and batch.sequence is None:
            self._number(queue, batch)
        self._in_flight += 1
        queue.in_flight.append(batch)
        batch.attempts += 1
        batch.request = None
        batch.withdrawn = False
        d = batch.route = self.client.leader_target(queue.topic, queue.partition)
        d.addCallback(self._write, queue, batch)
        d.addBoth(self._answered, queue, batch)
        d.addErrback(lambda f: self._log.failure("delivering a batch result failed", f))

    def _write(self, target: tuple[str, Any], queue: _PartitionQueue, batch: _Batch) -> Any:
        key, node = target
        if queue.node is not None and queue.node != key and len(queue.in_flight) > 1:
            # Earlier batches are in flight at the old leader: this one waits for their outcome.
            queue.in_flight.remove(batch)
            self._in_flight -= 1
            batch.attempts -= 1
            queue.ready.appendleft(batch)
            queue.draining = True
            return _REQUEUED
        queue.node = key
        return self._request(node, batch)

    def _number(self, queue: _PartitionQueue, batch: _Batch) -> None:
        """Give C{batch} its partition's next sequence numbers (once: every resend carries them)."""
        assert self.identity is not None
        batch.sequence = queue.next_sequence
        batch.epoch = self.identity[1]
        batch.ordinal = queue.numbered
        queue.numbered += 1
        queue.next_sequence = (queue.next_sequence + len(batch.messages)) % SEQUENCE_MODULUS
        queue.unacked.append(batch.ordinal)

    def _request(self, node: Any, batch: _Batch) -> Deferred:
        params = requests.send_batch(batch.topic, orjson.Fragment(b"[" + b",".join(batch.messages) + b"]"),
                                     batch.acks)
        if batch.sequence is not None:
            assert self.identity is not None
            params.update(requests.producer_fields(self.identity[0], batch.epoch, batch.partition, batch.sequence))
        timeout = self.client.request_timeout
        remaining = batch.deadline - self.clock.seconds()
        if timeout is None or remaining < timeout:
            timeout = max(remaining, 0.001)
        self.requests_sent += 1
        batch.route = None
        request = batch.request = node.call("SendBatch", params, timeout=timeout,
                                            expect_answer=batch.acks != "none",
                                            bound=self.client.partition_bound(batch.topic, batch.partition))
        return request

    def _answered(self, result: Any, queue: _PartitionQueue, batch: _Batch) -> None:
        if result is _REQUEUED:
            return
        if batch.withdrawn:  # taken back unwritten: it waits in queue.retry
            if isinstance(result, Failure):
                result.trap(CancelledError, errors.StreamlogError)
            return
        queue.in_flight.remove(batch)
        self._in_flight -= 1
        error = self._outcome(result, batch)
        verdict = "fail"
        if error is None:
            verdict = "ok"
        elif batch.sequence is not None and isinstance(error, _SEQUENCE_ERRORS):
            verdict = self._sequence_verdict(queue, batch, error)
        elif self._closed is None and not self.client.closed and (
                retry.retriable(error) or (isinstance(error, errors.UnknownTopic)
                                           and self.client.in_unknown_topic_grace(queue.topic))):
            verdict = "retry"
        if verdict == "ok":
            self._acknowledged(queue, batch)
            self._delivered(queue, batch, result)
        elif verdict == "retry":
            self._retry_later(queue, batch, error)  # type: ignore[arg-type]
        elif verdict == "fatal":
            self._shut(error)  # type: ignore[arg-type]
            assert self._closed is not None
            self._fail_batch(batch, self._closed)  # and each batch still in flight when its answer comes
        else:
            assert error is not None
            self._acknowledged(queue, batch, failed=True)
            self._fail_batch(batch, error)
            if isinstance(error, (errors.UnknownTopic, errors.UnknownPartition)):
                self._forget_topic(queue.topic)  # deleted, or re-created otherwise: learn it again
        if not queue.in_flight:
            queue.node = None
            queue.draining = False
            if queue.retry and queue.timer is None:
                self._schedule_retry(queue)
        if not queue.retry:
            self._make_runnable(queue)
        if self._bumping:
            self._maybe_bump()
        self._pump()

    # --- idempotence: the answers that concern the numbers, and the epoch bump ------------------

    def _sequence_verdict(self, queue: _PartitionQueue, batch: _Batch, error: errors.StreamlogError) -> str:
        """What a refusal about the numbers means: "retry" (in order), "fail" (this batch) or "fatal"."""
        if isinstance(error, errors.ProducerFenced):
            return "fatal"
        if isinstance(error, errors.TooManyProducers):
            return "retry"  # with backoff: the partition evicts an idle producer in time
        earlier_open = bool(queue.unacked) and queue.unacked[0] < batch.ordinal
        if earlier_open and not self._bumping:
            return "retry"  # an earlier batch is missing there: it goes first (the retry list is in order)
        if isinstance(error, errors.UnknownProducerId) and not self._bumping:
            # The partition forgot this producer (idle past its expiry, evicted): the next epoch.
            self._bumping = True
            self._log.info("{topic}/{partition}: the partition has no state for this producer; it takes its "
                           "next epoch", topic=queue.topic, partition=queue.partition)
        if self._bumping and not batch.maybe_landed:
            return "retry"  # refused at every attempt: renumbered in the next epoch
        return "fail"  # out of order with nothing missing before it: the partition's state disagrees

    def _acknowledged(self, queue: _PartitionQueue, batch: _Batch, failed: bool = False) -> None:
        """A numbered batch is settled: out of the window; one that failed leaves a gap (next epoch)."""
        if batch.sequence is None or batch.epoch != (self.identity or (0, -2))[1]:
            return
        if batch.ordinal in queue.unacked:
            queue.unacked.remove(batch.ordinal)
        if failed and not self._bumping:
            self._bumping = True
            self._log.info("{topic}/{partition}: a numbered batch failed for good; the producer takes its next "
                           "epoch once its batches in flight are settled", topic=queue.topic, partition=queue.partition)

    def _numbered_in_flight(self) -> bool:
        return any(b.sequence is not None for state in self._topics.values() for q in state.queues.values()
                   for b in q.in_flight)

    def _maybe_bump(self) -> None:
        """Take the next epoch once nothing numbered is in flight; every partition then numbers from 0."""
        if self._init is not None or self._closed is not None or self._numbered_in_flight():
            return
        assert self.identity is not None
        self._init_producer(current=self.identity)

    def _init_producer(self, current: tuple[int, int] | None = None) -> None:
        """Ask for this producer's id and epoch (C{current}: its next epoch), then send what waits."""
        if self._init is not None or self._closed is not None:
            return
        # The request's token makes a resend after a lost answer harmless: the registry (a name's
        # in the cluster metadata; an unnamed producer's at the node asked) answers it as the first.
        # Without it a resend would bump a name's epoch again, and fence this very instance if it
        # named its current identity (docs/protocol.md, "InitProducerId").
        params = requests.init_producer_id(self.producer_name, current, requests.new_request_token())
        self._init = self.client._run("InitProducerId", params, self.client.any_target, self.delivery_timeout,
                                      resend_ok=True)
        self._init.addCallbacks(self._initialised, self._init_failed)
        self._init.addErrback(lambda f: self._log.failure("starting the idempotent producer failed", f))

    def _initialised(self, result: Any) -> None:
        self._init = None
        self._init_failures = 0
        first = self.identity is None
        self.identity = (int(result["producer_id"]), int(result["epoch"]))
        if not first:
            self.epoch_bumps += 1
            self._renumber()
        self._bumping = False
        for state in self._topics.values():
            for queue in state.queues.values():
                self._make_runnable(queue)
                if queue.retry and queue.timer is None and not queue.in_flight:
                    self._schedule_retry(queue)
        self._pump()

    def _renumber(self) -> None:
        """The new epoch: every partition starts at sequence 0; waiting batches certainly not stored
        are numbered again, the ones whose outcome was never learnt fail (they may be stored)."""
        for state in self._topics.values():
            for queue in state.queues.values():
                queue.next_sequence = queue.numbered = 0
                queue.unacked = []
                keep = []
                for batch in queue.retry:
                    if batch.maybe_landed:
                        self._expire(batch)
                    else:
                        batch.sequence = None
                        keep.append(batch)
                queue.retry = keep
                for batch in queue.ready:
                    batch.sequence = None

    def _init_failed(self, failure: Failure) -> None:
        self._init = None
        error = failure.value
        if not isinstance(error, errors.StreamlogError):
            error = errors.Internal(f"InitProducerId failed: {error!r}")
        if isinstance(error, errors.ProducerFenced) or not (retry.retriable(error) and not self.client.closed):
            self._shut(error if isinstance(error, errors.ProducerFenced) else errors.StreamlogError(
                f"the idempotent producer could not start: {error.code}: {error.message}"))
            return
        self._init_failures += 1
        self.clock.callLater(self.client.backoff(self._init_failures), self._pump_or_bump)

    def _pump_or_bump(self) -> None:
        if self._bumping and self.identity is not None:
            self._maybe_bump()
        else:
            self._pump()

    def _outcome(self, result: Any, batch: _Batch) -> errors.StreamlogError | None:
        """The error of an attempt (None: it was appended as one batch on its partition)."""
        if isinstance(result, Failure):
            error = result.value
            if isinstance(error, errors.StreamlogError):
                return error
            self._log.failure("sending a batch failed", result)
            return errors.Internal(f"sending a batch failed: {error!r}")
        if result is None:  # acks="none": written, nothing answered
            return None
        placed = result.get("partitions") or [] if isinstance(result, dict) else []
        if len(placed) == 1 and isinstance(placed[0].get("error"), dict):
            return errors.from_wire(placed[0]["error"])
        if (len(placed) != 1 or placed[0].get("count") != len(batch.deferreds)
                or (batch.partition is not None and placed[0].get("partition") != batch.partition)):
            return errors.Internal(f"unexpected SendBatch answer for {len(batch.deferreds)} messages "
                                   f"to partition {batch.partition}: {str(result)[:300]}")
        return None

    def _delivered(self, queue: _PartitionQueue, batch: _Batch, result: Any) -> None:
        queue.failures = 0
        queue.hinted = 0
        if queue.retry and queue.retry[0].seq < batch.seq:
            self.reordered += 1
            self._log.warn("{topic}/{partition}: a batch was appended while an earlier one ({n} message(s)) "
                           "failed and waits to be sent again: those will land after it",
                           topic=queue.topic, partition=queue.partition, n=len(queue.retry[0].deferreds))
        self._settle(batch, result)

    def _retry_later(self, queue: _PartitionQueue, batch: _Batch, error: errors.StreamlogError) -> None:
        batch.last_error = error
        batch.maybe_landed = batch.maybe_landed or retry.may_have_landed(error)
        immediate = self.client.learn(error, queue.topic, queue.partition, queue.node)
        # One failure per round, not per batch: the batches in flight together fail together when
        # the leader dies (its connection closes), and counting each would start the backoff as
        # far up as the window is deep (seen: 4 in flight, 0.4-0.8 s before the first resend).
        if retry.first_of_round(bool(queue.retry), batch.attempts):
            if immediate and queue.hinted < 2:
                queue.hinted += 1
            else:
                queue.failures = retry.count_failure(queue.failures, error)
        bisect.insort(queue.retry, batch, key=lambda b: b.seq)
        self.retries += 1
        # Later batches of this partition that are not written yet are taken back: they go after it.
        for later in list(queue.in_flight):
            if later.seq < batch.seq or not self._withdraw(later):
                continue
            later.attempts -= 1
            queue.in_flight.remove(later)
            self._in_flight -= 1
            bisect.insort(queue.retry, later, key=lambda b: b.seq)

    @staticmethod
    def _withdraw(batch: _Batch) -> bool:
        """Take back an attempt that was not written yet (its route is pending, or its request
        waits for a connection); True if it was."""
        if batch.route is not None and not batch.route.called:
            batch.withdrawn = True
            batch.route.cancel()
            return True
        request = batch.request
        if request is not None and hasattr(request, "withdraw"):
            batch.withdrawn = True
            if request.withdraw():
                return True
            batch.withdrawn = False
        return False

    def _schedule_retry(self, queue: _PartitionQueue) -> None:
        delay = retry.retry_delay(self.client.backoff, queue.failures)
        # Not past the oldest batch's deadline: it fails then, not a backoff later.
        delay = max(0.0, min(delay, queue.retry[0].deadline - self.clock.seconds()))
        queue.timer = self.clock.callLater(delay, self._resend, queue)

    def _resend(self, queue: _PartitionQueue) -> None:
        """Send the oldest failed batch of the partition, alone (the rest wait for its outcome);
        once one went through (no failure counted since), the next ones together, in order, up
        to C{max_in_flight_per_partition}: a failover that left twenty small batches to send
        again then costs one round trip at the new leader more, not twenty (seen: 0.4-1.9 s)."""
        queue.timer = None
        if self._bumping:
            self._maybe_bump()  # resent (or renumbered) in the next epoch
            return
        # Taken from the front of the sorted retry list: resent together, their numbers in order.
        window = self.max_in_flight_per_partition if queue.failures == 0 else 1
        sent = 0
        while queue.retry and sent < window:
            batch = queue.retry[0]
            if self._closed is not None:
                queue.retry.pop(0)
                self._fail_batch(batch, self._closed)
                continue
            if self.clock.seconds() >= batch.deadline:
                queue.retry.pop(0)
                self._expire(batch)
                continue
            queue.retry.pop(0)
            self._resend_one(queue, batch)
            sent += 1
        if sent:
            return
        self._make_runnable(queue)
        self._pump()

    def _resend_one(self, queue: _PartitionQueue, batch: _Batch) -> None:
        # Counted in max_in_flight too, but never held back by it: it is already late.
        if self.idempotent and batch.sequence is None:
            self._number(queue, batch)  # renumbered in a new epoch
        self._in_flight += 1
        queue.in_flight.append(batch)
        batch.attempts += 1
        batch.request = None
        batch.withdrawn = False
        d = batch.route = self.client.leader_target(queue.topic, queue.partition)
        d.addCallback(lambda target: self._retry_write(target, queue, batch))
        d.addBoth(self._answered, queue, batch)
        d.addErrback(lambda f: self._log.failure("delivering a batch result failed", f))

    def _retry_write(self, target: tuple[str, Any], queue: _PartitionQueue, batch: _Batch) -> Deferred:
        key, node = target
        queue.node = key
        return self._request(node, batch)

    # --- settling ------------------------------------------------------------------------------

    def _settle(self, batch: _Batch, result: Any) -> None:
        self._unsettled.discard(batch)
        self._pending -= len(batch.deferreds)
        self._buffered -= batch.size
        try:
            if result is None:  # acks="none"
                for d in batch.deferreds:
                    d.callback((None, None))
            else:
                placed = result["partitions"][0]
                partition, base = placed["partition"], placed["base_offset"]
                for i, d in enumerate(batch.deferreds):
                    d.callback((partition, base + i))
        except Exception:
            self._log.failure("delivering a batch result failed")
        self._admit()
        self._check_flushes()

    def _fail_batch(self, batch: _Batch, error: errors.StreamlogError) -> None:
        self._unsettled.discard(batch)
        self._pending -= len(batch.deferreds)
        self._buffered -= batch.size
        error = retry.given_up(error, batch.maybe_landed)  # an earlier attempt may have stored it
        for d in batch.deferreds:
            d.errback(error)
        self._admit()
        self._check_flushes()

    def _expire(self, batch: _Batch) -> None:
        if batch.sequence is not None and batch.partition is not None:
            queue = self._topics[batch.topic].queues.get(batch.partition)
            if queue is not None:
                self._acknowledged(queue, batch, failed=True)
        where = f"{batch.topic}/{batch.partition}" if batch.partition is not None else batch.topic
        self._fail_batch(batch, retry.delivery_timeout(
            f"{len(batch.deferreds)} message(s) for {where}", self.delivery_timeout, batch.attempts,
            batch.last_error, batch.maybe_landed))

    # --- topics the metadata does not know yet ----------------------------------------------------

    def _forget_topic(self, topic: str) -> None:
        state = self._topics.get(topic)
        if state is not None:
            state.info = None
            state.key_partitions.clear()
        self.client.view.forget_topic(topic)  # the client's cached partitions are as stale

    def _lookup(self, state: _TopicState) -> None:
        if state.looking or state.unrouted is not None or state.timer is not None or self._closed is not None:
            return
        state.looking = True
        d = self.client.topic(state.topic)
        d.addCallbacks(self._found, self._not_found, callbackArgs=(state,), errbackArgs=(state,))
        d.addErrback(lambda f: self._log.failure("placing messages for {topic} failed", f, topic=state.topic))

    def _found(self, info: TopicInfo, state: _TopicState) -> None:
        state.looking = False
        state.failures = 0
        state.auto_created = False  # should it go (deleted), it is created again as a Send would
        if state.info is None or state.info.count != info.count:
            state.key_partitions.clear()
        state.info = info
        unplaced, state.unplaced = state.unplaced, deque()
        for m in unplaced:
            self._buffered -= m.size  # counted again, encoded for its partition, if it goes in a batch
            if self.clock.seconds() >= m.deadline:
                self._pending -= 1
                m.deferred.errback(errors.DeliveryTimeout(
                    f"the partitions of {state.topic} were not known within the delivery timeout",
                    timeout=self.delivery_timeout, attempts=0, last_error=None, sent=False))
                continue
            try:
                chosen = self._partitioner.choose(state.topic, info.count, m.key, m.partition)
            except errors.StreamlogError as e:
                self._pending -= 1
                m.deferred.errback(e)
                continue
            self._add(state, chosen, _encode(m.value, m.key, chosen, m.headers), m.acks, m.seq, m.deadline,
                      m.deferred)
        self._admit()
        self._check_flushes()
        self._pump()

    def _not_found(self, failure: Failure, state: _TopicState) -> None:
        state.looking = False
        error = failure.value
        graced = isinstance(error, errors.UnknownTopic) and self.client.in_unknown_topic_grace(state.topic)
        if isinstance(error, errors.UnknownTopic) and not graced:
            if not self.idempotent:
                self._send_unrouted(state)  # the server may create it, and chooses partitions until then
            elif state.auto_created:
                self._look_later(state, error)  # created, but the metadata asked does not show it yet
            else:
                self._auto_create(state)
            return
        if isinstance(error, errors.StreamlogError) and (retry.retriable(error) or graced) and self._closed is None:
            self._look_later(state, error)
            return
        self._fail_unplaced(state, error if isinstance(error, errors.StreamlogError)
                            else errors.Internal(f"finding the partitions of {state.topic} failed: {error!r}"))

    def _look_later(self, state: _TopicState, error: errors.StreamlogError) -> None:
        state.failures += 1
        self._expire_unplaced(state, error)
        if state.unplaced:
            delay = min(self.client.backoff(state.failures), state.unplaced[0].deadline - self.clock.seconds())
            state.timer = self.clock.callLater(max(delay, 0.0), self._look_again, state)

    def _auto_create(self, state: _TopicState) -> None:
        """An idempotent producer's first messages to a topic nobody knows: have it created (as a Send
        would auto-create it) and learn its partitions, so that even its first batch is numbered.

        (A Send that auto-creates places its messages at the server, one request with no numbers: a
        resend after a lost answer could store it twice.)
        """
        self._expire_unplaced(state, None)
        if not state.unplaced or self._closed is not None:
            return
        state.looking = True
        remaining = max(state.unplaced[0].deadline - self.clock.seconds(), 0.001)
        d = self.client.auto_create_topic(state.topic, timeout=remaining)
        d.addCallbacks(self._auto_created, self._auto_create_failed, callbackArgs=(state,), errbackArgs=(state,))
        d.addErrback(lambda f: self._log.failure("creating {topic} failed", f, topic=state.topic))

    def _auto_created(self, result: Any, state: _TopicState) -> None:
        state.looking = False
        state.auto_created = True
        self._lookup(state)

    def _auto_create_failed(self, failure: Failure, state: _TopicState) -> None:
        state.looking = False
        error = failure.value
        if isinstance(error, errors.StreamlogError) and retry.retriable(error) and self._closed is None:
            self._look_later(state, error)
            return
        # UNKNOWN_TOPIC here: auto-creation is off at the server; the messages cannot go.
        self._fail_unplaced(state, error if isinstance(error, errors.StreamlogError)
                            else errors.Internal(f"creating {state.topic} failed: {error!r}"))

    def _look_again(self, state: _TopicState) -> None:
        state.timer = None
        self._lookup(state)

    def _expire_unplaced(self, state: _TopicState, last: errors.StreamlogError | None) -> None:
        now = self.clock.seconds()
        while state.unplaced and now >= state.unplaced[0].deadline:
            m = state.unplaced.popleft()
            self._pending -= 1
            self._buffered -= m.size
            m.deferred.errback(errors.DeliveryTimeout(
                f"a message for {state.topic} was not acknowledged within the delivery timeout of "
                f"{self.delivery_timeout:g}s (its topic's partitions were never learnt"
                + (f"; last error: {last.code}: {last.message})" if last is not None else ")"),
                timeout=self.delivery_timeout, attempts=0,
                last_error=last.to_wire() if last is not None else None, sent=False))
        self._admit()
        self._check_flushes()

    def _fail_unplaced(self, state: _TopicState, error: errors.StreamlogError) -> None:
        unplaced, state.unplaced = state.unplaced, deque()
        self._pending -= len(unplaced)
        for m in unplaced:
            self._buffered -= m.size
            m.deferred.errback(error)
        self._admit()
        self._check_flushes()

    def _send_unrouted(self, state: _TopicState) -> None:
        """One request of the first waiting messages of one routing class, placed by the server."""
        self._expire_unplaced(state, None)
        if not state.unplaced:
            return
        first = state.unplaced[0]
        budget = self.max_request_bytes - REQUEST_OVERHEAD - len(state.topic)
        batch = _Batch(state.topic, None, first.acks, first.deadline, first.seq)
        taken: list[_Unplaced] = []
        for m in state.unplaced:
            if (m.key, m.partition, m.acks) != (first.key, first.partition, first.acks) \
                    or len(taken) >= self.batch_size:
                break
            encoded = orjson.dumps(requests.message(m.value, m.key, m.partition, m.headers))
            if taken and batch.size + len(encoded) + 1 > budget:
                break
            taken.append(m)
            batch.messages.append(encoded)
            batch.size += len(encoded) + 1
            batch.deferreds.append(m.deferred)
        for m in taken:
            state.unplaced.popleft()
            self._buffered -= m.size
        self._buffered += batch.size
        state.unrouted = batch
        self._unsettled.add(batch)
        remaining = max(batch.deadline - self.clock.seconds(), 0.001)
        params = requests.send_batch(state.topic, orjson.Fragment(b"[" + b",".join(batch.messages) + b"]"),
                                     batch.acks)
        self.requests_sent += 1
        d = self.client._run("SendBatch", params, self.client.any_target, remaining, resend_ok=True,
                             expect_answer=batch.acks != "none", topic=state.topic, final=(errors.NotLeader,))
        d.addBoth(self._unrouted_answered, state, batch, taken)
        d.addErrback(lambda f: self._log.failure("delivering a batch result failed", f))

    def _unrouted_answered(self, result: Any, state: _TopicState, batch: _Batch, taken: list[_Unplaced]) -> None:
        state.unrouted = None
        error = self._outcome(result, batch)
        if isinstance(error, errors.NotLeader) and self._closed is None:
            # The node that took them (it may have just created the topic) does not lead the
            # partition it chose: nothing was appended.  Placed again by the topic's partitions,
            # which the metadata knows now, instead of asking that node until the deadline.
            self._unsettled.discard(batch)
            state.unplaced.extendleft(reversed(taken))
        elif error is None:
            self._settle(batch, result)
            self.client.view.forget_topic(state.topic)  # it exists now: ask for its partitions
        elif isinstance(error, errors.Timeout) and self.clock.seconds() >= batch.deadline:
            batch.last_error = error
            batch.attempts = 1
            batch.maybe_landed = retry.may_have_landed(error)
            self._expire(batch)
        else:
            self._fail_batch(batch, error)
            if isinstance(error, errors.UnknownTopic):
                self._fail_unplaced(state, error)  # not auto-created: the rest cannot go either
        if state.unplaced:
            self._lookup(state)

    # --- the rest ---------------------------------------------------------------------------------

    def _check_flushes(self) -> None:
        if not self._flushes:
            return
        low = min((b.min_seq for b in self._unsettled), default=self._seq)
        for state in self._topics.values():
            if state.unplaced:
                low = min(low, state.unplaced[0].seq)
        if self._blocked:
            low = min(low, self._blocked[0].seq)
        done = [f for f in self._flushes if f[0] <= low]
        if done:
            self._flushes = [f for f in self._flushes if f[0] > low]
            for _, d in done:
                d.callback(None)

    def flush(self) -> Deferred:
        """Send everything queued now; fires once every message sent so far is settled.

        Fires with None even if some sends failed (their own Deferreds carry
        the failures).
        """
        self._close_open()
        self._pump()
        if not self._pending:
            return succeed(None)
        d: Deferred = Deferred()
        self._flushes.append((self._seq, d))
        self._check_flushes()
        return d

    def _client_closed(self) -> None:
        """The client is closing: nothing more can be sent; what waits here fails."""
        self._shut(errors.ConnectionLost("the client was closed", sent=False))

    def _shut(self, error: errors.StreamlogError) -> None:
        """Nothing more can be sent (the client closed, or this producer was fenced): what waits fails with C{error}."""
        if self._closed is not None:
            return
        if isinstance(error, errors.ProducerFenced):
            self._log.error("the producer was fenced (a newer instance of it started): {error}", error=error.message)
            error = errors.ProducerFenced(f"this producer was fenced: a newer instance took over ({error.message})",
                                          **error.details)
        self._closed = error
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._block_timer is not None and self._block_timer.active():
            self._block_timer.cancel()
        self._block_timer = None
        blocked, self._blocked = self._blocked, deque()
        self._pending -= len(blocked)
        for waiting in blocked:
            waiting.deferred.errback(error)
        waiters, self._room_waiters = self._room_waiters, []
        for d in waiters:
            d.errback(error)
        for state in self._topics.values():
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            state.timer = None
            self._fail_unplaced(state, self._closed)
            for queue in state.queues.values():
                if queue.timer is not None and queue.timer.active():
                    queue.timer.cancel()
                queue.timer = None
                waiting = ([queue.open] if queue.open is not None else []) + list(queue.ready) + queue.retry
                queue.open, queue.ready, queue.retry = None, deque(), []
                for batch in waiting:
                    self._fail_batch(batch, error)

    @property
    def closed(self) -> errors.StreamlogError | None:
        """Why nothing more can be sent (the client closed, the producer was fenced), or None."""
        return self._closed

    @property
    def pending(self) -> int:
        """Messages sent to the Producer and not yet settled."""
        return self._pending


__all__ = ["DEFAULT_BUFFER_BYTES", "DEFAULT_DELIVERY_TIMEOUT", "DEFAULT_MAX_BLOCK", "DEFAULT_MAX_REQUEST_BYTES",
           "Producer"]


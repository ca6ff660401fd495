"""The real C{streamlog.client} Producer, driven through the simulated network and clock.

The simulator's own clients (L{streamlog.cluster.sim.clients}) send one
value at a time and never resend it; what they cannot test is the promise
applications rely on: the library's Producer, idempotent by default,
pipelining batches to each partition's leader and retrying them through
failovers, lost answers and cut connections, stores every message once and
in send order.  L{LibraryProducer} runs that Producer (over a
C{ClusterClient} whose connections are the simulated network's) and records
every message as a C{streamlog.chaos.history} send, marked idempotent or
not, so that the history checker counts C{duplicate} and C{non-monotonic-send}
for it (safety violations) and C{retry-duplicate} for a plain one (counted:
what idempotence is for).

Answers are lost on purpose: the network drops an answer to a producer host
with a small probability by resetting that connection as the answer goes out
(L{streamlog.cluster.sim.network.SimNetwork.drop_answers}), so the Producer
sees its request time out or its connection go and must resend a batch the
leader may already hold.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.chaos.history import INFO, OK, History, Send, describe_error, outcome_of_error
from streamlog.client.cluster import ClusterClient
from streamlog.client.producer import Producer
from streamlog.cluster.sim.network import SimNetwork


def _host_port(address: Any) -> str:
    text = str(address)
    return text[len("tcp:"):] if text.startswith("tcp:") else text


class LibraryProducer:
    """One application process: a C{streamlog.client.Producer} sending unique values, round robin
    over the topic's partitions, at most C{max_pending} unanswered.

    @param idempotent: the Producer's own switch (a plain one has one request in flight per
        partition, so its send order is checkable too, as C{streamlog chaos} runs it).
    @param delivery_timeout: the Producer's, in simulated seconds.
    @param producer_class: C{Producer}, or a broken variant's subclass of it.
    """

    def __init__(self, name: str, network: SimNetwork, clock: Clock, rng: random.Random,
                 addresses: dict[int, str], history: History, ids: Callable[[], int], *, topic: str,
                 partitions: int, idempotent: bool = True, delivery_timeout: float = 8.0,
                 request_timeout: float = 1.0, max_pending: int = 12, gap: tuple[float, float] = (0.002, 0.02),
                 producer_class: type[Producer] = Producer) -> None:
        self.name = name
        self.clock = clock
        self.rng = rng
        self.history = history
        self.ids = ids
        self.topic = topic
        self.partitions = partitions
        self.idempotent = idempotent
        self.max_pending = max_pending
        self.gap = gap
        self.client = ClusterClient([addresses[i] for i in sorted(addresses)], clock=clock,
                                    request_timeout=request_timeout, retry_backoff_min=0.02, retry_backoff_max=0.3,
                                    reconnect_min=0.02, reconnect_max=0.5, rng=random.Random(rng.random()),
                                    endpoint_factory=lambda address: network.endpoint(name, _host_port(address)))
        self.producer = producer_class(self.client, linger_ms=2, batch_size=20, acks="all",
                                 delivery_timeout=delivery_timeout,
                                 max_in_flight_per_partition=None if idempotent else 1, idempotent=idempotent)
        self.count = 0
        self.pending = 0
        self.running = False
        #: (partition, offset, value) of every acknowledged message (checked against the final leaders).
        self.acked: list[tuple[int, int, str]] = []

    @property
    def busy(self) -> bool:
        return self.pending > 0

    def start(self) -> None:
        self.running = True
        self._next()

    def _next(self) -> None:
        if self.running:
            self.clock.callLater(self.rng.uniform(*self.gap), self._tick)

    def _tick(self) -> None:
        if not self.running:
            return
        if self.pending < self.max_pending:
            self._send_one()
        self._next()

    def _send_one(self) -> None:
        self.count += 1
        value = f"{self.name}-{self.count}"
        partition = self.count % self.partitions
        op_id, invoke = self.ids(), self.clock.seconds()
        self.pending += 1
        d = self.producer.send(self.topic, value, partition=partition)
        d.addCallbacks(self._ok, self._failed, callbackArgs=(op_id, invoke, value, partition),
                       errbackArgs=(op_id, invoke, value, partition))

    def _record(self, op_id: int, invoke: float, value: str, outcome: str, partition: int,
                offset: int | None = None, error: str | None = None) -> None:
        self.history.sends.append(Send(op_id, self.name, invoke, self.clock.seconds(), self.topic, value,
                                       outcome, partition, offset, idempotent=self.idempotent, error=error))

    def _ok(self, placed: tuple[int, int], op_id: int, invoke: float, value: str, partition: int) -> None:
        self.pending -= 1
        self._record(op_id, invoke, value, OK, int(placed[0]), int(placed[1]))
        self.acked.append((int(placed[0]), int(placed[1]), value))

    def _failed(self, failure: Failure, op_id: int, invoke: float, value: str, partition: int) -> None:
        self.pending -= 1
        error = failure.value
        code, sent = describe_error(error)
        # Only a delivery timeout says whether an attempt may have landed ("sent"); any other
        # failure may follow an attempt that timed out, so its outcome is unknown.
        outcome = outcome_of_error(code, sent=sent) if isinstance(error, errors.DeliveryTimeout) else INFO
        self._record(op_id, invoke, value, outcome, partition, error=code)

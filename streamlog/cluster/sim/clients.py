"""The simulation's clients: producers and consumers speaking the real JSON-lines protocol.

They connect through the simulated network to the nodes' client listeners
(the real C{BrokerFactory} and the broker's handlers) and record every
operation in a L{streamlog.chaos.history.History}, as a chaos runner does,
for L{streamlog.chaos.checker}: a producer sends unique values with
C{acks=all} one at a time, following C{NOT_LEADER} hints; a consumer
polls its partition from offset 0 on, following leadership the same way.
An answer that does not come within the client's timeout, or a lost
connection, is an unknown (C{info}) outcome, as the Jepsen model wants.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from streamlog import wire
from streamlog.chaos.history import FAIL, INFO, OK, History, Poll, Send, outcome_of_error
from streamlog.cluster.sim.network import SimNetwork


class ClientProtocol(LineReceiver):
    """One client connection: requests by id, answers matched to them."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 24

    def __init__(self) -> None:
        self.pending: dict[int, Deferred] = {}
        self.next_id = 0
        self.lost = False

    def request(self, method: str, params: dict[str, Any]) -> Deferred:
        self.next_id += 1
        d: Deferred = Deferred()
        self.pending[self.next_id] = d
        self.transport.write(wire.encode_request(self.next_id, method, params))
        return d

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        answer = orjson.loads(line)
        d = self.pending.pop(answer.get("id"), None)
        if d is not None:
            d.callback(answer)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self.lost = True
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.callback({"error": {"code": "CONNECTION_LOST"}, "sent": True})


class _Factory(Factory):
    protocol = ClientProtocol


class SimClient:
    """A client process: one connection per node, made when first needed."""

    def __init__(self, name: str, network: SimNetwork, clock: Clock, rng: random.Random,
                 addresses: dict[int, str], history: History, ids: Callable[[], int],
                 timeout: float = 1.0) -> None:
        self.name = name
        self.network = network
        self.clock = clock
        self.rng = rng
        self.addresses = addresses
        self.history = history
        self.ids = ids
        self.timeout = timeout
        self.conns: dict[int, ClientProtocol] = {}
        self.connecting: dict[int, list[Deferred]] = {}
        self.leader: int | None = None
        self.running = False
        self.busy = False

    def _connection(self, node: int) -> Deferred:
        """Fires with the open connection to C{node} (made if needed), or None if refused."""
        conn = self.conns.get(node)
        if conn is not None and not conn.lost:
            return succeed(conn)
        waiting = self.connecting.get(node)
        if waiting is None:
            waiting = self.connecting[node] = []

            def done(result: Any) -> None:
                got = None if isinstance(result, Failure) else result
                if got is not None:
                    self.conns[node] = got
                for w in self.connecting.pop(node, []):
                    w.callback(got)

            self.network.connect(self.name, self.addresses[node], _Factory()).addBoth(done)
        w: Deferred = Deferred()
        waiting.append(w)
        return w

    def call(self, node: int, method: str, params: dict[str, Any]) -> Deferred:
        """Fires with the answer, or C{{"error": {"code": ...}, "sent": bool}} (no answer in time,
        connection lost or refused)."""
        result: Deferred = Deferred()

        def answer(value: dict[str, Any]) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(value)

        def timed_out() -> None:
            if not result.called:
                result.callback({"error": {"code": "TIMEOUT"}, "sent": sent[0]})

        sent = [False]
        timer = self.clock.callLater(self.timeout, timed_out)

        def connected(conn: Any) -> None:
            if conn is None:
                answer({"error": {"code": "CONNECT_FAILED"}, "sent": False})
                return
            if result.called:
                return
            sent[0] = True
            conn.request(method, params).addCallback(answer)

        self._connection(node).addCallback(connected)
        return result

    def pick(self, nodes: list[int]) -> int:
        if self.leader is not None and self.leader in self.addresses:
            return self.leader
        return nodes[self.rng.randrange(len(nodes))]

    def follow(self, error: dict[str, Any]) -> None:
        """Where to go next after an error: the hinted leader, or anyone."""
        hint = error.get("leader")
        self.leader = hint if isinstance(hint, int) else None


class Producer(SimClient):
    """Sends unique values to one partition with acks=all, one at a time."""

    def __init__(self, *args: Any, topic: str, partition: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.topic = topic
        self.partition = partition
        self.count = 0
        self.acked: list[tuple[int, int, str]] = []  # (partition, offset, value)

    def start(self) -> None:
        self.running = True
        self._next()

    def _next(self) -> None:
        if not self.running:
            return
        self.clock.callLater(self.rng.uniform(0.0, 0.01), self._send)

    def _send(self) -> None:
        if not self.running:
            return
        self.busy = True
        self.count += 1
        value = f"{self.name}-{self.count}"
        op_id, invoke = self.ids(), self.clock.seconds()
        node = self.pick(sorted(self.addresses))
        params = {"topic": self.topic, "partition": self.partition, "value": value, "acks": "all"}
        self.call(node, "Send", params).addCallback(self._answered, op_id, invoke, value)

    def _answered(self, answer: dict[str, Any], op_id: int, invoke: float, value: str) -> None:
        self.busy = False
        now = self.clock.seconds()
        if "result" in answer:
            result = answer["result"]
            self.history.sends.append(Send(op_id, self.name, invoke, now, self.topic, value, OK,
                                           int(result["partition"]), int(result["offset"])))
            self.acked.append((int(result["partition"]), int(result["offset"]), value))
        else:
            error = answer["error"]
            code = str(error.get("code"))
            if code in ("TIMEOUT", "CONNECTION_LOST", "CONNECT_FAILED"):
                outcome = INFO if answer.get("sent", True) else FAIL
            else:
                outcome = outcome_of_error(code)
            self.history.sends.append(Send(op_id, self.name, invoke, now, self.topic, value, outcome,
                                           self.partition, None, error=code))
            self.follow(error)
        self._next()


class Consumer(SimClient):
    """Polls one partition from offset 0, recording what it reads and the high watermarks served."""

    def __init__(self, *args: Any, topic: str, partition: int, served: Callable[[str, int, int, int], None],
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.topic = topic
        self.partition = partition
        self.offset = 0
        self.served = served

    def start(self) -> None:
        self.running = True
        self._next()

    def _next(self, delay: float | None = None) -> None:
        if not self.running:
            return
        self.clock.callLater(self.rng.uniform(0.0, 0.02) if delay is None else delay, self.poll)

    def poll(self, max_wait_ms: int = 100) -> Deferred:
        self.busy = True
        op_id, invoke, offset = self.ids(), self.clock.seconds(), self.offset
        node = self.pick(sorted(self.addresses))
        params = {"topic": self.topic, "partition": self.partition, "offset": offset, "max_messages": 50,
                  "max_wait_ms": max_wait_ms}
        return self.call(node, "Poll", params).addCallback(self._answered, op_id, invoke, offset, node)

    def _answered(self, answer: dict[str, Any], op_id: int, invoke: float, offset: int, node: int) -> dict[str, Any]:
        self.busy = False
        now = self.clock.seconds()
        if "result" in answer:
            result = answer["result"]
            messages = tuple((int(m["offset"]), m["value"]) for m in result["messages"])
            self.history.polls.append(Poll(op_id, self.name, invoke, now, self.topic, self.partition, offset, OK,
                                           messages, int(result["next_offset"]), int(result["log_start_offset"])))
            self.served(self.name, node, self.partition, int(result["high_watermark"]))
            self.offset = int(result["next_offset"])
            self.leader = node
            self._next()
        else:
            error = answer["error"]
            code = str(error.get("code"))
            start = error.get("log_start_offset")
            # An OFFSET_OUT_OF_RANGE carries the log start the consumer jumps to: recorded, so that
            # the checker sees the jump as retention, not a skip (as the chaos runner's consumers do).
            told = start if code == "OFFSET_OUT_OF_RANGE" and isinstance(start, int) else None
            self.history.polls.append(Poll(op_id, self.name, invoke, now, self.topic, self.partition, offset,
                                           FAIL if code in ("CONNECT_FAILED",) else outcome_of_error(code),
                                           error=code, log_start_offset=told))
            if code == "OFFSET_OUT_OF_RANGE" and isinstance(start, int) and start > self.offset:
                self.offset = start  # retention removed what it had not read yet: on from the log start
                self.leader = node
            else:
                self.follow(error)
            self._next(self.rng.uniform(0.01, 0.05))
        return answer


class Registrar(SimClient):
    """Makes metadata entries: C{InitProducerId} of a few named producers, one at a time, to any
    node (each is one InitProducer entry of the metadata log, forwarded to the controller).

    Without it a run has a handful of metadata entries (registrations, one topic, producer-id
    blocks), so the metadata log's compaction and its uncommitted tail met the faults rarely.
    What it is told is checked too: a name's (producer id, epoch) answers only ever go up
    (a new instance fences the older ones; one handed out again, or an older one, is metadata
    that went back: C{violations}).
    """

    def __init__(self, *args: Any, names: int = 3, gap: tuple[float, float] = (0.02, 0.12), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.names = [f"{self.name}-{k}" for k in range(names)]
        self.gap = gap
        self.last: dict[str, tuple[int, int]] = {}
        self.granted = 0
        self.violations: list[str] = []

    def start(self) -> None:
        self.running = True
        self._next()

    def _next(self) -> None:
        if self.running:
            self.clock.callLater(self.rng.uniform(*self.gap), self._ask)

    def _ask(self) -> None:
        if not self.running:
            return
        self.busy = True
        name = self.names[self.rng.randrange(len(self.names))]
        node = sorted(self.addresses)[self.rng.randrange(len(self.addresses))]
        self.call(node, "InitProducerId", {"producer_name": name}).addCallback(self._answered, name)

    def _answered(self, answer: dict[str, Any], name: str) -> None:
        self.busy = False
        result = answer.get("result")
        if isinstance(result, dict):
            got = (int(result["producer_id"]), int(result["epoch"]))
            before = self.last.get(name)
            if before is not None and got <= before:
                self.violations.append(f"producer name {name!r} was given {got} after {before} "
                                       f"(at t={self.clock.seconds():.4f})")
            self.last[name] = max(got, before or got)
            self.granted += 1
        self._next()

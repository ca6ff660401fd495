"""A small blocking client over plain sockets: no reactor, for scripts, tests and the CLI.

Same methods and same typed errors (L{streamlog.errors}) as the Twisted
clients; one request at a time per call (no pipelining, except through
L{BlockingClient.submit}), each bounded by C{timeout}.

It takes one address or a bootstrap list (C{"h1:7071,h2:7072"}).  On first
need it asks a node for the cluster's C{Metadata} (a server without that
method is the single node leading everything, as before clusters) and sends
partition requests (C{Send}, C{SendBatch}, C{Poll}, C{ListOffsets}) to the
partition's leader, choosing partitions as the server would (murmur2 of the
key); topic administration goes to the controller.  A C{NOT_LEADER} answer
is asked again where its hint points (or after fetching the metadata again),
and every error that may heal (L{retry.retriable}: an election, a node
stopping, a lost connection: a failover) is asked again after a backoff and
fresh metadata, within the C{delivery_timeout}, by the same rules as the
Producer: a write given up says whether an attempt may have stored it
(L{retry.given_up}, L{retry.delivery_timeout}; a resend after a lost answer
may duplicate, until idempotent producers).  One socket per node, opened
when first needed, again on the next call after it was lost.

A stalled node (SIGSTOP, cut off: its socket stays open and says nothing)
is noticed after C{stall_timeout} of silence past the moment its answer
was due (a long Poll's C{max_wait_ms} later): a C{Metadata} request then
goes to the next node at once, and a partition request asks another node
for the metadata and leaves the silent one (the socket is closed, the
request asked again at the new leader, as after a lost connection) if the
partition is led elsewhere in a later term now or the cluster sees the node
down; otherwise it keeps waiting, asking again every C{stall_timeout},
until its C{timeout}.  Topic administration (another node is the controller
now, or the node is down) and L{BlockingClient.call} (the node is down) are
judged the same way but fail early with the stall's C{CONNECTION_LOST}, never
asked again: the paused node may still apply them.  Submitted requests are
watched while L{BlockingClient.next_answer} waits (their reads are sent again
to the new leader).  C{UNKNOWN_TOPIC} for a topic this client saw exist
(created or auto-created it, or a Metadata answer listed it) is asked again
for C{unknown_topic_grace} seconds: a node whose metadata lags behind the
controller says so right after a topic is created.

    with BlockingClient("127.0.0.1:7070") as c:
        c.create_topic("events", partitions=3)
        print(c.send("events", {"n": 1}))
        print(c.poll("events", 0, 0)["messages"])
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from streamlog import errors, wire
from streamlog.client import requests, retry
from streamlog.client.addresses import (
    DEFAULT_ADDRESS,
    address_key,
    check_bootstrap,
    connect_timeout_for,
    describe_address,
    parse_target,
)
from streamlog.client.metadata import ClusterView, MetadataAnswer, TopicInfo
from streamlog.client.partitioning import Partitioner
from streamlog.client.requests import MAX_ANSWER_BYTES, server_wait
from streamlog.client.retry import DEFAULT_CONNECT_TIMEOUT, DEFAULT_STALL_TIMEOUT, DEFAULT_UNKNOWN_TOPIC_GRACE
from streamlog.idempotence.rules import SEQUENCE_MODULUS

#: Attempts of one routed call (the first, and those where a NOT_LEADER hint or fresh metadata points).
ROUTED_ATTEMPTS = 4
#: Tries of a topic administration request that meets LEADER_NOT_AVAILABLE (a cluster still
#: forming: its nodes register through the controller in its first seconds), backing off from
#: 0.1 s to 1 s: about 4.5 s in all, within the client's timeout.
ADMIN_ATTEMPTS = 8


def _shorter(a: float | None, b: float | None) -> float | None:
    """The shorter of two timeouts, None being for ever."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def _none_reachable(failed: list[errors.StreamlogError]) -> errors.StreamlogError:
    """The error when no address of the bootstrap list answered: the one error, or all of them."""
    if len(failed) == 1:
        return failed[0]
    error = type(failed[-1])("no server answered: " + "; ".join(e.message for e in failed),
                             **failed[-1].details)
    return error


def _closed_under(s: _Submitted) -> errors.StreamlogError:
    """The error of a submitted request whose socket another path closed (a stall, a timeout)."""
    return errors.ConnectionLost(
        f"the connection to {s.node.address} was closed before {s.method} was answered "
        "(another request there stalled or timed out)", method=s.method, address=s.node.address, stalled=True)


def _lost_under(lost: errors.ConnectionLost, s: _Submitted) -> errors.StreamlogError:
    """The error of a submitted request whose connection was lost while next_answer read it."""
    return errors.ConnectionLost(lost.message, **{**lost.details, "method": s.method})


class _NoAnswerYet(Exception):
    """No answer within the time given (not an error)."""


class _NodeSocket:
    """One node's socket: connect on demand, write request lines, read answer lines."""

    def __init__(self, address: Any, timeout: float | None, connect_timeout: float | None = None) -> None:
        kind, where = parse_target(address)
        self.unix_path: str | None = where if kind == "unix" else None
        self.host: str | None = None if kind == "unix" else where[0]
        self.port: int | None = None if kind == "unix" else where[1]
        #: The server as messages name it.
        self.address = f"unix:{where}" if kind == "unix" else describe_address(where)
        self.timeout = timeout
        #: Seconds a connect may take: the address's own C{timeout=}, else the client's
        #: C{connect_timeout}, and never more than C{timeout} (None: C{timeout} alone bounds it).
        self.connect_timeout = _shorter(connect_timeout_for(address, connect_timeout), timeout)
        self.sock: socket.socket | None = None
        self.buffer = b""
        #: The address as the client keys its nodes (set by the client).
        self.key = ""
        #: When bytes last arrived (or the socket connected): the start of a silence.
        self.last_received = 0.0
        #: How many sockets this node has had: a request written on an earlier one is never answered.
        self.connection = 0

    def connect(self) -> None:
        if self.sock is not None:
            return
        try:
            if self.unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.connect_timeout)
                    sock.connect(self.unix_path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
        except TimeoutError:  # our connect timeout, or the kernel's (ETIMEDOUT) before it or without one
            after = f"after {self.connect_timeout:g}s" if self.connect_timeout is not None else "(the system's connect timeout)"
            raise errors.Timeout(f"connecting to {self.address} timed out {after}",
                                 sent=False, address=self.address, timeout=self.connect_timeout) from None
        except OSError as e:
            raise errors.ConnectionLost(f"cannot connect to {self.address}: {e.strerror or e}",
                                        address=self.address, sent=False) from None
        self.sock = sock
        self.buffer = b""
        self.last_received = time.monotonic()
        self.connection += 1

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self.buffer = b""
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def write(self, rid: int, method: str, params: dict[str, Any], timeout: float | None) -> None:
        self.connect()
        assert self.sock is not None
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(wire.encode_request(rid, method, params))
        except TimeoutError:
            self.close()
            raise errors.Timeout(f"sending {method} to {self.address} timed out", method=method) from None
        except OSError as e:
            self.close()
            raise errors.ConnectionLost(f"connection to {self.address} lost sending {method}: {e}",
                                        method=method) from None

    def buffered_answer(self, method: str) -> dict[str, Any] | None:
        """The next complete answer already received, if there is one."""
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_ANSWER_BYTES:
                    self.close()
                    raise errors.LineTooLong(f"an answer line is longer than {MAX_ANSWER_BYTES} bytes")
                return None
            line, self.buffer = self.buffer[:end], self.buffer[end + 1:]
            try:
                answer = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                self.close()
                raise errors.ParseError(f"{self.address} sent invalid JSON: {e}") from None
            if isinstance(answer, dict):
                return answer

    def receive(self, method: str, timeout: float | None) -> None:
        """Read what arrives within C{timeout} into the buffer (L{_NoAnswerYet} if nothing does)."""
        assert self.sock is not None
        try:
            self.sock.settimeout(timeout)
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            raise _NoAnswerYet() from None
        except OSError as e:
            self.close()
            raise errors.ConnectionLost(f"connection to {self.address} lost waiting for {method}: {e}",
                                        method=method) from None
        if not data:
            self.close()
            raise errors.ConnectionLost(f"{self.address} closed the connection before answering {method}",
                                        method=method)
        self.last_received = time.monotonic()
        self.buffer += data

    def read_answer(self, method: str, deadline: float | None, close_on_timeout: bool = True) -> dict[str, Any]:
        while True:
            answer = self.buffered_answer(method)
            if answer is not None:
                return answer
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if not close_on_timeout:
                    raise _NoAnswerYet()
                self.close()  # the answer may still come: the stream is out of step
                raise errors.Timeout(f"no answer to {method} from {self.address} in time", method=method)
            try:
                self.receive(method, remaining)
            except _NoAnswerYet:
                if not close_on_timeout:
                    raise
                self.close()
                raise errors.Timeout(f"no answer to {method} from {self.address} in time", method=method) from None


class _Submitted:
    __slots__ = ("method", "params", "node", "rid", "attempts", "topic", "partition", "due", "term", "connection",
                 "retry_at", "left_error")

    def __init__(self, method: str, params: dict[str, Any], node: _NodeSocket, rid: int,
                 topic: str | None, partition: int | None) -> None:
        self.method = method
        self.params = params
        self.node = node
        self.rid = rid
        self.attempts = 1
        self.topic = topic
        self.partition = partition
        #: When its answer is due at the latest (a long Poll's max_wait_ms after it was written).
        self.due = 0.0
        #: The term of the leader it was sent to (a routed request in a cluster), else None.
        self.term: int | None = None
        #: Which of its node's sockets it was written on (L{_NodeSocket.connection}).
        self.connection = 0
        #: A read whose node was left while the view still named it the leader: when to route
        #: it again (None: written, its answer awaited), and the error it ends with if it cannot be.
        self.retry_at: float | None = None
        self.left_error: errors.StreamlogError | None = None

    def orphaned(self) -> bool:
        """Whether the socket it was written on is closed: its answer can never come."""
        return self.retry_at is None and (self.node.sock is None or self.node.connection != self.connection)


class BlockingClient:
    """@param address: C{"HOST:PORT"}, C{"tcp:HOST:PORT"}, C{(host, port)} or C{"unix:/path"}, or a
        bootstrap list of them (a list, or one string separated by commas).
    @param timeout: seconds for connecting and for each answer (None: forever).
    @param connect_timeout: seconds a connect to a node may take, at most C{timeout} (default
        10 s, the Twisted client's): a node that drops packets fails as a refused one does
        (L{errors.Timeout}, C{sent: false}), so the client asks another node sooner.  A
        C{tcp:}/C{unix:} address naming its own C{timeout=} keeps it.  None: C{timeout} alone.
    @param delivery_timeout: seconds within which a partition request (Send, SendBatch, Poll,
        ListOffsets) is asked again after errors that may heal; None: C{timeout} (or
        L{retry.DEFAULT_DELIVERY_TIMEOUT} if that is None too).
    @param stall_timeout: seconds of silence from a node past the moment its answer was due
        after which the client looks elsewhere (see the module docstring); None: off (only
        C{timeout} ends the wait).  The Twisted client's default, 0.5 s.
    @param unknown_topic_grace: seconds during which C{UNKNOWN_TOPIC} for a topic this client
        saw exist is asked again (from the first such answer); 0: off.
    """

    def __init__(self, address: Any = DEFAULT_ADDRESS, timeout: float | None = 30.0,
                 delivery_timeout: float | None = None, stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
                 unknown_topic_grace: float = DEFAULT_UNKNOWN_TOPIC_GRACE,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT) -> None:
        if stall_timeout is not None and stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive (or None: off)")
        retry.check_connect_timeout(connect_timeout)
        self.connect_timeout = connect_timeout
        self.bootstrap = check_bootstrap(address, blocking=True)
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.unknown_topic_grace = unknown_topic_grace
        #: Connections left because their node stalled while its partitions moved (for tests).
        self.stalls_dropped = 0
        self._suspect: set[str] = set()  # nodes that stalled: asked for the metadata last
        self._unknown_topics = retry.UnknownTopicGrace(unknown_topic_grace)
        self.delivery_timeout = delivery_timeout if delivery_timeout is not None else (
            timeout if timeout is not None else retry.DEFAULT_DELIVERY_TIMEOUT)
        self._nodes: dict[str, _NodeSocket] = {}
        first = self._node(self.bootstrap[0])
        #: The (first) server as messages name it.
        self.address = first.address
        #: What the client learnt of the cluster (filled on first need).
        self.view = ClusterView()
        self._partitioner = Partitioner()
        self._next_id = 1
        self._last: _NodeSocket = first
        self._submitted: dict[int, _Submitted] = {}
        #: Answers owed to submitted requests failed by a stall, given out by next_answer first.
        self._stalled_answers: list[tuple[int, errors.StreamlogError]] = []
        #: Answers to submitted requests read while waiting for another answer on their node.
        self._early_answers: list[tuple[_NodeSocket, dict[str, Any]]] = []
        #: node key -> (when a stall there was judged "keep waiting", when to judge it again).
        self._stall_judged: dict[str, tuple[float, float]] = {}

    # --- nodes -------------------------------------------------------------------------

    def _node(self, address: Any) -> _NodeSocket:
        key = address_key(address)
        node = self._nodes.get(key)
        if node is None:
            node = self._nodes[key] = _NodeSocket(address, self.timeout, self.connect_timeout)
            node.key = key
        return node

    @property
    def answered_by(self) -> str:
        """The address of the node the last request went to."""
        return self._last.address

    @property
    def _sock(self) -> socket.socket | None:
        """The socket used last (for tests that cut it)."""
        return self._last.sock

    def connect(self) -> None:
        """Connect to the first bootstrap address (the other connections open when needed)."""
        self._node(self.bootstrap[0]).connect()

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()
        self._submitted.clear()
        self._stalled_answers.clear()
        self._early_answers.clear()
        self._stall_judged.clear()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- one request at one node ----------------------------------------------------------

    def _call_at(self, node: _NodeSocket, method: str, params: dict[str, Any], timeout: float | None = None,
                 expect_answer: bool = True, on_stall: Callable[[_NodeSocket], str | None] | None = None) -> Any:
        """One request at C{node}.  C{on_stall(node)}: asked when the node has been silent for
        C{stall_timeout} past the answer's due time (then every C{stall_timeout}); a reason
        returned leaves the node (L{errors.ConnectionLost} with C{stalled: true})."""
        rid = self._next_id
        self._next_id += 1
        if timeout is None:
            timeout = self.timeout
        self._last = node
        node.write(rid, method, params, timeout)
        if not expect_answer:
            return None
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        due = now + server_wait(method, params)
        while True:
            answer = self._read(node, method, deadline, due, on_stall)
            if answer.get("id") == rid:
                break
            if answer.get("id") is None and isinstance(answer.get("error"), dict):
                raise errors.from_wire(answer["error"])
            if answer.get("id") in self._submitted:
                # A submitted request's (a stall's verdict asked this node for the metadata
                # while it owed one): next_answer gives it out.
                self._early_answers.append((node, answer))
            # else an answer to an earlier request that timed out: skip it
        self._suspect.discard(node.key)
        error = answer.get("error")
        if isinstance(error, dict):
            raise errors.from_wire(error)
        return answer.get("result")

    def _read(self, node: _NodeSocket, method: str, deadline: float | None, due: float,
              on_stall: Callable[[_NodeSocket], str | None] | None) -> dict[str, Any]:
        """The next answer line from C{node}, watching for a stall (see L{_call_at})."""
        if self.stall_timeout is None or on_stall is None:
            return node.read_answer(method, deadline)
        check = max(node.last_received, due) + self.stall_timeout
        while True:
            until = check if deadline is None else min(check, deadline)
            try:
                return node.read_answer(method, until, close_on_timeout=False)
            except _NoAnswerYet:
                pass
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                node.close()  # the answer may still come: the stream is out of step
                raise errors.Timeout(f"no answer to {method} from {node.address} in time", method=method)
            check = max(node.last_received, due) + self.stall_timeout
            if now < check:
                continue  # bytes came meanwhile (another answer, part of this one)
            silent = now - max(node.last_received, due)
            self._suspect.add(node.key)
            why = on_stall(node)
            if why is None and node.sock is None:  # the verdict's own requests lost the connection
                why = "the connection was lost meanwhile"
            if why is not None:
                self.stalls_dropped += 1
                node.close()
                raise errors.ConnectionLost(
                    f"no answer to {method} from {node.address} for {silent:.2f}s, and {why}",
                    method=method, address=node.address, stalled=True)
            check = time.monotonic() + self.stall_timeout

    def _any_node(self) -> _NodeSocket:
        """A node for requests any node answers: one connected already, else the first that connects."""
        for node in self._nodes.values():
            if node.sock is not None:
                return node
        failed: list[errors.StreamlogError] = []
        addresses = list(dict.fromkeys([*self.bootstrap, *self.view.addresses()]))
        addresses.sort(key=lambda a: address_key(a) in self._suspect)  # a node that stalled lately: last
        for address in addresses:
            node = self._node(address)
            try:
                node.connect()
                return node
            except (errors.ConnectionLost, errors.Timeout) as e:
                failed.append(e)
        raise _none_reachable(failed)

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None,
             expect_answer: bool = True) -> Any:
        """Send one request to any node and wait for its answer; returns C{result} or raises a
        L{errors.StreamlogError}.  Never asked again: if the node stalls and the cluster sees
        it down, the call fails early (L{errors.ConnectionLost}, C{stalled}: it may have been
        done) instead of waiting out its timeout."""
        return self._call_at(self._any_node(), method, params or {}, timeout, expect_answer, self._stall_verdict)

    # --- the metadata and routes -----------------------------------------------------------------

    def _learn(self, topic: str | None = None, avoid: _NodeSocket | None = None) -> None:
        """Ask a node for the metadata (of C{topic} too); a node without Metadata is the only node.

        Nodes that stalled lately are asked last; one silent for C{stall_timeout} is left for
        the next at once (any node can answer). C{avoid} (a node whose answer is awaited) is
        never asked: a request written behind the awaited one would be read out of step (the
        awaited answer skipped as stale) and, if it stalled too, close the very connection
        the caller goes on reading."""
        failed: list[errors.StreamlogError] = []
        addresses = [a for a in dict.fromkeys([*self.view.addresses(), *self.bootstrap])
                     if avoid is None or address_key(a) != avoid.key]
        addresses.sort(key=lambda a: address_key(a) in self._suspect)
        if not addresses:
            raise errors.ConnectionLost("no other node to ask for the metadata", sent=False)
        for address in addresses:
            node = self._node(address)
            try:
                result = self._call_at(node, "Metadata", {"topics": [topic] if topic else []},
                                       on_stall=lambda _: "any other node can answer Metadata")
            except errors.MethodNotFound:
                self.view.use_single_node(address_key(address), time.monotonic())
                return
            except (errors.ConnectionLost, errors.Timeout) as e:
                failed.append(e)
                continue
            answer = MetadataAnswer.parse(result)
            if answer.alone:  # a node started without --peers: as one without Metadata
                self.view.use_single_node(address_key(address), time.monotonic())
                return
            self.view.apply(answer, [topic] if topic else [], time.monotonic())
            for info in answer.topics:
                self._topic_seen(info.topic)
            return
        raise _none_reachable(failed)

    def _topic_seen(self, topic: str) -> None:
        self._unknown_topics.seen(topic)

    def _stall_verdict(self, node: _NodeSocket, topic: str | None = None, partition: int | None = None,
                       term: int | None = None, controller: bool = False) -> str | None:
        """Why to leave C{node}, silent with a request in flight, as another node sees the cluster
        now (the silent one is not asked): the cluster sees the node down; for a request for
        C{topic}/C{partition} (led by the node in C{term} when sent), the partition is led
        elsewhere in a later term; for a C{controller} request, another node is the controller.
        None: keep waiting (slow is not gone; nobody else answered either)."""
        node_id = self.view.node_at(node.key)
        try:
            self._learn(topic, avoid=node)
        except errors.StreamlogError:
            return None  # nobody else answered: keep waiting for this one
        info = self.view.topics.get(topic) if topic is not None else None
        if info is not None and partition is not None and term is not None and partition < info.count:
            now = info.partitions[partition]
            if now.leader is not None and now.leader != node_id and now.leader_term > term:
                return f"{topic}/{partition} is led by node {now.leader} now (term {now.leader_term})"
        seen = self.view.nodes.get(node_id) if node_id is not None else None
        if seen is not None and not seen.up:
            return "the cluster sees the node down"
        if controller and node_id is not None and self.view.controller not in (None, node_id):
            return f"node {self.view.controller} is the controller now"
        return None

    def _topic(self, topic: str) -> TopicInfo | None:
        """The topic's partitions, when the client routes (None on a single node: it places messages itself)."""
        if not self.view.known:
            self._learn(topic)
        if self.view.single_node:
            return None
        info = self.view.topics.get(topic)
        if info is None:
            self._learn(topic)
            info = self.view.topics.get(topic)
        if info is None:
            error = self.view.missing.get(topic)
            if error is not None and not isinstance(error, errors.UnknownTopic):
                raise error
        return info  # None: unknown (a Send may auto-create it, at any node)

    def _leader(self, topic: str, partition: int) -> _NodeSocket:
        if self.view.single_node:
            return self._node(self.view.nodes[0].address)
        node = self.view.leader(topic, partition)
        if node is None:
            self._learn(topic)
            info = self.view.topics.get(topic)
            if info is None:
                raise self.view.missing.get(topic) or errors.UnknownTopic(f"unknown topic {topic!r}", topic=topic)
            info.partition(partition)  # UnknownPartition
            node = self.view.leader(topic, partition)
            if node is None:
                raise errors.LeaderNotAvailable(f"no leader for {topic}/{partition} yet", topic=topic,
                                                partition=partition, sent=False)
        return self._node(node.address)

    def _routed(self, method: str, params: dict[str, Any], topic: str, partition: int | None,
                expect_answer: bool = True, timeout: float | None = None, write: bool = False) -> Any:
        """A partition request at the leader, asked again while its error may heal, within the
        delivery timeout (the Producer's rules, L{retry}): at once where a C{NOT_LEADER} hint
        points (twice in a row at most), else after a backoff and fresh metadata.  A C{write}
        given up says whether an attempt may have stored it.  C{partition} None: the server
        places it (a single node, or a topic no node knows yet), any node takes it."""
        if not self.view.known:
            self._learn(topic)
        deadline = time.monotonic() + self.delivery_timeout
        attempts = failures = hinted = 0
        maybe_landed = False
        last: errors.StreamlogError | None = None
        while True:
            attempts += 1
            try:
                node = self._leader(topic, partition) if partition is not None else self._any_node()
                on_stall = None
                if partition is not None and not self.view.single_node:
                    term = self.view.topics[topic].partitions[partition].leader_term
                    on_stall = partial(self._stall_verdict, topic=topic, partition=partition, term=term)
                return self._call_at(node, method, params, timeout, expect_answer, on_stall)
            except errors.StreamlogError as e:
                graced = isinstance(e, errors.UnknownTopic) and self._unknown_topics.applies(topic, time.monotonic())
                if not retry.retriable(e) and not graced:
                    raise (retry.given_up(e, maybe_landed) if write else e) from None
                last = e
                maybe_landed = maybe_landed or retry.may_have_landed(e)
            if time.monotonic() >= deadline:
                break
            if isinstance(last, errors.NotLeader) and hinted < 2 and partition is not None and \
                    self.view.apply_not_leader(last.details, topic, partition):
                hinted += 1
                continue  # the hint names the new leader: ask it at once
            if last.details.get("stalled") is True and hinted < 2 and partition is not None \
                    and self.view.leader(topic, partition) is not None:
                hinted += 1
                continue  # the stall's verdict fetched the metadata: the new leader is known
            hinted = 0
            if isinstance(last, (errors.ConnectionLost, errors.Timeout)) and partition is not None \
                    and not self.view.single_node:
                self.view.forget_leader(topic, partition)
            self._pause(failures, deadline)
            failures += 1
            try:
                self._learn(topic)
            except errors.StreamlogError as e:
                if not retry.retriable(e):
                    raise
                last = e  # no node answered the metadata either: try again after the next pause
        if attempts == 1 or not write:
            raise last
        raise retry.delivery_timeout(f"{method} to {topic}/{partition}", self.delivery_timeout, attempts,
                                     last, maybe_landed)

    @staticmethod
    def _pause(attempt: int, deadline: float | None) -> None:
        delay = min(1.0, 0.1 * 2 ** attempt)
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(delay)

    def _admin(self, method: str, params: dict[str, Any]) -> Any:
        if not self.view.known:
            self._learn()
        node = self.view.controller_node()
        target = self._node(node.address) if node is not None else self._any_node()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        redirects = 0
        # A stalled controller is left early (another node is the controller now, or the node
        # is down), failing the call with the stall's error: not asked again, since it may
        # have been applied (a CreateTopic twice would answer TOPIC_EXISTS).
        on_stall = partial(self._stall_verdict, controller=True)
        for attempt in range(ADMIN_ATTEMPTS):
            try:
                return self._call_at(target, method, params, on_stall=on_stall)
            except errors.NotController as e:
                redirects += 1
                if redirects == ROUTED_ATTEMPTS or attempt == ADMIN_ATTEMPTS - 1:
                    raise
                if not self.view.apply_not_controller(e.details):
                    self._learn()
                node = self.view.controller_node()
                target = self._node(node.address) if node is not None else self._any_node()
            except errors.LeaderNotAvailable:
                # No controller yet, or a cluster still forming: nothing was done; ask again soon.
                if attempt == ADMIN_ATTEMPTS - 1 or deadline is not None and time.monotonic() >= deadline:
                    raise
                self._pause(attempt, deadline)
                self._learn()
                node = self.view.controller_node()
                target = self._node(node.address) if node is not None else self._any_node()
        raise AssertionError("unreachable")  # pragma: no cover

    # --- pipelining: several requests in flight, answers in any order ------------------

    def submit(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Write one request without waiting; returns its id, for L{next_answer}.

        A C{Poll} (or another request with a C{topic} and C{partition}) goes to
        the partition's leader, and is asked again there by L{next_answer} if
        the answer is C{NOT_LEADER}.  For a reader that keeps a long Poll per
        partition in flight (C{streamlog consume}).  Do not mix with L{call}
        while submitted requests are unanswered on the same node.

        A node that stalls with submitted requests (silent for C{stall_timeout}
        past the moment the first of them was due) is judged as in L{call} and
        the partition requests: if the cluster sees it down, or a partition of
        a submitted Poll or ListOffsets is led elsewhere in a later term, its
        socket is closed; those reads are sent again to their leaders under
        the same ids, and every other request submitted there is answered with
        the stall's L{errors.ConnectionLost} (C{stalled}: it may have been done;
        not sent again).  So are the submitted requests of a socket closed
        otherwise (a stall or a timeout of another request on that node, a
        lost connection): none waits for an answer that cannot come.  A read
        whose partition the left node still leads (as far as any node knows)
        is routed again after a pause (L{_route_parked}), within its attempts.
        """
        params = params or {}
        topic, partition = params.get("topic"), params.get("partition", 0)
        routed = isinstance(topic, str) and isinstance(partition, int) and method in ("Poll", "ListOffsets")
        if routed and not self.view.known:
            self._learn(topic)
        node = self._leader(str(topic), int(partition)) if routed else self._any_node()
        rid = self._next_id
        self._next_id += 1
        submitted = _Submitted(method, params, node, rid, topic if routed else None, partition if routed else None)
        self._write_submitted(submitted, node)
        self._last = node
        self._submitted[rid] = submitted
        return rid

    def _write_submitted(self, submitted: _Submitted, node: _NodeSocket) -> None:
        """Write C{submitted} to C{node} (again, under its id), noting when its answer is due and
        the term of the leader it is for (what a stall there is judged by)."""
        node.write(submitted.rid, submitted.method, submitted.params, self.timeout)
        submitted.node = node
        submitted.connection = node.connection
        submitted.retry_at = None
        submitted.due = time.monotonic() + server_wait(submitted.method, submitted.params)
        submitted.term = None
        if submitted.topic is not None and submitted.partition is not None and not self.view.single_node:
            info = self.view.topics.get(submitted.topic)
            if info is not None and submitted.partition < info.count:
                submitted.term = info.partitions[submitted.partition].leader_term

    def next_answer(self, timeout: float | None) -> tuple[Any, Any] | None:
        """The next answer to a L{submit}ted request: C{(id, result)}, or C{(id, error)} with the
        L{errors.StreamlogError} as the value (not raised); None if none came within C{timeout}.

        The connections stay usable after None (the answers still owed come later).
        An error a server could not tie to a request (id null) is raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stalled_answers:
                return self._stalled_answers.pop(0)
            if self._early_answers:
                node, answer = self._early_answers.pop(0)
                handled = self._submitted_answer(node, answer)
                if handled is not None:
                    return handled
                continue
            if self._route_parked():
                continue
            orphans: dict[int, list[_Submitted]] = {}
            for s in self._submitted.values():
                if s.orphaned():
                    orphans.setdefault(id(s.node), []).append(s)
            if orphans:
                # Their connection was closed by another path (a stall or a timeout of another
                # request there, a Metadata request given up at a silent node): as a node left.
                for mine in orphans.values():
                    self._leave_submitted(mine[0].node, mine, _closed_under)
                continue
            waiting = [s for s in self._submitted.values() if s.retry_at is None]
            parked = [s.retry_at for s in self._submitted.values() if s.retry_at is not None]
            nodes = list({id(s.node): s.node for s in waiting}.values())
            if not nodes and parked:  # only reads waiting to be routed again: sleep until the first
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                pause = max(0.0, min(parked) - time.monotonic())
                time.sleep(pause if remaining is None else min(pause, remaining))
                continue
            if not nodes:
                if not any(n.sock is not None for n in self._nodes.values()):
                    raise errors.ConnectionLost("not connected: nothing was submitted on this connection")
                nodes = [n for n in self._nodes.values() if n.sock is not None]
            for node in nodes:
                answer = node.buffered_answer("the submitted requests")
                if answer is not None:
                    handled = self._submitted_answer(node, answer)
                    if handled is not None:
                        return handled
                    break
            else:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                live = [n for n in nodes if n.sock is not None]
                if not live:
                    raise errors.ConnectionLost("the connections of the submitted requests are closed")
                check = self._next_stall_check(live)
                wait = remaining
                if check is not None:
                    until = max(0.0, check[0] - time.monotonic())
                    wait = until if wait is None else min(wait, until)
                if parked:
                    until = max(0.0, min(parked) - time.monotonic())
                    wait = until if wait is None else min(wait, until)
                readable, _, _ = select.select([n.sock for n in live if n.sock is not None], [], [], wait)
                if not readable:
                    if check is not None and time.monotonic() >= check[0]:
                        self._submitted_stall(check[1])
                        continue
                    if parked and time.monotonic() >= min(parked):
                        continue
                    return None
                for node in live:
                    if node.sock in readable:
                        try:
                            node.receive("the submitted requests", 0)
                        except _NoAnswerYet:
                            pass
                        except errors.ConnectionLost as e:
                            lost = [s for s in self._submitted.values() if s.node is node and s.retry_at is None]
                            if not lost:
                                raise
                            self._leave_submitted(node, lost, partial(_lost_under, e))
                continue

    def _submitted_answer(self, node: _NodeSocket, answer: dict[str, Any]) -> tuple[Any, Any] | None:
        rid: Any = answer.get("id")
        error = answer.get("error")
        if rid is None and isinstance(error, dict):
            raise errors.from_wire(error)
        submitted = self._submitted.get(rid) if isinstance(rid, int) else None
        if submitted is None:
            return (rid, errors.from_wire(error)) if isinstance(error, dict) else (rid, answer.get("result"))
        if isinstance(error, dict):
            exc = errors.from_wire(error)
            if isinstance(exc, errors.NotLeader) and submitted.topic is not None \
                    and submitted.attempts < ROUTED_ATTEMPTS and not self.view.single_node:
                # Ask the new leader, under the same id: the caller never sees the move.
                assert submitted.partition is not None
                if not self.view.apply_not_leader(exc.details, submitted.topic, submitted.partition):
                    self._learn(submitted.topic)
                target = self._leader(submitted.topic, submitted.partition)
                self._write_submitted(submitted, target)
                submitted.attempts += 1
                return None
            del self._submitted[rid]
            return rid, exc
        del self._submitted[rid]
        return rid, answer.get("result")

    def _next_stall_check(self, live: list[_NodeSocket]) -> tuple[float, _NodeSocket] | None:
        """When the next of C{live}'s nodes with submitted requests is to be judged stalled, and
        which: C{stall_timeout} of silence past the first due answer (later if judged already
        and silent since)."""
        if self.stall_timeout is None:
            return None
        first: tuple[float, _NodeSocket] | None = None
        for node in live:
            dues = [s.due for s in self._submitted.values() if s.node is node and s.retry_at is None]
            if not dues:
                continue
            at = max(node.last_received, min(dues)) + self.stall_timeout
            judged = self._stall_judged.get(node.key)
            if judged is not None and judged[0] >= node.last_received:
                at = max(at, judged[1])
            if first is None or at < first[0]:
                first = (at, node)
        return first

    def _submitted_stall(self, node: _NodeSocket) -> None:
        """C{node} is silent with submitted requests: judge it (L{_stall_verdict}); if it is left,
        send its Polls and ListOffsets again to their leaders and fail the rest."""
        stall_timeout = self.stall_timeout
        assert stall_timeout is not None
        mine = [s for s in self._submitted.values() if s.node is node and s.retry_at is None]
        now = time.monotonic()
        silent = now - max(node.last_received, min(s.due for s in mine))
        self._suspect.add(node.key)
        bound = next(((s.topic, s.partition, s.term) for s in mine if s.term is not None), (None, None, None))
        why = self._stall_verdict(node, *bound)
        if why is None:
            self._stall_judged[node.key] = (now, time.monotonic() + stall_timeout)
            return
        self.stalls_dropped += 1
        node.close()

        def stalled(s: _Submitted) -> errors.StreamlogError:
            return errors.ConnectionLost(f"no answer to {s.method} from {node.address} for {silent:.2f}s, and {why}",
                                         method=s.method, address=node.address, stalled=True)

        self._leave_submitted(node, mine, stalled)

    def _leave_submitted(self, node: _NodeSocket, mine: list[_Submitted],
                         error_for: Callable[[_Submitted], errors.StreamlogError]) -> None:
        """C{mine}, submitted on C{node}'s closed socket, will never be answered there: send
        the Polls and ListOffsets again to their leaders under the same ids, and answer the
        rest with C{error_for(submitted)} (they may have been done: not sent again).  A read
        whose partition the view still says C{node} leads first asks another node for its
        topic's metadata (once per topic): a view learnt for another topic may be stale here.
        If it is still led by C{node} (no new leader known yet), or has no leader, the read
        waits a moment and is routed again (L{_route_parked}), as a one-at-a-time Poll
        would be: reads may be asked again anywhere."""
        self._stall_judged.pop(node.key, None)
        asked: set[str] = set()
        for s in mine:
            error = error_for(s)
            if s.topic is not None and s.partition is not None and s.attempts < ROUTED_ATTEMPTS:
                led = self.view.leader(s.topic, s.partition)
                if led is not None and address_key(led.address) == node.key and s.topic not in asked:
                    asked.add(s.topic)
                    try:
                        self._learn(s.topic, avoid=node)
                    except errors.StreamlogError:
                        pass  # nobody else answered: the view stays as it was
                try:  # a read: asked again at the partition's leader, under the same id
                    target = self._leader(s.topic, s.partition)
                    if target is not node:
                        self._write_submitted(s, target)
                        s.attempts += 1
                        continue
                    self._park(s, error)
                    continue
                except errors.LeaderNotAvailable:
                    self._park(s, error)
                    continue
                except errors.StreamlogError as e:
                    error = e
            del self._submitted[s.rid]
            self._stalled_answers.append((s.rid, error))

    def _park(self, s: _Submitted, error: errors.StreamlogError) -> None:
        """Route the read C{s} again after a pause (0.2 s, doubling: an election's time), one
        attempt more; it ends with C{error} if it still cannot be routed then."""
        s.retry_at = time.monotonic() + min(1.0, 0.1 * 2 ** s.attempts)
        s.left_error = error
        s.attempts += 1

    def _route_parked(self) -> bool:
        """Send the parked reads that are due again to their partitions' leaders (fresh
        metadata first, the node they were left at last), under the same ids; one still
        without a leader elsewhere is written to the node the view names (a new socket: slow
        is not gone, and it is judged as any other), and one that cannot be routed within
        its attempts is answered with the error it was left with.  Whether any was due."""
        now = time.monotonic()
        due = [s for s in self._submitted.values() if s.retry_at is not None and s.retry_at <= now]
        asked: set[str] = set()
        for s in due:
            assert s.topic is not None and s.partition is not None
            left = s.node
            try:
                if s.topic not in asked:
                    asked.add(s.topic)
                    self._learn(s.topic, avoid=left if len(self.view.addresses()) > 1 else None)
                target = self._leader(s.topic, s.partition)
                self._write_submitted(s, target)
                continue
            except errors.StreamlogError as e:
                if retry.retriable(e) and s.attempts < ROUTED_ATTEMPTS:
                    self._park(s, s.left_error or e)
                    continue
                error = s.left_error if retry.retriable(e) and s.left_error is not None else e
            del self._submitted[s.rid]
            self._stalled_answers.append((s.rid, error))
        return bool(due)

    # --- the methods (as L{streamlog.client.cluster.ClusterClient}) ------------------

    def send(self, topic: str, value: Any, key: str | None = None, partition: int | None = None,
             headers: dict[str, str] | None = None, acks: str = "all") -> dict[str, Any] | None:
        info = self._topic(topic)
        if info is None:  # a single node, or a topic no node knows yet: the server places it
            return self._routed("Send", requests.send(topic, value, key, partition, headers, acks), topic, None,
                                expect_answer=acks != "none", write=True)
        chosen = self._partitioner.choose(topic, info.count, key, partition)
        if key is None and partition is None:
            self._partitioner.batch_closed(topic, info.count, chosen)
        params = requests.send(topic, value, key, chosen, headers, acks)
        return self._routed("Send", params, topic, chosen, expect_answer=acks != "none", write=True)

    def send_batch(self, topic: str, messages: list[dict[str, Any]], acks: str = "all") -> dict[str, Any] | None:
        """C{SendBatch}; in a cluster, one request per partition at its leader (each part atomic,
        the whole not: a part that fails raises, its details' C{appended} listing the parts that were)."""
        info = self._topic(topic)
        if info is None:
            return self._routed("SendBatch", requests.send_batch(topic, messages, acks), topic, None,
                                expect_answer=acks != "none", write=True)
        parts = self._parts(topic, info.count, messages)
        return self._send_parts(topic, parts, acks, lambda p, part: self._routed(
            "SendBatch", requests.send_batch(topic, part, acks), topic, p, expect_answer=acks != "none",
            write=True))

    def _parts(self, topic: str, count: int, messages: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
        """The messages by partition, chosen as the server would (explicit, murmur2 of the key, else sticky)."""
        parts: dict[int, list[dict[str, Any]]] = {}
        sticky = None
        for m in messages:
            if m.get("key") is None and m.get("partition") is None:
                sticky = sticky if sticky is not None else self._partitioner.sticky(topic, count)
                chosen = sticky
            else:
                chosen = self._partitioner.choose(topic, count, m.get("key"), m.get("partition"))
            parts.setdefault(chosen, []).append({**m, "partition": chosen})
        if sticky is not None:
            self._partitioner.batch_closed(topic, count, sticky)
        return parts

    def _send_parts(self, topic: str, parts: dict[int, list[dict[str, Any]]], acks: str,
                    send: Any) -> dict[str, Any] | None:
        appended: list[dict[str, Any]] = []
        merged: dict[str, Any] = {"topic": topic}
        for p, part in parts.items():
            try:
                result = send(p, part)
            except errors.StreamlogError as e:
                e.details["appended"] = appended
                raise
            if result is None:
                continue
            requests.merge_batch_answer(merged, appended, result)
        if acks == "none":
            return None
        merged["partitions"] = appended
        return merged

    def idempotent_sender(self, attempts: int = 5) -> IdempotentSender:
        """An idempotent SendBatch over this client (see L{IdempotentSender})."""
        return IdempotentSender(self, attempts)

    def poll(self, topic: str, partition: int, offset: int, max_messages: int | None = None,
             max_bytes: int | None = None, max_wait_ms: int = 0) -> dict[str, Any]:
        params = requests.poll(topic, partition, offset, max_messages, max_bytes, max_wait_ms)
        timeout = None if self.timeout is None else self.timeout + max_wait_ms / 1000.0
        return self._routed("Poll", params, topic, partition, timeout=timeout)

    def create_topic(self, topic: str, partitions: int = 1, config: dict[str, Any] | None = None) -> dict[str, Any]:
        result = self._admin("CreateTopic", requests.create_topic(topic, partitions, config))
        self.view.forget_topic(topic)
        self._topic_seen(topic)  # a node lagging behind the controller may not know it yet
        return result

    def auto_create_topic(self, topic: str) -> dict[str, Any]:
        """C{CreateTopic {topic, auto_create: true}}: the topic as a Send would auto-create it, or as it is."""
        result = self.call("CreateTopic", requests.auto_create_topic(topic))
        self.view.forget_topic(topic)
        self._topic_seen(topic)
        return result

    def delete_topic(self, topic: str) -> dict[str, Any]:
        result = self._admin("DeleteTopic", {"topic": topic})
        self.view.forget_topic(topic)
        self._unknown_topics.forget(topic)
        return result

    def list_topics(self) -> list[dict[str, Any]]:
        return self.call("ListTopics", {})["topics"]

    def describe_topic(self, topic: str) -> dict[str, Any]:
        return self.call("DescribeTopic", {"topic": topic})

    def list_offsets(self, topic: str, partition: int = 0, at: str | int = "latest") -> int:
        params = {"topic": topic, "partition": partition, "at": at}
        return self._routed("ListOffsets", params, topic, partition)["offset"]

    def ping(self) -> dict[str, Any]:
        return self.call("Ping", {})


class IdempotentSender:
    """C{SendBatch} as an idempotent producer, over a L{BlockingClient} (what C{streamlog produce} uses).

    It asks for a producer id at the first batch and numbers each
    partition's records (docs/protocol.md, "Idempotent producers"); a
    request whose answer was lost (the connection dropped, no answer in
    time) is sent again with the same numbers, up to C{attempts} times, so
    the partition stores it once and answers with its first offsets.  One
    request at a time, so there is never a gap to fill.  A partition that
    forgot this producer (idle past C{--producer-id-expiry-ms}) answers
    C{UNKNOWN_PRODUCER_ID}: the sender takes its next epoch and sends the
    batch again numbered from 0 (unless an attempt of it was lost: that one
    may be stored, so it fails, saying so).

    After a batch failed with an attempt of it lost (it may be stored), the
    next C{send_batch} first takes the next epoch: numbered as before, a
    batch of the same size would be taken for the lost one and answered
    DUPLICATE with its offsets (acknowledged, never stored); in the next
    epoch it is new, and a late copy of the lost request is fenced.  Taking
    it then rather than at the failure keeps that error the one reported (a
    dropped connection would fail the InitProducerId too).
    """

    def __init__(self, client: BlockingClient, attempts: int = 5) -> None:
        self.client = client
        self.attempts = attempts
        self.identity: tuple[int, int] | None = None
        self._next: dict[tuple[str, int], int] = {}
        #: Requests sent again after a lost answer, and epochs taken after the first (for tests).
        self.resends = 0
        self.epoch_bumps = 0
        #: A batch failed with an attempt lost: the next send takes the next epoch first.
        self._maybe_stored = False

    def send_batch(self, topic: str, messages: list[dict[str, Any]], acks: str = "all") -> dict[str, Any] | None:
        client = self.client
        count = self._partitions(topic)
        if count is None:
            # Created first, as a Send would auto-create it, so that even the first batch is
            # numbered (a Send that auto-creates is placed by the server, without numbers).
            count = len(client.auto_create_topic(topic)["partitions"])
        if self.identity is None:
            self.identity = self._init_producer_id(None)
        elif self._maybe_stored:
            self._next_epoch()
            self._maybe_stored = False
        return client._send_parts(topic, client._parts(topic, count, messages), acks,
                                  lambda p, part: self._send_part(topic, p, part, acks))

    def _partitions(self, topic: str) -> int | None:
        """The topic's partition count (a node alone: from DescribeTopic), None if it does not exist yet."""
        client = self.client
        info = client._topic(topic)
        if info is not None:
            return info.count
        if not client.view.single_node:
            return None
        try:
            return len(client.describe_topic(topic)["partitions"])
        except errors.UnknownTopic:
            return None

    def _send_part(self, topic: str, partition: int, part: list[dict[str, Any]], acks: str) -> Any:
        """One partition's batch: sent until answered (the same numbers after a lost answer); after
        C{UNKNOWN_PRODUCER_ID} (the partition forgot this idle producer) in the next epoch, from 0."""
        assert self.identity is not None
        params = requests.send_batch(topic, part, acks)
        lost = False  # an attempt's answer never came: it may be stored
        renumbered = False
        try:
            while True:
                sequence = self._next.get((topic, partition), 0)
                params.update(requests.producer_fields(self.identity[0], self.identity[1], partition, sequence))
                try:
                    for attempt in range(self.attempts):
                        try:
                            result = self.client._routed("SendBatch", params, topic, partition, write=True)
                            break
                        except (errors.ConnectionLost, errors.Timeout) as e:
                            lost = True
                            # The client's own resends within its delivery timeout were spent: stop there.
                            if attempt == self.attempts - 1 or isinstance(e, errors.DeliveryTimeout):
                                raise
                            self.resends += 1
                except errors.UnknownProducerId as e:
                    # Refused, so not stored by this attempt.  Renumbered only if no attempt of it was
                    # lost (that one may be stored, on a leader since replaced): as the Producer does.
                    lost = lost or bool(e.details.get("maybe_appended"))  # lost inside the client's own resends
                    if lost or renumbered:
                        raise retry.given_up(e, lost) from None
                    self._next_epoch()
                    renumbered = True
                    continue
                break
        except BaseException:
            if lost:  # it may be stored under these numbers: the next send takes the next epoch
                self._maybe_stored = True
            raise
        self._next[(topic, partition)] = (sequence + len(part)) % SEQUENCE_MODULUS
        return result

    def _init_producer_id(self, current: tuple[int, int] | None) -> tuple[int, int]:
        """C{InitProducerId}, sent again (with the same C{request_token}) if its answer is lost."""
        params = requests.init_producer_id(None, current, requests.new_request_token())
        for attempt in range(self.attempts):
            try:
                answer = self.client.call("InitProducerId", params)
                break
            except (errors.ConnectionLost, errors.Timeout):
                if attempt == self.attempts - 1:
                    raise
                self.resends += 1
        return int(answer["producer_id"]), int(answer["epoch"])

    def _next_epoch(self) -> None:
        """C{InitProducerId} for this producer's next epoch: every partition numbers from 0 again (a copy
        of an old request still arriving is then fenced, not stored a second time)."""
        assert self.identity is not None
        self.identity = self._init_producer_id(self.identity)
        self._next.clear()
        self.epoch_bumps += 1

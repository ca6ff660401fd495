"""A fake cluster for the client tests: several nodes on in-memory transports, one shared state.

Each L{FakeNode} speaks the cluster protocol of docs/protocol.md (Metadata,
Send, SendBatch, Poll, ListOffsets, topic administration, a one-member group
coordinator, with NOT_LEADER, LEADER_NOT_AVAILABLE, NOT_CONTROLLER and NOT_COORDINATOR) and answers from the shared
L{FakeCluster} state, which the tests change: leaders move, nodes die and
come back, a node's metadata lags, a node swallows requests.  Data lives in
the cluster state (as if every committed write were replicated), so a new
leader serves what the old one appended.  Requests are parsed with the real
C{streamlog.wire}, so a malformed request from the client fails the test
here as it would on a server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.test import iosim

from streamlog import errors, wire
from streamlog.client.addresses import address_key
from streamlog.framing import FastLineReceiver
from streamlog.idempotence.rules import Outcome
from streamlog.idempotence.table import ProducerStateTable
from streamlog.partitioner import partition_for_key


class FakePartition:
    def __init__(self, leader: int | None, replicas: list[int]) -> None:
        self.leader = leader
        self.term = 1
        self.replicas = list(replicas)
        self.isr = list(replicas)
        #: node id -> log end offset, as the leader would answer in replica_offsets (None: not given).
        self.log_ends: dict[int, int] | None = None
        self.records: list[dict[str, Any]] = []
        #: The partition's idempotent-producer state (the real table; "Raft indexes" count appends).
        self.producers = ProducerStateTable()
        self.appends = 0

    def view(self, number: int) -> dict[str, Any]:
        return {"partition": number, "leader": self.leader, "leader_term": self.term,
                "replicas": list(self.replicas), "isr": list(self.isr)}


class _Parked:
    """A long Poll waiting at a node for data (or its max_wait_ms)."""

    def __init__(self, proto: FakeNodeProtocol, rid: Any, params: wire.PollParams, timer: Any) -> None:
        self.proto = proto
        self.rid = rid
        self.params = params
        self.timer = timer


class FakeNodeProtocol(FastLineReceiver):
    MAX_LENGTH = 1024 * 1024

    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def connectionMade(self) -> None:
        self.node.connections.add(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.node.connections.discard(self)
        self.node.forget_parked(self)

    def lineReceived(self, line: bytes) -> None:
        try:
            request = wire.decode_request(line)
        except errors.StreamlogError as e:
            raise AssertionError(f"the client sent a bad request line {line[:200]!r}: {e}") from None
        self.node.cluster.requests.append((self.node.node_id, request.method, request.params))
        hole = self.node.black_hole
        if hole is True or (hole and request.method in hole):
            self.node.swallowed.append((request.method, request.params))
            return
        try:
            result = self.node.handle(self, request)
        except errors.StreamlogError as e:
            self.answer(request.id, error=e)
            return
        if result is not _PARKED:
            self.answer(request.id, result)

    def answer(self, rid: Any, result: Any = None, error: errors.StreamlogError | None = None) -> None:
        if self.transport is None or self.transport.disconnecting:
            return
        obj = {"id": rid, "error": error.to_wire()} if error is not None else {"id": rid, "result": result}
        self.transport.write(orjson.dumps(obj) + b"\n")


_PARKED = object()


class FakeNode:
    def __init__(self, cluster: FakeCluster, node_id: int, address: str) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.address = address
        self.up = True
        self.connections: set[FakeNodeProtocol] = set()
        self.parked: list[_Parked] = []
        #: Read requests and answer nothing (a stalled process): True, or a set of the methods swallowed.
        self.black_hole: bool | set[str] = False
        self.swallowed: list[tuple[str, dict[str, Any]]] = []
        #: A frozen Metadata answer this node keeps giving (its view lags), or None.
        self.frozen_metadata: dict[str, Any] | None = None
        #: Seconds a connection takes to be accepted (0: at once).
        self.connect_delay = 0.0
        #: Refuse connections even while the metadata calls the node up (a node just dead).
        self.refuse = False
        #: Connection attempts get no answer (a powered-off host, a firewall dropping SYNs): each
        #: fails after C{syn_timeout} seconds (Twisted's default connect timeout) unless the dialer
        #: cancels it first.
        self.drop_syns = False
        self.syn_timeout = 30.0
        #: Methods this node answers with a scripted error: method -> callable(params) -> error or None.
        self.faults: dict[str, Callable[[dict[str, Any]], errors.StreamlogError | None]] = {}

    # --- requests ----------------------------------------------------------------------

    def handle(self, proto: FakeNodeProtocol, request: wire.Request) -> Any:
        fault = self.faults.get(request.method)
        if fault is not None:
            error = fault(request.params)
            if error is not None:
                raise error
        handler = getattr(self, "handle_" + request.method, None)
        if handler is None:
            raise errors.MethodNotFound(f"unknown method {request.method!r}", method=request.method)
        if request.method == "Poll":
            return handler(request.params, proto, request.id)
        return handler(request.params)

    def handle_Metadata(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.frozen_metadata is not None:
            answer = copy.deepcopy(self.frozen_metadata)
        else:
            answer = self.cluster.metadata()
            for t in answer["topics"]:  # a leader tells what it knows of its replicas
                for p in t["partitions"]:
                    part = self.cluster.topics[t["topic"]][p["partition"]]
                    if part.log_ends is not None and part.leader == self.node_id:
                        p["replica_offsets"] = [{"node_id": n, "match_index": end, "log_end_offset": end}
                                                for n, end in sorted(part.log_ends.items())]
        wanted = params.get("topics")
        if wanted is not None:
            by_name = {t["topic"]: t for t in answer["topics"]}
            answer["topics"] = [by_name.get(name) or {"topic": name, "error": {
                "code": "UNKNOWN_TOPIC", "message": f"unknown topic {name!r}", "topic": name}} for name in wanted]
        return answer

    def _partition(self, topic: str, partition: int) -> FakePartition:
        parts = self.cluster.topics.get(topic)
        if parts is None:
            raise errors.UnknownTopic(f"unknown topic {topic!r}", topic=topic)
        if partition >= len(parts):
            raise errors.UnknownPartition(f"topic {topic!r} has {len(parts)} partition(s), not {partition}",
                                          topic=topic, partitions=len(parts))
        return parts[partition]

    def _check_leader(self, topic: str, partition: int) -> FakePartition:
        part = self._partition(topic, partition)
        if part.leader is None:
            raise errors.LeaderNotAvailable(f"{topic}/{partition} is electing a leader", topic=topic,
                                            partition=partition)
        if part.leader != self.node_id:
            hint = self.cluster.hints
            leader = self.cluster.nodes[part.leader]
            raise errors.NotLeader(f"node {self.node_id} does not lead {topic}/{partition}", topic=topic,
                                   partition=partition, leader=part.leader if hint else None,
                                   leader_address=leader.address if hint else None,
                                   leader_term=part.term if hint else None)
        return part

    def handle_Send(self, params: dict[str, Any]) -> Any:
        send = wire.parse_send(params)
        result = self._append(send)
        placed = result["partitions"][0]
        if "error" in placed:
            raise errors.from_wire(placed["error"])
        if send.acks == "none":
            return _PARKED  # no answer at all
        out = {k: v for k, v in result.items() if k != "partitions"}
        out.update(partition=placed["partition"], offset=placed["base_offset"])
        return out

    def handle_SendBatch(self, params: dict[str, Any]) -> Any:
        send = wire.parse_send_batch(params)
        result = self._append(send)
        if all("error" in entry for entry in result["partitions"]):
            # As a real node (docs/protocol.md): it took no part at all, the whole request is refused.
            raise errors.from_wire(result["partitions"][0]["error"])
        if send.acks == "none":
            return _PARKED
        return result

    def _append(self, send: wire.SendParams) -> dict[str, Any]:
        cluster = self.cluster
        if send.topic not in cluster.topics:
            if not cluster.auto_create:
                raise errors.UnknownTopic(f"unknown topic {send.topic!r}", topic=send.topic)
            cluster.create_topic(send.topic, 1, leaders=[self.node_id])
        parts = cluster.topics[send.topic]
        sticky = cluster.next_sticky(len(parts))
        groups: dict[int, list[dict[str, Any]]] = {}
        for m in send.messages:
            if m.get("partition") is not None:
                p = m["partition"]
                if p >= len(parts):
                    raise errors.UnknownPartition(f"topic {send.topic!r} has {len(parts)} partition(s), not {p}",
                                                  topic=send.topic, partitions=len(parts))
            elif m.get("key") is not None:
                p = partition_for_key(m["key"], len(parts))
            else:
                p = sticky
            groups.setdefault(p, []).append(m)
        now = int(cluster.clock.seconds() * 1000)
        entries, replicas = [], []
        for p, messages in groups.items():
            try:
                part = self._check_leader(send.topic, p)
            except errors.StreamlogError as e:
                entries.append({"partition": p, "error": e.to_wire()})  # as the broker: no count
                continue
            base = len(part.records)
            if send.sequences is not None:
                sequence = send.sequences.get(p, send.sequences.get(-1, -1))
                decision = part.producers.check(send.producer_id, send.epoch, sequence, len(messages), now)
                if decision.outcome is Outcome.DUPLICATE:
                    entries.append({"partition": p, "base_offset": decision.base_offset, "count": len(messages),
                                    "duplicate": True})
                    replicas.append(len(part.isr))
                    continue
                if decision.outcome is not Outcome.NEW:
                    code = decision.outcome.code
                    assert code is not None
                    error = errors.BY_CODE[code](decision.reason, topic=send.topic, partition=p)
                    entries.append({"partition": p, "error": error.to_wire()})
                    continue
                part.appends += 1
                part.producers.apply(send.producer_id, send.epoch, sequence, len(messages), base, part.appends, now)
            for i, m in enumerate(messages):
                part.records.append({"offset": base + i, "timestamp": now, "key": m.get("key"),
                                     "value": m["value"], "headers": m.get("headers") or {}})
            entries.append({"partition": p, "base_offset": base, "count": len(messages)})
            replicas.append(len(part.isr))
            cluster.appended(send.topic, p)
        if send.acks == "none":
            return {"partitions": entries, "none": True}
        return {"topic": send.topic, "timestamp": now, "durability": "fsync",
                "replicas": min(replicas) if replicas else 0,
                "replication_factor": len(parts[0].replicas), "partitions": entries}

    def handle_Poll(self, params: dict[str, Any], proto: FakeNodeProtocol, rid: Any) -> Any:
        poll = wire.parse_poll(params)
        part = self._check_leader(poll.topic, poll.partition)
        end = len(part.records)
        if poll.offset > end:
            raise errors.OffsetOutOfRange(f"offset {poll.offset} is past the end {end}", log_start_offset=0,
                                          high_watermark=end, log_end_offset=end)
        if poll.offset == end and poll.max_wait_ms:
            timer = self.cluster.clock.callLater(poll.max_wait_ms / 1000.0, self._poll_timed_out, rid, proto)
            self.parked.append(_Parked(proto, rid, poll, timer))
            return _PARKED
        return self._page(part, poll)

    @staticmethod
    def _page(part: FakePartition, poll: wire.PollParams) -> dict[str, Any]:
        messages = part.records[poll.offset:poll.offset + poll.max_messages]
        return {"messages": messages, "next_offset": poll.offset + len(messages),
                "high_watermark": len(part.records), "log_start_offset": 0}

    def _poll_timed_out(self, rid: Any, proto: FakeNodeProtocol) -> None:
        for parked in list(self.parked):
            if parked.rid == rid and parked.proto is proto:
                self.parked.remove(parked)
                part = self.cluster.topics[parked.params.topic][parked.params.partition]
                proto.answer(rid, self._page(part, parked.params))

    def wake(self, topic: str, partition: int) -> None:
        """Answer the polls parked here for C{topic}/C{partition}: with data, or NOT_LEADER if leadership left."""
        for parked in list(self.parked):
            if parked.params.topic != topic or parked.params.partition != partition:
                continue
            self.parked.remove(parked)
            if parked.timer.active():
                parked.timer.cancel()
            try:
                part = self._check_leader(topic, partition)
            except errors.StreamlogError as e:
                parked.proto.answer(parked.rid, error=e)
                continue
            parked.proto.answer(parked.rid, self._page(part, parked.params))

    def forget_parked(self, proto: FakeNodeProtocol | None = None) -> None:
        for parked in list(self.parked):
            if proto is None or parked.proto is proto:
                self.parked.remove(parked)
                if parked.timer.active():
                    parked.timer.cancel()

    def handle_ListOffsets(self, params: dict[str, Any]) -> dict[str, Any]:
        p = wire.parse_list_offsets(params)
        part = self._check_leader(p.topic, p.partition)
        if p.at == "earliest":
            offset = 0
        elif p.at == "latest":
            offset = len(part.records)
        else:
            offset = next((r["offset"] for r in part.records if r["timestamp"] >= p.at), len(part.records))
        return {"topic": p.topic, "partition": p.partition, "offset": offset}

    def handle_DescribeTopic(self, params: dict[str, Any]) -> dict[str, Any]:
        topic = wire.parse_topic_only(params)
        parts = self.cluster.topics.get(topic)
        if parts is None:
            raise errors.UnknownTopic(f"unknown topic {topic!r}", topic=topic)
        return {"topic": topic, "partitions": [
            {"partition": i, "log_start_offset": 0, "high_watermark": len(p.records),
             "log_end_offset": len(p.records)} for i, p in enumerate(parts)], "config": {}}

    def handle_ListTopics(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"topics": [{"topic": t, "partitions": len(p)} for t, p in sorted(self.cluster.topics.items())]}

    def _check_controller(self) -> None:
        if self.cluster.controller != self.node_id:
            controller = self.cluster.controller
            address = self.cluster.nodes[controller].address if controller is not None else None
            raise errors.NotController(f"node {self.node_id} is not the controller", controller=controller,
                                       controller_address=address)

    def handle_CreateTopic(self, params: dict[str, Any]) -> dict[str, Any]:
        if wire.is_auto_create(params):  # at any node, as a Send's auto-creation
            name = wire.parse_auto_create_topic(params)
            created = name not in self.cluster.topics
            if created:
                if not self.cluster.auto_create:
                    raise errors.UnknownTopic(f"unknown topic {name!r} (auto-creation is off)", topic=name)
                self.cluster.create_topic(name, 1, leaders=[self.node_id])
            return {**self.handle_DescribeTopic({"topic": name}), "created": created}
        create = wire.parse_create_topic(params)
        self._check_controller()
        if self.cluster.forming > 0:
            self.cluster.forming -= 1
            raise errors.LeaderNotAvailable("0 of the cluster's 3 nodes have registered; retry shortly")
        if create.topic in self.cluster.topics:
            raise errors.TopicExists(f"topic {create.topic!r} exists", topic=create.topic)
        self.cluster.create_topic(create.topic, create.partitions)
        return self.handle_DescribeTopic({"topic": create.topic})

    def handle_DeleteTopic(self, params: dict[str, Any]) -> dict[str, Any]:
        topic = wire.parse_topic_only(params)
        self._check_controller()
        if self.cluster.topics.pop(topic, None) is None:
            raise errors.UnknownTopic(f"unknown topic {topic!r}", topic=topic)
        return {"topic": topic, "deleted": True}

    def handle_InitProducerId(self, params: dict[str, Any]) -> dict[str, Any]:
        p = wire.parse_init_producer_id(params)
        cluster = self.cluster
        if p.request_token is not None and p.request_token in cluster.init_tokens:
            known = cluster.init_tokens[p.request_token]  # a resend: the first answer
            return {"producer_id": known[0], "epoch": known[1]}
        if p.producer_name is not None:
            held = cluster.producer_names.get(p.producer_name)
            current = None if p.producer_id is None else (p.producer_id, p.epoch)
            if held is not None and current is not None and current != held:
                raise errors.ProducerFenced(f"producer {p.producer_name!r} was taken over")
            identity = (held[0], held[1] + 1) if held is not None else (cluster.take_producer_id(), 0)
            cluster.producer_names[p.producer_name] = identity
        elif p.producer_id is not None and p.epoch is not None:
            identity = (p.producer_id, p.epoch + 1)
        else:
            identity = (cluster.take_producer_id(), 0)
        cluster.inits.append(identity)
        if p.request_token is not None:
            cluster.init_tokens[p.request_token] = identity
        return {"producer_id": identity[0], "epoch": identity[1]}

    # A coordinator of one-member groups, enough for the GroupConsumer's routing: the node named by
    # cluster.coordinator answers, the others say NOT_COORDINATOR; the member gets every partition.

    def _check_coordinator(self, group: str) -> None:
        coordinator = self.cluster.coordinator
        if coordinator != self.node_id:
            address = self.cluster.nodes[coordinator].address if coordinator is not None else None
            raise errors.NotCoordinator(f"node {self.node_id} does not coordinate {group!r}", group=group,
                                        coordinator=coordinator, coordinator_address=address)

    def handle_FindCoordinator(self, params: dict[str, Any]) -> dict[str, Any]:
        coordinator = self.cluster.coordinator
        address = self.cluster.nodes[coordinator].address if coordinator is not None else None
        return {"group": params["group"], "partition": 0, "coordinator": coordinator,
                "coordinator_address": address}

    def _member_answer(self, group: str, topics: list[str]) -> dict[str, Any]:
        assignment = [{"topic": t, "partitions": list(range(len(self.cluster.topics[t])))}
                      for t in sorted(topics) if t in self.cluster.topics]
        return {"group": group, "member_id": "m1", "generation": 1, "assignment": assignment, "revoke": [],
                "pending": [], "heartbeat_interval_ms": 3000}

    def handle_JoinGroup(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_coordinator(params["group"])
        self.cluster.group_topics = list(params["topics"])
        return self._member_answer(params["group"], params["topics"])

    def handle_Heartbeat(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_coordinator(params["group"])
        return self._member_answer(params["group"], self.cluster.group_topics)

    def handle_FetchOffsets(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_coordinator(params["group"])
        return {"group": params["group"], "offsets": [
            {"topic": t, "partition": p, "offset": o, "metadata": None, "timestamp": 0}
            for (t, p), o in sorted(self.cluster.group_offsets.items())]}

    def handle_CommitOffsets(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_coordinator(params["group"])
        for o in params["offsets"]:
            self.cluster.group_offsets[(o["topic"], o["partition"])] = o["offset"]
        return {"group": params["group"], "offsets": params["offsets"]}

    def handle_Ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "time": int(self.cluster.clock.seconds() * 1000), "version": "fake",
                "node_id": self.node_id}


class FakeEndpoint:
    def __init__(self, cluster: FakeCluster, node: FakeNode) -> None:
        self.cluster = cluster
        self.node = node
        self.streamlog_name = node.address

    def connect(self, factory: Any) -> Any:
        self.cluster.attempts.append((self.node.node_id, self.cluster.clock.seconds()))
        if self.node.drop_syns:
            return self._dropped()
        if not self.node.up or self.node.refuse:
            return fail(ConnectionRefusedError())
        if self.node.connect_delay:
            d: Deferred = Deferred()
            self.cluster.clock.callLater(self.node.connect_delay, lambda: d.callback(self._connected(factory)))
            return d
        return succeed(self._connected(factory))

    def _dropped(self) -> Deferred:
        """An attempt whose SYNs are dropped: it times out at C{syn_timeout}, or is cancelled
        (then its timer goes too: nothing is left on the clock)."""

        def cancel(_: Deferred) -> None:
            if timer.active():
                timer.cancel()

        d: Deferred = Deferred(cancel)
        timer = self.cluster.clock.callLater(
            self.node.syn_timeout, lambda: d.called or d.errback(net_error.TimeoutError(string="SYNs dropped")))
        return d

    def _connected(self, factory: Any) -> Any:
        client = factory.buildProtocol(None)
        server = FakeNodeProtocol(self.node)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                             greet=False, clock=self.cluster.clock)
        self.cluster.pumps.append((self.node.node_id, pump))
        return client


class FakeCluster:
    """Nodes 1..n at C{10.0.0.N:7070}; node 1 is the controller."""

    def __init__(self, clock: Any, nodes: int = 3, hints: bool = True, addresses: list[str] | None = None) -> None:
        self.clock = clock
        addresses = addresses or [f"10.0.0.{i}:7070" for i in range(1, nodes + 1)]
        self.nodes = {i: FakeNode(self, i, addresses[i - 1]) for i in range(1, nodes + 1)}
        self.controller: int | None = 1
        self.topics: dict[str, list[FakePartition]] = {}
        #: NOT_LEADER answers carry the leader's id, address and term.
        self.hints = hints
        self.auto_create = True
        self.requests: list[tuple[int, str, dict[str, Any]]] = []
        self.attempts: list[tuple[int, float]] = []
        self.pumps: list[tuple[int, iosim.IOPump]] = []
        self._sticky = 0
        self.cluster_id = "fake-cluster"
        #: CreateTopic answers LEADER_NOT_AVAILABLE this many times first (a cluster still forming).
        self.forming = 0
        #: InitProducerId: the next producer id, the named producers, every identity handed out.
        self.next_producer_id = 0
        self.producer_names: dict[str, tuple[int, int]] = {}
        self.inits: list[tuple[int, int]] = []
        self.init_tokens: dict[str, tuple[int, int]] = {}
        #: The node coordinating every group (FindCoordinator's answer), the group's topics and offsets.
        self.coordinator: int | None = nodes
        self.group_topics: list[str] = []
        self.group_offsets: dict[tuple[str, int], int] = {}

    def take_producer_id(self) -> int:
        self.next_producer_id += 1
        return self.next_producer_id - 1

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes.values())

    def endpoint(self, address: Any) -> FakeEndpoint:
        key = address_key(address)
        for node in self.nodes.values():
            if node.address == key:
                return FakeEndpoint(self, node)
        raise AssertionError(f"no fake node at {address!r}")

    def metadata(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id, "controller": self.controller,
            "nodes": [{"node_id": n.node_id, "address": n.address, "up": n.up} for n in self.nodes.values()],
            "topics": [{"topic": t, "topic_id": f"id-{t}", "partitions": [p.view(i) for i, p in enumerate(parts)]}
                       for t, parts in sorted(self.topics.items())],
        }

    # --- changing the state ------------------------------------------------------------

    def create_topic(self, name: str, partitions: int, leaders: list[int] | None = None) -> None:
        ids = sorted(self.nodes)
        parts = []
        for p in range(partitions):
            leader = leaders[p % len(leaders)] if leaders else ids[p % len(ids)]
            replicas = [leader] + [i for i in ids if i != leader][:2]
            parts.append(FakePartition(leader, replicas))
        self.topics[name] = parts

    def move_leader(self, topic: str, partition: int, to: int | None) -> None:
        """Leadership of the partition moves to node C{to} (None: an election is on), in a new term."""
        part = self.topics[topic][partition]
        old = part.leader
        part.leader = to
        part.term += 1
        if old is not None:
            self.nodes[old].wake(topic, partition)

    def appended(self, topic: str, partition: int) -> None:
        leader = self.topics[topic][partition].leader
        if leader is not None:
            self.nodes[leader].wake(topic, partition)

    def next_sticky(self, partitions: int) -> int:
        self._sticky += 1
        return self._sticky % partitions

    def kill(self, node_id: int) -> None:
        """The node's process dies: its connections close, new ones are refused."""
        node = self.nodes[node_id]
        node.up = False
        node.forget_parked()
        for nid, pump in self.pumps:
            if nid == node_id:
                pump.serverIO.loseConnection()
        self.pump()

    def revive(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.up = True
        node.refuse = False
        node.drop_syns = False
        node.black_hole = False

    def records(self, topic: str, partition: int) -> list[dict[str, Any]]:
        return self.topics[topic][partition].records

    def values(self, topic: str, partition: int) -> list[Any]:
        return [r["value"] for r in self.records(topic, partition)]

    def sent(self, method: str) -> list[tuple[int, dict[str, Any]]]:
        """The requests of C{method} the nodes got, as (node id, params)."""
        return [(n, p) for n, m, p in self.requests if m == method]

    # --- moving bytes --------------------------------------------------------------------

    def pump(self) -> None:
        for _ in range(200):
            moved = False
            for _, p in list(self.pumps):
                if p.pump(advanceClock=False):
                    moved = True
            self.pumps = [(n, p) for n, p in self.pumps
                          if not (p.clientIO.disconnected and p.serverIO.disconnected)]
            if not moved:
                return
        raise AssertionError("the connections never went quiet")

    def stop(self) -> None:
        for _, p in self.pumps:
            p.clientIO.loseConnection()
        self.pump()
        for node in self.nodes.values():
            node.forget_parked()


def run_until(clock: Any, cluster: FakeCluster, condition: Callable[[], Any], step: float = 0.01,
              limit: float = 60.0) -> None:
    """Advance the clock in steps, pumping bytes, until C{condition()} (virtual time, bounded)."""
    end = clock.seconds() + limit
    cluster.pump()
    while not condition():
        assert clock.seconds() < end, "condition not met within the virtual time limit"
        clock.advance(step)
        cluster.pump()


def settled(clock: Any, cluster: FakeCluster, d: Any, limit: float = 60.0) -> Any:
    """Run virtual time until C{d} has its result; return it (a Failure stays a Failure)."""
    box: list[Any] = []
    d.addBoth(lambda r: box.append(r))
    run_until(clock, cluster, lambda: bool(box), limit=limit)
    return box[0]


def run_for(clock: Any, cluster: FakeCluster, seconds: float, step: float = 0.01) -> None:
    """Let C{seconds} of virtual time pass in steps, moving bytes after each."""
    end = clock.seconds() + seconds
    cluster.pump()
    while clock.seconds() < end - 1e-9:
        clock.advance(min(step, end - clock.seconds()))
        cluster.pump()


def cluster_client(clock: Any, cluster: FakeCluster, seed: int = 7, **kw: Any) -> Any:
    """A L{ClusterClient} of C{cluster} on C{clock} (C{request_timeout} 5 s unless given)."""
    import random

    from streamlog.client import ClusterClient

    kw.setdefault("request_timeout", 5.0)
    return ClusterClient(cluster.bootstrap, clock=clock, endpoint_factory=cluster.endpoint, rng=random.Random(seed),
                         **kw)


def close_client(client: Any, cluster: FakeCluster) -> None:
    """Close C{client} and let its connections go (fails the test if closing does not finish)."""
    from streamlog.testing import result_of

    d = client.close()
    cluster.pump()
    result_of(d)


def outcomes(ds: list[Any]) -> list[Any]:
    """The results of settled Deferreds (a Failure stays a Failure); fails the test if one is not settled."""
    got = []
    for d in ds:
        box: list[Any] = []
        d.addBoth(box.append)
        assert box, "not settled"
        got.append(box[0])
    return got

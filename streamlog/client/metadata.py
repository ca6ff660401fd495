"""The client's picture of the cluster: nodes, controller, and who leads each partition (pure).

Built from C{Metadata} answers (docs/protocol.md), corrected by the hints that
C{NOT_LEADER} errors carry, and read by the router to pick the node each
request goes to.  No I/O and no clock here: the caller passes C{now}.

A server without the C{Metadata} method (streamlog before clusters) is a
single node that leads every partition: L{ClusterView.single_node} builds that
picture, and the topics' partition counts come from C{DescribeTopic}
(L{TopicInfo.from_description}).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from streamlog import errors

#: The node id given to a server that has no Metadata method (it leads everything).
SINGLE_NODE_ID = 0


@attrs.frozen
class NodeInfo:
    """One node: its id, the address clients reach it at (C{host:port}), and whether the
    node that answered sees it up."""

    node_id: int
    address: str
    up: bool = True


@attrs.frozen
class ReplicaOffset:
    """One replica's log as the partition's leader knows it (C{replica_offsets} in Metadata)."""

    node_id: int
    match_index: int
    #: The record offset after the replica's last matching entry; None: behind the log start.
    log_end_offset: int | None


@attrs.frozen
class PartitionInfo:
    partition: int
    leader: int | None
    leader_term: int = 0
    replicas: tuple[int, ...] = ()
    isr: tuple[int, ...] = ()
    #: Given only by the partition's leader (a node answers them for what it leads).
    replica_offsets: tuple[ReplicaOffset, ...] = ()


@attrs.frozen
class TopicInfo:
    topic: str
    partitions: tuple[PartitionInfo, ...]
    topic_id: str | None = None

    @property
    def count(self) -> int:
        """How many partitions the topic has."""
        return len(self.partitions)

    def partition(self, partition: int) -> PartitionInfo:
        """The partition's info; L{errors.UnknownPartition} (as the server words it) if the topic lacks it."""
        if 0 <= partition < len(self.partitions):
            return self.partitions[partition]
        raise errors.UnknownPartition(
            f"topic {self.topic!r} has {len(self.partitions)} partition(s), not {partition}",
            topic=self.topic, partitions=len(self.partitions))

    @classmethod
    def from_description(cls, description: Mapping[str, Any], leader: int = SINGLE_NODE_ID) -> TopicInfo:
        """From a C{DescribeTopic} answer of a single node (every partition led by C{leader})."""
        try:
            numbers = sorted(int(p["partition"]) for p in description["partitions"])
            return cls(str(description["topic"]), tuple(PartitionInfo(p, leader) for p in numbers))
        except (KeyError, TypeError, ValueError) as e:
            raise errors.Internal(f"unexpected DescribeTopic answer ({e!r}): {str(description)[:200]}") from None


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.Internal(f"unexpected Metadata answer: {what} is {value!r}, not an integer")
    return value


def _ids(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise errors.Internal(f"unexpected Metadata answer: {what} is {value!r}, not a list")
    return tuple(_int(v, what) for v in value)


def _optional_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _replica_offsets(value: Any) -> tuple[ReplicaOffset, ...]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise errors.Internal(f"unexpected Metadata answer: replica_offsets is {str(value)[:200]}")
    return tuple(ReplicaOffset(_int(r.get("node_id"), "node_id"), _int(r.get("match_index"), "match_index"),
                               _optional_int(r.get("log_end_offset"), "log_end_offset")) for r in value)


@attrs.frozen
class MetadataAnswer:
    """A C{Metadata} answer, checked: what the cluster looked like from the node that answered."""

    cluster_id: str | None
    controller: int | None
    nodes: tuple[NodeInfo, ...]
    topics: tuple[TopicInfo, ...]
    #: topic -> the error the node gave for it (e.g. UNKNOWN_TOPIC).
    topic_errors: Mapping[str, errors.StreamlogError] = attrs.field(factory=dict)
    #: The node answered that it runs alone (started without --peers): it leads every
    #: partition, and a client treats it as the only node, as one without Metadata.
    alone: bool = False

    @classmethod
    def parse(cls, result: Any) -> MetadataAnswer:
        """Check and read a C{Metadata} result; L{errors.Internal} if it is not one."""
        if not isinstance(result, dict):
            raise errors.Internal(f"unexpected Metadata answer: {str(result)[:200]}")
        nodes = []
        for n in result.get("nodes") or []:
            if isinstance(n, dict) and "address" in n and n["address"] is None:
                continue  # a node the answering one has not heard of yet: nowhere to reach it
            if not isinstance(n, dict) or not isinstance(n.get("address"), str):
                raise errors.Internal(f"unexpected Metadata answer: node {str(n)[:200]}")
            nodes.append(NodeInfo(_int(n.get("node_id"), "node_id"), n["address"], bool(n.get("up", True))))
        topics, topic_errors = [], {}
        for t in result.get("topics") or []:
            if not isinstance(t, dict) or not isinstance(t.get("topic"), str):
                raise errors.Internal(f"unexpected Metadata answer: topic {str(t)[:200]}")
            name = t["topic"]
            if isinstance(t.get("error"), dict):
                topic_errors[name] = errors.from_wire(t["error"])
                continue
            parts = []
            for p in t.get("partitions") or []:
                if not isinstance(p, dict):
                    raise errors.Internal(f"unexpected Metadata answer: partition {str(p)[:200]}")
                parts.append(PartitionInfo(
                    _int(p.get("partition"), "partition"), _optional_int(p.get("leader"), "leader"),
                    _int(p.get("leader_term", 0), "leader_term"), _ids(p.get("replicas", []), "replicas"),
                    _ids(p.get("isr", []), "isr"), _replica_offsets(p.get("replica_offsets", []))))
            parts.sort(key=lambda p: p.partition)
            if [p.partition for p in parts] != list(range(len(parts))):
                raise errors.Internal(f"unexpected Metadata answer: {name} has partitions "
                                      f"{[p.partition for p in parts]}, not 0..n-1")
            topic_id = t.get("topic_id")
            topics.append(TopicInfo(name, tuple(parts), topic_id if isinstance(topic_id, str) else None))
        cluster_id = result.get("cluster_id")
        return cls(cluster_id if isinstance(cluster_id, str) else None,
                   _optional_int(result.get("controller"), "controller"), tuple(nodes), tuple(topics),
                   topic_errors, result.get("alone") is True)


class ClusterView:
    """The cached metadata, updated in place.

    @ivar single_node: the server has no Metadata method; node L{SINGLE_NODE_ID}
        at C{single_address} leads every partition.
    @ivar generation: counts changes that may move a route (a test, or a
        router, compares it to notice them).
    """

    def __init__(self) -> None:
        self.cluster_id: str | None = None
        self.controller: int | None = None
        self.nodes: dict[int, NodeInfo] = {}
        self.topics: dict[str, TopicInfo] = {}
        #: topic -> the error a node gave for it (UNKNOWN_TOPIC): the cluster did not know it at the last fetch.
        self.missing: dict[str, errors.StreamlogError] = {}
        self.single_node = False
        self.known = False  # any answer yet
        self.fetched_at: float | None = None
        self.generation = 0

    # --- building it ------------------------------------------------------------------

    def apply(self, answer: MetadataAnswer, requested: Iterable[str] | None, now: float) -> set[str]:
        """Take a Metadata answer; returns the addresses of nodes that left (their connections can close).

        C{requested}: the topics asked for (None: all of them, so a cached topic
        absent from the answer was deleted).
        """
        before = {n.address for n in self.nodes.values()}
        self.single_node = False
        self.known = True
        self.cluster_id = answer.cluster_id
        self.controller = answer.controller
        self.nodes = {n.node_id: n for n in answer.nodes}
        if requested is None:
            self.topics = {}
            self.missing = {}
        for topic in answer.topics:
            self.topics[topic.topic] = self._newest(self.topics.get(topic.topic), topic)
            self.missing.pop(topic.topic, None)
        for name, error in answer.topic_errors.items():
            self.topics.pop(name, None)
            self.missing[name] = error
        self.fetched_at = now
        self.generation += 1
        return before - {n.address for n in self.nodes.values()}

    @staticmethod
    def _newest(cached: TopicInfo | None, fresh: TopicInfo) -> TopicInfo:
        """C{fresh}, except partitions whose cached leader is of a later term (a hint the answering
        node has not heard of yet): leadership news never goes back."""
        if cached is None or cached.topic_id != fresh.topic_id or cached.count != fresh.count:
            return fresh
        parts = [c if c.leader_term > f.leader_term else f for c, f in zip(cached.partitions, fresh.partitions,
                                                                            strict=True)]
        return attrs.evolve(fresh, partitions=tuple(parts))

    def use_single_node(self, address: str, now: float) -> None:
        """The server at C{address} has no Metadata method: it is the only node and leads everything."""
        if not self.single_node:
            self.topics = {}
            self.missing = {}
        self.single_node = True
        self.known = True
        self.cluster_id = None
        self.controller = SINGLE_NODE_ID
        self.nodes = {SINGLE_NODE_ID: NodeInfo(SINGLE_NODE_ID, address)}
        self.fetched_at = now
        self.generation += 1

    def set_topic(self, topic: TopicInfo) -> None:
        self.topics[topic.topic] = topic
        self.missing.pop(topic.topic, None)
        self.generation += 1

    def forget_topic(self, topic: str, error: errors.StreamlogError | None = None) -> None:
        """The topic is gone or unknown (C{error}: what a node said about it, kept for the next caller)."""
        self.topics.pop(topic, None)
        if error is not None:
            self.missing[topic] = error
        self.generation += 1

    # --- reading it --------------------------------------------------------------------

    def leader(self, topic: str, partition: int) -> NodeInfo | None:
        """The node leading C{topic}/C{partition}, if known (and an address is known for it)."""
        info = self.topics.get(topic)
        if info is None or not 0 <= partition < info.count:
            return None
        leader = info.partitions[partition].leader
        return self.nodes.get(leader) if leader is not None else None

    def controller_node(self) -> NodeInfo | None:
        return self.nodes.get(self.controller) if self.controller is not None else None

    def addresses(self) -> list[str]:
        """Every node's address, nodes seen up first (for requests any node can answer)."""
        ordered = sorted(self.nodes.values(), key=lambda n: (not n.up, n.node_id))
        return [n.address for n in ordered]

    # --- hints -------------------------------------------------------------------------

    def apply_not_leader(self, details: Mapping[str, Any], topic: str, partition: int) -> bool:
        """Take the hint of a C{NOT_LEADER} answer; True if it names a leader to try now.

        A hint from an older term than the one cached is ignored; one without
        a leader (the node does not know) clears the cached leader, so that the
        next attempt waits for fresh metadata instead of asking the same node.
        """
        info = self.topics.get(topic)
        if info is None or not 0 <= partition < info.count:
            return False
        current = info.partitions[partition]
        term = details.get("leader_term")
        term = term if isinstance(term, int) and not isinstance(term, bool) else None
        if term is not None and term < current.leader_term:
            return False  # older news than ours
        leader = details.get("leader")
        leader = leader if isinstance(leader, int) and not isinstance(leader, bool) else None
        address = details.get("leader_address")
        if leader is not None and leader not in self.nodes:
            if not isinstance(address, str) or not address:
                leader = None  # a node we cannot reach: no use
            else:
                self.nodes[leader] = NodeInfo(leader, address)
        elif leader is not None and isinstance(address, str) and address and self.nodes[leader].address != address:
            self.nodes[leader] = attrs.evolve(self.nodes[leader], address=address)
        new_term = term if term is not None else current.leader_term
        if leader == current.leader and new_term == current.leader_term and leader is not None:
            return False  # the hint says what we believed: the node that answered is out of date
        updated = attrs.evolve(current, leader=leader, leader_term=new_term)
        parts = list(info.partitions)
        parts[partition] = updated
        self.topics[topic] = attrs.evolve(info, partitions=tuple(parts))
        self.generation += 1
        return leader is not None

    def forget_leader(self, topic: str, partition: int, leader: int | None = None) -> None:
        """The cached leader of the partition failed us (it is gone, stopping, or says there is
        none): forget it, so that the next attempt waits for fresh metadata.  With C{leader},
        only if that is still the cached one."""
        info = self.topics.get(topic)
        if info is None or not 0 <= partition < info.count or self.single_node:
            return
        current = info.partitions[partition]
        if current.leader is None or (leader is not None and current.leader != leader):
            return
        parts = list(info.partitions)
        parts[partition] = attrs.evolve(current, leader=None)
        self.topics[topic] = attrs.evolve(info, partitions=tuple(parts))
        self.generation += 1

    def node_at(self, address: str) -> int | None:
        """The id of the node at C{address}, if one is."""
        for node in self.nodes.values():
            if node.address == address:
                return node.node_id
        return None

    def apply_not_controller(self, details: Mapping[str, Any]) -> bool:
        """Take the hint of a C{NOT_CONTROLLER} answer; True if it names a controller to try now."""
        controller = details.get("controller")
        address = details.get("controller_address")
        if not isinstance(controller, int) or isinstance(controller, bool):
            self.controller = None
            return False
        if controller not in self.nodes:
            if not isinstance(address, str) or not address:
                self.controller = None
                return False
            self.nodes[controller] = NodeInfo(controller, address)
        changed = self.controller != controller
        self.controller = controller
        self.generation += 1
        return changed

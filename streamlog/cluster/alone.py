"""L{LoneNode}: a node started without C{--peers} (a cluster of one) as C{Metadata} shows it.

Such a node runs the same replicas and Raft groups as a cluster node (each
group of one member, elected when it is added) but no C{ClusterNode}: no
metadata group, no peer transport, no C{node.json}.  It needs none of them:
no other node ever sees its Raft member ids, so no vote or entry can come
from another incarnation of it, and nothing forms a cluster id.  This object
only answers C{Metadata} the way any node does, so that a client or
C{streamlog cluster status} sees the truth: one node, its own controller,
leading every partition, the only replica of each, always in sync.
"""

from __future__ import annotations

from typing import Any

from streamlog import errors
from streamlog.cluster.replica import PartitionReplica
from streamlog.topic_config import internal_mark


class LoneNode:
    """This node alone: its id (C{--node-id}, 1 by default) and the address clients reach it at.

    @param directory: the node's C{ReplicaDirectory} (its topics, all local).
    @param client_address: C{host:port} (its C{--advertise}, else the bound listener), or
        None until the listener is bound.
    """

    def __init__(self, directory: Any, node_id: int = 1, client_address: str | None = None) -> None:
        self.directory = directory
        self.node_id = node_id
        self.client_address = client_address

    def metadata(self, names: list[str] | None) -> dict[str, Any]:
        """The C{Metadata} answer (docs/protocol.md) for C{names} (None: every topic)."""
        topics = self.directory.topics
        answer = []
        for name in sorted(topics) if names is None else names:
            topic = topics.get(name)
            if topic is None:
                answer.append({"topic": name,
                               "error": errors.UnknownTopic(f"unknown topic {name!r}", topic=name).to_wire()})
                continue
            answer.append({"topic": name, "topic_id": topic.topic_id, **internal_mark(name),
                           "partitions": [self.partition(p) for p in topic.partitions]})
        return {"cluster_id": None, "alone": True, "controller": self.node_id, "controller_isr": [self.node_id],
                "nodes": [{"node_id": self.node_id, "address": self.client_address, "up": True}],
                "topics": answer}

    def partition(self, replica: PartitionReplica) -> dict[str, Any]:
        """One partition: led here once its group of one elected this node (at once, unless
        its storage found damage: then no leader, and Sends get C{PARTITION_UNAVAILABLE})."""
        leads = replica.writable and replica.failed is None
        me = [self.node_id]
        entry: dict[str, Any] = {"partition": replica.index, "leader": self.node_id if leads else None,
                                 "leader_term": replica.term, "replicas": me, "isr": me if leads else []}
        offsets = replica.replica_offsets(lambda member: self.node_id)
        if offsets is not None:
            entry["replica_offsets"] = offsets
        return entry

"""Shared builders for the cluster tests: registered nodes, topics, states."""

from __future__ import annotations

from streamlog.cluster.metadata import (
    ClusterState,
    CreateTopic,
    RegisterNode,
    apply,
    member_id,
)
from streamlog.storage.base import TopicConfig

CLUSTER_ID = "c1" * 16
LIMIT = 100_000


def inc(node_id: int, generation: int = 0) -> str:
    """A readable, valid incarnation: generation in the first 8 hex, node id in the last 8."""
    return f"{generation:08x}{node_id:08x}"


def member(node_id: int, generation: int = 0) -> str:
    return member_id(node_id, inc(node_id, generation))


def register(node_id: int, generation: int = 0) -> RegisterNode:
    return RegisterNode(node_id, inc(node_id, generation), f"127.0.0.1:{7000 + node_id}", f"127.0.0.1:{8000 + node_id}")


class Log:
    """Applies commands at consecutive indexes, like the metadata group's committed log."""

    def __init__(self, state: ClusterState | None = None):
        self.state = state if state is not None else ClusterState.empty(CLUSTER_ID)
        self.index = self.state.applied_index

    def apply(self, command):
        self.index += 1
        self.state, result = apply(self.state, command, self.index)
        return result

    def ok(self, command):
        result = self.apply(command)
        assert result.ok, result
        return result.value


def cluster(nodes: int) -> Log:
    log = Log()
    for n in range(1, nodes + 1):
        log.ok(register(n))
    return log


def create(log: Log, name: str, replicas, config: TopicConfig | None = None):
    return log.apply(CreateTopic(name, tuple(tuple(p) for p in replicas), config or TopicConfig(), 1024, LIMIT))

"""Where a new topic's replicas go (docs/cluster.md, "Placement").

Pure and deterministic given the state: the controller runs it when it accepts a CreateTopic
and puts the answer into the command, so the decision is recorded in the metadata log
instead of being recomputed by every node (an upgraded algorithm can then never change
what an old entry meant).

The rules, partition by partition, counting what every existing topic already places:

* the replica set is the `replication_factor` candidate nodes holding the fewest replicas
  (ties: fewest preferred leaderships, then the smaller node id), so replica counts per node
  stay within one of each other;
* its first replica, the preferred leader, is the member of that set preferred by the fewest
  partitions so far (ties: fewest replicas, then the smaller id), so leadership spreads too;
* the other replicas follow in (replica count, id) order.

Candidates are the live registered nodes the controller passes in (a replica placed on a
node that is down would leave its partition under-replicated from birth); the default
replication factor is `min(3, candidates)`.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamlog import errors, wire
from streamlog.cluster.metadata import (
    ClusterState,
    CreateTopic,
    check_create_topic,
    leader_counts,
    replica_counts,
)
from streamlog.topic_config import TopicConfig

#: Replication factor when none is asked for: this many, or every candidate if fewer.
DEFAULT_REPLICATION_FACTOR = 3


def default_replication_factor(nodes: int) -> int:
    return min(DEFAULT_REPLICATION_FACTOR, nodes)


def assign_replicas(
    state: ClusterState,
    partitions: int,
    replication_factor: int | None = None,
    nodes: Iterable[int] | None = None,
) -> tuple[tuple[int, ...], ...]:
    """The replicas of each of `partitions` new partitions, preferred leader first.

    `nodes` are the candidates (default: every registered node); only registered ones
    count. Raises `errors.InvalidParams` when the replication factor cannot be met, saying
    how many nodes there are.
    """
    if nodes is None:
        candidates = sorted(state.nodes)
    else:
        candidates = sorted(set(nodes) & set(state.nodes))
    if partitions < 1:
        raise errors.InvalidParams(f"'partitions' must be at least 1, got {partitions}", field="partitions")
    if not candidates:
        raise errors.InvalidParams("no live registered node to place replicas on", live_nodes=0)
    rf = default_replication_factor(len(candidates)) if replication_factor is None else replication_factor
    if rf < 1:
        raise errors.InvalidParams(f"'replication_factor' must be at least 1, got {rf}", field="replication_factor")
    if rf > len(candidates):
        raise errors.InvalidParams(
            f"replication factor {rf} needs {rf} live nodes; {len(candidates)} "
            f"{'is' if len(candidates) == 1 else 'are'} live",
            field="replication_factor", replication_factor=rf, live_nodes=len(candidates),
        )
    replicas = replica_counts(state)
    leaders = leader_counts(state)
    out = []
    for _ in range(partitions):
        # Any node among the rf least loaded (by replicas) may lead without unbalancing
        # replicas: take the one that leads least. Fill the rest with the least loaded,
        # preferring nodes that already lead more, to keep room on those that lead less.
        threshold = sorted(replicas[n] for n in candidates)[rf - 1]
        leader = min((n for n in candidates if replicas[n] <= threshold), key=lambda n: (leaders[n], replicas[n], n))
        others = sorted((n for n in candidates if n != leader), key=lambda n: (replicas[n], -leaders[n], n))
        assignment = (leader, *others[: rf - 1])
        for n in assignment:
            replicas[n] += 1
        leaders[leader] += 1
        out.append(assignment)
    return tuple(out)


def create_topic_command(
    state: ClusterState,
    topic: str,
    partitions: int,
    config: TopicConfig,
    *,
    max_partitions: int,
    max_partitions_per_node: int,
    replication_factor: int | None = None,
    live_nodes: Iterable[int] | None = None,
) -> CreateTopic:
    """The CreateTopic the controller proposes for a client's request, or the
    `errors.StreamlogError` it would answer at once (bad name or config, TOPIC_EXISTS, too
    many partitions, a replication factor the live nodes cannot meet): the checks `apply`
    will make again, run first so a refusal costs no Raft round trip."""
    wire.check_topic_name(topic)
    if not 1 <= partitions <= max_partitions:
        raise errors.InvalidParams(
            f"'partitions' must be between 1 and {max_partitions}, got {partitions}", field="partitions")
    if topic in state.topics:
        raise errors.TopicExists(f"topic {topic!r} already exists", topic=topic)
    replicas = assign_replicas(state, partitions, replication_factor, live_nodes)
    command = CreateTopic(topic, replicas, config, max_partitions, max_partitions_per_node)
    refused = check_create_topic(state, command)
    if refused is not None:
        raise refused.exception()
    return command

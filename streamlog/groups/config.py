"""The server's consumer-group settings (docs/operations.md, "Consumer groups")."""

from __future__ import annotations

import attrs

from streamlog.groups.coordinator import GroupLimits

# The internal topic holding every group's committed offsets and membership (one partition per
# coordinator shard), named where the broker's internal-topic checks can see it too.
from streamlog.topic_config import OFFSETS_TOPIC as OFFSETS_TOPIC


@attrs.frozen
class GroupConfig:
    #: Partitions of the offsets topic when this node creates it (at the first group request).
    offsets_partitions: int = 4
    #: Its replication factor in a cluster (None: the cluster's default for new topics).
    offsets_replication_factor: int | None = None
    limits: GroupLimits = GroupLimits()
    #: Records a coordinator taking over replays per turn of the reactor (requests for its groups
    #: are answered COORDINATOR_NOT_AVAILABLE, loading, until it is done).
    replay_slice_records: int = 10_000
    #: Records appended to an offsets partition after which its coordinator writes a snapshot of
    #: the partition's groups (every node then removes the records before it); 0: never.
    snapshot_records: int = 10_000
    #: Seconds a group with no members and no offset commit is kept before its coordinator deletes
    #: it (Kafka's offsets.retention.minutes, 7 days); 0: kept for ever.
    offsets_retention: float = 7 * 24 * 3600.0
    #: Idle groups one offsets partition's coordinator looks at (and deletes) per turn of the reactor.
    retention_deletes_per_turn: int = 100

"""The server's consumer-group settings (docs/operations.md, "Consumer groups")."""

from __future__ import annotations

import attrs

from streamlog.groups.coordinator import GroupLimits

#: The internal topic holding every group's committed offsets (one partition per coordinator shard).
OFFSETS_TOPIC = "__consumer_offsets"


@attrs.frozen
class GroupConfig:
    #: Partitions of the offsets topic when this node creates it (at the first group request).
    offsets_partitions: int = 4
    #: Its replication factor in a cluster (None: the cluster's default for new topics).
    offsets_replication_factor: int | None = None
    limits: GroupLimits = GroupLimits()

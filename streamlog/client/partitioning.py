"""Which partition a message goes to, chosen by the client (pure).

- An explicit C{partition} is kept (one the topic lacks is
  L{errors.UnknownPartition}, as the server would answer).
- A key goes to C{(murmur2(utf8(key)) & 0x7fffffff) % partitions}: the
  server's rule and Kafka's (L{streamlog.partitioner}), so a key lands where
  it would have without the client choosing.
- Messages with neither stick to one partition per topic until the batch
  being filled there is closed (L{Partitioner.batch_closed}), then move to
  the next partition in round-robin order: Kafka's sticky partitioner.  Big
  batches, and over time an even spread.

Choosing here, not on the server, lets one request carry many keys (all
those of one partition), and lets a cluster client send each batch straight
to its partition's leader.
"""

from __future__ import annotations

import random as _random

from streamlog import errors
from streamlog.partitioner import partition_for_key


class Partitioner:
    """Partition choice for one client (the sticky partition is kept per topic)."""

    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()
        self._sticky: dict[str, int] = {}

    def choose(self, topic: str, partitions: int, key: str | None, partition: int | None) -> int:
        """The partition of one message of C{topic}, which has C{partitions} partitions."""
        if partition is not None:
            if not 0 <= partition < partitions:
                raise errors.UnknownPartition(
                    f"topic {topic!r} has {partitions} partition(s), not {partition}",
                    topic=topic, partitions=partitions)
            return partition
        if key is not None:
            return partition_for_key(key, partitions)
        return self.sticky(topic, partitions)

    def sticky(self, topic: str, partitions: int) -> int:
        """The partition unkeyed messages of C{topic} go to now."""
        current = self._sticky.get(topic)
        if current is None or current >= partitions:
            current = self._sticky[topic] = self._rng.randrange(partitions)
        return current

    def batch_closed(self, topic: str, partitions: int, partition: int) -> None:
        """The batch filling on C{partition} was closed: unkeyed messages move to the next partition.

        Only when C{partition} is the sticky one (a keyed batch closing there does not move it).
        """
        if self._sticky.get(topic) == partition and partitions > 1:
            self._sticky[topic] = (partition + 1) % partitions

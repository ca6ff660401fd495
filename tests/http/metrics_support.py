"""A node's registry over a test broker (BrokerHarness, ClusterHarness), and reading samples from it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streamlog.broker.service import NodeConfig, Recovery
from streamlog.metrics.collector import DEFAULT_MAX_GROUP_SERIES, DEFAULT_MAX_PARTITION_SERIES, node_registry


def service_of(broker: Any, cluster: Any = None, node_id: int = 1, recovery: float = 0.25) -> Any:
    """What the collector and /ready read of a BrokerService, over a harness's broker."""
    return SimpleNamespace(broker=broker, cluster=cluster, config=NodeConfig(node_id=node_id),
                           recovery=Recovery(topics=0, partitions=0, unavailable=0, seconds=recovery))


class Scrape:
    """One node's registry; C{value(name, **labels)} reads a sample as a scrape would now."""

    def __init__(self, broker: Any, factory: Any = None, cluster: Any = None, node_id: int = 1,
                 max_partition_series: int = DEFAULT_MAX_PARTITION_SERIES,
                 max_group_series: int = DEFAULT_MAX_GROUP_SERIES) -> None:
        self.service = service_of(broker, cluster, node_id)
        self.registry = node_registry(self.service, factory, max_partition_series, process=False,
                                      max_group_series=max_group_series)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample called C{name}: sorted label pairs -> value."""
        found = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    found[tuple(sorted(sample.labels.items()))] = sample.value
        return found


class SyncedLog:
    """A log of 3 entries for a GroupCommitter: its sync makes them all durable."""

    durable_index = 0
    last_index = 3

    def sync(self) -> None:
        self.durable_index = 3

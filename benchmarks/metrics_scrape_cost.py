#!/usr/bin/env python
"""CPU time of one /metrics scrape (the collector's walk and the text exposition), by partitions held.

    .venv/bin/python benchmarks/metrics_scrape_cost.py

A node alone (memory storage, on a Clock) with topics of 10 partitions each, some traffic on each,
a consumer group with a committed offset; its registry is encoded as /metrics encodes it, 20 times,
timed with time.process_time(). At one scrape a second, the CPU time of one scrape is the share of
one core the scraping takes from the node. Prints one JSON line per size.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from prometheus_client.exposition import generate_latest

from streamlog.broker.service import NodeConfig, Recovery
from streamlog.metrics.collector import node_registry
from streamlog.testing import BrokerHarness


def scrape_cost(partitions: int, limit: int, repeat: int = 20) -> dict[str, object]:
    h = BrokerHarness()
    conn = h.connect()
    for t in range(partitions // 10):
        conn.call("CreateTopic", {"topic": f"t{t}", "partitions": 10})
        conn.call("SendBatch", {"topic": f"t{t}", "messages": [{"value": i, "partition": i % 10} for i in range(20)]})
    h.settle()
    service = SimpleNamespace(broker=h.broker, cluster=None, config=NodeConfig(),
                              recovery=Recovery(topics=0, partitions=0, unavailable=0, seconds=0.0))
    registry = node_registry(service, h.factory, max_partition_series=limit, process=True)
    body = generate_latest(registry)
    began = time.process_time()
    for _ in range(repeat):
        body = generate_latest(registry)
    took = (time.process_time() - began) / repeat
    h.broker.groups.stop()
    h.stop()
    return {"partitions": partitions, "max_partition_series": limit, "scrape_cpu_ms": round(took * 1000, 3),
            "bytes": len(body), "lines": body.count(b"\n")}


def main() -> None:
    for partitions, limit in ((10, 256), (100, 256), (250, 256), (1000, 256), (1000, 2000)):
        print(json.dumps(scrape_cost(partitions, limit)), flush=True)


if __name__ == "__main__":
    main()

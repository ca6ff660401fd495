"""Three real nodes, an RF=3 partition, an idempotent Producer (a child process) with batches in
flight when the partition's leader is SIGKILLed: every message is stored exactly once, in send order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson
from test_cluster_process import create_topic, formed, free_ports, leader, start_cluster

from streamlog.client.blocking import BlockingClient
from streamlog.testing import LineClient, child_env, wait_for

COUNT = 3000
SCRIPT = str(Path(__file__).with_name("failover_producer.py"))


def read_partition(port: int, upto: int) -> list[tuple[int, object]]:
    reader = LineClient(port)
    out: list[tuple[int, object]] = []
    offset = 0
    try:
        while offset < upto:
            result = reader.call("Poll", {"topic": "t", "partition": 0, "offset": offset, "max_messages": 1000})
            assert "result" in result, result
            out += [(m["offset"], m["value"]) for m in result["result"]["messages"]]
            if result["result"]["next_offset"] == offset:
                break
            offset = result["result"]["next_offset"]
    finally:
        reader.close()
    return out


def test_sigkill_of_the_leader_while_batches_are_in_flight_stores_each_message_once_in_order(tmp_path):
    nodes = start_cluster(tmp_path, free_ports(3))
    producer = None
    try:
        wait_for(lambda: formed(nodes), 30, "three nodes to form a cluster")
        bootstrap = ",".join(n.address for n in nodes.values())
        with BlockingClient(bootstrap, timeout=5) as client:
            create_topic(client)
        killed = wait_for(lambda: leader(nodes, "t"), 20, "a leader of t/0")
        out = open(tmp_path / "producer.out", "w+")
        producer = subprocess.Popen([sys.executable, SCRIPT, bootstrap, "t", str(COUNT)], stdout=out,
                                    stderr=subprocess.STDOUT, env=child_env())

        def progress() -> int:
            lines = (tmp_path / "producer.out").read_text().split()
            return max([int(w) for a, w in zip(lines, lines[1:]) if a == "acked"], default=0)

        wait_for(lambda: progress() >= 500, 60, "the producer to be well under way")
        nodes[killed].signal(signal.SIGKILL)  # batches are in flight at the leader now
        nodes[killed].wait(10)
        assert producer.wait(120) == 0, (tmp_path / "producer.out").read_text()[-3000:]
        summary = orjson.loads((tmp_path / "producer.out").read_text().strip().splitlines()[-1])
        new = wait_for(lambda: leader(nodes, "t") not in (None, killed) and leader(nodes, "t"), 20, "a new leader")
        stored = read_partition(nodes[new].port, COUNT + 100)
        values = [v for _, v in stored]
        assert len(values) == COUNT, f"{len(values) - COUNT} extra (duplicates) or missing"
        assert values == list(range(COUNT))  # each once, in send order
        assert summary["offsets"] == [o for o, _ in stored]  # acknowledged where they are
        assert summary["failed"] == []
        print(f"{COUNT} messages, {summary['requests']} requests, {summary['retries']} retried batches "
              f"across the SIGKILL of node {killed}; 0 duplicates")
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait(10)
        for n in nodes.values():
            n.stop()

"""Three real nodes, an RF=3 partition, an idempotent Producer (a child process) with batches in
flight when the partition's leader is SIGKILLed: every message is stored exactly once, in send order.

Judged twice: directly (the partition holds 0 .. COUNT-1 once each, in order, at the offsets the
acknowledgements named) and by the chaos history checker (streamlog.chaos.checker) over the
producer's recorded sends, the final read of the partition and its drain: 0 duplicates, no
send out of order, nothing acknowledged lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson
from test_cluster_process import create_topic, formed, free_ports, leader, start_cluster

from streamlog.chaos import checker
from streamlog.chaos.history import OK, Drain, Poll, load
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
        history_file = tmp_path / "history.jsonl"
        producer = subprocess.Popen([sys.executable, SCRIPT, bootstrap, "t", str(COUNT), str(history_file)], stdout=out,
                                    stderr=subprocess.STDOUT, env=child_env())

        def progress() -> int:
            lines = (tmp_path / "producer.out").read_text().split()
            return max([int(w) for a, w in zip(lines, lines[1:]) if a == "acked"], default=0)

        wait_for(lambda: progress() >= 500, 60, "the producer to be well under way")
        killed = wait_for(lambda: leader(nodes, "t"), 20, "the leader of t/0 now")
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
        assert summary["retries"] >= 1  # the kill did cut batches off at the leader
        # The chaos checker's verdict on the same run: the sends as recorded, the final read, the drain.
        history = load(history_file)
        assert len(history.sends) == COUNT and all(s.outcome == OK for s in history.sends)
        end = stored[-1][0] + 1 if stored else 0
        history.polls.append(Poll(max(s.id for s in history.sends) + 1, "reader", 0.0, 0.0, "t", 0, 0, OK,
                                  tuple(stored), end, 0))
        history.drains.append(Drain("t", 0, end))
        verdict = checker.check(history)
        found = {k: n for k, n in verdict.counts.items() if n}
        assert verdict.valid and found == {}, found
        assert verdict.count(checker.DUPLICATE) == verdict.count(checker.LOST) == 0
        assert verdict.count(checker.NON_MONOTONIC_SEND) == 0
        print(f"{COUNT} messages, {summary['requests']} requests, {summary['retries']} retried batches "
              f"across the SIGKILL of node {killed}; checker: valid, 0 duplicates, 0 lost, order kept")
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait(10)
        for n in nodes.values():
            n.stop()

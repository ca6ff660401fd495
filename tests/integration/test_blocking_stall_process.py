"""The blocking client and a SIGSTOPped leader: three real twistd nodes on 127.0.0.1.

A paused leader's sockets stay open and silent.  Before stall detection the
blocking client waited out its whole request timeout (10 s here) before
asking anyone else; now it asks another node after C{stall_timeout} (0.5 s)
and sends again to the new leader once one is elected.  Every acknowledged
message must then be read back at its offset, in order, once the node is
resumed.
"""

from __future__ import annotations

import signal
import time

from test_cluster_process import create_topic, formed, free_ports, leader, send, start_cluster

from streamlog.client.blocking import BlockingClient
from streamlog.testing import wait_for


def read_all(client: BlockingClient, end: int) -> dict[int, object]:
    stored: dict[int, object] = {}
    offset = 0
    deadline = time.monotonic() + 30
    while offset < end:
        assert time.monotonic() < deadline, f"read back only up to {offset} of {end}"
        result = client.poll("t", 0, offset, max_messages=500)
        for m in result["messages"]:
            stored[m["offset"]] = m["value"]
        if result["next_offset"] == offset:
            time.sleep(0.05)
        offset = result["next_offset"]
    return stored


def test_a_sigstopped_leader_is_left_after_the_stall_timeout_not_the_request_timeout(tmp_path):
    ports = free_ports(3)
    nodes = start_cluster(tmp_path, ports)
    paused = None
    try:
        wait_for(lambda: formed(nodes), 30, "three nodes to form a cluster")
        bootstrap = ",".join(n.address for n in nodes.values())
        with BlockingClient(bootstrap, timeout=10, delivery_timeout=30) as client:
            create_topic(client)
            wait_for(lambda: leader(nodes, "t"), 20, "a leader of t/0")
            acked: dict[int, int] = {}
            for i in range(50):
                acked[i] = send(client, i, time.monotonic() + 20)
            paused = leader(nodes, "t")
            assert paused is not None
            nodes[paused].signal(signal.SIGSTOP)
            began = time.monotonic()
            acked[50] = int(client.send("t", 50, partition=0)["offset"])  # no retry loop of ours
            took = time.monotonic() - began
            assert took < 6.0, f"{took:.2f}s after SIGSTOP of the leader (request timeout 10 s)"
            assert client.stalls_dropped >= 1
            for i in range(51, 100):
                acked[i] = send(client, i, time.monotonic() + 20)
            nodes[paused].signal(signal.SIGCONT)
            paused = None
            for i in range(100, 120):
                acked[i] = send(client, i, time.monotonic() + 20)
            stored = read_all(client, max(acked.values()) + 1)
        for value, at in acked.items():
            assert stored.get(at) == value, (value, at, stored.get(at))
        offsets = [acked[i] for i in range(120)]
        assert offsets == sorted(offsets)
        print(f"a send after SIGSTOP of the leader was acknowledged after {took:.2f} s")
    finally:
        if paused is not None:
            nodes[paused].signal(signal.SIGCONT)
        for n in nodes.values():
            n.stop()

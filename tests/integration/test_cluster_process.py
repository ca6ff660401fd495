"""Three real twistd nodes on 127.0.0.1: a cluster, an RF=3 topic, the leader SIGKILLed.

Every acknowledged (acks=all) message must be readable at its offset, in order,
from the partition's new leader; producing goes on after the failover.
"""

from __future__ import annotations

import signal
import socket
import time

from streamlog import errors
from streamlog.client.blocking import BlockingClient
from streamlog.testing import LineClient, ServerProcess, wait_for

RETRIABLE = (errors.NotLeader, errors.LeaderNotAvailable, errors.ConnectionLost, errors.Timeout,
             errors.NotController, errors.ShuttingDown)


def retry(fn, deadline: float):
    """C{fn()}, again every 50 ms while it raises a retriable error, until C{deadline} (monotonic)."""
    while True:
        try:
            return fn()
        except RETRIABLE:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def node_options(ports: list[int], i: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The options of node C{i} (1-based) of a cluster whose peers listen on C{ports}."""
    peers = ",".join(f"{n + 1}=127.0.0.1:{p}" for n, p in enumerate(ports))
    return ["--node-id", str(i), "--peers", peers, "--peer-listen", f"tcp:{ports[i - 1]}:interface=127.0.0.1",
            "--election-timeout-ms", "300", "--heartbeat-ms", "50", *extra]


def start_cluster(tmp_path, ports, extra: tuple[str, ...] = ()) -> dict[int, ServerProcess]:
    """Start every node; if one fails to start, stop those already started (by their pids)
    before failing, so that no node outlives the test (a node that lost a port race left the
    first two running for good: a clean-clone CI run, with their peers gone)."""
    nodes: dict[int, ServerProcess] = {}
    try:
        for i in range(1, len(ports) + 1):
            work = tmp_path / f"n{i}"
            work.mkdir(exist_ok=True)
            nodes[i] = ServerProcess(work, name=f"node{i}", extra=node_options(ports, i, extra))
    except BaseException:
        for node in nodes.values():
            node.stop()
        raise
    return nodes


def metadata(node: ServerProcess) -> dict | None:
    try:
        c = LineClient(node.port, timeout=5)
    except OSError:
        return None
    try:
        answer = c.call("Metadata", {})
    except (OSError, ConnectionError):
        return None
    finally:
        c.close()
    return answer.get("result")


def formed(nodes: dict[int, ServerProcess]) -> bool:
    answers = [metadata(n) for n in nodes.values() if n.alive()]
    return all(a is not None and a["controller"] is not None and all(x["up"] for x in a["nodes"]) for a in answers)


def leader(nodes: dict[int, ServerProcess], topic: str) -> int | None:
    for n in nodes.values():
        if n.alive():
            a = metadata(n)
            if a is not None:
                for t in a["topics"]:
                    if t["topic"] == topic and t["partitions"][0]["leader"] is not None:
                        return int(t["partitions"][0]["leader"])
    return None


def create_topic(client: BlockingClient, within: float = 20.0, topic: str = "t", partitions: int = 1) -> None:
    """CreateTopic (RF 3), retried while the new cluster elects its controller."""
    deadline = time.monotonic() + within
    while True:
        try:
            client.call("CreateTopic", {"topic": topic, "partitions": partitions, "replication_factor": 3})
            return
        except RETRIABLE:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def send(client: BlockingClient, value: int, deadline: float) -> int:
    while True:
        try:
            return int(client.send("t", value, partition=0)["offset"])
        except RETRIABLE:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_sigkill_of_the_leader_loses_no_acknowledged_message(tmp_path):
    ports = free_ports(3)
    nodes = start_cluster(tmp_path, ports)
    try:
        wait_for(lambda: formed(nodes), 30, "three nodes to form a cluster")
        bootstrap = ",".join(n.address for n in nodes.values())
        with BlockingClient(bootstrap, timeout=5) as client:
            create_topic(client)
            first = wait_for(lambda: leader(nodes, "t"), 20, "a leader of t/0")
            acked: dict[int, int] = {}
            for i in range(200):
                acked[i] = send(client, i, time.monotonic() + 20)
            killed = leader(nodes, "t")
            assert killed == first or killed is not None
            nodes[killed].signal(signal.SIGKILL)
            nodes[killed].wait(10)
            began = time.monotonic()
            for i in range(200, 400):
                acked[i] = send(client, i, time.monotonic() + 30)
            failover_s = time.monotonic() - began
            new = wait_for(lambda: leader(nodes, "t"), 20, "a new leader")
            assert new != killed
            reader = LineClient(nodes[new].port)
            stored: dict[int, object] = {}
            offset = 0
            while offset < max(acked.values()) + 1:
                result = reader.call("Poll", {"topic": "t", "partition": 0, "offset": offset, "max_messages": 500})
                assert "result" in result, result
                for m in result["result"]["messages"]:
                    stored[m["offset"]] = m["value"]
                if result["result"]["next_offset"] == offset:
                    break
                offset = result["result"]["next_offset"]
            reader.close()
            for value, at in acked.items():
                assert stored.get(at) == value, (value, at, stored.get(at))
            offsets = [acked[i] for i in range(400)]
            assert offsets == sorted(offsets)  # in order
            print(f"failover: 200 sends after SIGKILL of node {killed} took {failover_s:.2f} s")
    finally:
        for n in nodes.values():
            n.stop()


def test_a_rolling_restart_with_sigterm_loses_nothing_and_moves_leadership_first(tmp_path):
    ports = free_ports(3)
    nodes = start_cluster(tmp_path, ports)
    try:
        wait_for(lambda: formed(nodes), 30, "three nodes to form a cluster")
        bootstrap = ",".join(n.address for n in nodes.values())
        acked: dict[int, int] = {}
        retried = 0
        with BlockingClient(bootstrap, timeout=5) as client:
            create_topic(client)
            wait_for(lambda: leader(nodes, "t"), 20, "a leader of t/0")
            value = 0
            for i in list(nodes):
                # SIGTERM: the node hands its groups over, answers what it appended, stops.
                nodes[i].signal(signal.SIGTERM)
                while nodes[i].alive():
                    try:
                        acked[value] = int(client.send("t", value, partition=0)["offset"])
                        value += 1
                    except RETRIABLE:
                        retried += 1
                        time.sleep(0.02)
                assert nodes[i].wait(10) == -signal.SIGTERM or nodes[i].process.returncode == 0
                nodes[i] = ServerProcess(tmp_path / f"n{i}", name=f"node{i}", extra=node_options(ports, i))
                wait_for(lambda: formed(nodes), 30, f"node {i} to rejoin")
                for _ in range(20):
                    acked[value] = send(client, value, time.monotonic() + 20)
                    value += 1
            new = wait_for(lambda: leader(nodes, "t"), 20, "a leader")
            reader = LineClient(nodes[new].port)
            stored: dict[int, object] = {}
            offset = 0
            while True:
                result = reader.call("Poll", {"topic": "t", "partition": 0, "offset": offset, "max_messages": 500})
                assert "result" in result, result
                for m in result["result"]["messages"]:
                    stored[m["offset"]] = m["value"]
                if result["result"]["next_offset"] == offset:
                    break
                offset = result["result"]["next_offset"]
            reader.close()
        for v, at in acked.items():
            assert stored.get(at) == v, (v, at, stored.get(at))
        print(f"rolling restart: {len(acked)} acknowledged sends, {retried} retried (retriable errors)")
    finally:
        for n in nodes.values():
            n.stop()

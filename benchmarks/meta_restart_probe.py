"""Restart of a node whose metadata log took N entries, with and without its compaction
(docs/benchmarks.md, "Metadata compaction").  Counts and CPU time first: the machine is shared.

    python benchmarks/meta_restart_probe.py [--entries 10000] [--snapshot-entries 1000] [--workdir D]

Starts three real nodes on 127.0.0.1 (--metadata-snapshot-entries as given; 0: never),
commits about N metadata entries (InitProducerId of 100 named producers, round robin, 100 in
flight: each is one InitProducer entry), creates a topic, SIGKILLs node 2 and starts it again,
and prints: the metadata log's files on node 2 (bytes of segments, of snapshot files), the
wall time from the restart to node 2 answering with current metadata (the last topic known, an
unknown one UNKNOWN_TOPIC), and the CPU time (utime + stime, /proc) node 2 used to get there.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from test_cluster_process import formed, free_ports, node_options, start_cluster  # noqa: E402

from streamlog.testing import LineClient, ServerProcess, wait_for  # noqa: E402


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pipelined(port: int, requests: list[tuple[str, dict]]) -> list[dict]:
    """Send every request on one connection at once, then read every answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    try:
        sock.sendall(b"".join(orjson.dumps({"id": i, "method": m, "params": p}) + b"\n"
                              for i, (m, p) in enumerate(requests)))
        return [orjson.loads(reader.readline()) for _ in requests]
    finally:
        reader.close()
        sock.close()


def current_at(node: ServerProcess, topic: str) -> bool:
    try:
        c = LineClient(node.port, timeout=5)
    except OSError:
        return False
    try:
        answer = c.call("Metadata", {"topics": [topic, "no-such-topic"]}).get("result") or {}
    except (OSError, ConnectionError):
        return False
    finally:
        c.close()
    topics = answer.get("topics", [])
    return len(topics) == 2 and "error" not in topics[0] and topics[1]["error"]["code"] == "UNKNOWN_TOPIC"


def files(directory: Path) -> tuple[int, int, int]:
    segments = [p for p in directory.glob("*.log")]
    snaps = [p for p in directory.glob("*.snapshot")]
    return sum(p.stat().st_size for p in segments), len(segments), sum(p.stat().st_size for p in snaps)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--entries", type=int, default=10_000)
    p.add_argument("--snapshot-entries", type=int, default=1000)
    p.add_argument("--workdir")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="meta-restart-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = ("--metadata-snapshot-entries", str(args.snapshot_entries))
    ports = free_ports(3)
    nodes = start_cluster(work, ports, extra)
    try:
        wait_for(lambda: formed(nodes), 30, "three nodes to form a cluster")
        began, done, refused = time.monotonic(), 0, 0
        while done < args.entries:
            answers = pipelined(nodes[1].port, [("InitProducerId", {"producer_name": f"p{k}"}) for k in range(100)])
            done += len(answers)
            refused += sum(1 for a in answers if "error" in a)
        print(f"{done} InitProducerId ({refused} refused) in {time.monotonic() - began:.1f} s")
        LineClient(nodes[1].port).call("CreateTopic", {"topic": "last", "partitions": 1})
        wait_for(lambda: all(current_at(n, "last") for n in nodes.values()), 30, "every node current")
        directory = work / "n2" / "data" / "__meta" / "0"
        seg_bytes, seg_count, snap_bytes = files(directory)
        print(f"node 2 metadata log: {seg_bytes} bytes in {seg_count} segments; snapshot files {snap_bytes} bytes")
        nodes[2].signal(signal.SIGKILL)
        nodes[2].wait(10)
        start = time.monotonic()
        nodes[2] = ServerProcess(work / "n2", name="node2", extra=node_options(ports, 2, extra))
        wait_for(lambda: current_at(nodes[2], "last"), 60, "node 2 current again")
        took, cpu = time.monotonic() - start, cpu_of(nodes[2].pid)
        print(f"restart of node 2 (--metadata-snapshot-entries {args.snapshot_entries}): current after "
              f"{took:.2f} s wall, {cpu:.2f} s CPU; load {os.getloadavg()[0]:.1f}")
    finally:
        for n in nodes.values():
            n.stop()


if __name__ == "__main__":
    main()

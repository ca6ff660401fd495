"""Three real twistd nodes compacting the metadata log (--metadata-snapshot-entries 8).

Many topics are created, so every node writes metadata snapshot files and drops the metadata
log's first segments; node 2 is SIGKILLed and restarted (it starts from its snapshot and the
log after it), node 3 is SIGKILLed and its data dir wiped (it rejoins by the controller's
InstallSnapshot, the entries before the controller's log start long gone); all three end with
the same topics, and take topic administration.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

from test_cluster_process import formed, free_ports, metadata, node_options, retry, start_cluster

from streamlog.client.blocking import BlockingClient
from streamlog.storage.snapshot_files import parse_file_name
from streamlog.testing import ServerProcess, wait_for

INTERVAL = 8
EXTRA = ("--metadata-snapshot-entries", str(INTERVAL))


def meta_dir(tmp_path: Path, i: int) -> Path:
    return tmp_path / f"n{i}" / "data" / "__meta" / "0"


def snapshots(tmp_path: Path, i: int) -> list[int]:
    return sorted(i for p in meta_dir(tmp_path, i).iterdir() if (i := parse_file_name(p.name)) is not None)


def first_segment(tmp_path: Path, i: int) -> int:
    return min(int(p.name[:20]) for p in meta_dir(tmp_path, i).glob("*.log"))


def topics_at(node: ServerProcess) -> set[str]:
    answer = metadata(node)
    return {t["topic"] for t in (answer or {}).get("topics", []) if "error" not in t}


def create(client: BlockingClient, names: list[str]) -> None:
    for name in names:
        retry(lambda name=name: client.call("CreateTopic", {"topic": name, "partitions": 1}), time.monotonic() + 20)


def test_nodes_compact_the_metadata_log_restart_from_snapshots_and_a_wiped_node_installs_one(tmp_path):
    ports = free_ports(3)
    nodes = start_cluster(tmp_path, ports, EXTRA)
    names: list[str] = []
    try:
        wait_for(lambda: formed(nodes), 30, "three nodes to form a cluster")
        bootstrap = ",".join(n.address for n in nodes.values())
        with BlockingClient(bootstrap, timeout=10) as client:
            names += [f"t{k}" for k in range(30)]
            create(client, names)
        wait_for(lambda: all(topics_at(n) == set(names) for n in nodes.values()), 30, "every node to know 30 topics")
        wait_for(lambda: all(len(snapshots(tmp_path, i)) == 2 and first_segment(tmp_path, i) > 1 for i in nodes),
                 20, "every node to hold two snapshots and no longer the metadata log's first entries")

        # Node 2: SIGKILL, more topics meanwhile, restarted on its data dir.
        nodes[2].signal(signal.SIGKILL)
        nodes[2].wait(10)
        with BlockingClient(",".join(nodes[i].address for i in (1, 3)), timeout=10) as client:
            names += [f"while-2-down-{k}" for k in range(10)]
            create(client, names[-10:])
        nodes[2] = ServerProcess(tmp_path / "n2", name="node2", extra=node_options(ports, 2, EXTRA))
        wait_for(lambda: topics_at(nodes[2]) == set(names), 30, "the restarted node 2 to know every topic")
        assert "metadata restored from its snapshot as of entry" in nodes[2].log()

        # Node 3: SIGKILL, data dir wiped, more topics (and snapshots) meanwhile, started again.
        nodes[3].signal(signal.SIGKILL)
        nodes[3].wait(10)
        shutil.rmtree(tmp_path / "n3" / "data")
        with BlockingClient(",".join(nodes[i].address for i in (1, 2)), timeout=10) as client:
            names += [f"while-3-away-{k}" for k in range(2 * INTERVAL)]
            create(client, names[-2 * INTERVAL:])
        wait_for(lambda: all(first_segment(tmp_path, i) > 1 for i in (1, 2)), 20, "compacted logs on 1 and 2")
        nodes[3] = ServerProcess(tmp_path / "n3", name="node3", extra=node_options(ports, 3, EXTRA))
        wait_for(lambda: topics_at(nodes[3]) == set(names), 60, "the wiped node 3 to know every topic")
        log = nodes[3].log()
        assert "joining cluster" in log and "installed the controller's metadata snapshot as of entry" in log
        assert snapshots(tmp_path, 3) and first_segment(tmp_path, 3) > 1  # it never held the first entries

        # All converge, and the cluster still takes topic administration.
        with BlockingClient(",".join(n.address for n in nodes.values()), timeout=10) as client:
            create(client, ["last"])
        names.append("last")
        wait_for(lambda: all(topics_at(n) == set(names) for n in nodes.values()), 30, "every node to know every topic")
    finally:
        for n in nodes.values():
            n.stop()

"""`streamlog cluster status` against the fake cluster on real sockets (threaded_cluster)."""

from __future__ import annotations

import socket

import orjson
import pytest
from threaded_cluster import ThreadedCluster

from streamlog import cli, errors


@pytest.fixture
def cluster():
    c = ThreadedCluster(nodes=3)
    c.fake.create_topic("orders", 3)  # leaders 1, 2, 3; replicas all three
    c.fake.create_topic("audit", 1, leaders=[2])
    yield c
    c.close()


def status(capsys, *args):
    code = cli.main(["cluster", "status", "--timeout", "2", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(out, first):
    """The table rows that follow the header line starting with C{first}, as lists of cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    table = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        table.append(line.split())
    return table


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_shows_cluster_controller_nodes_and_partitions(cluster, capsys):
    with cluster.lock:
        cluster.fake.controller = 2
    code, out, _ = status(capsys, "--connect", cluster.bootstrap)
    assert code == 0
    addresses = cluster.bootstrap.split(",")
    assert out.splitlines()[0] == f"cluster fake-cluster  (metadata from {addresses[0]})"
    assert f"controller: node 2 ({addresses[1]})" in out
    nodes = rows(out, "NODE")
    assert [r[:3] for r in nodes] == [[str(i + 1), addresses[i], "yes"] for i in range(3)]
    assert all(r[3] == "ok" and r[5] == "ms" for r in nodes)
    parts = rows(out, "TOPIC")
    assert parts == [["audit", "0", "2", "1", "2,1,3", "2,1,3", "-"],
                     ["orders", "0", "1", "1", "1,2,3", "1,2,3", "-"],
                     ["orders", "1", "2", "1", "2,1,3", "2,1,3", "-"],
                     ["orders", "2", "3", "1", "3,1,2", "3,1,2", "-"]]  # no leader gave offsets: lag unknown
    assert "4 partition(s) in 2 topic(s): 0 under-replicated" in out
    with cluster.lock:  # one Metadata (all topics), then one Ping and one Metadata per node
        assert sorted(n for n, _ in cluster.fake.sent("Metadata")) == [1, 1, 2, 3]
        assert cluster.fake.sent("Metadata")[0][1] == {}
        assert sorted(n for n, _ in cluster.fake.sent("Ping")) == [1, 2, 3]


def test_status_json_is_one_document_with_the_metadata_and_the_pings(cluster, capsys):
    with cluster.lock:
        cluster.fake.topics["orders"][1].isr = [2]
        cluster.fake.move_leader("audit", 0, None)
    code, out, _ = status(capsys, "--connect", cluster.bootstrap, "--json")
    assert code == 0
    assert len(out.splitlines()) == 1
    doc = orjson.loads(out)
    with cluster.lock:
        expected = cluster.fake.metadata()
    assert doc["cluster_id"] == "fake-cluster" and doc["controller"] == 1
    assert doc["answered_by"] == cluster.bootstrap.split(",")[0]
    assert [{k: n[k] for k in ("node_id", "address", "up")} for n in doc["nodes"]] == expected["nodes"]
    assert all(n["ping"]["ok"] and n["ping"]["ms"] > 0 and n["ping"]["version"] == "fake" for n in doc["nodes"])
    by_topic = {t["topic"]: t for t in doc["topics"]}
    for t in expected["topics"]:
        got = by_topic[t["topic"]]
        assert got["topic_id"] == t["topic_id"]
        assert [{k: p[k] for k in ("partition", "leader", "leader_term", "replicas", "isr")}
                for p in got["partitions"]] == t["partitions"]
    flags = {(t["topic"], p["partition"]): p["under_replicated"] for t in doc["topics"] for p in t["partitions"]}
    assert flags == {("orders", 0): False, ("orders", 1): True, ("orders", 2): False, ("audit", 0): True}


def test_a_node_that_is_down_is_shown_down_and_not_answering(cluster, capsys):
    cluster.kill(3)
    with cluster.lock:
        cluster.fake.topics["orders"][0].isr = [1, 2]
        cluster.fake.move_leader("orders", 2, 1)
    code, out, _ = status(capsys, "--connect", cluster.bootstrap)
    assert code == 0
    nodes = {r[0]: r for r in rows(out, "NODE")}
    assert nodes["1"][2:4] == ["yes", "ok"] and nodes["2"][2:4] == ["yes", "ok"]
    assert nodes["3"][2] == "no"
    assert nodes["3"][3] == "no:"  # then why: refused, or reset (the fake's listener may accept, then close)
    parts = {(r[0], r[1]): r for r in rows(out, "TOPIC")}
    assert parts[("orders", "0")][5] == "1,2"
    assert parts[("orders", "2")][2:4] == ["1", "2"]  # the new leader, in a new term
    assert "4 partition(s) in 2 topic(s): 1 under-replicated" in out

    code, out, _ = status(capsys, "--connect", cluster.bootstrap, "--json")
    ping = {n["node_id"]: n["ping"] for n in orjson.loads(out)["nodes"]}
    assert ping[3]["ok"] is False and ping[3]["ms"] is None and ping[3]["error"]
    assert ping[1]["ok"] and ping[2]["ok"]


def test_no_controller_and_a_partition_without_leader_are_shown_as_none(cluster, capsys):
    with cluster.lock:
        cluster.fake.controller = None
        cluster.fake.move_leader("audit", 0, None)
    code, out, _ = status(capsys, "--connect", cluster.bootstrap)
    assert code == 0
    assert "controller: none (the metadata group is electing one)" in out
    assert rows(out, "TOPIC")[0] == ["audit", "0", "none", "2", "2,1,3", "2,1,3", "-"]
    assert "1 under-replicated (in-sync replicas fewer than replicas, or no leader), 1 without a leader" in out


def test_a_bootstrap_node_that_is_down_is_passed_over(cluster, capsys):
    cluster.kill(1)
    code, out, _ = status(capsys, "--connect", cluster.bootstrap)
    assert code == 0
    assert f"(metadata from {cluster.bootstrap.split(',')[1]})" in out.splitlines()[0]
    assert rows(out, "NODE")[0][2:4] == ["no", "no:"]


def test_a_node_that_refuses_metadata_is_passed_over(cluster, capsys):
    with cluster.lock:
        cluster.fake.nodes[1].faults["Metadata"] = lambda params: errors.ShuttingDown("stopping")
    code, out, _ = status(capsys, "--connect", cluster.bootstrap)
    assert code == 0
    assert f"(metadata from {cluster.bootstrap.split(',')[1]})" in out


def test_nothing_reachable_is_one_clear_line_and_exit_1(capsys):
    ports = [free_port(), free_port()]
    connect = ",".join(f"127.0.0.1:{p}" for p in ports)
    code, out, err = status(capsys, "--connect", connect)
    assert code == 1 and out == ""
    assert err == (f"error: no node answered Metadata: 127.0.0.1:{ports[0]}: Connection refused; "
                   f"127.0.0.1:{ports[1]}: Connection refused\n")


def test_without_connect_it_asks_the_nodes_of_a_default_cluster_up(capsys, monkeypatch):
    monkeypatch.delenv("STREAMLOG_CONNECT", raising=False)
    asked = []

    def fake_gather(bootstrap, timeout, connect_timeout):
        assert connect_timeout == 10.0  # the CLI's --connect-timeout default, passed on
        asked.append(bootstrap)
        from streamlog.cli_cluster import NoMetadata

        raise NoMetadata("no node answered Metadata: (test)")

    monkeypatch.setattr("streamlog.cli_cluster.gather_status", fake_gather)
    code, _, err = status(capsys)
    assert code == 1
    assert asked == [["127.0.0.1:7071", "127.0.0.1:7072", "127.0.0.1:7073", "127.0.0.1:7070"]]
    assert "no --connect given" in err


def test_a_node_from_before_clusters_gets_a_clear_message(cluster, capsys):
    only = cluster.bootstrap.split(",")[0]
    with cluster.lock:
        cluster.fake.nodes[1].faults["Metadata"] = lambda params: errors.MethodNotFound(
            "unknown method 'Metadata'", method="Metadata")
    code, out, err = status(capsys, "--connect", only)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {only} is a single node of a streamlog from before clusters "
                          f"(Metadata is METHOD_NOT_FOUND)")
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_status_with_no_topics_says_so(capsys):
    c = ThreadedCluster(nodes=1)
    try:
        code, out, _ = status(capsys, "--connect", c.bootstrap)
    finally:
        c.close()
    assert code == 0
    assert out.rstrip().endswith("no topics")
    assert "TOPIC" not in out


def test_lag_comes_from_each_partitions_leader_per_replica(cluster, capsys):
    with cluster.lock:
        cluster.fake.topics["orders"][1].log_ends = {1: 40, 2: 52, 3: 52}  # led by node 2: node 1 is 12 behind
        cluster.fake.topics["orders"][2].log_ends = {1: 7, 2: 7, 3: 7}  # led by node 3: in sync
    code, out, _ = status(capsys, "--connect", cluster.bootstrap)
    assert code == 0
    parts = {(r[0], r[1]): r for r in rows(out, "TOPIC")}
    assert parts[("orders", "1")][6] == "1:12,3:0"
    assert parts[("orders", "2")][6] == "0"
    assert parts[("orders", "0")][6] == "-"  # its leader gave no offsets
    code, out, _ = status(capsys, "--connect", cluster.bootstrap, "--json")
    by = {(t["topic"], p["partition"]): p for t in orjson.loads(out)["topics"] for p in t["partitions"]}
    assert by[("orders", 1)]["lag"] == {"2": 0, "1": 12, "3": 0}
    assert by[("orders", 1)]["replica_offsets"][0] == {"node_id": 1, "match_index": 40, "log_end_offset": 40}
    assert by[("orders", 0)]["lag"] is None and by[("orders", 0)]["replica_offsets"] == []

"""`streamlog cluster status` and the client at a real node started without --peers."""

from __future__ import annotations

import pytest

from streamlog import cli
from streamlog.client import BlockingClient
from streamlog.testing import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("lone"), ["--storage", "memory", "--node-id", "4"])
    yield s
    s.stop()


def test_status_of_a_node_alone_shows_it_leading_every_partition(server, capsys):
    with BlockingClient(server.address, timeout=10) as c:
        c.create_topic("lone-status", partitions=2)
        metadata = c.call("Metadata", {})
        c.send("lone-status", "x", partition=1)  # the client treats it as the only node
    assert metadata["nodes"] == [{"node_id": 4, "address": server.address, "up": True}]
    assert metadata["controller"] == 4 and metadata["alone"] is True
    code = cli.main(["cluster", "status", "--timeout", "5", "--connect", server.address])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("a node alone (started without --peers: a cluster of one)")
    assert "controller: node 4 (" + server.address + ")" in out
    rows = [line.split() for line in lines if line.startswith("lone-status")]
    assert [r[:3] for r in rows] == [["lone-status", "0", "4"], ["lone-status", "1", "4"]]
    assert all(r[4] == "4" and r[5] == "4" and r[6] == "0" for r in rows)  # replicas, isr, lag
    assert "0 under-replicated" in out

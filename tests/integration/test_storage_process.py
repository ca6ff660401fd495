"""The real server's storage at its edges: file-name limits, storage faults, file descriptors."""

from __future__ import annotations

import os
import signal

from streamlog.testing import LineClient, ServerProcess

LONGEST = "a" * 249


def test_the_longest_topic_name_lives_through_rolls_restarts_and_its_deletion(tmp_path, daemons):
    server = ServerProcess(tmp_path, ["--segment-bytes", "1024"])
    daemons.append(server)
    client = LineClient(server.port)
    # Auto-created by its first Send, then enough sends to roll several segments.
    for i in range(40):
        assert client.call("Send", {"topic": LONGEST, "value": "x" * 40 + str(i)})["result"]["offset"] == i
    client.close()
    partition = tmp_path / "data" / LONGEST / "0"
    assert len([n for n in os.listdir(partition) if n.endswith(".log")]) >= 3
    server.signal(signal.SIGTERM)
    assert server.wait(10) == -signal.SIGTERM  # a clean stop writes the final checkpoint

    server = ServerProcess(tmp_path, ["--segment-bytes", "1024"])
    daemons.append(server)
    client = LineClient(server.port)
    messages = client.call("Poll", {"topic": LONGEST, "offset": 0})["result"]["messages"]
    assert [m["value"] for m in messages] == ["x" * 40 + str(i) for i in range(40)]
    assert client.call("DeleteTopic", {"topic": LONGEST})["result"] == {"topic": LONGEST, "deleted": True}
    assert client.call("Ping")["result"]["pong"]
    assert server.alive()
    # Deleted for good: gone from the node, from the disk, and after a restart.
    assert client.call("ListTopics")["result"]["topics"] == []
    assert os.listdir(tmp_path / "data") == []
    client.close()
    server.signal(signal.SIGKILL)
    server.wait(10)

    server = ServerProcess(tmp_path)
    daemons.append(server)
    client = LineClient(server.port)
    assert client.call("ListTopics")["result"]["topics"] == []
    client.close()
    assert "Traceback" not in server.log()

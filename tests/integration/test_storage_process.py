"""The real server's storage at its edges: file-name limits, storage faults, file descriptors."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time

from streamlog.storage.descriptors import partitions_within
from streamlog.testing import TWISTD, LineClient, ServerProcess, child_env, wait_for

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
    assert os.listdir(tmp_path / "data") == ["hardstate"]  # (the node's Raft terms and votes stay)
    client.close()
    server.signal(signal.SIGKILL)
    server.wait(10)

    server = ServerProcess(tmp_path)
    daemons.append(server)
    client = LineClient(server.port)
    assert client.call("ListTopics")["result"]["topics"] == []
    client.close()
    assert "Traceback" not in server.log()


OPEN_FILES = 400  # the child's open-file limit, soft and hard (the server cannot raise it)
SMALL = ["--max-connections", "20", "--read-file-cache", "16", "--segment-bytes", "1024", "--default-partitions", "10"]


def small_open_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def fds(server: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{server.pid}/fd"))


def test_creating_partitions_until_refused_never_fails_leaks_or_stalls(tmp_path, daemons):
    server = ServerProcess(tmp_path, SMALL, preexec_fn=small_open_file_limit)
    daemons.append(server)
    room = partitions_within(OPEN_FILES, 20, 16)
    assert "this node takes at most" in wait_for(lambda: "open-file limit" in server.log() and server.log(), 10, "the cap warning")
    client = LineClient(server.port)
    created = 0
    refusal = None
    for i in range(room // 10 + 5):  # bounded: past the cap within a few
        answer = client.call("CreateTopic", {"topic": f"t{i}", "partitions": 10})
        if "error" in answer:
            refusal = answer["error"]
            break
        created += 10
    assert refusal is not None and refusal["code"] == "TOO_MANY_PARTITIONS", refusal
    assert (refusal["limit"], refusal["partitions"]) == (room, created)
    assert created > room - 10

    # A refused create opens nothing; an auto-created topic is refused alike.
    before = fds(server)
    assert client.call("CreateTopic", {"topic": "more", "partitions": 10})["error"]["code"] == "TOO_MANY_PARTITIONS"
    assert client.call("Send", {"topic": "auto", "value": 1})["error"]["code"] == "TOO_MANY_PARTITIONS"
    assert fds(server) == before

    # The node still has room to work: a fresh client answers at once, and sends roll segments.
    fresh = LineClient(server.port)
    started = time.monotonic()
    assert fresh.call("Ping")["result"]["pong"]
    assert time.monotonic() - started < 1.0
    for topic in range(created // 10):
        for i in range(30):  # ~60-byte records in 1 KiB segments: a few rolls per topic
            ack = fresh.call("Send", {"topic": f"t{topic}", "partition": i % 3, "value": "y" * 40})
            assert "result" in ack, ack
    assert fds(server) <= OPEN_FILES - 100
    fresh.close()
    client.close()
    assert "Traceback" not in server.log()
    server.signal(signal.SIGTERM)
    assert server.wait(20) == -signal.SIGTERM

    # Every partition comes back under the same limit.
    server = ServerProcess(tmp_path, SMALL, preexec_fn=small_open_file_limit)
    daemons.append(server)
    client = LineClient(server.port)
    topics = client.call("ListTopics")["result"]["topics"]
    assert sum(t["partitions"] for t in topics) == created
    for topic in range(created // 10):
        messages = client.call("Poll", {"topic": f"t{topic}", "partition": 1, "offset": 0})["result"]["messages"]
        assert len(messages) == 10
    assert client.call("CreateTopic", {"topic": "more", "partitions": 10})["error"]["code"] == "TOO_MANY_PARTITIONS"
    client.close()
    assert "Traceback" not in server.log()


def test_a_data_dir_that_cannot_be_written_stops_the_node_at_the_first_create(tmp_path, daemons):
    server = ServerProcess(tmp_path)
    daemons.append(server)
    client = LineClient(server.port)
    assert client.call("Send", {"topic": "before", "value": 1})["result"]["durability"] == "fsync"
    data = tmp_path / "data"
    # Read-only for root too (the tests may run as root, which chmod does not stop).
    subprocess.run(["chattr", "+i", str(data)], check=True)
    try:
        try:
            answer = client.call("CreateTopic", {"topic": "after", "partitions": 2})
        except ConnectionError:
            pass  # fail_stop exits at once, usually before the STORAGE_ERROR answer is written
        else:
            assert answer["error"]["code"] == "STORAGE_ERROR", answer
        assert server.wait(10) == 70  # fail-stop, as for a failed append
    finally:
        subprocess.run(["chattr", "-i", str(data)], check=True)
    client.close()
    assert "creating topic 'after' failed" in server.log()
    server = ServerProcess(tmp_path)  # what was acknowledged is there; the failed create is not
    daemons.append(server)
    client = LineClient(server.port)
    assert [t["topic"] for t in client.call("ListTopics")["result"]["topics"]] == ["before"]
    client.close()


def test_a_damaged_topic_file_stops_the_start_with_one_line(tmp_path, daemons):
    server = ServerProcess(tmp_path)
    daemons.append(server)
    client = LineClient(server.port)
    assert "result" in client.call("Send", {"topic": "t", "value": 1})
    client.close()
    server.signal(signal.SIGTERM)
    server.wait(10)
    topic_file = tmp_path / "data" / "t" / "topic.json"
    topic_file.write_bytes(topic_file.read_bytes()[:10])
    process = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "streamlog-server", "--listen", "tcp:0:interface=127.0.0.1",
         "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=child_env(), capture_output=True, timeout=30,
    )
    assert process.returncode != 0
    lines = process.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and str(topic_file) in lines[0] and "restore it" in lines[0], process.stderr
    assert b"Traceback" not in process.stdout + process.stderr
    assert topic_file.read_bytes()  # left for the operator, never removed

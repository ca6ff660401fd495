"""The real server's storage at its edges: file-name limits, storage faults, file descriptors."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time

import orjson
import pytest

from streamlog import wire
from streamlog.storage.descriptors import plan
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
    # The lock stays (it is the server's), and so do the node's Raft terms and votes.
    assert sorted(os.listdir(tmp_path / "data")) == [".lock", "hardstate"]
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


def settled_fds(server: ServerProcess) -> int:
    """The descriptors open once the node's background work is quiet: a new partition's first
    entry (its leader's no-op) is synced and checkpointed by the sync workers, which open a
    .tmp file and index files for a moment."""
    seen: list[int] = []

    def quiet() -> int | None:
        d = f"/proc/{server.pid}/fd"
        links = []
        for name in os.listdir(d):
            try:
                links.append(os.readlink(f"{d}/{name}"))
            except OSError:
                pass
        seen.append(-1 if any(link.endswith(".tmp") for link in links) else len(links))
        time.sleep(0.1)
        return seen[-1] if len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3] != -1 else None

    return int(wait_for(quiet, 10, "the background checkpoints to finish"))


def test_creating_partitions_until_refused_never_fails_leaks_or_stalls(tmp_path, daemons):
    server = ServerProcess(tmp_path, SMALL, preexec_fn=small_open_file_limit)
    daemons.append(server)
    room = plan(OPEN_FILES, 20, 16, 4096).partitions  # 400 files: connections and read cache as asked, 11 rolled
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
    before = settled_fds(server)
    assert client.call("CreateTopic", {"topic": "more", "partitions": 10})["error"]["code"] == "TOO_MANY_PARTITIONS"
    assert client.call("Send", {"topic": "auto", "value": 1})["error"]["code"] == "TOO_MANY_PARTITIONS"
    assert settled_fds(server) <= before  # nothing opened and kept (background work may close files)

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
    # The storage's own line (the failed write reaches fail_stop before any caller's message).
    assert f"streamlog stops because storage failed: creation of {data / 'after'} failed" in server.log()
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


def test_a_topic_name_taken_by_a_file_or_foreign_data_in_the_data_dir_is_refused_not_fatal(tmp_path, daemons):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("hi\n")  # the review's repro: this stopped the node (exit 70)
    (data / "twistd.pid").write_text("4242\n")  # twistd's own file, a valid topic name
    server = ServerProcess(tmp_path)
    daemons.append(server)
    client = LineClient(server.port)
    refused = client.call("CreateTopic", {"topic": "notes.txt"})["error"]
    assert refused["code"] == "INVALID_TOPIC" and "taken by a file" in refused["message"], refused
    refused = client.call("Send", {"topic": "twistd.pid", "value": 1})["error"]  # auto-creation alike
    assert refused["code"] == "INVALID_TOPIC", refused
    # An operator's copy that appears after start-up, without its topic.json: not removed.
    (data / "copy" / "0").mkdir(parents=True)
    (data / "copy" / "0" / "00000000000000000000.log").write_bytes(b"precious")
    assert client.call("CreateTopic", {"topic": "copy"})["error"]["code"] == "INVALID_TOPIC"
    assert client.call("Send", {"topic": "fine", "value": 1})["result"]["offset"] == 0
    assert client.call("Ping")["result"]["pong"] and server.alive()
    assert (data / "notes.txt").read_text() == "hi\n" and (data / "twistd.pid").read_text() == "4242\n"
    assert (data / "copy" / "0" / "00000000000000000000.log").read_bytes() == b"precious"
    client.close()
    assert "Traceback" not in server.log()


ROLL_FILES = 2000  # the review's smaller repro: under ulimit -n 2000, 500 partitions, two SendBatches stopped the node
ROLLING = ["--max-connections", "20", "--read-file-cache", "16", "--segment-bytes", "1024"]


def roll_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (ROLL_FILES, ROLL_FILES))


def test_pipelined_sends_rolling_every_partition_at_the_cap_never_run_the_node_out_of_descriptors(tmp_path, daemons):
    server = ServerProcess(tmp_path, ROLLING, preexec_fn=roll_file_limit)
    daemons.append(server)
    client = LineClient(server.port, timeout=60)
    topics = 0
    while topics < 10:  # bounded: the cap is hundreds of partitions, not thousands
        answer = client.call("CreateTopic", {"topic": f"t{topics}", "partitions": 100})
        if "error" in answer:
            assert answer["error"]["code"] == "TOO_MANY_PARTITIONS", answer
            break
        topics += 1
    assert topics >= 2
    # Each message is ~800 bytes in 1 KiB segments: every batch after the first rolls every
    # partition it touches.  Sent back to back without waiting; the acks=leader ones never wait
    # for a sync either, so rolled segments pile up faster than syncs close them.
    rounds = [("leader", r) for r in range(3)] + [("all", r) for r in range(3, 5)]
    requests = []
    for acks, r in rounds:
        for t in range(topics):
            messages = [{"partition": p, "value": f"{r}:" + "v" * 780} for p in range(100)]
            requests.append(wire.encode_request(len(requests), "SendBatch",
                                                {"topic": f"t{t}", "messages": messages, "acks": acks}))
    client.sock.sendall(b"".join(requests))
    answers = [orjson.loads(client.reader.readline()) for _ in requests]
    errors = [a["error"] for a in answers if "error" in a]
    assert errors == [], errors[:3]  # was: "roll failed: [Errno 24] Too many open files", exit 70
    assert server.alive()
    assert fds(server) < ROLL_FILES
    messages = client.call("Poll", {"topic": "t0", "partition": 99, "offset": 0})["result"]["messages"]
    assert [m["value"][:2] for m in messages] == [f"{r}:" for _, r in rounds]
    client.close()
    assert "Traceback" not in server.log() and "Too many open files" not in server.log()
    server.signal(signal.SIGTERM)
    assert server.wait(30) == -signal.SIGTERM
    server = ServerProcess(tmp_path, ROLLING, preexec_fn=roll_file_limit)  # all of it comes back
    daemons.append(server)
    client = LineClient(server.port)
    for t in range(topics):
        ends = [p["log_end_offset"] for p in client.call("DescribeTopic", {"topic": f"t{t}"})["result"]["partitions"]]
        assert ends == [len(rounds)] * 100
    client.close()


def test_a_hard_open_file_limit_of_1024_with_the_defaults_still_serves_topics(tmp_path, daemons):
    # The review: --max-connections 1024 and --read-file-cache 1024 left no room under 1,024
    # files: "holds 0 partitions", then every topic was refused.
    def limit_1024() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    server = ServerProcess(tmp_path, preexec_fn=limit_1024)
    daemons.append(server)
    fitted = plan(1024, 1024, 1024, 4096)
    warning = wait_for(lambda: "open-file limit" in server.log() and server.log(), 10, "the warning")
    assert f"this node takes at most {fitted.partitions} partitions" in warning
    assert f"{fitted.connections} connections and {fitted.read_files} cached read files" in warning
    client = LineClient(server.port)
    assert client.call("CreateTopic", {"topic": "t", "partitions": 100})["result"]["topic"] == "t"
    assert client.call("Send", {"topic": "t", "value": 1})["result"]["durability"] == "fsync"
    refused = client.call("CreateTopic", {"topic": "u", "partitions": 100})["error"]
    assert refused["code"] == "TOO_MANY_PARTITIONS" and refused["limit"] == fitted.partitions
    client.close()


def test_an_open_file_limit_too_low_for_a_useful_node_refuses_to_start_with_one_line(tmp_path):
    def limit_300() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    process = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "streamlog-server", "--listen", "tcp:0:interface=127.0.0.1",
         "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=child_env(), capture_output=True, timeout=30, preexec_fn=limit_300,
    )
    assert process.returncode == 1, process
    lines = process.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "open-file limit (300) is too low" in lines[0] and "at least 509" in lines[0], lines
    assert b"Traceback" not in process.stdout + process.stderr
    assert not (tmp_path / "data" / ".lock").exists()  # refused before it locked anything


SITE_EIO = '''
import errno, os
_suffix = os.environ.get("STREAMLOG_TEST_EIO_SUFFIX")
if _suffix:
    _real = os.fdatasync
    def _fdatasync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(_suffix):
            raise OSError(errno.EIO, "Input/output error")
        _real(fd)
    os.fdatasync = _fdatasync
'''


@pytest.mark.parametrize("suffix, method, params", [
    # On the reactor thread, in a handler that answered an error and went on before.
    ("producer-ids.json.tmp", "InitProducerId", {"producer_name": "p"}),
    # In a sync worker (the group commit): the line is logged from that thread, then exit 70.
    ("00000000000000000001.log", "Send", {"topic": "later", "value": 2}),
])
def test_a_failed_fsync_stops_the_process_with_70_naming_the_file_and_errno(tmp_path, daemons, monkeypatch,
                                                                             suffix, method, params):
    """EIO for one file's fdatasync, injected by a sitecustomize in the server process."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_EIO)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("STREAMLOG_TEST_EIO_SUFFIX", suffix)
    server = ServerProcess(tmp_path)
    daemons.append(server)
    client = LineClient(server.port)
    assert "result" in client.call("ListTopics")
    with pytest.raises(ConnectionError):  # fail_stop exits at once: no answer at all, not even an error
        client.call(method, params)
    assert server.wait(10) == 70
    client.close()
    log = server.log()
    assert "streamlog stops because storage failed: fsync of" in log and suffix in log and "(EIO)" in log

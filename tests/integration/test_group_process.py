"""Consumer groups in real processes: commits and membership survive a restart (SIGTERM and SIGKILL)."""

from __future__ import annotations

import signal

from streamlog.testing import LineClient, ServerProcess, wait_for


def _ok(answer):
    assert "result" in answer, answer
    return answer["result"]


def _fetch(port):
    """FetchOffsets once the restarted node coordinates again (its offsets partition elected)."""
    def attempt():
        client = LineClient(port)
        try:
            answer = client.call("FetchOffsets", {"group": "billing"})
        finally:
            client.close()
        if "error" in answer and answer["error"]["code"] == "COORDINATOR_NOT_AVAILABLE":
            return None
        return _ok(answer)["offsets"]
    return wait_for(attempt, 20, "the coordinator to answer after the restart")


def test_commits_survive_a_restart_and_a_kill(tmp_path, daemons):
    server = ServerProcess(tmp_path, ["--offsets-partitions", "2", "--group-min-session-timeout-ms", "500"])
    daemons.append(server)
    client = LineClient(server.port)
    _ok(client.call("CreateTopic", {"topic": "orders", "partitions": 2}))
    member = _ok(client.call("JoinGroup", {"group": "billing", "topics": ["orders"], "session_timeout_ms": 1000}))
    commit = {"group": "billing", "member_id": member["member_id"], "generation": member["generation"]}
    _ok(client.call("CommitOffsets", {**commit, "offsets": [{"topic": "orders", "partition": 0, "offset": 7}]}))
    _ok(client.call("CommitOffsets", {**commit, "offsets": [{"topic": "orders", "partition": 1, "offset": 3,
                                                             "metadata": "m"}]}))
    # A second member starts generation 2: a commit still at generation 1 is refused.
    second = _ok(client.call("JoinGroup", {"group": "billing", "topics": ["orders"], "session_timeout_ms": 1000}))
    assert second["generation"] == member["generation"] + 1
    _ok(client.call("Heartbeat", {"group": "billing", "member_id": member["member_id"],
                                  "owned": member["assignment"]}))
    stale = client.call("CommitOffsets", {**commit, "offsets": [{"topic": "orders", "partition": 0, "offset": 8}]})
    assert stale["error"]["code"] == "STALE_GENERATION" and stale["error"]["generation"] == second["generation"]
    client.close()
    server.stop()
    assert "Server Shut Down" in server.log()

    again = ServerProcess(tmp_path, ["--offsets-partitions", "2"], name="again")
    daemons.append(again)
    offsets = _fetch(again.port)
    assert [(o["partition"], o["offset"], o["metadata"]) for o in offsets] == [(0, 7, None), (1, 3, "m")]
    # Membership is kept too (in the offsets topic): the member is known after the restart, its
    # generation-1 commit is still stale, and one at the generation it was given goes through.
    client = LineClient(again.port)
    stale = client.call("CommitOffsets", {**commit, "offsets": [{"topic": "orders", "partition": 0, "offset": 9}]})
    assert stale["error"]["code"] == "STALE_GENERATION"
    # An acknowledged commit survives a SIGKILL too (acks=all: fsynced before the answer).
    _ok(client.call("CommitOffsets", {**commit, "generation": second["generation"], "offsets": [
        {"topic": "orders", "partition": 0, "offset": 11}]}))
    client.close()
    again.signal(signal.SIGKILL)
    again.wait(10)

    third = ServerProcess(tmp_path, name="third")
    daemons.append(third)
    offsets = _fetch(third.port)
    assert [(o["partition"], o["offset"]) for o in offsets] == [(0, 11), (1, 3)]


def _cli(capsys, server, *argv):
    from streamlog import cli

    status = cli.main(["--connect", server.address, *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_the_groups_cli_lists_describes_resets_and_deletes(tmp_path, daemons, capsys):
    import orjson

    server = ServerProcess(tmp_path, ["--storage", "memory"])
    daemons.append(server)
    client = LineClient(server.port)
    _ok(client.call("CreateTopic", {"topic": "orders", "partitions": 2}))
    for i in range(10):
        _ok(client.call("Send", {"topic": "orders", "partition": 0, "value": i}))
    # Looking before any group exists creates nothing (no offsets topic).
    status, _, err = _cli(capsys, server, "groups", "describe", "billing")
    assert status == 1 and "UNKNOWN_GROUP" in err
    status, out, _ = _cli(capsys, server, "groups", "reset", "billing", "-t", "orders", "--to-latest", "--dry-run")
    assert status == 0 and out.splitlines() == ["would move billing orders/0: - -> 10",
                                                "would move billing orders/1: - -> 0"]
    status, _, err = _cli(capsys, server, "groups", "delete", "billing")
    assert status == 1 and "UNKNOWN_GROUP" in err
    assert [t["topic"] for t in _ok(client.call("ListTopics", {}))["topics"]] == ["orders"]
    _ok(client.call("CommitOffsets", {"group": "billing", "offsets": [{"topic": "orders", "partition": 0,
                                                                       "offset": 6}]}))
    member = _ok(client.call("JoinGroup", {"group": "billing", "topics": ["orders"], "session_timeout_ms": 60000}))

    status, out, _ = _cli(capsys, server, "groups", "list")
    assert status == 0 and out.split("\n")[1].split() == ["billing", "stable", "1"]
    status, out, _ = _cli(capsys, server, "groups", "describe", "billing")
    assert status == 0 and "holds orders:0,1" in out
    assert [line.split() for line in out.splitlines() if line.startswith("orders")][0] == ["orders", "0", "6", "10", "4"]
    status, _, err = _cli(capsys, server, "groups", "reset", "billing", "--topic", "orders", "--to-earliest")
    assert status == 1 and "GROUP_NOT_EMPTY" in err

    _ok(client.call("LeaveGroup", {"group": "billing", "member_id": member["member_id"]}))
    status, out, _ = _cli(capsys, server, "groups", "reset", "billing", "-t", "orders", "-p", "0", "--shift-by",
                          "-2", "--dry-run")
    assert status == 0 and out.strip() == "would move billing orders/0: 6 -> 4"
    status, out, _ = _cli(capsys, server, "--json", "groups", "reset", "billing", "-t", "orders", "--to-latest")
    assert status == 0 and orjson.loads(out)["offsets"] == [
        {"topic": "orders", "partition": 0, "offset": 10, "previous": 6},
        {"topic": "orders", "partition": 1, "offset": 0, "previous": None}]
    status, out, _ = _cli(capsys, server, "groups", "delete", "billing")
    assert status == 0 and out.strip() == "deleted group billing"
    status, out, _ = _cli(capsys, server, "groups", "list")
    assert out.strip() == "no groups"
    client.close()


def test_three_members_share_six_partitions_and_a_killed_ones_move_without_a_gap(tmp_path, daemons):
    import os
    import subprocess
    import sys
    import time

    from streamlog.testing import child_env

    server = ServerProcess(tmp_path, ["--storage", "memory", "--group-heartbeat-interval-ms", "300"])
    daemons.append(server)
    client = LineClient(server.port)
    _ok(client.call("CreateTopic", {"topic": "jobs", "partitions": 6}))

    def produce(first, count):
        for p in range(6):
            _ok(client.call("SendBatch", {"topic": "jobs", "messages": [
                {"value": i, "partition": p} for i in range(first, first + count) if i % 6 == p]}))

    produce(0, 600)
    script = os.path.join(os.path.dirname(__file__), "group_member.py")
    members = []
    try:
        for i in range(3):
            out = tmp_path / f"member{i}.txt"
            members.append((subprocess.Popen([sys.executable, script, server.address, "workers", "jobs", str(out)],
                                             env=child_env(), stdout=open(tmp_path / f"member{i}.log", "wb"),
                                             stderr=subprocess.STDOUT), out))

        def shares():
            d = client.call("DescribeGroup", {"group": "workers"}).get("result")  # UNKNOWN_GROUP before any join
            if d is None or d["state"] != "stable":
                return None
            return sorted(sum(len(e["partitions"]) for e in m["assignment"]) for m in d["members"])

        wait_for(lambda: shares() == [2, 2, 2], 30, "three members holding two partitions each")
        victim, _ = members[0]
        victim.kill()  # SIGKILL: no leave, no last commit
        victim.wait(10)
        killed_at = time.monotonic()
        wait_for(lambda: shares() == [3, 3], 15, "the two others taking the killed member's partitions")
        moved_after = time.monotonic() - killed_at
        produce(600, 300)

        def seen():
            values = []
            for _, out in members:
                if out.exists():
                    values += [int(line.split()[2]) for line in out.read_text().splitlines() if line.strip()]
            return values

        wait_for(lambda: set(seen()) >= set(range(900)), 30, "every message processed")
        values = seen()
        duplicates = len(values) - len(set(values))
        print(f"partitions moved {moved_after:.2f} s after the kill; {len(values)} handed out for 900 messages, "
              f"{duplicates} duplicates (the killed member's uncommitted window)")
        assert set(values) == set(range(900))  # none skipped
        assert moved_after < 2.0 + 3.0  # its 2 s session, and the others' next heartbeats
        assert duplicates <= 2 * 20 * 2  # at most its uncommitted batches on its two partitions
    finally:
        for process, _ in members:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        client.close()


def _consume(server, *argv, timeout=30):
    """C{streamlog consume} as a process: (status, stdout lines, stderr)."""
    import subprocess
    import sys

    from streamlog.testing import child_env

    done = subprocess.run([sys.executable, "-m", "streamlog.cli", "--connect", server.address, "consume", *argv],
                          env=child_env(), capture_output=True, timeout=timeout)
    return done.returncode, done.stdout.decode().splitlines(), done.stderr.decode()


def test_consume_with_a_group_resumes_from_its_commit_and_ends_cleanly_in_a_pipe(tmp_path, daemons):
    import subprocess
    import sys

    import orjson

    from streamlog.testing import child_env

    server = ServerProcess(tmp_path, ["--storage", "memory"])
    daemons.append(server)
    client = LineClient(server.port)
    _ok(client.call("CreateTopic", {"topic": "orders", "partitions": 3}))
    _ok(client.call("SendBatch", {"topic": "orders", "messages": [
        {"value": i, "partition": i % 3} for i in range(30)]}))

    status, first, err = _consume(server, "orders", "--group", "audit", "--count", "10")
    assert (status, len(first), err) == (0, 10, "")
    assert all(len(line.split("\t")) == 5 for line in first)  # the human format of consume
    offsets = _ok(client.call("FetchOffsets", {"group": "audit"}))["offsets"]
    assert sum(o["offset"] for o in offsets) == 10  # exactly what was printed
    status, rest, err = _consume(server, "orders", "--group", "audit", "--json")
    assert (status, err) == (0, "")
    got = [orjson.loads(line) for line in rest]
    assert next(iter(got[0])) == "partition" and "topic" not in got[0]
    printed = {(int(line.split("\t")[0]), int(line.split("\t")[1])) for line in first}
    assert printed.isdisjoint((m["partition"], m["offset"]) for m in got)  # resumed: nothing again
    # Value i is at offset i // 3 of partition i % 3: the rest of the 30, each once.
    assert sorted(m["value"] for m in got) == sorted(set(range(30)) - {p + 3 * o for p, o in printed})
    status, nothing, _ = _consume(server, "orders", "--group", "audit")
    assert (status, nothing) == (0, [])
    status, _, err = _consume(server, "orders", "--group", "audit", "--partition", "1")
    assert status == 2 and "exclude each other" in err

    # | head -2 with --follow: the command notices the closed pipe, exits 141, no traceback.
    process = subprocess.Popen([sys.executable, "-m", "streamlog.cli", "--connect", server.address, "consume",
                                "orders", "--group", "piped", "--follow"], env=child_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout.readline() and process.stdout.readline()
        process.stdout.close()
        assert process.wait(timeout=15) == 141
        assert process.stderr.read() == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stderr.close()
    # It committed what the pipe took before it went away, and left the group.
    described = _ok(client.call("DescribeGroup", {"group": "piped"}))
    assert described["members"] == [] and sum(o["offset"] for o in described["offsets"]) >= 2
    client.close()

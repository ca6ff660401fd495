"""The blocking client and the streamlog CLI against a real server process on 127.0.0.1."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import subprocess
import threading
import time

import orjson
import pytest
from client_support import PYTHON, REPO

import streamlog
from streamlog import cli, errors
from streamlog.client import BlockingClient
from streamlog.testing import ServerProcess, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("server"), ["--storage", "memory"])
    yield s
    s.stop()


@pytest.fixture
def blocking(server):
    with BlockingClient(server.address, timeout=10) as c:
        yield c


# --- blocking client ------------------------------------------------------------------


def test_blocking_round_trip(blocking):
    created = blocking.create_topic("b-round", partitions=2)
    assert [p["partition"] for p in created["partitions"]] == [0, 1]
    sent = blocking.send("b-round", {"n": 1}, partition=1, headers={"h": "v"})
    assert sent["partition"] == 1 and sent["offset"] == 0
    batch = blocking.send_batch("b-round", [{"value": i, "partition": 0} for i in range(3)])
    assert batch["partitions"] == [{"partition": 0, "base_offset": 0, "count": 3}]
    polled = blocking.poll("b-round", 0, 1, max_messages=1)
    assert [m["value"] for m in polled["messages"]] == [1]
    assert polled["next_offset"] == 2 and polled["high_watermark"] == 3
    assert blocking.list_offsets("b-round", 0, "latest") == 3
    assert blocking.list_offsets("b-round", 0, "earliest") == 0
    assert {"topic": "b-round", "partitions": 2} in blocking.list_topics()
    assert blocking.describe_topic("b-round")["partitions"][1]["high_watermark"] == 1
    assert blocking.ping()["pong"] is True
    assert blocking.send("b-round", "quiet", acks="none") is None
    assert blocking.delete_topic("b-round")["deleted"] is True


def test_blocking_errors_are_typed(blocking):
    with pytest.raises(errors.UnknownTopic) as e:
        blocking.describe_topic("b-missing")
    assert e.value.details.get("topic") == "b-missing"
    with pytest.raises(errors.InvalidTopic):
        blocking.create_topic("no spaces")
    blocking.send("b-range", 1)
    with pytest.raises(errors.OffsetOutOfRange) as e:
        blocking.poll("b-range", 0, 99)
    assert e.value.details["high_watermark"] == 1
    assert blocking.ping()["pong"]  # the connection still serves


def test_blocking_long_poll_returns_the_message_sent_meanwhile(server, blocking):
    blocking.create_topic("b-long")
    result = {}

    def wait():
        with BlockingClient(server.address, timeout=10) as other:
            result["poll"] = other.poll("b-long", 0, 0, max_wait_ms=10_000)

    t = threading.Thread(target=wait)
    t.start()
    # whether the poll is already waiting or arrives after the send, it must return the message
    blocking.send("b-long", "wake up")
    t.join(15)
    assert not t.is_alive()
    assert [m["value"] for m in result["poll"]["messages"]] == ["wake up"]


def test_blocking_connection_refused_is_connection_lost():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(errors.ConnectionLost):
        BlockingClient(f"127.0.0.1:{port}", timeout=2).ping()


def test_blocking_timeout_when_the_server_never_answers():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        c = BlockingClient(listener.getsockname(), timeout=0.3)
        with pytest.raises(errors.Timeout):
            c.ping()
        c.close()
    finally:
        listener.close()


def test_blocking_reconnects_after_the_server_closed(server):
    c = BlockingClient(f"tcp:127.0.0.1:{server.port}", timeout=5)
    assert c.ping()["pong"]
    c._sock.shutdown(socket.SHUT_RDWR)  # the connection dies under it
    with pytest.raises(errors.ConnectionLost):
        c.ping()
    assert c.ping()["pong"]  # next call connects again
    c.close()


def test_blocking_pipelined_polls_answer_in_any_order(server, blocking):
    blocking.create_topic("b-pipe", partitions=2)
    with BlockingClient(server.address, timeout=10) as c:
        slow = c.submit("Poll", {"topic": "b-pipe", "partition": 0, "offset": 0, "max_wait_ms": 10_000})
        fast = c.submit("Poll", {"topic": "b-pipe", "partition": 1, "offset": 0, "max_wait_ms": 10_000})
        assert c.next_answer(0.2) is None  # both parked; the connection stays usable
        blocking.send("b-pipe", "one", partition=1)
        rid, result = c.next_answer(10)
        assert rid == fast and [m["value"] for m in result["messages"]] == ["one"]
        bad = c.submit("Poll", {"topic": "b-pipe", "partition": 7, "offset": 0})
        rid, error = c.next_answer(10)
        assert rid == bad and isinstance(error, errors.UnknownPartition)  # returned, not raised
        blocking.send("b-pipe", "zero", partition=0)
        rid, result = c.next_answer(10)
        assert rid == slow and [m["value"] for m in result["messages"]] == ["zero"]


class UnixRelay:
    """A unix socket whose connections are relayed to the server's TCP port (bounded: daemon threads,
    closed at the end).  The server's own unix: listener is another branch's."""

    def __init__(self, path, port):
        self.path = str(path)
        self.port = port
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.sockets = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            self.sockets += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        for s in self.sockets:
            s.close()


@pytest.fixture
def unix_address(server, tmp_path):
    relay = UnixRelay(tmp_path / "streamlog.sock", server.port)
    yield f"unix:{relay.path}"
    relay.close()


def test_blocking_client_over_a_unix_socket(unix_address, tmp_path):
    with BlockingClient(unix_address, timeout=10) as c:
        assert c.ping()["pong"] is True
    with pytest.raises(errors.ConnectionLost, match="cannot connect to unix:.*missing.sock"):
        BlockingClient(f"unix:{tmp_path / 'missing.sock'}", timeout=2).ping()


# --- CLI ------------------------------------------------------------------------------


def cli_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "STREAMLOG_CONNECT"}
    env.update(extra)
    return env


def run_cli(server, *argv, stdin=None, timeout=30, connect=True, env=None):
    address = ["--connect", server.address] if connect else []
    proc = subprocess.run([PYTHON, "-m", "streamlog.cli", *address, *argv], cwd=REPO, input=stdin,
                          capture_output=True, timeout=timeout, env=env or cli_env())
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_cli_topics_lifecycle(server):
    assert run_cli(server, "topics", "create", "c-life", "--partitions", "3")[0] == 0
    rc, out, _ = run_cli(server, "topics", "list")
    assert rc == 0 and "c-life" in out and "TOPIC" in out
    rc, out, _ = run_cli(server, "--json", "topics", "describe", "c-life")
    assert rc == 0 and len(orjson.loads(out)["partitions"]) == 3
    rc, out, _ = run_cli(server, "topics", "describe", "c-life")
    assert "3 partition(s)" in out and "HIGH_WATERMARK" in out
    rc, out, _ = run_cli(server, "topics", "delete", "c-life", "--json")
    assert rc == 0 and orjson.loads(out) == {"topic": "c-life", "deleted": True}


def test_cli_server_error_exit_1_with_code_on_stderr(server):
    rc, out, err = run_cli(server, "topics", "describe", "c-none")
    assert rc == 1 and out == ""
    assert err.startswith("error: UNKNOWN_TOPIC:")
    rc, _, err = run_cli(server, "topics", "create", "bad/name")
    assert rc == 1 and "INVALID_TOPIC" in err


def test_cli_usage_errors_exit_2(server):
    assert run_cli(server, "topics", "explode")[0] == 2
    assert run_cli(server)[0] == 2
    assert run_cli(server, "consume", "t", "--from", "yesterday")[0] == 2
    assert run_cli(server, "produce", "t", "{bad", "--json-values")[0] == 2


def test_cli_connection_refused_exit_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([PYTHON, "-m", "streamlog.cli", "--connect", f"127.0.0.1:{port}", "ping"],
                          cwd=REPO, capture_output=True, timeout=30)
    assert proc.returncode == 1 and b"CONNECTION_LOST" in proc.stderr


def test_cli_produce_args_and_stdin_then_consume(server):
    rc, out, _ = run_cli(server, "produce", "c-flow", "one", "two", "--key", "k")
    assert rc == 0 and out.splitlines() == ["c-flow/0 offset 0", "c-flow/0 offset 1"]
    rc, out, _ = run_cli(server, "produce", "c-flow", "--json-values", "--json",
                         stdin=b'{"n": 3}\n[4]\nnull\n')
    assert rc == 0
    assert [orjson.loads(line)["offset"] for line in out.splitlines()] == [2, 3, 4]
    rc, out, _ = run_cli(server, "consume", "c-flow", "--json")
    assert rc == 0
    assert [orjson.loads(line)["value"] for line in out.splitlines()] == ["one", "two", {"n": 3}, [4], None]
    rc, out, _ = run_cli(server, "consume", "c-flow", "--from", "1", "--count", "2")
    assert out.splitlines() == ["0\t1\tk\ttwo\t-", "0\t2\t-\t{\"n\":3}\t-"]
    rc, out, _ = run_cli(server, "consume", "c-flow", "--from", "latest")
    assert rc == 0 and out == ""


def test_cli_consume_follow_waits_for_new_messages(server):
    proc = subprocess.Popen([PYTHON, "-m", "streamlog.cli", "--connect", server.address, "consume", "c-follow",
                             "--follow", "--count", "2", "--json", "--max-wait-ms", "200"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # the topic does not exist yet: the consumer waits for it
        wait_for(lambda: run_cli(server, "produce", "c-follow", "first")[0] == 0, 20, "produce")
        assert run_cli(server, "produce", "c-follow", "second")[0] == 0
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert [orjson.loads(line)["value"] for line in out.splitlines()] == ["first", "second"]


def test_cli_main_in_process_with_bench_slot(server, capsys):
    assert cli.main(["--connect", server.address, "ping", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["pong"] is True
    parser = cli.build_parser()
    assert parser.prog == "streamlog"

    def register(sub, common):
        p = sub.add_parser("hello", parents=[common])
        p.set_defaults(func=lambda args: 7)

    cli.register_command(register)
    try:
        assert cli.main(["hello"]) == 7
    finally:
        cli.COMMANDS.remove(register)


# --- the daemons as real processes -----------------------------------------------------------


def test_producer_and_consumer_daemons_end_to_end(server, tmp_path):
    log = tmp_path / "producer.log"
    producer = subprocess.run(
        [PYTHON, "-m", "twisted", "--log-format", "text", "--log-file", str(log), "streamlog-producer", "--connect",
         f"tcp:127.0.0.1:{server.port}", "--topic", "d-e2e", "--stdin", "--interval", "0.05"],
        cwd=REPO, input=b"".join(f"line {i}\n".encode() for i in range(50)), capture_output=True, timeout=60)
    assert producer.returncode == 0, log.read_text()
    assert "message 50 acknowledged" in log.read_text()
    consumer = subprocess.run(
        [PYTHON, "-m", "twisted", "--log-file", str(tmp_path / "consumer.log"), "streamlog-consumer",
         "--connect", server.address, "--topic", "d-e2e", "--count", "50", "--interval", "0.05"],
        cwd=REPO, capture_output=True, timeout=60)
    assert consumer.returncode == 0, (tmp_path / "consumer.log").read_text()
    printed = [orjson.loads(line) for line in consumer.stdout.splitlines()]  # only JSON lines
    assert [m["value"] for m in printed] == [f"line {i}" for i in range(50)]
    assert [m["offset"] for m in printed] == list(range(50))


def test_producer_daemon_permanent_error_exits_1(server, tmp_path):
    with BlockingClient(server.address) as c:
        c.create_topic("d-one-partition", partitions=1)
    log = tmp_path / "producer.log"
    proc = subprocess.run(
        [PYTHON, "-m", "twisted", "--log-format", "text", "--log-file", str(log), "streamlog-producer", "--connect", server.address,
         "--topic", "d-one-partition", "--count", "1", "--partition", "5"],
        cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert "failed permanently" in log.read_text()


# --- CLI: arguments, addresses, usage (issue 8, item 14) ---------------------------------------


def test_cli_produce_options_may_come_between_the_topic_and_the_values(server):
    rc, out, err = run_cli(server, "produce", "c-mixed", "--key", "K", "first", "-H", "h=1", "second")
    assert rc == 0, err
    assert out.splitlines() == ["c-mixed/0 offset 0", "c-mixed/0 offset 1"]
    rc, out, _ = run_cli(server, "consume", "c-mixed", "--json")
    assert [(m["key"], m["value"], m["headers"]) for m in map(orjson.loads, out.splitlines())] == \
        [("K", "first", {"h": "1"}), ("K", "second", {"h": "1"})]


def test_cli_consume_from_past_the_end_is_an_error_with_or_without_follow(server):
    assert run_cli(server, "produce", "c-end", "a", "b")[0] == 0
    for follow in ([], ["--follow"]):
        rc, out, err = run_cli(server, "consume", "c-end", "--from", "100", *follow)
        assert (rc, out) == (1, ""), (follow, err)
        assert err.startswith("error: OFFSET_OUT_OF_RANGE: c-end/0 holds offsets [0, 2): offset 100 is past its end")
    rc, out, err = run_cli(server, "consume", "c-end", "--from", "2")  # the end itself: nothing yet, no error
    assert (rc, out, err) == (0, "", "")


def test_cli_version():
    proc = subprocess.run([PYTHON, "-m", "streamlog.cli", "--version"], cwd=REPO, capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.decode().strip() == f"streamlog {streamlog.__version__}"


def test_cli_connects_to_a_unix_socket(server, unix_address):
    rc, out, err = run_cli(server, "--connect", unix_address, "ping", connect=False)
    assert rc == 0 and out.startswith(f"pong from {unix_address}"), err
    rc, out, err = run_cli(server, "produce", "c-unix", "over unix", connect=False,
                           env=cli_env(STREAMLOG_CONNECT=unix_address))
    assert (rc, out) == (0, "c-unix/0 offset 0\n"), err


def test_cli_address_from_the_environment_and_bad_addresses(server):
    rc, out, _ = run_cli(server, "ping", connect=False, env=cli_env(STREAMLOG_CONNECT=server.address))
    assert rc == 0 and out.startswith(f"pong from {server.address}")
    rc, _, err = run_cli(server, "ping", connect=False, env=cli_env(STREAMLOG_CONNECT="nowhere"))
    assert rc == 2 and "--connect (from $STREAMLOG_CONNECT): cannot read an address from 'nowhere'" in err


@pytest.mark.parametrize("argv, usage", [
    (["consume", "t", "--from", "yesterday"], "usage: streamlog consume"),
    (["consume", "t", "--count", "0"], "usage: streamlog consume"),
    (["produce", "t", "--bogus", "x"], "usage: streamlog produce"),
    (["produce", "t", "--batch-size", "0", "x"], "usage: streamlog produce"),
    (["produce", "t", "-H", "no-equals", "x"], "usage: streamlog produce"),
    (["topics", "create"], "usage: streamlog topics create"),
    (["topics", "list", "--what"], "usage: streamlog topics list"),
    (["ping", "--connect", "ssl:h:1"], "usage: streamlog ping"),
    (["bench", "produce", "--nope"], "usage: streamlog bench produce"),
])
def test_cli_usage_errors_show_the_subcommand_usage(server, argv, usage):
    rc, out, err = run_cli(server, *argv)
    assert rc == 2 and out == ""
    assert err.startswith(usage), err


def test_cli_bench_uses_the_global_connect_and_the_environment(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once closed
    bootstrap = f"{dead},{server.address}"  # a bootstrap list: the first address is down
    for argv, env in ((["--connect", server.address], cli_env()), ([], cli_env(STREAMLOG_CONNECT=server.address)),
                      (["bench", "--connect", bootstrap], cli_env())):
        command = ["bench", "produce", *argv[1:]] if argv[:1] == ["bench"] else [*argv, "bench", "produce"]
        proc = subprocess.run([PYTHON, "-m", "streamlog.cli", *command, "--messages", "200",
                               "--batch", "100", "--json", "--quiet", "--max-seconds", "20"],
                              cwd=REPO, capture_output=True, timeout=90, env=env)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        result = orjson.loads(proc.stdout)
        assert result["server"]["started_by_bench"] is False
        with BlockingClient(server.address, timeout=10) as c:  # it wrote to our server
            assert c.list_offsets(result["topic"], 0, "latest") >= 200


# --- CLI: every partition, headers, --from forms (item 15) -------------------------------------


def test_cli_consume_reads_every_partition_merged_each_line_saying_its_partition(server, blocking):
    blocking.create_topic("c-parts", partitions=3)
    for p in range(3):
        blocking.send_batch("c-parts", [{"value": f"p{p}-{i}", "partition": p} for i in range(2)])
    rc, out, err = run_cli(server, "consume", "c-parts")
    assert rc == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert sorted(rows) == [[str(p), str(i), "-", f"p{p}-{i}", "-"] for p in range(3) for i in range(2)]
    rc, out, _ = run_cli(server, "consume", "c-parts", "--json", "--partition", "2")
    assert [(m["partition"], m["offset"]) for m in map(orjson.loads, out.splitlines())] == [(2, 0), (2, 1)]
    rc, out, _ = run_cli(server, "consume", "c-parts", "--count", "4")
    assert rc == 0 and len(out.splitlines()) == 4


def test_cli_human_output_keeps_one_message_per_line_with_key_and_headers(server, blocking):
    blocking.send("c-human", "tab\there\nnew line\\ and \x1b[31m", key="k\tey", headers={"trace": "a\tb"})
    blocking.send("c-human", {"n": [1, "x\ny"]})
    rc, out, _ = run_cli(server, "consume", "c-human")
    assert rc == 0
    assert out.splitlines() == [
        "0\t0\tk\\tey\ttab\\there\\nnew line\\\\ and \\x1b[31m\t{\"trace\":\"a\\tb\"}",
        "0\t1\t-\t{\"n\":[1,\"x\\ny\"]}\t-",
    ]


def test_cli_produce_quiet_prints_nothing(server):
    rc, out, err = run_cli(server, "produce", "c-quiet", "-q", "a", "b", stdin=None)
    assert (rc, out, err) == (0, "", "")
    rc, out, err = run_cli(server, "produce", "c-quiet", "--quiet", "--json", stdin=b"c\nd\n")
    assert (rc, out, err) == (0, "", "")
    rc, out, _ = run_cli(server, "consume", "c-quiet")
    assert [line.split("\t")[3] for line in out.splitlines()] == ["a", "b", "c", "d"]


def test_cli_consume_from_n_before_the_end_and_from_a_time(server, blocking):
    blocking.create_topic("c-from", partitions=2)
    blocking.send_batch("c-from", [{"value": f"old {i}", "partition": i % 2} for i in range(6)])
    time.sleep(0.01)  # the broker's clock in ms: the next batch gets a later timestamp
    cut = blocking.send_batch("c-from", [{"value": "new 0", "partition": 0}, {"value": "new 1", "partition": 1}])
    rc, out, _ = run_cli(server, "consume", "c-from", "--from", "-2")
    assert sorted(line.split("\t")[3] for line in out.splitlines()) == ["new 0", "new 1", "old 4", "old 5"]
    rc, out, _ = run_cli(server, "consume", "c-from", "--from", f"@{cut['timestamp']}")
    assert sorted(line.split("\t")[3] for line in out.splitlines()) == ["new 0", "new 1"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut["timestamp"] // 1000)) + \
        f".{cut['timestamp'] % 1000:03d}Z"
    rc, out, _ = run_cli(server, "consume", "c-from", "--from", iso, "--partition", "1")
    assert [line.split("\t")[3] for line in out.splitlines()] == ["new 1"]


def test_cli_follow_reads_every_partition(server, blocking):
    blocking.create_topic("c-fparts", partitions=3)
    proc = subprocess.Popen([PYTHON, "-m", "streamlog.cli", "--connect", server.address, "consume", "c-fparts",
                             "--follow", "--count", "2", "--json", "--max-wait-ms", "5000"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        time.sleep(0.5)  # let it park its polls (it must find the messages either way)
        blocking.send("c-fparts", "on 2", partition=2)
        blocking.send("c-fparts", "on 0", partition=0)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert sorted((m["partition"], m["value"]) for m in map(orjson.loads, out.splitlines())) == \
        [(0, "on 0"), (2, "on 2")]


# --- a closed standard output (item 11): never past what was written, no traceback -------------


def fill(server, topic, n):
    with BlockingClient(server.address, timeout=30) as c:
        for start in range(0, n, 5000):
            c.send_batch(topic, [{"value": f"message {i}"} for i in range(start, min(n, start + 5000))])


def read_one_line_then_close(fd):
    """What `head -1` does: read up to the first newline, then close the pipe."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data


def start_into_pipe(argv, **kw):
    r, w = os.pipe()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=w, env=cli_env(), **kw)
    os.close(w)
    return proc, r, fcntl.fcntl(r, 1032)  # F_GETPIPE_SZ


def test_cli_consume_into_a_pipe_closed_after_one_line_exits_141_quietly(server):
    fill(server, "c-pipe", 20_000)
    proc, r, _ = start_into_pipe([PYTHON, "-m", "streamlog.cli", "--connect", server.address, "consume", "c-pipe"],
                                 stderr=subprocess.PIPE)
    try:
        assert read_one_line_then_close(r).split(b"\t")[:2] == [b"0", b"0"]
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 141 and err == b""


def test_cli_consume_follow_stops_when_its_reader_goes_away_while_idle(server):
    fill(server, "c-idle", 1)
    proc, r, _ = start_into_pipe([PYTHON, "-m", "streamlog.cli", "--connect", server.address, "consume", "c-idle",
                                  "--follow"], stderr=subprocess.PIPE)
    try:
        assert read_one_line_then_close(r).startswith(b"0\t0\t")
        started = time.monotonic()
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 141 and err == b""


def consumer_daemon(server, tmp_path, topic, *extra):
    log = tmp_path / "consumer.log"
    argv = [PYTHON, "-m", "twisted", "--log-format", "text", "--log-file", str(log), "streamlog-consumer",
            "--connect", server.endpoint, "--topic", topic, "--interval", "0.2", *extra]
    return log, start_into_pipe(argv, stderr=subprocess.DEVNULL)


def test_consumer_daemon_into_a_pipe_closed_after_one_line_exits_1_without_advancing(server, tmp_path):
    fill(server, "d-pipe", 20_000)
    log, (proc, r, pipe_size) = consumer_daemon(server, tmp_path, "d-pipe")
    try:
        assert orjson.loads(read_one_line_then_close(r))["offset"] == 0
        status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert status == 1, text
    found = re.search(r"d-pipe/0 stays at offset (\d+) \((\d+) of the (\d+) message", text)
    assert found, text
    position = int(found.group(1))
    # Written: the line read, and what the pipe held when its reader left (each line is at least
    # this long), nowhere near the 10,000 of the batch it was handed.
    shortest = len(orjson.dumps({"partition": 0, "offset": 0, "timestamp": 0, "key": None, "value": "message 0",
                                 "headers": {}})) + 1
    assert 1 <= position <= 1 + pipe_size // shortest, text
    assert int(found.group(2)) == position  # the batch started at 0: all it wrote is what the position covers


def test_consumer_daemon_stops_when_its_reader_goes_away_while_idle(server, tmp_path):
    fill(server, "d-idle", 1)
    log, (proc, r, _) = consumer_daemon(server, tmp_path, "d-idle")
    try:
        assert orjson.loads(read_one_line_then_close(r))["value"] == "message 0"
        status = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert status == 1, text
    assert "the reader of standard output went away" in text
    assert "positions: d-idle/0 offset 1" in text


# --- counts and waits past what one Poll may ask (review 8, finding 6) -------------------------


def test_cli_consume_a_count_above_the_servers_poll_limit_reads_it_in_several_polls(server):
    fill(server, "c-many", 25_000)
    for follow in ([], ["--follow"]):
        rc, out, err = run_cli(server, "consume", "c-many", "--count", "20000", "--json", *follow, timeout=60)
        assert rc == 0, err  # was: INVALID_PARAMS (max_messages 20000 > --max-poll-messages 10000), exit 1
        assert [orjson.loads(line)["offset"] for line in out.splitlines()] == list(range(20_000))


def test_cli_consume_against_a_server_with_a_lower_poll_limit_still_stops_at_its_count(tmp_path):
    small = ServerProcess(tmp_path, ["--storage", "memory", "--max-poll-messages", "100"])
    try:
        fill(small, "c-low", 1000)
        rc, out, err = run_cli(small, "consume", "c-low", "--count", "250", "--json")
        assert rc == 0, err
        assert [orjson.loads(line)["offset"] for line in out.splitlines()] == list(range(250))
    finally:
        small.stop()


def test_cli_and_consumer_daemon_bound_their_poll_options(server):
    rc, _, err = run_cli(server, "consume", "c-many", "--follow", "--max-wait-ms", "70000")
    assert rc == 2 and "--max-wait-ms must be between 0 and 60000" in err
    daemon = subprocess.run([PYTHON, "-m", "twisted", "streamlog-consumer", "--connect", server.endpoint,
                             "--topic", "c-many", "--max-messages", "20000"],
                            cwd=REPO, capture_output=True, timeout=30)
    assert daemon.returncode != 0
    assert b"--max-messages must be between 1 and 10000" in daemon.stdout + daemon.stderr


def test_the_idempotent_sender_resends_a_lost_answer_with_the_same_numbers(blocking):
    blocking.create_topic("b-idem", partitions=2)
    sender = blocking.idempotent_sender()
    real = blocking._routed
    lost = []

    def lose_the_first_answer(method, params, topic, partition, **kw):
        answer = real(method, params, topic, partition, **kw)  # appended at the server ...
        if not lost:
            lost.append(params)
            raise errors.ConnectionLost("the answer was lost")  # ... but the answer never came
        return answer

    blocking._routed = lose_the_first_answer
    first = sender.send_batch("b-idem", [{"value": v, "partition": 1} for v in "ab"])
    second = sender.send_batch("b-idem", [{"value": "c", "partition": 1}])
    assert sender.resends == 1 and sender.identity is not None
    assert first["partitions"] == [{"partition": 1, "base_offset": 0, "count": 2, "duplicate": True}]
    assert second["partitions"] == [{"partition": 1, "base_offset": 2, "count": 1}]
    assert lost[0]["sequences"] == [{"partition": 1, "base_sequence": 0}]
    assert [m["value"] for m in blocking.poll("b-idem", 1, 0)["messages"]] == ["a", "b", "c"]


def test_cli_produce_is_idempotent_unless_told_otherwise(server):
    assert run_cli(server, "topics", "create", "c-idem", "--partitions", "1")[0] == 0
    with BlockingClient(server.address, timeout=10) as c:
        ids = [c.call("InitProducerId", {})["producer_id"]]
        for flags in ([], ["--no-idempotence"]):
            rc, _, err = run_cli(server, "produce", "c-idem", "x", *flags)
            assert rc == 0, err
            ids.append(c.call("InitProducerId", {})["producer_id"])
        # The idempotent run took a producer id of its own; the other did not.
        assert [b - a for a, b in zip(ids, ids[1:])] == [2, 1]
        assert [m["value"] for m in c.poll("c-idem", 0, 0)["messages"]] == ["x", "x"]
    assert "--no-idempotence" in run_cli(server, "produce", "--help")[1]


def test_the_idempotent_sender_numbers_even_the_first_batch_to_a_topic_it_creates(blocking):
    sender = blocking.idempotent_sender()
    real = blocking._routed
    lost = []

    def lose_the_first_answer(method, params, topic, partition, **kw):
        answer = real(method, params, topic, partition, **kw)
        if method == "SendBatch" and not lost:
            lost.append(params)
            raise errors.ConnectionLost("the answer was lost")
        return answer

    blocking._routed = lose_the_first_answer
    first = sender.send_batch("b-idem-new", [{"value": v} for v in "ab"])
    assert lost and lost[0]["sequences"] == [{"partition": 0, "base_sequence": 0}]
    assert first["partitions"] == [{"partition": 0, "base_offset": 0, "count": 2, "duplicate": True}]
    assert [m["value"] for m in blocking.poll("b-idem-new", 0, 0)["messages"]] == ["a", "b"]

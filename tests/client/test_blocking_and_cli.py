"""The blocking client and the streamlog CLI against a real server process on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import threading

import orjson
import pytest
from client_support import PYTHON, REPO

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


def run_cli(server, *argv, stdin=None, timeout=30):
    proc = subprocess.run([PYTHON, "-m", "streamlog.cli", "--connect", server.address, *argv],
                          cwd=REPO, input=stdin, capture_output=True, timeout=timeout)
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
    assert out.splitlines() == ["1\tk\ttwo", "2\t-\t{\"n\":3}"]
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

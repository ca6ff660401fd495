"""The connection edge of a real server process: slow readers, half-close, connection caps.

Real sockets on 127.0.0.1, because the behaviour lives in the kernel's buffers
and Twisted's TCP transport.  Every wait has a deadline (streamlog.testing.wait_for).
"""

from __future__ import annotations

import itertools
import select
import signal
import socket

import orjson
from edge_support import (
    MIB,
    drain_until_closed,
    half_closed,
    memory_kib,
    park_polls,
    ping_from_a_new_connection,
    read_to_eof,
)

from streamlog import wire
from streamlog.testing import LineClient, ServerProcess, wait_for


def test_a_client_that_never_reads_is_dropped_once_its_answers_pass_the_outbound_limit(tmp_path, daemons):
    limit = 4 * MIB
    server = ServerProcess(tmp_path, ["--storage", "memory", "--max-outbound-bytes", str(limit),
                                      "--max-line-bytes", str(2 * MIB), "--max-message-bytes", str(2 * MIB)])
    daemons.append(server)
    client = LineClient(server.port)
    client.call("CreateTopic", {"topic": "t"})
    reader_less = park_polls(server.port, 96)
    before = memory_kib(server.pid, "VmRSS")
    # One Send of 1 MiB wakes the 96 polls: 96 MiB of answers owed to a client that reads nothing.
    ack = client.call("Send", {"topic": "t", "value": "x" * MIB})
    assert ack["result"]["offset"] == 0
    got, closed = drain_until_closed(reader_less, timeout=20)
    assert closed, "the server kept a connection that owes 96 MiB"
    assert got < limit + 16 * MIB, got  # what the kernel buffers held, never all 96 MiB
    peak = memory_kib(server.pid, "VmHWM")
    # The answers it queued: at most the limit, one more answer and Twisted's 64 KiB buffer,
    # joined once into one buffer by the transport (so twice that), plus the stored message.
    assert (peak - before) * 1024 < 2 * (limit + 2 * MIB) + 2 * MIB + 8 * MIB, (before, peak)
    assert client.call("Ping")["result"]["pong"] is True
    assert "does not read its answers" in server.log()
    reader_less.close()
    client.close()


def test_a_half_closed_connection_gets_every_answer_then_is_closed(tmp_path, daemons):
    server = ServerProcess(tmp_path)  # the durable default: the README's nc example
    daemons.append(server)
    # The README's example, byte for byte as printf sends it.
    sock = half_closed(server.port, b'{"id":1,"method":"Send","params":{"topic":"demo","value":"hi"}}\n'
                                    b'{"id":2,"method":"Poll","params":{"topic":"demo","offset":0,"max_wait_ms":1000}}\n')
    answers = {a["id"]: a for a in read_to_eof(sock, timeout=10)}
    assert answers[1]["result"]["offset"] == 0 and answers[1]["result"]["durability"] == "fsync"
    assert answers[2]["result"]["messages"][0]["value"] == "hi"
    sock.close()
    # Many pipelined requests, and a last line without its newline: all answered
    # (the Ping first, most likely: answers come as they are ready).
    lines = [wire.encode_request(i, "Send", {"topic": "demo", "value": i}) for i in range(500)]
    sock = half_closed(server.port, b"".join(lines) + wire.encode_request(500, "Ping", {}).rstrip(b"\n"))
    answers = read_to_eof(sock, timeout=20)
    assert sorted(a["id"] for a in answers) == list(range(501))
    assert all("result" in a for a in answers)
    sock.close()


def test_a_long_poll_pending_at_half_close_is_answered_when_it_completes(tmp_path, daemons):
    server = ServerProcess(tmp_path, ["--storage", "memory"])
    daemons.append(server)
    client = LineClient(server.port)
    client.call("CreateTopic", {"topic": "t"})
    waiting = half_closed(server.port, wire.encode_request(1, "Poll", {"topic": "t", "offset": 0, "max_wait_ms": 30_000}))
    timing_out = half_closed(server.port, wire.encode_request(2, "Poll", {"topic": "t", "offset": 0, "max_wait_ms": 300}))
    [answer] = read_to_eof(timing_out, timeout=10)  # after its 300 ms, with nothing
    assert answer["id"] == 2 and answer["result"]["messages"] == []
    waiting.settimeout(0.5)
    try:
        early = waiting.recv(100)
    except TimeoutError:
        early = None
    assert early is None, f"the server answered or closed before the data came: {early!r}"
    client.call("Send", {"topic": "t", "value": "late"})
    [answer] = read_to_eof(waiting, timeout=10)
    assert answer["id"] == 1 and answer["result"]["messages"][0]["value"] == "late"
    waiting.close()
    timing_out.close()
    client.close()


def test_the_listen_backlog_queues_a_burst_of_connections_while_the_server_is_busy(tmp_path, daemons):
    # Twisted's default backlog of 50 made 500 rapid connects take 9.2 s: the kernel
    # drops SYNs past it and clients retry after 1, 3, 7 s.  With the server stopped
    # (SIGSTOP: it accepts nothing), the kernel alone completes the handshakes its
    # backlog has room for, so the count is exact, not a matter of speed.
    burst = 300
    server = ServerProcess(tmp_path, ["--storage", "memory", "--max-connections-per-address", "1000"])
    daemons.append(server)
    assert LineClient(server.port).call("Ping")["result"]["pong"]
    socks = []
    server.signal(signal.SIGSTOP)
    try:
        for _ in range(burst):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", server.port))
            socks.append(s)
        connected: set[int] = set()

        def all_connected() -> bool:
            waiting = [s for s in socks if s.fileno() not in connected]
            _, writable, _ = select.select([], waiting, [], 0.05)
            connected.update(s.fileno() for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
            return len(connected) == burst

        try:
            wait_for(all_connected, 5, f"{burst} connects to complete in the backlog")
        except AssertionError as e:
            raise AssertionError(f"{e}: only {len(connected)} did") from None
    finally:
        server.signal(signal.SIGCONT)
    for s in socks:
        s.setblocking(True)
        s.settimeout(10)
        s.sendall(wire.encode_request(1, "Ping", {}))
    for s in socks:
        assert orjson.loads(s.makefile("rb").readline())["result"]["pong"] is True
        s.close()


def test_one_address_cannot_take_every_connection_slot(tmp_path, daemons):
    server = ServerProcess(tmp_path, ["--storage", "memory", "--max-connections-per-address", "3"])
    daemons.append(server)
    clients = [LineClient(server.port) for _ in range(3)]
    assert all(c.call("Ping")["result"]["pong"] for c in clients)
    refused = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    answers = read_to_eof(refused, timeout=10)
    assert [a["error"]["code"] for a in answers] == ["TOO_MANY_CONNECTIONS"]
    assert answers[0]["error"]["scope"] == "address" and answers[0]["error"]["limit"] == 3
    refused.close()
    # Another address (all of 127/8 is loopback) still gets in.
    other = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.2", 0))
    other.sendall(wire.encode_request(1, "Ping", {}))
    assert orjson.loads(other.makefile("rb").readline())["result"]["pong"] is True
    other.close()
    clients.pop().close()
    wait_for(lambda: ping_from_a_new_connection(server.port), 10, "a slot to free up once a client left")
    for c in clients:
        c.close()


# --- connections the server closes must really close (review 8, finding 2) ----------------------


def _big_poll_unread(port: int, topic: str, max_bytes: int, half_close: bool = False) -> socket.socket:
    """A connection that asks for a big answer and reads nothing of it (yet), with a tiny receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    sock.sendall(wire.encode_request(1, "Poll", {"topic": topic, "offset": 0, "max_bytes": max_bytes}))
    if half_close:
        sock.shutdown(socket.SHUT_WR)
    return sock


_ADMIN_SOURCES = itertools.count(2)


def _admin(port: int, *requests: tuple[str, dict]) -> None:
    """Send C{requests} from 127.0.0.N (N >= 2, another each time), so that 127.0.0.1's connection
    slots are the test's alone, and a closed admin connection never holds a slot the next needs."""
    source = f"127.0.0.{next(_ADMIN_SOURCES)}"
    sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    reader = sock.makefile("rb")
    for i, (method, params) in enumerate(requests):
        sock.sendall(wire.encode_request(i, method, params))
        assert "result" in orjson.loads(reader.readline())
    reader.close()
    sock.close()


def _fill_topic(port: int, topic: str, messages: int, size: int) -> None:
    _admin(port, *[("Send", {"topic": topic, "value": "x" * size, "acks": "leader"})] * messages)


def test_an_idle_connection_closed_while_its_writes_are_paused_really_closes(tmp_path, daemons):
    # The review's repro: three clients each Poll ~10 MB with a 4 KiB receive buffer and
    # read nothing until the idle sweep closed them, then read everything and close.  The
    # paused transport resumed its producer instead of closing: CLOSE-WAIT for ever, and
    # the address's three slots stayed taken.  (--close-timeout is long: not what frees them.)
    server = ServerProcess(tmp_path, ["--storage", "memory", "--idle-timeout", "2", "--close-timeout", "600",
                                      "--max-connections-per-address", "3", "--max-poll-bytes", str(16 * MIB)])
    daemons.append(server)
    _fill_topic(server.port, "big", 10, 1_000_000 - 100)
    socks = [_big_poll_unread(server.port, "big", 12 * MIB) for _ in range(3)]
    wait_for(lambda: server.log().count("closing") >= 3 and server.log().count(": idle") >= 3, 20,
             "the idle sweep to close the three connections")
    for sock in socks:
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            assert chunk, "the server closed before sending the whole answer"
            line += chunk
        assert len(orjson.loads(line)["result"]["messages"]) == 10
        sock.close()
    wait_for(lambda: ping_from_a_new_connection(server.port), 10, "the three connections to be gone")


def test_a_half_closed_client_that_never_reads_is_aborted_after_the_close_timeout(tmp_path, daemons):
    # Its long poll is answered after the half-close (8 MB, more than the kernel's buffers
    # take), so the server closes once it is written: it never is, the client reads nothing.
    big = 8 * MIB
    server = ServerProcess(tmp_path, ["--storage", "memory", "--close-timeout", "2", "--max-connections-per-address", "1",
                                      "--max-poll-bytes", str(16 * MIB), "--max-message-bytes", str(big + 1000),
                                      "--max-line-bytes", str(big + 1000)])
    daemons.append(server)
    _admin(server.port, ("CreateTopic", {"topic": "big"}))
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", server.port))
    stuck.sendall(wire.encode_request(1, "Poll", {"topic": "big", "offset": 0, "max_wait_ms": 30_000,
                                                  "max_bytes": 16 * MIB}) + wire.encode_request(2, "Ping", {}))
    assert orjson.loads(stuck.makefile("rb").readline())["id"] == 2  # in order: the poll has parked
    stuck.shutdown(socket.SHUT_WR)  # read by the server before the Send below can even connect
    _admin(server.port, ("Send", {"topic": "big", "value": "x" * big}))
    wait_for(lambda: ping_from_a_new_connection(server.port), 20, "the closing connection to be aborted")
    assert "still closing after" in server.log()
    stuck.close()


def test_a_client_that_closed_with_polls_parked_frees_them_once_a_write_finds_it_gone(tmp_path, daemons):
    # A full close looks like a half-close (both send a FIN) until the server writes: the
    # first answer then meets a reset.  The other parked polls must go at once, not wait out
    # their 60 s, holding the address's one slot.
    server = ServerProcess(tmp_path, ["--storage", "memory", "--max-connections-per-address", "1"])
    daemons.append(server)
    _admin(server.port, ("CreateTopic", {"topic": "t"}))
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(wire.encode_request(1, "Poll", {"topic": "t", "offset": 0, "max_wait_ms": 1000})
                 + wire.encode_request(2, "Poll", {"topic": "t", "offset": 0, "max_wait_ms": 60_000})
                 + wire.encode_request(3, "Ping", {}))
    assert orjson.loads(sock.makefile("rb").readline())["id"] == 3  # both polls are parked
    sock.close()  # a full close, nothing unread: a FIN, as a half-close sends
    wait_for(lambda: ping_from_a_new_connection(server.port), 10,
             "the connection to be dropped once the 1 s poll's answer met the reset")
    assert "the client is gone" in server.log()

"""The connection edge of a real server process: slow readers, half-close, connection caps.

Real sockets on 127.0.0.1, because the behaviour lives in the kernel's buffers
and Twisted's TCP transport.  Every wait has a deadline (streamlog.testing.wait_for).
"""

from __future__ import annotations

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

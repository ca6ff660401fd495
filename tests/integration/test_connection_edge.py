"""The connection edge of a real server process: slow readers, half-close, connection caps.

Real sockets on 127.0.0.1, because the behaviour lives in the kernel's buffers
and Twisted's TCP transport.  Every wait has a deadline (streamlog.testing.wait_for).
"""

from __future__ import annotations

import socket
import time

import orjson

from streamlog import wire
from streamlog.testing import LineClient, ServerProcess

MIB = 1024 * 1024


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def park_polls(port: int, count: int, topic: str = "t", offset: int = 0, rcvbuf: int = 64 * 1024) -> socket.socket:
    """A connection with C{count} long polls parked on the server that will never read again.

    A Ping goes last and is read: lines are handled in order, so its answer
    means every poll before it is parked.  The receive buffer is kept small.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    requests = [wire.encode_request(i, "Poll", {"topic": topic, "offset": offset, "max_wait_ms": 60_000})
                for i in range(count)]
    sock.sendall(b"".join(requests) + wire.encode_request("ready", "Ping", {}))
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection while polls were parked"
        reply += chunk
    assert orjson.loads(reply)["id"] == "ready", reply
    return sock


def drain_until_closed(sock: socket.socket, timeout: float) -> tuple[int, bool]:
    """Read what the server sent until it closes (EOF or reset); (bytes read, closed)."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    total = 0
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return total, True
        if not chunk:
            return total, True
        total += len(chunk)
    return total, False


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

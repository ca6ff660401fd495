"""Helpers for the real-socket tests of the connection edge (raw sockets, /proc memory)."""

from __future__ import annotations

import socket
import time

import orjson

from streamlog import wire

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


def read_to_eof(sock: socket.socket, timeout: float) -> list[dict]:
    """Every answer line until the server closes the connection (fails after C{timeout})."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"no EOF within {timeout}s; got {data[-300:]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return [orjson.loads(line) for line in data.splitlines()]


def half_closed(port: int, payload: bytes) -> socket.socket:
    """Connect, send C{payload}, then shut down the sending side, as C{nc} does at EOF."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    return sock


def ping_from_a_new_connection(port: int) -> bool:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(wire.encode_request(1, "Ping", {}))
        line = sock.makefile("rb").readline()
        return bool(line) and "result" in orjson.loads(line)
    finally:
        sock.close()

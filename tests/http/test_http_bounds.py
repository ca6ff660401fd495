"""The HTTP listener's bounds on a real node (twistd on 127.0.0.1, raw sockets): a body over the
limit is refused before it is read (declared length) or where it passes it (chunked), never
spooled; a connection past --http-max-connections closes the oldest idle one (64 idle ones do not
keep /health and /ready out); an idle connection is closed without a log line; a request trickling in is cut at --http-request-timeout."""

from __future__ import annotations

import socket
import time

import pytest

from streamlog.testing import ServerProcess


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    work = tmp_path_factory.mktemp("http-bounds")
    n = ServerProcess(work, http=True, extra=["--console-admin", "--console-max-body-bytes", "2048",
                                              "--http-max-connections", "4", "--http-idle-timeout", "1",
                                              "--http-request-timeout", "2"])
    yield n
    n.stop()


def connect(node):
    s = socket.create_connection(("127.0.0.1", node.http_port), timeout=10)
    return s


def read_all(s, within=10.0):
    """Everything the node sends until it closes the connection (with a deadline)."""
    s.settimeout(within)
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


HEAD = (b"POST /api/topics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Streamlog-Console: 1\r\n"
        b"Content-Type: application/json\r\n")


def test_a_declared_length_over_the_limit_is_refused_before_the_body(node):
    s = connect(node)
    s.sendall(HEAD + b"Content-Length: 100000000\r\n\r\n")  # and no body at all
    answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"BODY_TOO_LARGE"' in answer and b'"limit":2048' in answer
    s.close()


def test_a_chunked_body_is_cut_off_where_it_passes_the_limit(node):
    s = connect(node)
    s.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    sent = 0
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    try:
        for _ in range(10000):  # at most 10 MB; the node closes after about 2 KB
            s.sendall(chunk)
            sent += 1024
    except OSError:
        pass  # reset: the node closed it
    try:
        answer = read_all(s)
    except OSError:
        answer = b""  # the reset may swallow the answer; the point is the close
    assert sent < 10000 * 1024 and (answer == b"" or answer.startswith(b"HTTP/1.1 413 "))
    s.close()


def test_a_body_within_the_limit_is_answered(node):
    s = connect(node)
    body = b'{"topic": "bounded"}'
    s.sendall(HEAD + b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    assert read_all(s).startswith(b"HTTP/1.1 200 ")
    s.close()


def test_a_connection_past_the_cap_closes_the_oldest_idle_one_and_idle_ones_close_without_a_log_line(node):
    held = [connect(node) for _ in range(4)]
    assert answer_on(held[-1], "/health").startswith(b"HTTP/1.1 200 ")  # all 4 accepted (in order)
    extra = connect(node)
    assert answer_on(extra, "/health").startswith(b"HTTP/1.1 200 ")  # let in: the oldest idle one made room
    assert read_all(held[0], 5) == b""  # closed by the node
    extra.close()
    # The others are idle: closed after --http-idle-timeout (1 s), without a log line each.
    for s in held[1:]:
        assert read_all(s, 10) == b""
        s.close()
    held[0].close()
    assert "Timing out client" not in node.log()


def answer_on(s, path):
    """One keep-alive GET of C{path} on C{s}: the answer's head and body (its Content-Length)."""
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    s.settimeout(10)
    got = b""
    while b"\r\n\r\n" not in got:
        data = s.recv(65536)
        if not data:
            return got
        got += data
    head, _, body = got.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def from_address(port, source):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def test_health_and_ready_answer_while_64_idle_connections_hold_every_slot(tmp_path):
    node = ServerProcess(tmp_path, http=True)  # the defaults: 64 connections, 16 per address
    held = []
    try:
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            held += [from_address(node.http_port, source) for _ in range(16)]
        assert answer_on(held[-1], "/health").startswith(b"HTTP/1.1 200 ")  # all 64 accepted, the last answered
        began = time.monotonic()
        probes = [from_address(node.http_port, "127.0.0.1") for _ in range(2)]
        held += probes  # closed at the end
        assert answer_on(probes[0], "/health").startswith(b"HTTP/1.1 200 ")
        assert answer_on(probes[1], "/ready").startswith(b"HTTP/1.1 200 ")
        assert time.monotonic() - began < 5
        # From an address already at its share (16): that address's oldest idle one makes room.
        held.append(from_address(node.http_port, "127.0.0.3"))
        assert answer_on(held[-1], "/health").startswith(b"HTTP/1.1 200 ")
        closed = []
        for s in held[:17]:
            s.settimeout(0.2)
            try:
                closed.append(s.recv(1) == b"")
            except TimeoutError:
                closed.append(False)
        assert closed == [True, True] + [False] * 14 + [True], closed  # the oldest idle ones, no more
    finally:
        for s in held:
            s.close()
        node.stop()


def test_a_request_trickling_in_is_answered_408_at_the_request_timeout(node):
    s = connect(node)
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    started = time.monotonic()
    try:
        for byte in request:  # a byte every 0.25 s: each resets the 1 s idle timeout
            s.sendall(bytes([byte]))
            s.settimeout(0.25)
            try:
                if s.recv(65536, socket.MSG_PEEK):
                    break  # the node answered
            except TimeoutError:
                pass
    except OSError:
        pass  # reset: closed
    answer = read_all(s, 5)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"REQUEST_TIMEOUT"' in answer
    assert 1.9 <= took < 10, took
    s.close()

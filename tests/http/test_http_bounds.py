"""The HTTP listener's bounds on a real node (twistd on 127.0.0.1, raw sockets): a body over the
limit is refused before it is read (declared length) or where it passes it (chunked), never
spooled; connections past --http-max-connections are closed on accept; an idle connection is
closed without a log line; a request trickling in is cut at --http-request-timeout."""

from __future__ import annotations

import socket
import time

import pytest

from streamlog.testing import ServerProcess, wait_for


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


def test_connections_past_the_cap_are_closed_on_accept_and_idle_ones_without_a_log_line(node):
    held = [connect(node) for _ in range(4)]
    extra = connect(node)
    assert read_all(extra, 5) == b""  # closed at once, nothing answered
    extra.close()
    # The held ones are idle: closed after --http-idle-timeout (1 s), then a new one is let in.
    for s in held:
        assert read_all(s, 10) == b""
        s.close()

    def answered():
        s = connect(node)
        s.sendall(b"GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        got = read_all(s)
        s.close()
        return got.startswith(b"HTTP/1.1 200 ")

    wait_for(answered, 10, "a connection to be answered once the idle ones closed")
    assert "Timing out client" not in node.log()


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

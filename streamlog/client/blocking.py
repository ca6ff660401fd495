"""A small blocking client over a plain socket: no reactor, for scripts and tests.

Same methods and same typed errors (L{streamlog.errors}) as the Twisted
client; one request at a time (no pipelining), each bounded by C{timeout}.
It connects lazily, and reconnects on the next call after the connection
was lost (a request in flight when that happens fails with
L{errors.ConnectionLost}; a retried Send may duplicate).

    with BlockingClient("127.0.0.1:7070") as c:
        c.create_topic("events", partitions=3)
        print(c.send("events", {"n": 1}))
        print(c.poll("events", 0, 0)["messages"])
"""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson

from streamlog import errors, wire
from streamlog.client import requests
from streamlog.client.addresses import DEFAULT_ADDRESS, describe_address, parse_target
from streamlog.client.requests import MAX_ANSWER_BYTES


class _NoAnswerYet(Exception):
    """No answer within the time given to L{BlockingClient.next_answer} (not an error)."""


class BlockingClient:
    """@param address: C{"HOST:PORT"}, C{"tcp:HOST:PORT"}, C{(host, port)} or C{"unix:/path"}.
    @param timeout: seconds for connecting and for each answer (None: forever).
    """

    def __init__(self, address: Any = DEFAULT_ADDRESS, timeout: float | None = 30.0) -> None:
        kind, where = parse_target(address)
        self.unix_path: str | None = where if kind == "unix" else None
        self.host, self.port = (None, None) if kind == "unix" else where
        #: The server as messages name it.
        self.address = f"unix:{where}" if kind == "unix" else describe_address(where)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._next_id = 1

    # --- connection ------------------------------------------------------------------

    def connect(self) -> None:
        if self._sock is not None:
            return
        try:
            if self.unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.timeout)
                    sock.connect(self.unix_path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError:
            raise errors.Timeout(f"connecting to {self.address} timed out") from None
        except OSError as e:
            raise errors.ConnectionLost(f"cannot connect to {self.address}: {e.strerror or e}",
                                        address=self.address) from None
        self._sock = sock
        self._buffer = b""

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer = b""
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- requests ------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None,
             expect_answer: bool = True) -> Any:
        """Send one request and wait for its answer; returns C{result} or raises a L{errors.StreamlogError}."""
        self.connect()
        assert self._sock is not None
        rid = self._next_id
        self._next_id += 1
        if timeout is None:
            timeout = self.timeout
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(wire.encode_request(rid, method, params or {}))
        except TimeoutError:
            self.close()
            raise errors.Timeout(f"sending {method} timed out", method=method) from None
        except OSError as e:
            self.close()
            raise errors.ConnectionLost(f"connection lost sending {method}: {e}", method=method) from None
        if not expect_answer:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            answer = self._read_answer(method, deadline)
            if answer.get("id") == rid:
                break
            if answer.get("id") is None and isinstance(answer.get("error"), dict):
                raise errors.from_wire(answer["error"])
            # an answer to an earlier request that timed out: skip it
        error = answer.get("error")
        if isinstance(error, dict):
            raise errors.from_wire(error)
        return answer.get("result")

    # --- pipelining: several requests in flight, answers in any order ------------------

    def submit(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Write one request without waiting; returns its id, for L{next_answer}.

        For a reader that keeps a long Poll per partition in flight on one
        connection (C{streamlog consume}).  Do not mix with L{call} while
        submitted requests are unanswered: C{call} skips answers it did not ask for.
        """
        self.connect()
        assert self._sock is not None
        rid = self._next_id
        self._next_id += 1
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(wire.encode_request(rid, method, params or {}))
        except TimeoutError:
            self.close()
            raise errors.Timeout(f"sending {method} timed out", method=method) from None
        except OSError as e:
            self.close()
            raise errors.ConnectionLost(f"connection lost sending {method}: {e}", method=method) from None
        return rid

    def next_answer(self, timeout: float | None) -> tuple[int, Any] | None:
        """The next answer to a L{submit}ted request: C{(id, result)}, or C{(id, error)} with the
        L{errors.StreamlogError} as the value (not raised); None if none came within C{timeout}.

        The connection stays usable after None (the answers still owed come later).
        An error the server could not tie to a request (id null) is raised.
        """
        if self._sock is None:
            raise errors.ConnectionLost("not connected: nothing was submitted on this connection")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            answer = self._read_answer("the submitted requests", deadline, close_on_timeout=False)
        except _NoAnswerYet:
            return None
        rid = answer.get("id")
        error = answer.get("error")
        if rid is None and isinstance(error, dict):
            raise errors.from_wire(error)
        if isinstance(error, dict):
            return rid, errors.from_wire(error)
        return rid, answer.get("result")

    def _read_answer(self, method: str, deadline: float | None, close_on_timeout: bool = True) -> dict[str, Any]:
        assert self._sock is not None
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
                try:
                    answer = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    self.close()
                    raise errors.ParseError(f"the server sent invalid JSON: {e}") from None
                if isinstance(answer, dict):
                    return answer
                continue
            if len(self._buffer) > MAX_ANSWER_BYTES:
                self.close()
                raise errors.LineTooLong(f"an answer line is longer than {MAX_ANSWER_BYTES} bytes")
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if not close_on_timeout:
                        raise _NoAnswerYet()
                    self.close()  # the answer may still come: the stream is out of step
                    raise errors.Timeout(f"no answer to {method} in time", method=method)
                self._sock.settimeout(remaining)
            else:
                self._sock.settimeout(None)
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                if not close_on_timeout:
                    raise _NoAnswerYet() from None
                self.close()
                raise errors.Timeout(f"no answer to {method} in time", method=method) from None
            except OSError as e:
                self.close()
                raise errors.ConnectionLost(f"connection lost waiting for {method}: {e}", method=method) from None
            if not data:
                self.close()
                raise errors.ConnectionLost(f"the server closed the connection before answering {method}",
                                            method=method)
            self._buffer += data

    # --- the methods (as L{streamlog.client.connection.StreamlogClient}) ------------------

    def send(self, topic: str, value: Any, key: str | None = None, partition: int | None = None,
             headers: dict[str, str] | None = None, acks: str = "all") -> dict[str, Any] | None:
        params = requests.send(topic, value, key, partition, headers, acks)
        return self.call("Send", params, expect_answer=acks != "none")

    def send_batch(self, topic: str, messages: list[dict[str, Any]], acks: str = "all") -> dict[str, Any] | None:
        params = requests.send_batch(topic, messages, acks)
        return self.call("SendBatch", params, expect_answer=acks != "none")

    def poll(self, topic: str, partition: int, offset: int, max_messages: int | None = None,
             max_bytes: int | None = None, max_wait_ms: int = 0) -> dict[str, Any]:
        params = requests.poll(topic, partition, offset, max_messages, max_bytes, max_wait_ms)
        timeout = None if self.timeout is None else self.timeout + max_wait_ms / 1000.0
        return self.call("Poll", params, timeout=timeout)

    def create_topic(self, topic: str, partitions: int = 1, config: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.call("CreateTopic", requests.create_topic(topic, partitions, config))

    def delete_topic(self, topic: str) -> dict[str, Any]:
        return self.call("DeleteTopic", {"topic": topic})

    def list_topics(self) -> list[dict[str, Any]]:
        return self.call("ListTopics", {})["topics"]

    def describe_topic(self, topic: str) -> dict[str, Any]:
        return self.call("DescribeTopic", {"topic": topic})

    def list_offsets(self, topic: str, partition: int = 0, at: str | int = "latest") -> int:
        return self.call("ListOffsets", {"topic": topic, "partition": partition, "at": at})["offset"]

    def ping(self) -> dict[str, Any]:
        return self.call("Ping", {})

"""Where the fuzzer's bytes go: a broker in memory, or a real server over TCP.

Both give the session the same few operations: write bytes on the fuzzed
connection (in pieces, to split lines across reads), read answer lines until
a condition holds or the connection closes, ask the node for its state on a
separate admin connection, ping it on a fresh connection, and flood it with
connections.  The in-memory target is deterministic: time is a Clock that
moves only when the session says so.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet.task import Clock

from streamlog import wire
from streamlog.broker.broker import BrokerConfig
from streamlog.testing import BrokerHarness, Connection, wait_for

from .oracle import FuzzFailure

Until = Callable[[list[bytes]], bool] | None


class HarnessTarget:
    """A broker on MemoryStorage behind its real protocol, on StringTransports."""

    supports_half_close = False
    byte_split_max = 300  # steps this short may be written a byte at a time

    def __init__(self, limits: wire.Limits, config: BrokerConfig | None = None) -> None:
        self.limits = limits
        self.config = config or BrokerConfig(limits=limits)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # timestamps like real ones
        self.harness = BrokerHarness(config=self.config, clock=self.clock)
        self.conn = self.harness.connect()
        self.admin_conn = self.harness.connect()
        self._admin_id = 0

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def send(self, pieces: list[bytes], half_close: bool = False) -> None:
        for piece in pieces:
            if self.conn.closed:
                break
            self.conn.protocol.dataReceived(piece)

    def read(self, until: Until, wait: float) -> tuple[list[bytes], bool]:
        """The answer lines written so far; if C{until} does not hold yet, let
        C{wait} virtual seconds pass (parked polls time out) and read again."""
        lines = self._take()
        if until is not None and not until(lines) and wait > 0 and not self.conn.closed:
            self.clock.advance(wait)
            lines += self._take()
        return lines, self.conn.closed

    def _take(self) -> list[bytes]:
        data = self.conn.transport.value()
        self.conn.transport.clear()
        if data and not data.endswith(b"\n"):
            raise AssertionError(f"answer without its newline: {data[-200:]!r}")
        return data.split(b"\n")[:-1] if data else []

    def reconnect(self) -> None:
        self.conn.lose()
        self.conn = self.harness.connect()

    def reset(self) -> None:
        """New fuzzed and admin connections (after a finding)."""
        self.reconnect()
        self.admin_conn.lose()
        self.admin_conn = self.harness.connect()

    def between_steps(self, rng: random.Random) -> None:
        self.clock.advance(rng.choice([0.0, 0.0, 0.001, 0.01, 0.05, 0.3]))

    def admin(self, method: str, params: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        self._admin_id += 1
        t = self.admin_conn.transport
        self.admin_conn.protocol.dataReceived(wire.encode_request(self._admin_id, method, params))
        raw = t.value()
        t.clear()
        assert raw.count(b"\n") == 1 and raw.endswith(b"\n"), raw[:300]
        answer = orjson.loads(raw)
        assert answer["id"] == self._admin_id, answer
        return raw[:-1], answer

    def admin_many(self, calls: list[tuple[str, dict[str, Any]]]) -> list[tuple[bytes, dict[str, Any]]]:
        """Several admin requests in one write; their answers in order."""
        first = self._admin_id + 1
        data = []
        for method, params in calls:
            self._admin_id += 1
            data.append(wire.encode_request(self._admin_id, method, params))
        t = self.admin_conn.transport
        self.admin_conn.protocol.dataReceived(b"".join(data))
        raws = t.value().split(b"\n")[:-1]
        t.clear()
        return _in_order(raws, first, len(calls))

    def fresh_ping(self) -> dict[str, Any]:
        conn = self.harness.connect()
        try:
            return conn.call("Ping")
        finally:
            conn.lose()

    def flood(self) -> tuple[int, list[bytes], list[bool]]:
        """Open connections until the limit, then two more: (how many were open
        when the first was refused, what each refused one got, whether each was closed)."""
        extra: list[Connection] = []
        accepted = 0
        refused: list[bytes] = []
        closed: list[bool] = []
        try:
            for _ in range(self.limits.max_connections + 2):
                c = self.harness.connect()
                extra.append(c)
                if c.closed:
                    if not refused:
                        accepted = sum(1 for p in self.harness.factory.connections if not p.transport.disconnecting)
                    refused.append(c.transport.value())
                    closed.append(True)
                    if len(refused) == 2:
                        break
                    continue
                answer = c.call("Ping")
                assert "result" in answer, answer
            return accepted, refused, closed
        finally:
            for c in extra:
                c.lose()

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        self.harness.stop()
        leftover = [c for c in self.clock.getDelayedCalls() if c.active()]
        for call in leftover:
            call.cancel()


def _in_order(raws: list[bytes], first: int, n: int) -> list[tuple[bytes, dict[str, Any]]]:
    by_id = {}
    for raw in raws:
        answer = orjson.loads(raw)
        by_id[answer["id"]] = (raw, answer)
    missing = [i for i in range(first, first + n) if i not in by_id]
    if missing or len(raws) != n:
        raise FuzzFailure(f"the admin connection got answers {sorted(by_id)}, expected ids {first}..{first + n - 1}")
    return [by_id[i] for i in range(first, first + n)]


class RawConnection:
    """A blocking TCP connection that writes bytes and reads answer lines with deadlines."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def read(self, until: Until, timeout: float) -> tuple[list[bytes], bool]:
        """Lines until C{until(lines)} holds or the server closes (None: until it closes)."""
        deadline = time.monotonic() + timeout
        lines: list[bytes] = []
        while True:
            if b"\n" in self.buffer:
                *complete, self.buffer = self.buffer.split(b"\n")
                lines.extend(complete)
            if (until is not None and until(lines)) or self.eof:
                return lines, self.eof
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return lines, self.eof
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.buffer += data

    def call(self, rid: Any, method: str, params: dict[str, Any] | None, timeout: float = 10.0) -> tuple[bytes, Any]:
        self.send(wire.encode_request(rid, method, params or {}))
        lines, _ = self.read(lambda lines: bool(lines), timeout)
        if not lines:
            raise FuzzFailure(f"no answer to {method} within {timeout}s (server closed: {self.eof})")
        return lines[0], orjson.loads(lines[0])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class SocketTarget:
    """A real streamlog server process, spoken to in raw bytes over 127.0.0.1."""

    supports_half_close = True
    segmented = True  # the server's storage (setups.server_setup runs --storage segmented)
    byte_split_max = 120  # a send per byte is a system call here

    def __init__(self, server: Any, limits: wire.Limits, config: BrokerConfig, answer_timeout: float = 10.0,
                 seed: int = 0) -> None:
        self.server = server
        self.limits = limits
        self.config = config
        self.answer_timeout = answer_timeout
        self.conn = RawConnection(server.port)
        self.admin_conn = RawConnection(server.port)
        self._admin_id = 0
        self._rng = random.Random(seed)

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def send(self, pieces: list[bytes], half_close: bool = False) -> None:
        for i, piece in enumerate(pieces):
            if not self.conn.send(piece):
                return
            if i + 1 < len(pieces) and len(pieces) <= 3 and self._rng.random() < 0.3:
                time.sleep(0.0005)  # let the server read this piece on its own (the rest may coalesce)
        if half_close:
            try:
                self.conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def read(self, until: Until, wait: float) -> tuple[list[bytes], bool]:
        return self.conn.read(until, wait + self.answer_timeout)

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = RawConnection(self.server.port)

    def reset(self) -> None:
        self.reconnect()
        self.admin_conn.close()
        self.admin_conn = RawConnection(self.server.port)

    def between_steps(self, rng: random.Random) -> None:
        pass

    def admin(self, method: str, params: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        self._admin_id += 1
        raw, answer = self.admin_conn.call(self._admin_id, method, params, self.answer_timeout)
        assert answer["id"] == self._admin_id, answer
        return raw, answer

    def admin_many(self, calls: list[tuple[str, dict[str, Any]]]) -> list[tuple[bytes, dict[str, Any]]]:
        first = self._admin_id + 1
        data = []
        for method, params in calls:
            self._admin_id += 1
            data.append(wire.encode_request(self._admin_id, method, params))
        self.admin_conn.send(b"".join(data))
        raws, _ = self.admin_conn.read(lambda lines: len(lines) >= len(calls), self.answer_timeout)
        return _in_order(raws, first, len(calls))

    def fresh_ping(self) -> dict[str, Any]:
        conn = RawConnection(self.server.port)
        try:
            return conn.call(1, "Ping", None, self.answer_timeout)[1]
        finally:
            conn.close()

    def flood(self) -> tuple[int, list[bytes], list[bool]]:
        extra: list[RawConnection] = []
        accepted = 2  # the fuzzed and the admin connection
        refused: list[bytes] = []
        closed: list[bool] = []
        try:
            for i in range(self.limits.max_connections + 2):
                c = RawConnection(self.server.port)
                extra.append(c)
                c.send(wire.encode_request(i, "Ping", {}))
                lines, eof = c.read(lambda lines: bool(lines), self.answer_timeout)
                if lines and b'"TOO_MANY_CONNECTIONS"' in lines[0]:
                    _, eof = c.read(None, self.answer_timeout)
                    refused.append(lines[0])
                    closed.append(eof)
                    if len(refused) == 2:
                        break
                    continue
                assert lines and b'"pong":true' in lines[0], lines
                accepted += 1
            return accepted, refused, closed
        finally:
            for c in extra:
                c.close()
            # The server frees their slots when it sees them close, a moment later.
            wait_for(self._accepts, self.answer_timeout, "the server to free the flood's connection slots")

    def _accepts(self) -> bool:
        try:
            return "result" in self.fresh_ping()
        except (OSError, FuzzFailure):
            return False

    def alive(self) -> bool:
        return self.server.alive()

    def close(self) -> None:
        self.conn.close()
        self.admin_conn.close()

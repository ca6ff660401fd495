"""The fake cluster of fake_cluster on real sockets (127.0.0.1, one thread per connection), for the
blocking client and the CLI, which do not run on a reactor.

Every request is handled under one lock, against the same FakeCluster state
the tests change; long polls park on a clock made of threading.Timers.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import orjson
from fake_cluster import _PARKED, FakeCluster

from streamlog import errors, wire


class _Timer:
    def __init__(self, clock: ThreadClock, delay: float, f: Any, args: tuple[Any, ...]) -> None:
        self._called = False
        self._cancelled = False

        def run() -> None:
            with clock.lock:
                if not self._cancelled:
                    self._called = True
                    f(*args)

        self._thread = threading.Timer(delay, run)
        self._thread.daemon = True
        self._thread.start()

    def active(self) -> bool:
        return not (self._called or self._cancelled)

    def cancel(self) -> None:
        self._cancelled = True
        self._thread.cancel()


class ThreadClock:
    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock

    def seconds(self) -> float:
        import time

        return time.time()

    def callLater(self, delay: float, f: Any, *args: Any) -> _Timer:
        return _Timer(self, delay, f, args)


class _Conn:
    """The FakeNodeProtocol's answer() over a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.transport = self
        self.disconnecting = False

    def answer(self, rid: Any, result: Any = None, error: errors.StreamlogError | None = None) -> None:
        obj = {"id": rid, "error": error.to_wire()} if error is not None else {"id": rid, "result": result}
        try:
            self.sock.sendall(orjson.dumps(obj) + b"\n")
        except OSError:
            self.disconnecting = True


class ThreadedCluster:
    def __init__(self, nodes: int = 3) -> None:
        self.lock = threading.RLock()
        self.listeners = []
        for _ in range(nodes):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            self.listeners.append(s)
        addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in self.listeners]
        self.fake = FakeCluster(ThreadClock(self.lock), nodes=nodes, addresses=addresses)
        self.sockets: list[socket.socket] = []
        for node_id, listener in zip(self.fake.nodes, self.listeners, strict=True):
            threading.Thread(target=self._accept, args=(node_id, listener), daemon=True).start()

    @property
    def bootstrap(self) -> str:
        return self.fake.bootstrap

    def _accept(self, node_id: int, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            if not self.fake.nodes[node_id].up:
                sock.close()
                continue
            self.sockets.append(sock)
            threading.Thread(target=self._serve, args=(node_id, sock), daemon=True).start()

    def _serve(self, node_id: int, sock: socket.socket) -> None:
        conn = _Conn(sock)
        buffer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._handle(node_id, conn, line)
        except OSError:
            return
        finally:
            with self.lock:
                self.fake.nodes[node_id].forget_parked(conn)  # type: ignore[arg-type]
            sock.close()

    def _handle(self, node_id: int, conn: _Conn, line: bytes) -> None:
        with self.lock:
            node = self.fake.nodes[node_id]
            request = wire.decode_request(line)
            self.fake.requests.append((node_id, request.method, request.params))
            hole = node.black_hole
            if hole is True or (hole and request.method in hole):
                node.swallowed.append((request.method, request.params))  # read, never answered
                return
            try:
                result = node.handle(conn, request)  # type: ignore[arg-type]
            except errors.StreamlogError as e:
                conn.answer(request.id, error=e)
                return
            if result is not _PARKED:
                conn.answer(request.id, result)

    def kill(self, node_id: int) -> None:
        """The node stops: its listener closes (new connections are refused), its connections drop."""
        with self.lock:
            self.fake.nodes[node_id].up = False
            self.fake.nodes[node_id].forget_parked()
            listener = self.listeners[node_id - 1]
            listener.close()
            for sock in list(self.sockets):
                try:
                    port = sock.getsockname()[1]
                except OSError:
                    continue
                if port == int(self.fake.nodes[node_id].address.rsplit(":", 1)[1]):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def close(self) -> None:
        for s in self.listeners:
            s.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self.lock:
            for node in self.fake.nodes.values():
                node.forget_parked()

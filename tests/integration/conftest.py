"""Real processes on 127.0.0.1: start twistd daemons, wait on conditions, stop them by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import orjson
import pytest

import streamlog

BIN = Path(sys.executable).parent
# The directory holding the streamlog package under test (a checkout or site-packages);
# it also holds twisted/plugins/streamlog_plugins.py, so twistd finds the dropin there.
CODE_ROOT = str(Path(streamlog.__file__).resolve().parent.parent)


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    """Poll C{condition} until it returns something truthy or C{timeout} passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = CODE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Daemon:
    """One twistd process started by a test; stopped only by its own pid."""

    def __init__(self, name: str, args: list[str], workdir: Path, stdin: int | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.stdout_path = workdir / f"{name}.stdout"
        self.args = args
        self._stdout = open(self.stdout_path, "wb")
        command = [str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={self.log_path}"] + args
        self.process = subprocess.Popen(
            command, cwd=workdir, env=child_env(), stdout=self._stdout, stderr=subprocess.STDOUT,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self) -> bytes:
        self._stdout.flush()
        return self.stdout_path.read_bytes()

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        self._stdout.close()
        return self.process.returncode


class ServerProcess(Daemon):
    """C{twistd -n streamlog-server} on a free 127.0.0.1 port (announced in a port file)."""

    def __init__(self, workdir: Path, extra: list[str] | None = None, name: str = "server") -> None:
        self.port_file = workdir / f"{name}.port"
        if self.port_file.exists():
            self.port_file.unlink()
        args = [
            "streamlog-server",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--port-file", str(self.port_file),
            "--data-dir", str(workdir / "data"),
        ] + (extra or [])
        super().__init__(name, args, workdir)
        self.port = int(wait_for(self._read_port, 30, f"{name} to listen (log: {self.log_path})"))

    def _read_port(self) -> int | None:
        if not self.alive():
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}\n{self.stdout()!r}")
        try:
            return int(self.port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"


class LineClient:
    """A bare blocking JSON-lines connection (no client library), for end-to-end checks."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        self._id = 0

    def call(self, method: str, params: dict | None = None) -> dict:
        self._id += 1
        self.sock.sendall(orjson.dumps({"id": self._id, "method": method, "params": params or {}}) + b"\n")
        line = self.reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        answer = orjson.loads(line)
        assert answer["id"] == self._id
        return answer

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def daemons():
    """Collects the daemons a test starts and stops them all (by pid) afterwards."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()

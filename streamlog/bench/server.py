"""Start and stop a private streamlog server process for a benchmark run.

The server listens on a free port of 127.0.0.1 (C{tcp:0}), writes its port to
a file, keeps its data in a fresh temporary directory, and is stopped by its
PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import streamlog

#: The directory that holds the C{streamlog} package (and C{twisted/plugins}).
SOURCE_ROOT = str(Path(streamlog.__file__).resolve().parent.parent)


class ServerProcess:
    def __init__(self, storage: str = "segmented", fsync: str = "always",
                 extra_args: tuple[str, ...] = (), keep_dir: bool = False) -> None:
        self.storage = storage
        self.fsync = fsync
        self.extra_args = tuple(extra_args)
        self.keep_dir = keep_dir
        self.dir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._log_file = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> str:
        assert self.dir is not None
        return os.path.join(self.dir, "server.log")

    def argv(self, port_file: str, data_dir: str) -> list[str]:
        return [sys.executable, "-m", "twisted", "streamlog-server",
                "--listen", "tcp:0:interface=127.0.0.1", "--port-file", port_file,
                "--data-dir", data_dir, "--storage", self.storage, "--fsync", self.fsync,
                *self.extra_args]

    def start(self, timeout: float = 20.0) -> int:
        self.dir = tempfile.mkdtemp(prefix="streamlog-bench-")
        port_file = os.path.join(self.dir, "port")
        data_dir = os.path.join(self.dir, "data")
        env = dict(os.environ)
        env["PYTHONPATH"] = SOURCE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv(port_file, data_dir), cwd=self.dir, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"the streamlog server exited with code {code}:\n{tail}")
            try:
                with open(port_file) as f:
                    text = f.read().strip()
                if text:
                    self.port = int(text)
                    return self.port
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.02)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"the streamlog server did not listen within {timeout:g}s:\n{tail}")

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
            except ProcessLookupError:
                pass
        if proc is not None:
            self.proc_returncode = proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.dir is not None and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

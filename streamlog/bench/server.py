"""A private streamlog server for one benchmark run.

A thin wrapper around L{streamlog.testing.ServerProcess} (the same launcher
the end-to-end tests use: C{twistd -n streamlog-server} on a free port of
127.0.0.1, announced by a port file, stopped by its PID), with its data in a
fresh temporary directory that is removed afterwards unless kept.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from streamlog import testing


class ServerProcess:
    def __init__(self, storage: str = "segmented", fsync: str = "always",
                 extra_args: tuple[str, ...] = (), keep_dir: bool = False, http: bool = False) -> None:
        self.storage = storage
        self.fsync = fsync
        self.extra_args = tuple(extra_args)
        self.keep_dir = keep_dir
        #: Whether the server has its HTTP listener (on a free port: L{http_port}); else --http-listen none.
        self.http = http
        self.http_port: int | None = None
        self.dir: str | None = None
        self.port: int | None = None
        self._server: testing.ServerProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    def start(self, timeout: float = 20.0) -> int:
        self.dir = tempfile.mkdtemp(prefix="streamlog-bench-")
        try:
            self._server = testing.ServerProcess(
                Path(self.dir), ["--storage", self.storage, "--fsync", self.fsync, *self.extra_args],
                timeout=timeout, http=self.http)
        except AssertionError as e:  # it exited, or did not listen in time
            self.stop()
            raise RuntimeError(f"the streamlog server did not start: {e}") from None
        self.port = self._server.port
        self.http_port = self._server.http_port
        return self.port

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        if self.dir is not None and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

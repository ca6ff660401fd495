"""The data directory's lock: one holder at a time, a kernel lock, never the file's existence."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from streamlog.storage.lock import LOCK_FILE, DataDirLock, DataDirLocked, read_holder
from streamlog.testing import child_env

HOLDER = {"pid": 4242, "host": "node-a", "started": "2026-12-01T10:00:00+00:00", "listen": "127.0.0.1:7070"}


def file_state(path) -> tuple[bytes, int, int]:
    st = os.stat(path)
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def test_a_second_lock_is_refused_naming_the_holder_and_changes_nothing(tmp_path):
    first = DataDirLock.acquire(str(tmp_path), HOLDER)
    before = file_state(tmp_path / LOCK_FILE)
    with pytest.raises(DataDirLocked) as raised:
        DataDirLock.acquire(str(tmp_path), {"pid": 1, "host": "node-b"})
    assert raised.value.holder == HOLDER
    assert str(raised.value) == (
        f"the data dir {tmp_path} is locked by another streamlog server "
        "(pid 4242 on node-a, listening on 127.0.0.1:7070, started 2026-12-01T10:00:00+00:00)"
    )
    assert file_state(tmp_path / LOCK_FILE) == before
    first.release()


def test_release_lets_the_next_holder_in_and_keeps_the_file(tmp_path):
    first = DataDirLock.acquire(str(tmp_path), HOLDER)
    inode = os.stat(tmp_path / LOCK_FILE).st_ino
    first.release()
    assert not first.held
    assert (tmp_path / LOCK_FILE).exists()  # never unlinked: the lock is on this inode
    second = DataDirLock.acquire(str(tmp_path), {"pid": 7})
    assert os.stat(tmp_path / LOCK_FILE).st_ino == inode
    assert read_holder(str(tmp_path)) == {"pid": 7}  # rewritten in place, no stale tail
    second.release()


def test_update_rewrites_the_holder_in_place(tmp_path):
    lock = DataDirLock.acquire(str(tmp_path), {**HOLDER, "listen": "tcp:0:interface=127.0.0.1"})
    lock.update(HOLDER)
    assert orjson.loads((tmp_path / LOCK_FILE).read_bytes()) == HOLDER
    lock.release()
    with pytest.raises(ValueError):
        lock.update(HOLDER)


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    # A child takes the lock and is SIGKILLed: its file stays, its lock goes with it.
    code = (
        "import os, sys, signal\n"
        "from streamlog.storage.lock import DataDirLock\n"
        "DataDirLock.acquire(sys.argv[1], {'pid': os.getpid()})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=child_env(), timeout=30)
    assert child.returncode == -9
    assert read_holder(str(tmp_path))["pid"] > 0  # the stale file names the dead holder
    lock = DataDirLock.acquire(str(tmp_path), HOLDER)
    assert read_holder(str(tmp_path)) == HOLDER
    lock.release()


def test_an_unreadable_lock_file_still_refuses_and_says_so(tmp_path):
    first = DataDirLock.acquire(str(tmp_path), HOLDER)
    with open(tmp_path / LOCK_FILE, "r+b") as f:
        f.write(b"\0garbage")
    with pytest.raises(DataDirLocked, match="its lock file does not say which"):
        DataDirLock.acquire(str(tmp_path), HOLDER)
    first.release()

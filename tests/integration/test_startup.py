"""`twistd streamlog-server` start-up as a real process: refusals are one line and a non-zero exit.

Each refusal is checked for its exit status, its one line (on stderr: twistd
has not taken stderr over for its log yet when the node starts), and the
absence of a traceback.  A server that keeps running where it should have
refused is killed by the timeout, and the test fails.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from streamlog import __version__
from streamlog.storage.lock import LOCK_FILE, read_holder
from streamlog.testing import TWISTD, Daemon, LineClient, ServerProcess, child_env, wait_for

FREE_PORT = "tcp:0:interface=127.0.0.1"


def refused(cwd: Path, args: list[str], daemon: bool = False, timeout: float = 20.0,
            preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run a server that must refuse to start; return its finished process."""
    command = [TWISTD, *([] if daemon else ["--nodaemon"]), "--pidfile=", "streamlog-server", *args]
    try:
        return subprocess.run(command, cwd=cwd, env=child_env(), capture_output=True, text=True,
                              timeout=timeout, preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired as e:  # run() has killed it (our own child, by its pid)
        raise AssertionError(f"the server did not exit within {timeout}s; it wrote:\n{e.stdout}\n{e.stderr}") from None


def assert_one_line(done: subprocess.CompletedProcess, pattern: str) -> str:
    """Exit status 1, no traceback, and stderr is exactly one line matching C{pattern}."""
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), output
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory below C{root}: its mtime, and a file's size and hash."""
    state: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")) + [root]:
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path.relative_to(root))] = (st.st_mtime_ns, st.st_size if digest else None, digest)
    return state


def test_port_in_use_exits_1_with_one_line(tmp_path, daemons):
    first = ServerProcess(tmp_path, ["--storage", "memory"], name="first")
    daemons.append(first)
    listen = f"tcp:{first.port}:interface=127.0.0.1"
    done = refused(tmp_path, ["--listen", listen, "--data-dir", str(tmp_path / "second")])
    assert_one_line(done, re.escape(f"streamlog-server: cannot listen on {listen}: Address already in use"))
    client = LineClient(first.port)  # the first server is untouched
    assert client.call("Ping")["result"]["pong"]
    client.close()


def test_bad_endpoint_string_is_a_usage_error(tmp_path):
    done = refused(tmp_path, ["--listen", "7070", "--data-dir", str(tmp_path / "data")])
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    # twistd prints the options, then the one line that says what is wrong.
    assert done.stdout.splitlines()[-1].endswith(
        "--listen '7070' is not a server endpoint description (Unknown endpoint type: '7070'); "
        "for example tcp:7070:interface=127.0.0.1 or unix:/run/streamlog.sock"
    ), done.stdout
    assert not (tmp_path / "data").exists()


def test_an_address_the_host_does_not_have_exits_1_with_one_line(tmp_path):
    done = refused(tmp_path, ["--listen", "tcp:0:interface=192.0.2.1", "--data-dir", str(tmp_path / "data")])
    assert_one_line(done, re.escape("streamlog-server: cannot listen on tcp:0:interface=192.0.2.1: ") + ".+")


def test_data_dir_on_a_file_exits_1_with_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory\n")
    done = refused(tmp_path, ["--listen", FREE_PORT, "--data-dir", str(tmp_path / "file")])
    assert_one_line(done, re.escape(f"streamlog-server: the data dir {tmp_path / 'file'} is not a directory"))
    assert (tmp_path / "file").read_text() == "not a directory\n"


@pytest.mark.parametrize("path, reason", [
    ("/dev/null/streamlog-data", "Not a directory"),
    ("x" * 300, "File name too long"),
])
def test_an_impossible_data_dir_exits_1_with_one_line(tmp_path, path, reason):
    done = refused(tmp_path, ["--listen", FREE_PORT, "--data-dir", path])
    full = os.path.join(tmp_path, path)
    assert_one_line(done, re.escape(f"streamlog-server: cannot create the data dir {full}: {reason}"))


def _as_an_ordinary_user() -> None:
    """In the child, before exec: drop root's power to ignore file modes (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH, CAP_FOWNER) from the bounding set, so that root meets 0555 as anyone would."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("existing", [True, False], ids=["existing-dir", "dir-to-create"])
def test_an_unwritable_data_dir_exits_1_with_one_line(tmp_path, existing):
    parent = tmp_path / "parent"
    parent.mkdir()
    data = parent / "data"
    if existing:
        data.mkdir()
        data.chmod(0o555)
        line = f"streamlog-server: the data dir {data} is not writable by this user (uid {os.getuid()})"
    else:
        parent.chmod(0o555)
        line = f"streamlog-server: cannot create the data dir {data}: Permission denied"
    try:
        done = refused(tmp_path, ["--listen", FREE_PORT, "--data-dir", str(data)],
                       preexec_fn=_as_an_ordinary_user if os.geteuid() == 0 else None)
    finally:
        parent.chmod(0o755)
        if existing:
            data.chmod(0o755)
    assert_one_line(done, re.escape(line))
    assert not existing or list(data.iterdir()) == []


def test_a_second_server_on_a_locked_data_dir_exits_1_naming_the_holder_and_changes_nothing(tmp_path, daemons):
    first = ServerProcess(tmp_path)
    daemons.append(first)
    client = LineClient(first.port)
    client.call("CreateTopic", {"topic": "t", "partitions": 2})
    for i in range(20):
        assert client.call("Send", {"topic": "t", "value": i})["result"]["durability"] == "fsync"
    data = tmp_path / "data"
    # Freeze the holder (its flock stays held) so that any change on disk is the second server's.
    first.signal(signal.SIGSTOP)
    try:
        before = snapshot(data)
        done = refused(tmp_path, ["--listen", FREE_PORT, "--data-dir", str(data)])
        after = snapshot(data)
    finally:
        first.signal(signal.SIGCONT)
    holder = f"streamlog-server: the data dir {data} is locked by another streamlog server (pid {first.pid} on "
    line = assert_one_line(done, re.escape(holder) + ".+")
    assert f"listening on {first.address}, started " in line
    assert after == before
    # The holder serves on, with its data whole.
    polled = client.call("Poll", {"topic": "t", "partition": 0, "offset": 0})["result"]["messages"]
    polled += client.call("Poll", {"topic": "t", "partition": 1, "offset": 0})["result"]["messages"]
    assert sorted(m["value"] for m in polled) == list(range(20))
    client.close()


def test_a_sigkilled_servers_lock_file_does_not_block_the_restart(tmp_path, daemons):
    first = ServerProcess(tmp_path, name="first")
    daemons.append(first)
    client = LineClient(first.port)
    assert client.call("Send", {"topic": "t", "value": "before the kill"})["result"]["durability"] == "fsync"
    client.close()
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert read_holder(str(tmp_path / "data"))["pid"] == first.pid  # its file is still there
    second = ServerProcess(tmp_path, name="second")
    daemons.append(second)
    assert read_holder(str(tmp_path / "data"))["pid"] == second.pid
    client = LineClient(second.port)
    assert client.call("Poll", {"topic": "t", "offset": 0})["result"]["messages"][0]["value"] == "before the kill"
    client.close()


def test_the_startup_line_says_what_the_node_serves(tmp_path, daemons):
    first = ServerProcess(tmp_path, name="first")
    daemons.append(first)
    client = LineClient(first.port)
    client.call("CreateTopic", {"topic": "a", "partitions": 2})
    client.call("CreateTopic", {"topic": "b", "partitions": 3})
    client.close()
    first.stop()
    second = ServerProcess(tmp_path, ["--fsync", "interval:50"], name="second")
    daemons.append(second)
    line = wait_for(lambda: next((x for x in second.log().splitlines() if " serving on " in x), None), 10,
                    "the start-up line")
    expected = (
        f"streamlog {__version__} serving on 127.0.0.1:{second.port} (--listen {FREE_PORT}); "
        f"storage segmented in {tmp_path / 'data'}, fsync interval:50; recovered 2 topics, 5 partitions in "
    )
    assert re.search(re.escape(expected) + r"\d+\.\d{3} s; HTTP off$", line), line
    assert read_holder(str(tmp_path / "data"))["listen"] == f"127.0.0.1:{second.port}"


def test_memory_startup_line_says_it_is_not_durable(tmp_path, daemons):
    server = ServerProcess(tmp_path, ["--storage", "memory"])
    daemons.append(server)
    line = wait_for(lambda: next((x for x in server.log().splitlines() if " serving on " in x), None), 10,
                    "the start-up line")
    assert f"serving on 127.0.0.1:{server.port} (--listen {FREE_PORT}); storage memory (not durable), fsync n/a; " \
           "recovered 0 topics, 0 partitions in " in line, line
    assert not (tmp_path / "data").exists()


def _gone(pid: int) -> bool:
    """True once C{pid} has exited (a zombie left for init to reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_in_the_background_the_node_answers_fsynced_sends_and_stops_on_sigterm(tmp_path):
    # twistd without --nodaemon forks after makeService: what must run in the final
    # process (the group commit's sync thread) has to start there.
    pidfile, port_file, log = tmp_path / "bg.pid", tmp_path / "bg.port", tmp_path / "bg.log"
    command = [TWISTD, f"--pidfile={pidfile}", f"--logfile={log}", "streamlog-server", "--listen", FREE_PORT,
               "--port-file", str(port_file), "--data-dir", str(tmp_path / "data")]
    launched = subprocess.run(command, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=30)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the pid file"))
    try:
        port = int(wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 10, "the port file"))
        client = LineClient(port, timeout=10)
        ack = client.call("Send", {"topic": "t", "value": "in the background"})["result"]
        assert ack["durability"] == "fsync"
        client.close()
        assert read_holder(str(tmp_path / "data"))["pid"] == pid  # the daemon's pid, not its parent's
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: _gone(pid), 20, "the daemon to stop on SIGTERM")
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in log.read_text()


def test_in_the_background_a_refusal_is_still_one_line_and_exit_1(tmp_path):
    (tmp_path / "file").write_text("")
    done = refused(tmp_path, ["--listen", FREE_PORT, "--data-dir", str(tmp_path / "file")], daemon=True)
    assert_one_line(done, re.escape(f"streamlog-server: the data dir {tmp_path / 'file'} is not a directory"))
    assert not (tmp_path / LOCK_FILE).exists()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ignored_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_node_started_with_sigint_ignored_ignores_it_during_start_up_and_after(tmp_path):
    """As a background job or under nohup: SIGINT stays ignored (the reactor installs no handler
    over SIG_IGN), during start-up too, not only once it runs; SIGTERM stops it as ever."""
    port_file = tmp_path / "ignored.port"
    daemon = Daemon("ignored", ["streamlog-server", "--listen", FREE_PORT, "--port-file", str(port_file),
                                "--data-dir", str(tmp_path / "data")], tmp_path, preexec_fn=_ignored_sigint)
    try:
        wait_for(lambda: (tmp_path / "data" / LOCK_FILE).exists() or not daemon.alive(), 20, "the start-up to begin",
                 interval=0.0005)
        daemon.signal(signal.SIGINT)  # during start-up
        wait_for(lambda: port_file.exists() or not daemon.alive(), 20, "the node to serve")
        daemon.signal(signal.SIGINT)  # once it runs
        port = int(port_file.read_text())
        assert LineClient(port).call("Metadata", {})["result"]["alone"] is True  # still serving
        assert daemon.alive()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == -signal.SIGTERM
    finally:
        daemon.stop()
    assert "arrived during start-up" not in daemon.log()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_during_start_up_stops_the_node_cleanly_once_it_runs(tmp_path, sig):
    """Ctrl-C while makeService opens the storage (the listener bound, the reactor not yet
    running): no traceback, a clean stop as soon as the node runs, then twistd exits by the
    signal, as it does for one that comes later."""
    results = []
    for trial in range(3):  # the signal lands at different start-up steps; each must be clean
        data = tmp_path / f"data{trial}"
        # With SIGINT at its default whatever this test runs under: started from a background job
        # (CI under nohup, `.ci/run &`), the node inherits it ignored, and then ignores it (the
        # next test); a SIGINT that landed just after start-up then never stopped it (seen twice).
        daemon = Daemon(f"early{trial}", ["streamlog-server", "--listen", FREE_PORT, "--port-file",
                                          str(tmp_path / f"early{trial}.port"), "--data-dir", str(data)], tmp_path,
                        preexec_fn=_default_sigint)
        try:
            # The lock file is made by the first start-up step, after the handlers are taken over.
            wait_for(lambda d=data, p=daemon: (d / LOCK_FILE).exists() or not p.alive(), 20, "the start-up to begin",
                     interval=0.0005)
            daemon.signal(sig)
            results.append(daemon.wait(30))
            output = daemon.stdout().decode(errors="replace") + daemon.log()
        finally:
            daemon.stop()
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
        assert "Server Shut Down." in output  # twistd's clean stop ran
    assert results == [-sig, -sig, -sig]


class _Triggers:
    """Stands for the reactor in hold_stop_signals: records its system event triggers."""

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Callable[[], object]]] = []

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], object]) -> None:
        self.triggers.append((phase, event, f))


def test_start_up_takes_over_only_the_stop_signals_that_are_not_ignored():
    # In process, deterministic: which handlers hold_stop_signals installs. An ignored SIGINT (a
    # background job, nohup) must stay ignored through start-up, as the reactor leaves it after.
    from streamlog.tap.server import hold_stop_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        reactor = _Triggers()
        hold_stop_signals(reactor)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert callable(signal.getsignal(signal.SIGTERM))  # held until the reactor runs
        [(phase, event, starting)] = reactor.triggers
        assert (phase, event) == ("before", "startup")
        starting()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # as it was, for the reactor to take over
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)

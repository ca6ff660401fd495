"""`streamlog cluster up`: the plan (pure), then the command as a real process on 127.0.0.1, with a
stand-in server (cluster_node_double.py) that a test makes die, hang or ignore SIGTERM, and once
with the real server (a cluster of one)."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from streamlog import cli
from streamlog.cli_cluster_up import LineSplitter, PlanError, describe_exit, plan_cluster
from streamlog.testing import LineClient, child_env, wait_for

DOUBLE = str(Path(__file__).with_name("cluster_node_double.py"))
DOUBLE_COMMAND = f"{sys.executable} {DOUBLE}"
MAIN = "import sys; from streamlog.cli import main; sys.exit(main())"


# --- the plan --------------------------------------------------------------------------------


def test_plan_of_three_nodes_follows_the_design_options():
    plans = plan_cluster(3, 7071, "data", "127.0.0.1", ["twistd", "-n"], ["--fsync", "never"])
    assert [(p.node_id, p.port, p.peer_port, p.address, str(p.data_dir)) for p in plans] == [
        (1, 7071, 7171, "127.0.0.1:7071", "data/node-1"),
        (2, 7072, 7172, "127.0.0.1:7072", "data/node-2"),
        (3, 7073, 7173, "127.0.0.1:7073", "data/node-3")]
    assert plans[1].argv == (
        "twistd", "-n", "--node-id", "2", "--listen", "tcp:7072:interface=127.0.0.1",
        "--peer-listen", "tcp:7172:interface=127.0.0.1", "--advertise", "127.0.0.1:7072",
        "--peers", "1=127.0.0.1:7171,2=127.0.0.1:7172,3=127.0.0.1:7173", "--data-dir", "data/node-2",
        "--http-listen", "tcp:7372:interface=127.0.0.1", "--fsync", "never")
    assert [p.http_port for p in plans] == [7371, 7372, 7373]


def test_without_an_http_offset_the_nodes_have_no_http_listener():
    # chaos and the cluster benchmark: never the fixed default port 9644, which every node would take
    plans = plan_cluster(3, 7071, "data", "127.0.0.1", ["srv"], http_port_offset=None)
    assert all(p.argv[-2:] == ("--http-listen", "none") and p.http_port is None for p in plans)


def test_an_http_listen_among_the_server_options_wins_and_readiness_is_ping_only():
    for given in (["--http-listen", "none"], ["--http-listen=tcp:0"]):
        plans = plan_cluster(3, 7071, "data", "127.0.0.1", ["srv"], given)
        assert all(p.http_port is None and p.argv[-len(given):] == tuple(given) for p in plans)


def test_the_http_ports_must_fit_below_65536():
    with pytest.raises(PlanError, match=r"ports 65300\.\.65602"):
        plan_cluster(3, 65300, "d", "127.0.0.1", ["srv"])


def test_a_cluster_of_one_is_a_node_without_peers():
    (plan,) = plan_cluster(1, 9000, "d", "127.0.0.1", ["srv"])
    assert plan.argv == ("srv", "--listen", "tcp:9000:interface=127.0.0.1", "--data-dir", "d/node-1",
                         "--http-listen", "tcp:9300:interface=127.0.0.1")
    assert plan.peer_port is None


def test_an_ipv6_host_is_escaped_in_endpoints_and_bracketed_in_addresses():
    plans = plan_cluster(3, 7071, "d", "::1", ["srv"])
    assert plans[0].address == "[::1]:7071"
    argv = plans[0].argv
    assert argv[argv.index("--listen") + 1] == "tcp:7071:interface=\\:\\:1"
    assert argv[argv.index("--peers") + 1] == "1=[::1]:7171,2=[::1]:7172,3=[::1]:7173"


@pytest.mark.parametrize("nodes", [0, 2, 4, 6, 7, -1])
def test_node_counts_other_than_1_3_5_are_refused(nodes):
    with pytest.raises(PlanError, match=r"use 1, 3 or 5") as e:
        plan_cluster(nodes, 7071, "d")
    if nodes in (2, 4, 6):
        assert "even count tolerates no more failures than the odd count below it" in str(e.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_host_is_refused_as_it_is_advertised(host):
    with pytest.raises(PlanError, match="advertises --host to clients and peers"):
        plan_cluster(3, 7071, "d", host)


def test_ports_must_fit():
    with pytest.raises(PlanError, match=r"need ports 65500\.\.65804"):
        plan_cluster(5, 65500, "d")
    assert plan_cluster(1, 65235, "d")[0].http_port == 65535
    assert plan_cluster(1, 65535, "d", http_port_offset=None)[0].port == 65535


def test_usage_mistakes_exit_2_with_the_reason(capsys):
    for argv, said in [(["--nodes", "4"], "--nodes 4: use 1, 3 or 5"),
                       (["3"], "unexpected argument '3': options for the servers go after --"),
                       (["--base-port", "0"], "--base-port 0"),
                       (["--stop-timeout", "0"], "must be more than 0")]:
        with pytest.raises(SystemExit) as e:
            cli.main(["cluster", "up", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert said in err and "usage: streamlog cluster up" in err


def test_line_splitter_keeps_partial_lines_until_the_end():
    s = LineSplitter(keep=2)
    assert s.feed(b"one\r\ntw") == ["one"]
    assert s.feed(b"o\nthr\xffee") == ["two"]
    assert s.end() == ["thr\ufffdee"]
    assert list(s.last) == ["two", "thr\ufffdee"]


def test_line_splitter_holds_back_at_most_a_bounded_partial_line():
    s = LineSplitter()
    assert s.feed(b"x" * 40000) == []
    assert s.feed(b"y" * 40000) == ["x" * 40000 + "y" * 40000]
    assert s.end() == []


def test_exits_are_described():
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-9) == "killed by SIGKILL"


# --- the command, with the stand-in server ------------------------------------------------------


def _bindable(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base(nodes):
    """A base port whose client and peer ports are all free now (bounded tries)."""
    for _ in range(100):
        base = random.randrange(20000, 40000)
        ports = [base + i for i in range(nodes)] + ([base + 100 + i for i in range(nodes)] if nodes > 1 else []) \
            + [base + 300 + i for i in range(nodes)]
        if all(_bindable(p) for p in ports):
            return base
    raise AssertionError("no free ports")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Up:
    """`streamlog cluster up` as a process; its output in files; stopped (and its nodes) by pid."""

    def __init__(self, tmp_path, *args, nodes=3, server=DOUBLE_COMMAND, stdout=None, own_group=False):
        self.base = free_base(nodes)
        self.tmp = tmp_path
        self.out_path, self.err_path = tmp_path / "up.out", tmp_path / "up.err"
        argv = [sys.executable, "-c", MAIN, "cluster", "up", "--nodes", str(nodes), "--base-port", str(self.base),
                "--data-dir", str(tmp_path / "cluster")]
        if server is not None:
            argv += ["--server-command", server]
        self._out = None if stdout is not None else open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.process = subprocess.Popen(argv + list(args), cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL,
                                        stdout=stdout if stdout is not None else self._out, stderr=self._err,
                                        process_group=0 if own_group else None)
        self.node_pids: set[int] = set()

    def out(self):
        return self.out_path.read_text(errors="replace") if self._out else ""

    def err(self):
        return self.err_path.read_text(errors="replace")

    def learn_pids(self, text=None):
        text = self.out() if text is None else text
        self.node_pids |= {int(p) for p in re.findall(r"pid (\d+)", text)}
        self.node_pids |= {int(p) for p in re.findall(r'"pid": (\d+)', text)}
        return self.node_pids

    def wait_up(self, timeout=20):
        wait_for(lambda: "Ctrl-C stops every node." in self.out() or self.process.poll() is not None, timeout,
                 "cluster up to announce its nodes")
        assert self.process.poll() is None, f"exited {self.process.returncode}: {self.out()}\n{self.err()}"
        self.learn_pids()
        return self.out()

    def wait(self, timeout=20):
        code = self.process.wait(timeout=timeout)
        self.learn_pids()
        return code

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.learn_pids()
        for pid in self.node_pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        for f in (self._out, self._err):
            if f is not None:
                f.close()


@pytest.fixture
def ups(tmp_path):
    started = []

    def start(*args, **kw):
        up = Up(tmp_path, *args, **kw)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()


def double_lines(out):
    """Node id -> the options the stand-in server was given (its first line)."""
    found = {}
    for m in re.finditer(r"^\[node (\d)\] (\{.*\})$", out, re.M):
        found[int(m.group(1))] = orjson.loads(m.group(2))
    return found


def test_up_starts_every_node_waits_for_ping_then_ctrl_c_stops_them(ups):
    up = ups("--", "--fsync", "never")
    out = up.wait_up()
    base = up.base
    addresses = [f"127.0.0.1:{base + i}" for i in range(3)]
    lines = out.splitlines()
    at = lines.index("cluster of 3 node(s) is up:")
    pids = []
    for i in range(3):
        m = re.fullmatch(rf"  node {i + 1}  {addresses[i]}  pid (\d+)  data .*cluster/node-{i + 1}  "
                         rf"metrics http://127\.0\.0\.1:{base + 300 + i}/metrics", lines[at + 1 + i])
        assert m, lines[at + 1 + i]
        pids.append(int(m.group(1)))
    assert lines[at + 4] == f"connect with: --connect {','.join(addresses)}"
    argv = {n: d["argv"] for n, d in double_lines(out).items()}
    peers = ",".join(f"{i}=127.0.0.1:{base + 100 + i - 1}" for i in (1, 2, 3))
    assert argv[2] == ["--node-id", "2", "--listen", f"tcp:{base + 1}:interface=127.0.0.1",
                       "--peer-listen", f"tcp:{base + 101}:interface=127.0.0.1", "--advertise", addresses[1],
                       "--peers", peers, "--data-dir", str(up.tmp / "cluster" / "node-2"),
                       "--http-listen", f"tcp:{base + 301}:interface=127.0.0.1", "--fsync", "never"]
    assert [d["pid"] for _, d in sorted(double_lines(out).items())] == pids
    for i in range(3):
        assert f"[node {i + 1}] listening on {base + i}" in out
        assert (up.tmp / "cluster" / f"node-{i + 1}").is_dir()
        c = LineClient(base + i)
        assert c.call("Ping")["result"]["pong"] is True
        c.close()
    assert all(pid_alive(p) for p in pids)

    up.process.send_signal(signal.SIGINT)
    assert up.wait() == 0
    out = up.out()
    for i in range(3):
        assert f"[node {i + 1}] stopping on a signal" in out
        assert not pid_alive(pids[i])
    assert "stopped 3 node(s)" in up.err()
    assert "Traceback" not in out + up.err()


def test_sigterm_stops_it_as_ctrl_c_does(ups):
    up = ups(nodes=1)
    out = up.wait_up()
    assert double_lines(out)[1]["argv"][:2] == ["--listen", f"tcp:{up.base}:interface=127.0.0.1"]
    assert "--peers" not in double_lines(out)[1]["argv"]
    up.process.send_signal(signal.SIGTERM)
    assert up.wait() == 0
    assert "[node 1] stopping on a signal" in up.out()


def test_a_node_that_dies_while_starting_is_told_and_the_others_are_stopped(ups):
    # Node 2 never answers Ping (so the cluster is still starting) and exits after 0.5 s.
    up = ups("--", "--silent-node", "2", "--exit-node", "2", "--exit-after", "0.5", "--exit-status", "3")
    assert up.wait() == 1
    err, out = up.err(), up.out()
    m = re.search(r"node 2 \(pid (\d+)\) exited on its own, exit status 3; its last output:\n", err)
    assert m, err
    assert "  [node 2] exiting on purpose\n  [node 2] a last line without its newline\nstopping the other nodes" in err
    assert "[node 1] stopping on a signal" in out and "[node 3] stopping on a signal" in out
    assert not any(pid_alive(p) for p in up.node_pids) and len(up.node_pids) == 3


def test_a_node_that_dies_once_the_cluster_is_up_is_told_and_the_others_keep_running(ups):
    """A failover is what one tries with a local cluster: kill -9 a node, the others serve on."""
    up = ups()
    up.wait_up()
    pids = {int(n): int(p) for n, p in re.findall(r"node (\d+) +\S+ +pid (\d+)", up.out())}
    os.kill(pids[2], signal.SIGKILL)
    wait_for(lambda: "keep running" in up.err(), 10, "cluster up to tell of node 2's death")
    err = up.err()
    assert f"node 2 (pid {pids[2]}) exited on its own, killed by SIGKILL" in err
    assert "node 1, node 3 keep running (Ctrl-C stops them; the exit status will be 1)" in err
    assert up.process.poll() is None and pid_alive(pids[1]) and pid_alive(pids[3])
    up.process.send_signal(signal.SIGINT)
    assert up.wait() == 1  # a node was lost
    assert not any(pid_alive(p) for p in pids.values())


def test_a_server_from_before_clusters_gets_a_hint(ups):
    up = ups("--", "--before-clusters", "yes")
    assert up.wait() == 1
    assert "exited on its own, exit status 1; its last output:" in up.err()
    assert ("hint: this streamlog-server does not take the cluster options (--node-id, --peers) yet: it is from "
            "before clusters; 'streamlog cluster up --nodes 1' runs a cluster of one with it") in up.err()


def test_a_node_that_ignores_sigterm_is_killed_after_the_grace_period(ups):
    up = ups("--stop-timeout", "1", "--", "--ignore-sigterm-node", "3")
    up.wait_up()
    asked = time.monotonic()
    up.process.send_signal(signal.SIGINT)
    assert up.wait() == 1
    took = time.monotonic() - asked
    assert 1.0 <= took < 10, took
    assert re.search(r"node 3 \(pid \d+\) did not stop within 1s of SIGTERM: killed with SIGKILL", up.err())
    assert "[node 1] stopping on a signal" in up.out()
    assert not any(pid_alive(p) for p in up.node_pids) and len(up.node_pids) == 3


def test_a_second_ctrl_c_kills_at_once(ups):
    up = ups("--", "--ignore-sigterm-node", "1", nodes=1)  # the default grace period: 30 s
    up.wait_up()
    up.process.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping 1 node(s)" in up.err(), 10, "the first Ctrl-C to be taken")
    asked = time.monotonic()
    up.process.send_signal(signal.SIGINT)
    assert up.wait() == 1
    assert time.monotonic() - asked < 10
    assert "node 1 (pid" in up.err() and "killed with SIGKILL" in up.err()
    assert not any(pid_alive(p) for p in up.node_pids)


def up_with_a_port_held(tmp_path, offset):
    """`cluster up` of 3 stand-in nodes while this test listens on BASE+offset: (base, its result)."""
    base = free_base(3)
    holder = socket.socket()
    holder.bind(("127.0.0.1", base + offset))
    holder.listen(1)
    try:
        argv = [sys.executable, "-c", MAIN, "cluster", "up", "--base-port", str(base), "--data-dir",
                str(tmp_path / "c"), "--server-command", DOUBLE_COMMAND]
        done = subprocess.run(argv, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=20)
    finally:
        holder.close()
    return base, done


def test_a_port_in_use_is_one_line_and_nothing_starts(tmp_path):
    base, done = up_with_a_port_held(tmp_path, 101)  # node 2's peer port
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"streamlog cluster up: cannot use port {base + 101} on 127.0.0.1 (node 2's peer port): "
        f"Address already in use; stop what holds it, or choose another --base-port. (cluster up uses ports ")
    assert done.stdout == ""  # no node was started


def test_another_clusters_client_port_where_this_ones_peers_go_is_named_with_the_layout(tmp_path):
    """Two clusters 100 apart: the second's client ports are the first's peer ports."""
    base, done = up_with_a_port_held(tmp_path, 100)  # as node 1 of a cluster up with --base-port base+100 would
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"streamlog cluster up: cannot use port {base + 100} on 127.0.0.1 (node 1's peer port): Address already "
        f"in use; stop what holds it, or choose another --base-port. (cluster up uses ports BASE+I-1 for clients, "
        f"BASE+100+I-1 for peers and BASE+300+I-1 for HTTP: two clusters on one machine collide when their "
        f"--base-port values are less than 5 apart, or less than 5 away from 100, 200 or 300 apart; e.g. 7071 "
        f"and 7171 collide, 7071 and 7081 do not)\n")


def test_is_up_is_said_only_once_every_node_is_ready(ups):
    # Node 2 answers Ping at once, but its /ready says 503 for its first 1.5 s.
    up = ups("--", "--unready-node", "2", "--unready-for", "1.5")
    out = up.wait_up()
    assert out.index("[node 2] ready now") < out.index("cluster of 3 node(s) is up:")
    up.process.send_signal(signal.SIGINT)
    assert up.wait() == 0


def test_a_node_that_never_gets_ready_stops_the_cluster_with_its_reason(ups):
    up = ups("--start-timeout", "1.5", "--", "--unready-node", "3")
    assert up.wait() == 1
    assert (f"streamlog cluster up: node 3 (127.0.0.1:{up.base + 2}) answered Ping but was not ready within 1.5s "
            f"(--start-timeout): /ready answered 503 (cluster: the metadata group has no leader); stopping the "
            f"cluster") in up.err()
    assert "is up" not in up.out()
    assert not any(pid_alive(p) for p in up.node_pids) and len(up.node_pids) == 3


def test_an_unwritable_data_dir_is_one_line_and_nothing_starts(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    argv = [sys.executable, "-c", MAIN, "cluster", "up", "--base-port", str(free_base(3)),
            "--data-dir", str(tmp_path / "file" / "cluster"), "--server-command", DOUBLE_COMMAND]
    done = subprocess.run(argv, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=20)
    assert done.returncode == 1
    assert done.stderr == (f"streamlog cluster up: cannot create node 1's data directory "
                           f"{tmp_path / 'file' / 'cluster' / 'node-1'}: Not a directory; choose another --data-dir\n")
    assert done.stdout == ""


def test_a_server_command_that_does_not_exist_is_one_line(tmp_path):
    argv = [sys.executable, "-c", MAIN, "cluster", "up", "--base-port", str(free_base(3)),
            "--data-dir", str(tmp_path / "c"), "--server-command", str(tmp_path / "no-such-server")]
    done = subprocess.run(argv, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=20)
    assert done.returncode == 1
    assert "cannot start node 1" in done.stderr and "No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_node_that_never_answers_ping_stops_the_cluster(ups):
    up = ups("--start-timeout", "1", "--", "--silent-node", "2")
    assert up.wait() == 1
    assert (f"streamlog cluster up: node 2 (127.0.0.1:{up.base + 1}) did not answer Ping within 1s "
            f"(--start-timeout); stopping the cluster") in up.err()
    assert "[node 1] stopping on a signal" in up.out() and "[node 2] stopping on a signal" in up.out()
    assert not any(pid_alive(p) for p in up.node_pids) and len(up.node_pids) == 3


def test_piping_into_head_stops_the_cluster_without_a_traceback(ups):
    read, write = os.pipe()
    up = ups(stdout=write)
    os.close(write)
    reader = os.fdopen(read, "rb")
    seen = b""
    deadline = time.monotonic() + 20
    while b"Ctrl-C stops every node." not in seen:  # as `| head -12` would, then it goes away
        line = reader.readline()
        assert line and time.monotonic() < deadline, seen
        seen += line
    up.learn_pids(seen.decode())
    assert len(up.node_pids) == 3
    reader.close()  # the nodes are quiet now: nothing written would notice
    assert up.wait() == 141
    assert "Traceback" not in up.err()
    assert "stopped 3 node(s)" in up.err()
    assert not any(pid_alive(p) for p in up.node_pids)


# --- the real server, a cluster of one -----------------------------------------------------------


def test_a_cluster_of_one_of_the_real_server_stops_cleanly_on_a_terminal_ctrl_c(ups, capsys):
    up = ups(nodes=1, server=None, own_group=True)
    out = up.wait_up(timeout=30)
    assert "[node 1]" in out and f"connect with: --connect 127.0.0.1:{up.base}" in out
    assert cli.main(["--connect", f"127.0.0.1:{up.base}", "ping"]) == 0
    assert capsys.readouterr().out.startswith(f"pong from 127.0.0.1:{up.base}")
    code = cli.main(["cluster", "status", "--connect", f"127.0.0.1:{up.base}"])
    said = capsys.readouterr()
    if code == 1:  # a server from before clusters (main today): a clear line, no traceback
        assert "is a single node of a streamlog from before clusters" in said.err
    else:  # a cluster of one answers Metadata
        assert code == 0 and f"127.0.0.1:{up.base}" in said.out
    # A terminal's Ctrl-C goes to the whole foreground process group; the nodes are not in it, so
    # they get one signal, the SIGTERM of `cluster up`, and end as twistd does on it.
    os.killpg(up.process.pid, signal.SIGINT)
    assert up.wait(timeout=40) == 0, up.err()
    assert "stopped 1 node(s)" in up.err()
    assert "[node 1]" in up.out() and "Server Shut Down." in up.out()
    assert not any(pid_alive(p) for p in up.node_pids)

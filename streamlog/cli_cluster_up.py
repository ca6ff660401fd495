"""C{streamlog cluster up}: a local cluster of 1, 3 or 5 nodes in the foreground, for trying it out.

    streamlog cluster up --nodes 3                      # nodes at 127.0.0.1:7071..7073
    streamlog cluster up --nodes 5 --base-port 9000 --data-dir /tmp/sl -- --fsync never

Node I (1-based) listens for clients on C{BASE+I-1} and for its peers on
C{BASE+100+I-1}, keeps its data in C{DATA_DIR/node-I}, and is started as

    twistd -n --pidfile= streamlog-server --node-id I --listen tcp:PORT:interface=HOST
        --peer-listen tcp:PEERPORT:interface=HOST --advertise HOST:PORT
        --peers 1=HOST:PEERPORT1,2=HOST:PEERPORT2,... --data-dir DATA_DIR/node-I [extra options]

(docs/cluster design, section 9).  A cluster of one is started without
C{--node-id}, C{--peers}, C{--peer-listen} and C{--advertise}: a node
without C{--peers} is a cluster of one (node 1, its address from
C{--listen}), which is also what a server of before clusters runs.

The pure part (L{plan_cluster}: ports, directories, command lines; and
L{LineSplitter}) is apart from the edge that runs processes
(L{LocalCluster}), which tests drive with a stand-in server command
(C{--server-command}).  Everything the command waits for has a deadline:
readiness (C{--start-timeout}: every node answers Ping, then its HTTP
C{/ready} answers 200, so "is up" means the cluster has a controller and
every node its partitions) and stopping (C{--stop-timeout}, then SIGKILL).  The nodes die with this command even when it is killed with
SIGKILL (Linux: the parent-death signal), so no node is left holding its
port and data directory.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import errno
import http.client
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import attrs
import orjson

from streamlog import errors
from streamlog.cli import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_OK, _leaf, _silence_stdout, _Usage
from streamlog.client.addresses import describe_address
from streamlog.client.blocking import BlockingClient
from streamlog.tap.output import output_closed

#: Node counts C{up} accepts: odd, so that every node added tolerates one more failure.
NODE_COUNTS = (1, 3, 5)
DEFAULT_BASE_PORT = 7071
#: Node I's peer port is its client port plus this.
PEER_PORT_OFFSET = 100
#: Node I's HTTP port (/metrics, /health, /ready) is its client port plus this.
HTTP_PORT_OFFSET = 300
DEFAULT_DATA_DIR = "streamlog-cluster"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 30.0
#: Signals that stop the cluster cleanly (SIGHUP: the terminal closed).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: How a node may end once asked to stop: exit 0, or "killed by SIGTERM", which is how twistd ends
#: after a clean shutdown on SIGTERM (it raises the signal again once its reactor stopped).
CLEAN_STOPS = (0, -signal.SIGTERM)
#: Bytes of a node's output line held back waiting for its newline; a longer one is printed in pieces.
MAX_LINE = 64 * 1024
#: Seconds one readiness Ping (or one GET /ready) may take.
PING_TIMEOUT = 1.0
#: Output lines of each node kept to show when it dies.
LAST_LINES = 15


def register(csub: Any, common: argparse.ArgumentParser) -> None:
    p = csub.add_parser(
        "up", parents=[common], help="start a local cluster in the foreground (Ctrl-C stops it)",
        description=f"Start a cluster of --nodes streamlog servers on this machine and stay in the foreground, "
                    f"printing each node's output prefixed with [node I]; Ctrl-C (or SIGTERM) stops every node "
                    f"cleanly. Node I listens for clients on BASE+I-1 and for its peers on "
                    f"BASE+{PEER_PORT_OFFSET}+I-1, serves HTTP (/metrics, /health, /ready) on BASE+{HTTP_PORT_OFFSET}+I-1, "
                    f"with its data in DATA_DIR/node-I. Options after -- are "
                    f"passed to every server. Exit status: 0 stopped by Ctrl-C/SIGTERM; 1 a node failed to "
                    f"start or died; 2 usage; 141 the output was closed (| head).",
        epilog="example: streamlog cluster up --nodes 3, then in another terminal: "
               "streamlog --connect 127.0.0.1:7071,127.0.0.1:7072,127.0.0.1:7073 topics create t --partitions 3")
    p.add_argument("--nodes", "-n", type=int, default=3, help="how many nodes: 1, 3 or 5 (default 3)")
    p.add_argument("--base-port", "-P", type=int, default=DEFAULT_BASE_PORT,
                   help=f"node 1's client port (default {DEFAULT_BASE_PORT}); node I's is BASE+I-1, "
                        f"its peer port BASE+{PEER_PORT_OFFSET}+I-1, its HTTP port BASE+{HTTP_PORT_OFFSET}+I-1")
    p.add_argument("--data-dir", "-d", default=DEFAULT_DATA_DIR,
                   help=f"where the nodes keep their data, one directory node-I each (default ./{DEFAULT_DATA_DIR}); "
                        f"kept when the cluster stops, so the next 'up' finds the same data")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"the address every node listens on and advertises (default {DEFAULT_HOST})")
    p.add_argument("--start-timeout", type=float, default=DEFAULT_START_TIMEOUT, metavar="SECONDS",
                   help=f"seconds for every node to answer Ping and then be ready (HTTP /ready answers 200) "
                        f"(default {DEFAULT_START_TIMEOUT:g})")
    p.add_argument("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT, metavar="SECONDS",
                   help=f"seconds a node gets to stop after SIGTERM before it is killed with SIGKILL "
                        f"(default {DEFAULT_STOP_TIMEOUT:g})")
    p.add_argument("--server-command", metavar="COMMAND",
                   help="the command that starts one server, before its options (default: the twistd of "
                        "this Python, '-n --pidfile= streamlog-server'); split as a shell would")
    p.add_argument("server_options", nargs="*", metavar="-- SERVER_OPTION",
                   help="options given to every server after the ones above, e.g. -- --fsync never")
    _leaf(p, cmd_up)


# --- the plan (pure) ---------------------------------------------------------------------------


class PlanError(ValueError):
    """The options cannot make a cluster; the message says why and what to change."""


@attrs.frozen
class NodePlan:
    node_id: int
    host: str
    port: int
    peer_port: int | None  # None for a cluster of one
    data_dir: Path
    argv: tuple[str, ...]
    http_port: int | None = None  # None: the node runs with --http-listen none

    @property
    def address(self) -> str:
        """Where clients reach the node (HOST:PORT, [v6]:PORT)."""
        return describe_address((self.host, self.port))


def check_node_count(nodes: int) -> None:
    if nodes in NODE_COUNTS:
        return
    if nodes >= 2 and nodes % 2 == 0:
        majority = nodes // 2 + 1
        raise PlanError(f"--nodes {nodes}: use 1, 3 or 5. An even count tolerates no more failures than the odd count "
                        f"below it ({nodes} nodes need {majority} for a majority, so they survive "
                        f"{nodes - majority} failure(s), as {nodes - 1} do) and only adds a node to wait for")
    raise PlanError(f"--nodes {nodes}: use 1, 3 or 5 (a local cluster to try; 3 survives one failure, 5 two)")


def _endpoint_host(host: str) -> str:
    """C{host} inside a Twisted endpoint description (colons of an IPv6 address escaped)."""
    return host.replace(":", "\\:")


def plan_cluster(nodes: int, base_port: int, data_dir: str | Path, host: str = DEFAULT_HOST,
                 server_command: Sequence[str] = (), server_options: Sequence[str] = (),
                 http_port_offset: int | None = HTTP_PORT_OFFSET) -> list[NodePlan]:
    """Every node's ports, directory and command line.

    Node I's HTTP listener is on its client port plus C{http_port_offset};
    with C{None} the nodes run with C{--http-listen none} (never on the
    fixed default port 9644, which several nodes of one machine would fight
    over).  Server options that set C{--http-listen} themselves win (the last one
    given does): then the plan knows no HTTP port, and a node counts as ready once
    it answers Ping.

    @raise PlanError: a node count other than 1, 3, 5, or ports outside 1..65535.
    """
    check_node_count(nodes)
    if any(o == "--http-listen" or o.startswith("--http-listen=") for o in server_options):
        http_port_offset = None  # the user's own --http-listen comes last and wins; its port is unknown here
    if not host or any(c in host for c in " ,=/"):
        raise PlanError(f"--host {host!r} is not a host name or IP address")
    if host in ("0.0.0.0", "::", "[::]"):
        raise PlanError(f"--host {host}: every node also advertises --host to clients and peers, who cannot connect "
                        f"to {host}; give an address of this machine (127.0.0.1, or its LAN address)")
    top = base_port + max(PEER_PORT_OFFSET if nodes > 1 else 0, http_port_offset or 0) + nodes - 1
    if base_port < 1 or top > 65535:
        raise PlanError(f"--base-port {base_port}: the nodes need ports {base_port}..{top}, which must lie in 1..65535")
    root = Path(data_dir)
    peer_ports = {i: base_port + PEER_PORT_OFFSET + i - 1 for i in range(1, nodes + 1)}
    peers = ",".join(f"{i}={describe_address((host, port))}" for i, port in peer_ports.items())
    plans = []
    for i in range(1, nodes + 1):
        port = base_port + i - 1
        directory = root / f"node-{i}"
        listen = f"tcp:{port}:interface={_endpoint_host(host)}"
        if nodes == 1:
            options = ["--listen", listen, "--data-dir", str(directory)]
            peer_port = None
        else:
            peer_port = peer_ports[i]
            options = ["--node-id", str(i), "--listen", listen,
                       "--peer-listen", f"tcp:{peer_port}:interface={_endpoint_host(host)}",
                       "--advertise", describe_address((host, port)), "--peers", peers,
                       "--data-dir", str(directory)]
        http_port = None if http_port_offset is None else port + http_port_offset
        options += ["--http-listen", "none" if http_port is None else f"tcp:{http_port}:interface={_endpoint_host(host)}"]
        plans.append(NodePlan(i, host, port, peer_port, directory,
                              (*server_command, *options, *server_options), http_port))
    return plans


def default_server_command() -> list[str]:
    """The twistd beside this Python (the environment streamlog runs in), else the one on $PATH."""
    beside = Path(sys.executable).parent / "twistd"
    twistd = str(beside) if beside.exists() else shutil.which("twistd")
    if twistd is None:
        raise PlanError("cannot find twistd (beside this Python or on $PATH); install Twisted, or give --server-command")
    return [twistd, "-n", "--pidfile=", "streamlog-server"]


class LineSplitter:
    """Bytes of one node's output in, whole lines out (text, without the newline); the last few kept."""

    def __init__(self, keep: int = LAST_LINES) -> None:
        self._partial = b""
        self.last: collections.deque[str] = collections.deque(maxlen=keep)

    def feed(self, data: bytes) -> list[str]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_LINE:  # a node writing without newlines must not grow this without end
            lines.append(self._partial)
            self._partial = b""
        return self._keep(lines)

    def end(self) -> list[str]:
        """What is left once the output closed (a last line without its newline)."""
        rest, self._partial = self._partial, b""
        return self._keep([rest] if rest else [])

    def _keep(self, lines: list[bytes]) -> list[str]:
        texts = [line.rstrip(b"\r").decode("utf-8", errors="replace") for line in lines]
        self.last.extend(texts)
        return texts


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


# --- the edge: processes, pipes, signals ----------------------------------------------------


class ClusterFailed(Exception):
    """Starting or running the cluster failed; the message is the one line to show."""


def _port_in_use(host: str, port: int) -> str | None:
    """Why C{port} cannot be listened on at C{host} now, or None (bound as twistd binds: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None


def _layout_hint() -> str:
    """Which base ports of two clusters up collide: node I of each uses BASE+I-1, BASE+100+I-1 and
    BASE+300+I-1 (I up to 5), so bases 100, 200 or 300 apart (give or take 4) share ports."""
    largest = max(NODE_COUNTS)
    return (f"(cluster up uses ports BASE+I-1 for clients, BASE+{PEER_PORT_OFFSET}+I-1 for peers and "
            f"BASE+{HTTP_PORT_OFFSET}+I-1 for HTTP: two clusters on one machine collide when their --base-port "
            f"values are less than {largest} apart, or less than {largest} away from {PEER_PORT_OFFSET}, "
            f"{HTTP_PORT_OFFSET - PEER_PORT_OFFSET} or {HTTP_PORT_OFFSET} apart; e.g. {DEFAULT_BASE_PORT} and "
            f"{DEFAULT_BASE_PORT + PEER_PORT_OFFSET} collide, {DEFAULT_BASE_PORT} and {DEFAULT_BASE_PORT + 10} "
            f"do not)")


def _die_with_parent() -> Callable[[], None] | None:
    """A C{preexec_fn} that makes a child get SIGTERM when this process dies (Linux), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Node:
    def __init__(self, plan: NodePlan, process: subprocess.Popen[bytes]) -> None:
        self.plan = plan
        self.process = process
        self.lines = LineSplitter()
        self.ready = False
        #: Why the node, which answered Ping, is not ready yet (its /ready's reason), or None.
        self.unready: str | None = None
        self.output_open = True
        self.reported = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


class LocalCluster:
    """Runs the planned nodes until a signal, a node's death or closed output, then stops them all.

    @param out: where node output and the cluster's own lines go (stdout).
    @param err: where failures are told (stderr).
    @param env: the nodes' environment (default: this one, with the streamlog in use on
        C{PYTHONPATH}, so the nodes run the same code as this command).
    @param pinger: C{pinger(address, timeout)} raises unless the node answers Ping.
    @param readiness: C{readiness(plan, timeout)}: None once the node is ready, else why not
        (default: its HTTP C{/ready}; a node without an HTTP listener is ready once it answers Ping).
    """

    def __init__(self, plans: list[NodePlan], out: TextIO, err: TextIO, start_timeout: float = DEFAULT_START_TIMEOUT,
                 stop_timeout: float = DEFAULT_STOP_TIMEOUT, env: dict[str, str] | None = None,
                 pinger: Callable[[str, float], Any] | None = None,
                 readiness: Callable[[NodePlan, float], str | None] | None = None) -> None:
        self.plans = plans
        self.out = out
        self.err = err
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.env = env if env is not None else _node_env()
        self.pinger = pinger or _ping
        self.readiness = readiness or _ready_reason
        self.nodes: list[_Node] = []
        self.selector = selectors.DefaultSelector()
        self.signalled: str | None = None
        self.signals = 0
        self.output_closed = False
        #: Nodes that died while the cluster was up (the others ran on).
        self.lost: list[_Node] = []

    # --- running ---------------------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            try:
                self._prepare()
                self._start()
                if self._wait_ready():
                    self._pump_ready()  # what the nodes said while starting comes before the announcement
                    self._announce()
                    self._serve()
            except ClusterFailed as e:
                self._tell(f"streamlog cluster up: {e}")
                self._stop()
                return EXIT_ERROR
            failed = self._stop()
            if self.output_closed:
                return EXIT_BROKEN_PIPE
            return EXIT_ERROR if failed or self.lost else EXIT_OK
        finally:
            for node in self.nodes:  # last resort (an unexpected exception): no node outlives us
                if node.alive():
                    node.process.kill()
                    node.process.wait()
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.selector.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = signal.Signals(signum).name
        self.signals += 1

    def _prepare(self) -> None:
        """Refuse early, with one line, what would only fail later: a data dir we cannot write, a port in use."""
        for plan in self.plans:
            try:
                plan.data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ClusterFailed(f"cannot create node {plan.node_id}'s data directory {plan.data_dir}: "
                                    f"{e.strerror or e}; choose another --data-dir") from None
            if not os.access(plan.data_dir, os.W_OK | os.X_OK):
                raise ClusterFailed(f"node {plan.node_id}'s data directory {plan.data_dir} is not writable; "
                                    f"choose another --data-dir")
        for plan in self.plans:
            for port, what in ((plan.port, "client"), (plan.peer_port, "peer"), (plan.http_port, "HTTP")):
                if port is None:
                    continue
                why = _port_in_use(plan.host, port)
                if why is not None:
                    raise ClusterFailed(f"cannot use port {port} on {plan.host} (node {plan.node_id}'s {what} port): "
                                        f"{why}; stop what holds it, or choose another --base-port. "
                                        f"{_layout_hint()}")

    def _start(self) -> None:
        preexec = _die_with_parent()
        for plan in self.plans:
            try:
                # A process group of its own: a Ctrl-C at the terminal reaches this command only, which
                # then stops every node once, with SIGTERM (a SIGINT reaching a node that is still
                # starting, before twistd handles signals, ends it with a KeyboardInterrupt trace).
                process = subprocess.Popen(plan.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, env=self.env, preexec_fn=preexec,
                                           process_group=0)
            except OSError as e:
                raise ClusterFailed(f"cannot start node {plan.node_id} ({shlex.join(plan.argv[:1])}): "
                                    f"{e.strerror or e}; check --server-command") from None
            node = _Node(plan, process)
            self.nodes.append(node)
            assert process.stdout is not None
            os.set_blocking(process.stdout.fileno(), False)
            self.selector.register(process.stdout, selectors.EVENT_READ, node)

    def _wait_ready(self) -> bool:
        """Until every node answers Ping: True; False if a signal or closed output came first.

        Each node is pinged on a thread of its own (one Ping in flight per node, every 0.1 s), so
        that a node that accepts and never answers holds up neither the others nor the output.
        """
        deadline = time.monotonic() + self.start_timeout
        pinging: dict[int, Future[bool]] = {}
        next_ping = {n.plan.node_id: 0.0 for n in self.nodes}
        pool = ThreadPoolExecutor(max_workers=len(self.nodes), thread_name_prefix="ping")
        try:
            while not all(n.ready for n in self.nodes):
                if self._interrupted():
                    return False
                self._pump(0.05)
                self._check_exits()
                now = time.monotonic()
                for node in self.nodes:
                    node_id = node.plan.node_id
                    future = pinging.get(node_id)
                    if future is not None and future.done():
                        del pinging[node_id]
                        node.ready = future.result()
                        next_ping[node_id] = now + 0.1
                    elif future is None and not node.ready and now >= next_ping[node_id]:
                        pinging[node_id] = pool.submit(self._answers, node)
                if now > deadline and not all(n.ready for n in self.nodes):
                    raise ClusterFailed(self._not_ready())
            return True
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a Ping in flight ends within its own timeout

    def _not_ready(self) -> str:
        """The line for nodes not ready at the deadline: those that never answered Ping, and those
        that did but whose /ready still said why not."""
        silent = [n for n in self.nodes if not n.ready and n.unready is None]
        unready = [n for n in self.nodes if not n.ready and n.unready is not None]
        said = []
        if silent:
            names = ", ".join(f"node {n.plan.node_id} ({n.plan.address})" for n in silent)
            said.append(f"{names} did not answer Ping within {self.start_timeout:g}s (--start-timeout)")
        for n in unready:
            said.append(f"node {n.plan.node_id} ({n.plan.address}) answered Ping but was not ready within "
                        f"{self.start_timeout:g}s (--start-timeout): {n.unready}")
        return "; ".join(said) + "; stopping the cluster"

    def _answers(self, node: _Node) -> bool:
        """Whether the node answers Ping and is ready (on a thread of its own: each step is bounded)."""
        try:
            self.pinger(node.plan.address, PING_TIMEOUT)
        except (errors.StreamlogError, OSError):
            return False
        node.unready = self.readiness(node.plan, PING_TIMEOUT)
        return node.unready is None

    def _announce(self) -> None:
        addresses = ",".join(n.plan.address for n in self.nodes)
        lines = [f"cluster of {len(self.nodes)} node(s) is up:"]
        lines += [f"  node {n.plan.node_id}  {n.plan.address}  pid {n.pid}  data {n.plan.data_dir}"
                  + (f"  metrics http://{describe_address((n.plan.host, n.plan.http_port))}/metrics"
                     if n.plan.http_port is not None else "") for n in self.nodes]
        lines += [f"connect with: --connect {addresses}",
                  f"  (or: export STREAMLOG_CONNECT={addresses}; then: streamlog cluster status)",
                  "Ctrl-C stops every node."]
        self._write(lines)

    def _serve(self) -> None:
        while not self._interrupted():
            self._pump(0.2)
            self._check_exits(serving=True)
            self._check_output()

    def _check_output(self) -> None:
        """Notice a reader that went away (C{| head -3}) while the nodes are quiet: nothing to write would tell."""
        try:
            closed = output_closed(self.out.fileno())
        except (OSError, ValueError, AttributeError):  # not a real file (a test's StringIO)
            return
        if closed:
            self.output_closed = True
            _silence_stdout()

    def _interrupted(self) -> bool:
        return self.signalled is not None or self.output_closed

    # --- output ------------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        """Copy what the nodes wrote, prefixed, for up to C{timeout} seconds of waiting."""
        if not self.selector.get_map():
            time.sleep(timeout)
            return
        for key, _ in self.selector.select(timeout):
            node: _Node = key.data
            self._read(node)

    def _pump_ready(self) -> None:
        """Copy what is in the pipes now, without waiting (bounded)."""
        for _ in range(1000):
            if not self.selector.get_map() or not self.selector.select(0):
                return
            self._pump(0)

    def _read(self, node: _Node) -> None:
        assert node.process.stdout is not None
        try:
            data = os.read(node.process.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if data:
            lines = node.lines.feed(data)
        else:
            lines = node.lines.end()
            self.selector.unregister(node.process.stdout)
            node.process.stdout.close()
            node.output_open = False
        self._write([f"[node {node.plan.node_id}] {line}" for line in lines])

    def _drain(self, node: _Node) -> None:
        """Read what a node that exited left in its pipe (bounded: its writers are gone)."""
        for _ in range(1000):
            if not node.output_open:
                return
            ready = select_ready(node)
            if not ready:
                return
            self._read(node)

    def _write(self, lines: list[str]) -> None:
        if not lines or self.output_closed:
            return
        try:
            self.out.write("".join(line + "\n" for line in lines))
            self.out.flush()
        except BrokenPipeError:
            self.output_closed = True  # | head went away: stop the cluster, quietly
            _silence_stdout()

    def _tell(self, line: str) -> None:
        try:
            self.err.write(line + "\n")
            self.err.flush()
        except (BrokenPipeError, ValueError):
            pass

    # --- exits and stopping ---------------------------------------------------------------------

    def _check_exits(self, serving: bool = False) -> None:
        """A node that exits while the cluster starts stops it (something is wrong with the setup).
        Once it is up (C{serving}), a node that dies (a C{kill -9} to try a failover, a crash) is
        told and the others keep running, as a cluster does, until every node is gone."""
        if self._interrupted():
            return  # exits are part of stopping now
        dead = [n for n in self.nodes if not n.reported and not n.alive()]
        if not dead:
            return
        for node in dead:
            node.reported = True
            self._drain(node)
        said = "\n".join(self._death(n) for n in dead)
        hint = _hint(dead)
        said += f"\n{hint}" if hint else ""
        running = [n for n in self.nodes if n.alive()]
        if not serving or not running:
            raise ClusterFailed(said + ("\nstopping the other nodes" if running else "\nno node is running"))
        self.lost.extend(dead)
        names = ", ".join(f"node {n.plan.node_id}" for n in running)
        self._tell(f"streamlog cluster up: {said}\n{names} keep running (Ctrl-C stops them; the exit status will be 1)")

    def _death(self, node: _Node) -> str:
        last = list(node.lines.last)
        said = f"node {node.plan.node_id} (pid {node.pid}) exited on its own, {describe_exit(node.process.returncode)}"
        if not last:
            return said + " (it wrote nothing)"
        return said + "; its last output:\n" + "\n".join(f"  [node {node.plan.node_id}] {line}" for line in last)

    def _stop(self) -> bool:
        """SIGTERM every node still running, SIGKILL those still there after the grace period (or a second
        Ctrl-C).  True if a node had to be killed or exited badly."""
        alive = [n for n in self.nodes if n.alive()]
        for node in self.nodes:
            node.reported = True
        if not alive:
            self._drain_all()
            return False
        signals_before = self.signals
        self._tell(f"stopping {len(alive)} node(s) (SIGTERM; SIGKILL after {self.stop_timeout:g}s, "
                   f"or at once on a second Ctrl-C)")
        for node in alive:
            node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while any(n.alive() for n in alive):
            if time.monotonic() > deadline or self.signals > signals_before:
                break  # the grace period is over, or a second Ctrl-C: kill
            self._pump(0.05)
        killed = []
        for node in alive:
            if node.alive():
                node.process.kill()
                killed.append(node)
        for node in alive:
            node.process.wait()
        self._drain_all()
        for node in killed:
            self._tell(f"node {node.plan.node_id} (pid {node.pid}) did not stop within {self.stop_timeout:g}s "
                       f"of SIGTERM: killed with SIGKILL")
        bad = [n for n in alive if n not in killed and n.process.returncode not in CLEAN_STOPS]
        hint = _hint(bad)
        if hint:
            self._tell(hint)
        for node in bad:
            self._tell(f"node {node.plan.node_id} (pid {node.pid}) stopped badly: {describe_exit(node.process.returncode)}")
        if not killed and not bad:
            self._tell(f"stopped {len(alive)} node(s)")
        return bool(killed or bad)

    def _drain_all(self) -> None:
        for node in self.nodes:
            self._drain(node)


def _hint(nodes: list[_Node]) -> str | None:
    """What to do when the servers refused the cluster options: they are of a streamlog before clusters."""
    for node in nodes:
        if any("--node-id not recognized" in line or "--peers not recognized" in line for line in node.lines.last):
            return ("hint: this streamlog-server does not take the cluster options (--node-id, --peers) yet: "
                    "it is from before clusters; 'streamlog cluster up --nodes 1' runs a cluster of one with it")
    return None


def select_ready(node: _Node) -> bool:
    """Whether the node's output pipe has something to read (or its end) now."""
    assert node.process.stdout is not None
    sel = selectors.DefaultSelector()
    try:
        sel.register(node.process.stdout, selectors.EVENT_READ)
        return bool(sel.select(0))
    finally:
        sel.close()


def _ping(address: str, timeout: float) -> Any:
    with BlockingClient(address, timeout=timeout) as client:
        return client.ping()


def _ready_reason(plan: NodePlan, timeout: float) -> str | None:
    """None if the node's C{/ready} answers 200 (or it has no HTTP listener), else why not: the
    reason of its first failing check, as /ready gives it."""
    if plan.http_port is None:
        return None
    connection = http.client.HTTPConnection(plan.host, plan.http_port, timeout=timeout)
    try:
        connection.request("GET", "/ready")
        answer = connection.getresponse()
        status, body = answer.status, answer.read(64 * 1024)
    except (OSError, http.client.HTTPException) as e:
        return f"its /ready at {describe_address((plan.host, plan.http_port))} did not answer ({e})"
    finally:
        connection.close()
    if status == 200:
        return None
    try:
        checks = orjson.loads(body).get("checks", {})
        reasons = [f"{name}: {c['reason']}" for name, c in checks.items() if not c.get("ok") and c.get("reason")]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        reasons = []
    return f"/ready answered {status}" + (f" ({'; '.join(reasons)})" if reasons else "")


def _node_env() -> dict[str, str]:
    """This environment, with the directory holding the streamlog in use first on C{PYTHONPATH}: the
    nodes run the same code as this command (a checkout too; its twisted/plugins holds the dropin)."""
    import streamlog

    env = dict(os.environ)
    root = str(Path(streamlog.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cmd_up(args: argparse.Namespace) -> int:
    if args.server_options and not args.server_options[0].startswith("-"):
        raise _Usage(f"unexpected argument {args.server_options[0]!r}: options for the servers go after --, "
                     f"e.g. cluster up --nodes 3 -- --fsync never")
    try:
        command = shlex.split(args.server_command) if args.server_command else default_server_command()
        if not command:
            raise PlanError("--server-command is empty")
        if args.start_timeout <= 0 or args.stop_timeout <= 0:
            raise PlanError("--start-timeout and --stop-timeout must be more than 0")
        plans = plan_cluster(args.nodes, args.base_port, args.data_dir, args.host, command, args.server_options)
    except (PlanError, ValueError) as e:
        raise _Usage(str(e)) from None
    return LocalCluster(plans, sys.stdout, sys.stderr, args.start_timeout, args.stop_timeout).run()

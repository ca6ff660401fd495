"""Test helpers for streamlog and for applications that embed it.

L{BrokerHarness} runs a real broker and its protocol on in-memory transports
and a virtual clock: requests go in as lines, answers come out parsed, and
time only moves when the test says so.  L{ServerProcess} and L{Daemon} run
the real twistd daemons on 127.0.0.1 for end-to-end tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

import streamlog
from streamlog import wire
from streamlog.broker.broker import Broker, BrokerConfig
from streamlog.protocol import BrokerFactory, BrokerProtocol
from streamlog.storage.base import Storage
from streamlog.storage.memory import MemoryStorage


def result_of(d: Deferred) -> Any:
    """The result of an already-fired Deferred (like trial's C{successResultOf})."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: Deferred) -> Failure:
    """The Failure of an already-failed Deferred (like trial's C{failureResultOf})."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    assert isinstance(results[0], Failure), f"{d!r} succeeded with {results[0]!r}"
    return results[0]


def no_result(d: Deferred) -> None:
    """Assert C{d} has not fired (like trial's C{assertNoResult})."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert not results, f"{d!r} fired with {results[0]!r}"
    d.addErrback(lambda f: None)  # keep later failures quiet


class ManualThreads:
    """A C{run_in_thread} stand-in: jobs wait until the test runs them (in order).

    Lets a test hold an fsync "in the thread" while it drops connections,
    deletes topics or stops the node, then let it finish.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred, Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((d, f, args))
        return d

    def run_one(self) -> None:
        d, f, args = self.jobs.pop(0)
        try:
            result = f(*args)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_all(self) -> None:
        while self.jobs:
            self.run_one()


def stored_records(broker: Broker, topic: str, partition: int = 0) -> list[dict[str, Any]]:
    """Every committed record of a partition, read straight from the broker."""
    result = broker.handle_poll({"topic": topic, "partition": partition, "offset": 0})
    return orjson.loads(b"".join(result.chunks))["messages"]


class Connection:
    """One client connection to a L{BrokerHarness}, on a StringTransport."""

    def __init__(self, protocol: BrokerProtocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        self._next_id = 0

    def send_line(self, line: bytes) -> None:
        self.protocol.dataReceived(line + b"\n")

    def request(self, method: str, params: dict[str, Any] | None = None, rid: Any = None) -> Any:
        """Send one request; return its id (answers are read with L{answers})."""
        if rid is None:
            self._next_id += 1
            rid = self._next_id
        self.protocol.dataReceived(wire.encode_request(rid, method, params or {}))
        return rid

    def answers(self, keep: bool = False) -> list[dict[str, Any]]:
        """Every answer line written since the last call, parsed (C{keep}: and leave them there)."""
        data = self.transport.value()
        if not keep:
            self.transport.clear()
        return [orjson.loads(line) for line in data.split(b"\n") if line]

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Request and return the one answer that is ready at once (asserts there is one)."""
        rid = self.request(method, params)
        answers = [a for a in self.answers() if a["id"] == rid]
        assert len(answers) == 1, f"expected one answer to {method}, got {answers}"
        return answers[0]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        self.protocol.connectionLost(None)


class BrokerHarness:
    """A broker, its factory and a Clock; connections are StringTransports."""

    def __init__(
        self,
        storage: Storage | None = None,
        config: BrokerConfig | None = None,
        limits: wire.Limits | None = None,
        clock: Clock | None = None,
        committer: Any = None,
    ) -> None:
        self.clock = clock or Clock()
        if config is None:
            config = BrokerConfig(limits=limits or wire.DEFAULT_LIMITS)
        # Terms and votes (durable storage) are saved at once, in rounds on this clock.
        self.broker = Broker(storage or MemoryStorage(), config, clock=self.clock, committer=committer,
                             hard_state_runner=lambda f, *args: maybeDeferred(f, *args))
        self.factory = BrokerFactory(self.broker, config.limits, self.clock)
        self.factory.doStart()
        self._port = 40000
        self.settle()  # recovered partitions elect this node (a cluster of one)

    def settle(self, threads: Any = None, rounds: int = 20) -> None:
        """Let the node's groups finish what they started (elections: a hard-state round on
        the clock, the new leader's no-op synced by C{threads} if the test holds the syncs)."""
        threads = threads if threads is not None else getattr(self, "threads", None)
        for _ in range(rounds):
            self.clock.advance(0)
            if threads is None or not threads.jobs:
                if not self.clock.getDelayedCalls() or all(c.getTime() > self.clock.seconds()
                                                           for c in self.clock.getDelayedCalls()):
                    return
            if threads is not None:
                threads.run_all()

    def connect(self, host: str = "127.0.0.1") -> Connection:
        """A new connection, as if from C{host} (IPv4 or IPv6; each from a port of its own)."""
        self._port += 1
        kind = IPv6Address if ":" in host else IPv4Address
        protocol = self.factory.buildProtocol(kind("TCP", host, self._port))
        transport = StringTransport(peerAddress=kind("TCP", host, self._port))
        protocol.makeConnection(transport)
        return Connection(protocol, transport)

    def stop(self) -> None:
        for conn in list(self.factory.connections):
            conn.connectionLost(None)
        self.factory.doStop()


# --- real processes ------------------------------------------------------------------
#
# For end-to-end tests: daemons started with the twistd of this interpreter's
# environment, on 127.0.0.1, waited for on conditions with deadlines, and
# stopped by their own pid.

#: The directory holding the streamlog package in use (a checkout or site-packages);
#: it also holds twisted/plugins/streamlog_plugins.py, so twistd finds the dropin there.
CODE_ROOT = str(Path(streamlog.__file__).resolve().parent.parent)
TWISTD = str(Path(sys.executable).parent / "twistd")


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll C{condition} until it returns something truthy; fail once C{timeout} passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 2, 0.1)


def child_env() -> dict[str, str]:
    """The environment for a child process that must import this same streamlog."""
    env = dict(os.environ)
    env["PYTHONPATH"] = CODE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Daemon:
    """One C{twistd --nodaemon} process; its log in C{<workdir>/<name>.log}, stdout apart."""

    def __init__(self, name: str, args: list[str], workdir: Path, stdin: Any = None,
                 preexec_fn: Callable[[], object] | None = None) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.log_path = self.workdir / f"{name}.log"
        self.stdout_path = self.workdir / f"{name}.stdout"
        self._stdout = open(self.stdout_path, "wb")
        command = [TWISTD, "--nodaemon", "--pidfile=", f"--logfile={self.log_path}"] + args
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=child_env(), stdout=self._stdout, stderr=subprocess.STDOUT,
            stdin=stdin if stdin is not None else subprocess.DEVNULL, preexec_fn=preexec_fn,
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
        """The exit status, polled until C{timeout} (then C{subprocess.TimeoutExpired}).

        Not C{Popen.wait(timeout=...)}: its busy loop asserts that C{waitpid} returned this
        child's pid or 0, and that assertion failed once in a run of .ci/run (a stop-signal test)
        where C{poll()}, which ignores any other answer and asks again, keeps going."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while (status := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.process.args, timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return status

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after C{timeout}; only this daemon's own pid."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.wait(timeout)
        self._stdout.close()
        return self.process.returncode


class ServerProcess(Daemon):
    """C{twistd -n streamlog-server} on a free 127.0.0.1 port, learnt from its port file."""

    def __init__(self, workdir: Path, extra: list[str] | None = None, name: str = "server",
                 timeout: float = 30.0, preexec_fn: Callable[[], object] | None = None, http: bool = False) -> None:
        """With C{http} the node's HTTP listener is on a free port too (L{http_port}); without, it
        has none: never the fixed default 9644, which nodes of one machine would fight over."""
        workdir = Path(workdir)
        self.port_file = workdir / f"{name}.port"
        self.http_port_file = workdir / f"{name}.http-port"
        for path in (self.port_file, self.http_port_file):
            if path.exists():
                path.unlink()
        args = [
            "streamlog-server",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--port-file", str(self.port_file),
            "--data-dir", str(workdir / "data"),
        ] + (["--http-listen", "tcp:0:interface=127.0.0.1", "--http-port-file", str(self.http_port_file)]
             if http else ["--http-listen", "none"]) + list(extra or [])
        super().__init__(name, args, workdir, preexec_fn=preexec_fn)
        #: The HTTP listener's port (None: started without C{http}).
        self.http_port: int | None = None
        try:
            self.port = int(wait_for(self._read_port, timeout, f"{name} to listen (log: {self.log_path})"))
            if http:
                self.http_port = int(wait_for(lambda: self._read_port(self.http_port_file), timeout,
                                              f"{name}'s HTTP listener (log: {self.log_path})"))
        except BaseException:
            self.stop()
            raise

    def _read_port(self, path: Path | None = None) -> int | None:
        if not self.alive():
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}\n{self.stdout()!r}")
        try:
            return int((path or self.port_file).read_text())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

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
        assert answer["id"] == self._id, answer
        return answer

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


# --- clusters in one process ------------------------------------------------------------


class MemoryNetwork:
    """Listeners and connections between in-process nodes, as iosim pumps on one Clock.

    C{endpoint(address)} is a client endpoint to whatever listens at
    C{address}; a connection to an address nobody listens on (or that is
    C{down}) is refused.  L{pump} moves bytes until every connection is quiet.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.listeners: dict[str, Any] = {}
        self.pumps: list[Any] = []
        self.down: set[str] = set()

    def listen(self, address: str, factory: Any) -> None:
        self.listeners[address] = factory

    def endpoint(self, address: str) -> Any:
        return _MemoryEndpoint(self, address)

    def _connect(self, address: str, factory: Any, source: str | None) -> Deferred:
        from twisted.internet.defer import fail, succeed
        from twisted.internet.error import ConnectionRefusedError
        from twisted.test import iosim

        listener = self.listeners.get(address)
        if listener is None or address in self.down:
            return fail(ConnectionRefusedError(address))
        server = listener.buildProtocol(None)
        if server is None:  # the listener's factory refused it (Twisted closes such a connection)
            return fail(ConnectionRefusedError(address))
        client = factory.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                             greet=False, clock=self.clock)
        pump.addresses = {address, source}
        self.pumps.append(pump)
        return succeed(client)

    def pump(self, rounds: int = 100) -> None:
        for _ in range(rounds):
            moved = False
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True
            self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
            if not moved:
                return

    def cut(self, address: str) -> None:
        """Close every connection to or from C{address} (a killed process closes its sockets) and
        refuse new ones."""
        self.down.add(address)
        for pump in list(self.pumps):
            if address in pump.addresses:
                pump.clientIO.loseConnection()
                pump.serverIO.loseConnection()
        self.pump()

    def heal(self, address: str) -> None:
        self.down.discard(address)


class _MemoryEndpoint:
    def __init__(self, network: MemoryNetwork, address: str, source: str | None = None) -> None:
        self.network = network
        self.address = address
        self.source = source

    def connect(self, factory: Any) -> Deferred:
        return self.network._connect(self.address, factory, self.source)


class ClusterHarness:
    """C{n} cluster nodes (memory storage), their brokers and a Clock, over a L{MemoryNetwork}.

    Node C{i} listens for peers at C{127.0.0.1:900i} and for clients at
    C{127.0.0.1:700i}; incarnations are fixed (C{i} in 16 hex digits) so runs
    are deterministic.  Client connections are StringTransports (L{connect}).
    """

    def __init__(self, n: int = 3, clock: Clock | None = None, seed: int = 0, **config: Any) -> None:
        import random

        from streamlog.broker.service import NodeConfig

        self.clock = clock or Clock()
        self.network = MemoryNetwork(self.clock)
        self.seed = seed
        self.peers = {i: f"127.0.0.1:{9000 + i}" for i in range(1, n + 1)}
        self.config = {"storage": "memory", "election_timeout_ms": 300, "heartbeat_ms": 50, **config}
        self.nodes: dict[int, Any] = {}
        self.brokers: dict[int, Broker] = {}
        self.factories: dict[int, BrokerFactory] = {}
        self.storages: dict[int, Any] = {}
        self.identities: dict[int, Any] = {}
        self._random = random
        self._NodeConfig = NodeConfig
        self._port = 40000
        for i in self.peers:
            self.start(i)

    def start(self, i: int, fresh: bool = False) -> Any:
        """Start node C{i} (again, on its storage and identity unless C{fresh})."""
        from streamlog.cluster.identity import IdentityStore, NodeIdentity
        from streamlog.cluster.node import ClusterNode

        config = self._NodeConfig(node_id=i, peers=self.peers, **self.config)
        if fresh or i not in self.storages:
            self.storages[i] = MemoryStorage()
            self.storages[i].hard_state = MemoryHardState()
            store = IdentityStore(None)
            store.save(NodeIdentity(i, f"{i:016x}"))
            self.identities[i] = store
        storage = self.storages[i]  # a restart finds the logs and votes as they were (memory: all of it)
        node = ClusterNode(config, storage, clock=self.clock, connect=self.network.endpoint,
                           identity=self.identities[i], client_address=f"127.0.0.1:{7000 + i}",
                           rng=self._random.Random(self.seed * 100 + i))
        broker = Broker(storage, config.broker_config(), clock=self.clock, directory=node.directory)
        broker.cluster = node
        self.network.heal(self.peers[i])
        self.network.listen(self.peers[i], node.peer_factory())
        node.start()
        factory = BrokerFactory(broker, config.limits, self.clock)
        factory.doStart()
        self.nodes[i], self.brokers[i], self.factories[i] = node, broker, factory
        return node

    def wipe_and_start(self, i: int) -> Any:
        """Start node C{i} on an empty data dir (a wiped disk): new storage and a new
        incarnation (C{i} then a count of wipes, in 16 hex digits), still deterministic."""
        from streamlog.cluster.identity import IdentityStore, NodeIdentity

        self._wipes = getattr(self, "_wipes", 0) + 1
        self.storages[i] = MemoryStorage()
        self.storages[i].hard_state = MemoryHardState()
        store = IdentityStore(None)
        store.save(NodeIdentity(i, f"{i:08x}{self._wipes:08x}"))
        self.identities[i] = store
        return self.start(i)

    def kill(self, i: int) -> None:
        """As SIGKILL: the node stops at once, its connections close.  Everything of it that
        runs on the shared clock stops: its Raft groups (L{ClusterNode.stop}) and its group
        coordinator's timers (a dead node must not expire members or append to its own log).
        Nothing is closed or flushed (its storage stays as the crash left it, for L{start})."""
        node = self.nodes[i]
        node.stop()
        self.brokers[i].groups.stop()
        self.network.listeners.pop(self.peers[i], None)
        self.network.cut(self.peers[i])
        for conn in list(self.factories[i].connections):
            conn.connectionLost(None)

    def run(self, seconds: float, step: float = 0.01) -> None:
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)
            self.network.pump()

    def run_until(self, condition: Callable[[], Any], timeout: float = 30.0, step: float = 0.01) -> float:
        start = self.clock.seconds()
        while not condition():
            if self.clock.seconds() - start > timeout:
                raise AssertionError(f"not reached in {timeout} simulated seconds")
            self.clock.advance(step)
            self.network.pump()
        return self.clock.seconds() - start

    def connect(self, i: int) -> Connection:
        self._port += 1
        addr = IPv4Address("TCP", "127.0.0.1", self._port)
        protocol = self.factories[i].buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        protocol.makeConnection(transport)
        return Connection(protocol, transport)

    def call(self, i: int, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Ask node C{i}, running the cluster until the answer comes."""
        conn = self.connect(i)
        rid = conn.request(method, params)
        got: list[dict[str, Any]] = []

        def answered() -> bool:
            got.extend(a for a in conn.answers() if a["id"] == rid)
            return bool(got)

        self.run_until(answered, timeout)
        return got[0]

    def create_topics(self, *names: str, via: int = 1, partitions: int = 1) -> None:
        """Create each topic through node C{via}, retrying while the controller is being elected
        (after a restart), as a client does; asserts each was created."""
        for name in names:
            for _ in range(20):
                answer = self.call(via, "CreateTopic", {"topic": name, "partitions": partitions})
                if answer.get("error", {}).get("code") != "LEADER_NOT_AVAILABLE":
                    break
                self.run(0.2)
            assert "result" in answer, answer

    def run_until_formed(self, timeout: float = 30.0) -> float:
        """Run until one node leads the metadata group and every node's metadata lists them all."""
        return self.run_until(lambda: self.controller() is not None
                              and all(len(n.state.nodes) == len(self.peers) for n in self.nodes.values()), timeout)

    def leader_of(self, topic: str, partition: int = 0) -> int | None:
        """The one node leading (and serving) the partition, or None (none, or two during a change)."""
        from streamlog.cluster.metadata import partition_group
        from streamlog.raft.core import LEADER

        group = partition_group(self.nodes[1].state.topics[topic].topic_id, partition)
        leaders = [i for i, n in self.nodes.items() if not n.stopped and group in n.cores
                   and n.cores[group].role == LEADER and n.directory.by_group[group].leads]
        return leaders[0] if len(leaders) == 1 else None

    def controller(self) -> int | None:
        from streamlog.raft.core import LEADER

        leaders = [i for i, n in self.nodes.items() if not n.stopped and META_GROUP in n.cores
                   and n.cores[META_GROUP].role == LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def stop(self) -> None:
        for i, node in self.nodes.items():
            if not node.stopped:
                node.stop()
            for conn in list(self.factories[i].connections):
                conn.connectionLost(None)
            self.factories[i].doStop()
        self.network.pump()


META_GROUP = "__meta"


class MemoryHardState:
    """A node's terms and votes kept in memory (a C{HardStateStore} that survives a restart in a test)."""

    def __init__(self) -> None:
        from streamlog.raft.core import HardState

        self._empty = HardState()
        self.states: dict[str, Any] = {}

    def get(self, group: str) -> Any:
        return self.states.get(group, self._empty)

    def save(self, group: str, state: Any) -> Deferred:
        from twisted.internet.defer import succeed

        self.states[group] = state
        return succeed(None)

    def remove(self, group: str) -> Deferred:
        from twisted.internet.defer import succeed

        self.states.pop(group, None)
        return succeed(None)

    def bind(self, clock: Any, run_in_thread: Any = None, in_flight: Any = None) -> None:
        pass

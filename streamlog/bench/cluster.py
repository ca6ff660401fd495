"""A local cluster of real node processes for the benchmarks (C{bench failover}, C{bench --nodes 3}).

The nodes are planned as C{streamlog cluster up} plans them
(L{streamlog.cli_cluster_up.plan_cluster}: node I's client port BASE+I-1,
its peer port BASE+100+I-1, its data in DATA_DIR/node-I), on a free range of
ports of 127.0.0.1, and run as children of the bench: each can be SIGKILLed
and started again on its data, and all of them die with the bench (the
parent-death signal) and are stopped by their own pids at the end.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_base_port(nodes: int, rng: random.Random, tries: int = 200, proxied: bool = False) -> int:
    """A base port whose client ports (BASE..) and peer ports (BASE+100..) are all free on 127.0.0.1
    (C{proxied}: and the peer proxies' ports, BASE+200.., of L{streamlog.chaos.runner.plan_ports})."""
    from streamlog.chaos.runner import PROXY_OFFSET, plan_ports
    from streamlog.cli_cluster_up import _port_in_use

    for _ in range(tries):
        base = rng.randrange(20000, 60000 - PROXY_OFFSET - nodes * nodes)
        client, peer, proxy = plan_ports(nodes, base)
        ports = [*client.values(), *peer.values(), *(proxy.values() if proxied else ())]
        if all(_port_in_use(HOST, port) is None for port in ports):
            return base
    raise RuntimeError(f"no free range of ports found in {tries} tries")


class Nodes:
    """The cluster's node processes: started from their plans, killed and restarted by pid.

    Each node's output goes to C{LOG_DIR/node-I.log} (appended across restarts).
    """

    def __init__(self, plans: list[Any], log_dir: Path) -> None:
        from streamlog.cli_cluster_up import _die_with_parent, _node_env

        self.plans = {p.node_id: p for p in plans}
        self.log_dir = log_dir
        self.env = _node_env()
        self.preexec = _die_with_parent()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        #: With peer proxies (L{plan} with C{proxied}): node -> its real peer port, and the proxy
        #: port of every ordered pair (what A dials to reach B), for L{streamlog.chaos.proxy.PeerProxies}.
        self.peer_ports: dict[int, int] = {}
        self.proxy_ports: dict[tuple[int, int], int] = {}

    @classmethod
    def plan(cls, nodes: int, root: Path, server_options: Sequence[str], base_port: int | None = None,
             seed: int | None = None, proxied: bool = False) -> Nodes:
        """Plan C{nodes} nodes in C{root} with C{server_options} after the cluster's own options.

        C{proxied}: every node reaches every other through a port of the chaos proxy (the
        plan of C{streamlog chaos}), so that a node can be cut off from its peers."""
        import attrs

        from streamlog.chaos.runner import plan_ports
        from streamlog.cli_cluster_up import default_server_command, plan_cluster

        base = base_port or free_base_port(nodes, random.Random(seed), proxied=proxied)
        plans = plan_cluster(nodes, base, root, HOST, default_server_command(), list(server_options),
                             http_port_offset=None)
        if not proxied:
            return cls(plans, root)
        _, peer, proxy = plan_ports(nodes, base)
        rewritten = []
        for plan in plans:
            argv = list(plan.argv)
            i = argv.index("--peers")
            argv[i + 1] = ",".join(f"{n}={HOST}:{peer[n] if n == plan.node_id else proxy[(plan.node_id, n)]}"
                                   for n in range(1, nodes + 1))
            rewritten.append(attrs.evolve(plan, argv=tuple(argv)))
        out = cls(rewritten, root)
        out.peer_ports, out.proxy_ports = peer, proxy
        return out

    @property
    def bootstrap(self) -> str:
        return ",".join(self.address(n) for n in sorted(self.plans))

    def start(self, node: int) -> None:
        plan = self.plans[node]
        plan.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"node-{node}.log", "ab")
        try:
            self.procs[node] = subprocess.Popen(plan.argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, env=self.env, preexec_fn=self.preexec,
                                                process_group=0)
        finally:
            log.close()

    def start_all(self) -> None:
        for node in sorted(self.plans):
            self.start(node)

    def pid(self, node: int) -> int:
        return self.procs[node].pid

    def alive(self, node: int) -> bool:
        proc = self.procs.get(node)
        return proc is not None and proc.poll() is None

    def kill(self, node: int) -> None:
        self.procs[node].send_signal(signal.SIGKILL)

    def pause(self, node: int) -> None:
        """SIGSTOP: the process stops where it is; its sockets stay open and silent."""
        self.procs[node].send_signal(signal.SIGSTOP)

    def resume(self, node: int) -> None:
        self.procs[node].send_signal(signal.SIGCONT)

    def reap(self, node: int, timeout: float = 10.0) -> None:
        self.procs[node].wait(timeout)

    def stop_all(self, timeout: float = 15.0) -> None:
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGCONT)  # a paused node could not act on the SIGTERM
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def address(self, node: int) -> str:
        return str(self.plans[node].address)

    def wait_formed(self, timeout: float = 60.0) -> None:
        """Until every node answers Metadata naming a controller and every node up (blocking)."""
        from streamlog import errors
        from streamlog.client.blocking import BlockingClient

        deadline = time.monotonic() + timeout
        while True:
            formed = True
            for node in sorted(self.plans):
                if not self.alive(node):
                    raise RuntimeError(f"node {node} exited while the cluster formed; see {self.log_dir}/node-{node}.log")
                try:
                    with BlockingClient(self.address(node), timeout=1.0) as c:
                        answer = c.call("Metadata", {"topics": []})
                except (errors.StreamlogError, OSError):
                    formed = False
                    break
                if answer.get("controller") is None or not all(n["up"] for n in answer["nodes"]):
                    formed = False
                    break
            if formed:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not form within {timeout:g}s (logs in {self.log_dir})")
            time.sleep(0.1)

    def wait_topic_in_sync(self, topic: str, timeout: float = 60.0) -> None:
        """Until every partition of C{topic} has a leader with all its replicas in sync (blocking)."""
        from streamlog import errors
        from streamlog.client.blocking import BlockingClient

        deadline = time.monotonic() + timeout
        while True:
            in_sync: dict[int, bool] = {}
            for node in sorted(self.plans):
                try:
                    with BlockingClient(self.address(node), timeout=2.0) as c:
                        answer = c.call("Metadata", {"topics": [topic]})
                except (errors.StreamlogError, OSError):
                    continue
                for t in answer.get("topics", []):
                    for e in t.get("partitions", []):
                        if e.get("leader") == node:
                            in_sync[e["partition"]] = set(e.get("isr", [])) == set(e.get("replicas", []))
            count = None
            try:
                with BlockingClient(self.bootstrap, timeout=5.0) as c:
                    count = len(c.describe_topic(topic)["partitions"])
            except (errors.UnknownTopic, errors.LeaderNotAvailable, errors.ConnectionLost, errors.Timeout):
                pass  # the node asked has not applied the topic's creation yet
            if count is not None and len(in_sync) == count and all(in_sync.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not every partition had a leader with its replicas in sync "
                                   f"within {timeout:g}s")
            time.sleep(0.1)


__all__ = ["HOST", "Nodes", "free_base_port"]

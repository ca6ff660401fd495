"""Orchestration of C{streamlog bench}: server, topic, load processes, progress, results."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamlog.bench import stats, workers
from streamlog.bench.cluster import Nodes
from streamlog.bench.server import ServerProcess

MAX_POLL_BYTES = 16 * 1024 * 1024


def _endpoint(connect: str) -> tuple[str, Any]:
    """The bootstrap list for the load processes (endpoint strings, joined by commas) and for the
    blocking client; one address or several (a cluster)."""
    from streamlog.client.addresses import check_bootstrap, parse_target

    endpoints = []
    for item in check_bootstrap(connect, blocking=True):
        kind, where = parse_target(item)
        endpoints.append(f"unix:{where}" if kind == "unix" else f"tcp:{where[0]}:{where[1]}")
    joined = ",".join(endpoints)
    return joined, joined


class _Phase:
    """One set of load processes, started together, with a progress bar."""

    def __init__(self, args: Any, label: str, total: int) -> None:
        self.args = args
        self.label = label
        self.total = total
        self.ctx = mp.get_context("spawn")
        self.ready_q = self.ctx.Queue()
        self.result_q = self.ctx.Queue()
        self.start_evt = self.ctx.Event()
        self.procs: list[Any] = []
        self.counters: list[Any] = []

    def add(self, target: Callable[..., None], cfg: dict[str, Any], counted: bool = True) -> Any:
        idx = len(self.procs)
        counters = self.ctx.Array("q", 1, lock=False)
        p = self.ctx.Process(target=target, args=(cfg, 0, counters, self.ready_q, self.result_q, self.start_evt),
                             daemon=True, name=f"bench-{self.label}-{idx}")
        self.procs.append(p)
        self.counters.append((counters, counted))
        return p

    def start(self, timeout: float = 60.0) -> None:
        for p in self.procs:
            p.start()
        deadline = time.monotonic() + timeout
        ready = 0
        while ready < len(self.procs):
            try:
                self.ready_q.get(timeout=0.2)
                ready += 1
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.label}: load processes not ready within {timeout:g}s") from None
                early = self._drain_results()
                if early:
                    self.kill()
                    raise RuntimeError(f"{self.label}: a load process failed before starting:\n"
                                       + "\n".join(str(r.get("error")) for r in early)) from None

    def _drain_results(self) -> list[dict[str, Any]]:
        got = []
        while True:
            try:
                got.append(self.result_q.get_nowait())
            except queue.Empty:
                return got

    server_pid: int | None = None

    def run(self, max_seconds: float, profiler: Any, role: str) -> list[dict[str, Any]]:
        """Start the processes and L{go}, recording them (and the server) with C{profiler} if given."""
        self.start()
        started = None
        if profiler is not None:
            pids = {f"{role}{i}": p.pid for i, p in enumerate(self.procs)}
            _add_server_pids(pids, self.server_pid, self.args)
            started = lambda: profiler.start(pids)  # noqa: E731
        try:
            return self.go(max_seconds, started)
        finally:
            if profiler is not None:
                profiler.stop()

    def go(self, max_seconds: float, on_started: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        from tqdm import tqdm

        self.server_cpu0, self.wall0 = _proc_cpu(self.server_pid), time.monotonic()
        node_pids = getattr(self.args, "node_pids", None) or []
        node_cpu0 = [_proc_cpu(pid) for pid in node_pids]
        self.busy0 = _machine_busy()
        self.start_evt.set()
        if on_started is not None:
            on_started()
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + max_seconds + 45.0
        bar = tqdm(total=self.total, desc=self.label, unit="msg", unit_scale=True, file=sys.stderr,
                   disable=self.args.quiet, leave=False, mininterval=0.2, smoothing=0.1)
        try:
            while len(results) < len(self.procs):
                try:
                    results.append(self.result_q.get(timeout=0.1))
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.label}: the load processes did not finish in time") from None
                    if not any(p.is_alive() for p in self.procs) and self.result_q.empty():
                        raise RuntimeError(f"{self.label}: load processes died without a result") from None
                done = sum(c[0] for c, counted in self.counters if counted)
                bar.update(max(0, min(done, self.total) - bar.n))
        finally:
            bar.close()
            self.join()
        cpu1 = _proc_cpu(self.server_pid)
        node_wall = max(1e-9, time.monotonic() - self.wall0)
        #: % of one core used by each node of a cluster the bench started, during the phase.
        self.node_cpu_pct = [round(100.0 * (c1 - c0) / node_wall, 1) if c0 is not None and c1 is not None else None
                             for c0, c1 in zip(node_cpu0, [_proc_cpu(pid) for pid in node_pids], strict=True)]
        busy1 = _machine_busy()
        wall = max(1e-9, time.monotonic() - self.wall0)
        #: % of one core used by the whole machine during the phase (ours + anything else running).
        self.machine_busy_pct = (round(100.0 * (busy1 - self.busy0) / wall, 1)
                                 if busy1 is not None and self.busy0 is not None else None)
        self.server_cpu_pct = (round(100.0 * (cpu1 - self.server_cpu0) / max(1e-9, time.monotonic() - self.wall0), 1)
                               if cpu1 is not None and self.server_cpu0 is not None else None)
        errors = [r["error"] for r in results if r.get("error")]
        if errors:
            raise RuntimeError(f"{self.label}: a load process failed:\n" + "\n".join(errors))
        return results

    def join(self) -> None:
        for p in self.procs:
            p.join(timeout=10)
        self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join(timeout=5)


def _proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) of a process, from /proc; None if unknown."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _machine_busy() -> float | None:
    """CPU seconds all processes of the machine were busy (not idle/iowait), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def disk_probe(directory: str | None = None, n: int = 100) -> dict[str, Any]:
    """Latency of a 150-byte append + fsync in C{directory} (the server's file system), n times.

    Durable figures depend on it (the disk may be shared with other work): it
    is recorded with every result.
    """
    import tempfile

    fd, path = tempfile.mkstemp(prefix="streamlog-bench-fsync-", dir=directory)
    lat = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 150)
            t0 = time.perf_counter()
            os.fsync(fd)
            lat.append((time.perf_counter() - t0) * 1000.0)
    finally:
        os.close(fd)
        os.unlink(path)
    summary = stats.summarize(lat)
    return {k: summary[k] for k in ("count", "p50", "p99", "max")}


def _cpu_pct(results: list[dict[str, Any]]) -> list[float]:
    """% of one core used by each load process over its measured phase."""
    return [round(100.0 * r["cpu_s"] / max(1e-9, r["t_end"] - r["t_start"]), 1) for r in results if "cpu_s" in r]


def _add_server_pids(pids: dict[str, int], server_pid: int | None, args: Any) -> None:
    """The processes a profile records besides the load: the server, or every node (leader or
    not) of a cluster the bench started."""
    if server_pid:
        pids["server"] = server_pid
    for i, pid in enumerate(getattr(args, "node_pids", None) or []):
        pids[f"node{i + 1}"] = pid


def py_spy() -> str | None:
    """The py-spy beside this Python (a venv's), else on $PATH; None when there is none."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return beside if os.access(beside, os.X_OK) else shutil.which("py-spy")


class _Profiler:
    """py-spy record (raw/folded output) of given pids while a phase runs."""

    def __init__(self, out_dir: str | None, seconds: float) -> None:
        self.out_dir = out_dir
        self.seconds = seconds
        self.procs: list[subprocess.Popen] = []

    def start(self, pids: dict[str, int]) -> None:
        if not self.out_dir:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        exe = py_spy()
        assert exe is not None  # main_with_args refused --profile without it
        for name, pid in pids.items():
            out = os.path.join(self.out_dir, f"{name}.txt")
            self.procs.append(subprocess.Popen(
                [exe, "record", "-p", str(pid), "-f", "raw", "-o", out, "-d", str(max(1, int(self.seconds))),
                 "-r", "250", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)  # let py-spy attach before the load starts

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


def _server_info(args: Any, server: ServerProcess | None, cluster: Nodes | None = None,
                 replication: int = 1) -> dict[str, Any]:
    if cluster is not None:
        return {"origin": f"a cluster of {len(cluster.plans)} nodes started by bench ({cluster.bootstrap})",
                "storage": args.storage, "fsync": args.fsync, "replication_factor": replication,
                "started_by_bench": True, "nodes": len(cluster.plans), "client_gc_threshold": client_gc_threshold(args)}
    if server is not None:
        return {"origin": f"started by bench (pid {server.pid}, 127.0.0.1:{server.port})", "storage": server.storage,
                "fsync": server.fsync, "replication_factor": 1, "started_by_bench": True,
                "client_gc_threshold": client_gc_threshold(args)}
    return {"origin": f"--connect {args.bench_connect}", "storage": f"{args.storage} (declared, not verified)",
            "fsync": f"{args.fsync} (declared, not verified)", "replication_factor": replication,
            "started_by_bench": False,
            "client_gc_threshold": client_gc_threshold(args)}


def _base_cfg(args: Any, endpoint: str, topic: str) -> dict[str, Any]:
    return {"endpoint": endpoint, "topic": topic, "size": args.size, "batch": args.batch, "acks": args.acks,
            "in_flight": args.in_flight, "linger_ms": args.linger_ms, "client": args.client,
            "max_seconds": args.max_seconds, "request_timeout": max(30.0, args.max_seconds),
            "gc_threshold": client_gc_threshold(args), "keys": getattr(args, "keys", 0) or 0,
            "idempotent": getattr(args, "idempotence", "on") == "on" and args.acks != "none"}


def client_gc_threshold(args: Any) -> int:
    """The load processes' GC threshold (reported with the results)."""
    from streamlog.gctune import THROUGHPUT_THRESHOLD

    value = getattr(args, "client_gc_threshold", None)
    return THROUGHPUT_THRESHOLD if value is None else value


def _split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _produce_phase(args: Any, endpoint: str, topic: str, n: int, label: str,
                   profiler: _Profiler | None = None, server_pid: int | None = None,
                   client_mode: str | None = None) -> list[dict[str, Any]]:
    phase = _Phase(args, label, n)
    phase.server_pid = server_pid
    for share in _split(n, args.producers):
        cfg = _base_cfg(args, endpoint, topic)
        cfg["messages"] = share
        if client_mode:
            cfg["client"] = client_mode
        phase.add(workers.produce_main, cfg)
    results = phase.run(args.max_seconds, profiler, "producer")
    for r in results:
        r["server_cpu_pct"] = phase.server_cpu_pct
        r["node_cpu_pct"] = phase.node_cpu_pct
        r["machine_busy_pct"] = phase.machine_busy_pct
    return results


def _durability(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the server answered to the warm-up probe: C{durability} and the C{acks} it was asked with."""
    got = results[0].get("durability") or (None, None)
    return {"durability": got[0], "durability_probe_acks": got[1]}


def _rates(args: Any, count: int, t0: float, t1: float) -> dict[str, Any]:
    elapsed = max(1e-9, t1 - t0)
    return {"elapsed_s": round(elapsed, 4), "msgs_per_s": round(count / elapsed, 1),
            "mb_per_s": round(count * args.size / elapsed / 1e6, 2)}


def run(args: Any) -> dict[str, Any]:
    server: ServerProcess | None = None
    cluster: Nodes | None = None
    if args.bench_connect:
        endpoint, address = _endpoint(args.bench_connect)
    elif args.nodes > 1:
        cluster = _start_cluster(args)
        endpoint = address = cluster.bootstrap
    else:
        server = ServerProcess(storage=args.storage, fsync=args.fsync, keep_dir=args.keep_data,
                               extra_args=tuple(args.server_arg or ()),
                               http=getattr(args, "scrape_metrics", 0.0) > 0)
        port = server.start()
        endpoint, address = f"tcp:127.0.0.1:{port}", ("127.0.0.1", port)
        if not args.quiet:
            print(f"bench: server pid {server.pid} on 127.0.0.1:{port} (storage={args.storage}, "
                  f"fsync={args.fsync}), data in {server.dir}", file=sys.stderr)
    scraper = None
    if server is not None and server.http_port is not None:
        from streamlog.bench.scrape import Scraper

        scraper = Scraper(server.http_port, args.scrape_metrics)
        scraper.start()
    try:
        result = _run_workload(args, server, endpoint, address, cluster)
        if scraper is not None:
            result["metrics_scrape"] = scraper.stop()
        return result
    finally:
        if scraper is not None:
            scraper.stop()
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.stop_all()
            if not args.keep_data:
                shutil.rmtree(cluster.log_dir, ignore_errors=True)


def _start_cluster(args: Any) -> Nodes:
    """A local cluster of C{--nodes} nodes (fresh data dir; C{--storage}, C{--fsync} and each
    C{--server-arg} given to every node), formed; its pids go into C{args.node_pids}."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="streamlog-bench-cluster-"))
    options = ["--storage", args.storage, "--fsync", args.fsync, *(args.server_arg or ())]
    cluster = Nodes.plan(args.nodes, root, options)
    cluster.start_all()
    try:
        cluster.wait_formed()
    except BaseException:
        cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)
        raise
    args.node_pids = [cluster.pid(n) for n in sorted(cluster.plans)]
    if not args.quiet:
        print(f"bench: a cluster of {args.nodes} nodes at {cluster.bootstrap} (pids "
              f"{', '.join(map(str, args.node_pids))}; storage={args.storage}, fsync={args.fsync}), data in {root}",
              file=sys.stderr)
    return cluster


def _add_node_cpu(result: dict[str, Any], per_node: list[float | None] | None) -> None:
    if per_node:
        result["cpu_pct_of_one_core"]["nodes"] = per_node

def _replication_factor(bc: Any, topic: str, created: Any, timeout: float = 10.0) -> int:
    """The replication factor of the topic just created: from the CreateTopic answer if it says,
    else from DescribeTopic, asked again (within C{timeout}) while the node asked does not know
    the topic yet (its metadata lags behind the controller's: seen with --connect)."""
    from streamlog import errors

    given = created.get("replication_factor") if isinstance(created, dict) else None
    if isinstance(given, int) and not isinstance(given, bool):
        return given
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(bc.describe_topic(topic).get("replication_factor", 1))
        except (errors.UnknownTopic, errors.LeaderNotAvailable):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)  # the next look at the condition; bounded by the deadline


def _run_workload(args: Any, server: ServerProcess | None, endpoint: str, address: Any,
                  cluster: Nodes | None = None) -> dict[str, Any]:
    from streamlog.client import BlockingClient

    topic = args.topic or f"bench-{args.workload}-{os.getpid()}-{int(time.time() * 1000)}"
    with BlockingClient(address, timeout=30.0) as bc:
        created = bc.create_topic(topic, partitions=args.partitions)
        replication = 1
        if cluster is not None:
            cluster.wait_topic_in_sync(topic)
            # The load processes warm up on a topic of their own: elected before they start.
            bc.create_topic(topic + "-warmup", partitions=1)
            cluster.wait_topic_in_sync(topic + "-warmup")
        if cluster is not None or server is None:
            # Its own cluster, or the server of --connect (which may be a cluster: its topic's
            # replication factor is what the cluster chose, as DescribeTopic says; 1 on a lone node).
            replication = _replication_factor(bc, topic, created)
    profiler = _Profiler(args.profile, args.profile_seconds or args.max_seconds) if args.profile else None
    server_pid = server.pid if server is not None else None
    result: dict[str, Any] = {
        "tool": "streamlog bench", "workload": args.workload, "size": args.size, "batch": args.batch,
        "acks": args.acks, "partitions": args.partitions, "client": args.client, "in_flight": args.in_flight,
        "keys": getattr(args, "keys", 0) or 0,
        "idempotence": "on" if args.client == "producer" and getattr(args, "idempotence", "on") == "on"
        and args.acks != "none" else "off",
        "linger_ms": args.linger_ms, "server": _server_info(args, server, cluster, replication), "topic": topic,
        "warnings": [],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label": args.label,
        # The machine may be shared: the 1-minute load average before the run says how busy it was.
        "loadavg_1m_before": round(os.getloadavg()[0], 2), "nproc": os.cpu_count(),
        "disk_fsync_ms_before": disk_probe(os.path.dirname(server.dir) if server is not None and server.dir else None)
        if server is not None and args.storage == "segmented" else None,
    }
    if args.workload == "produce":
        n = args.messages
        results = _produce_phase(args, endpoint, topic, n, "produce", profiler, server_pid)
        done = sum(r["acked"] for r in results)
        result["requests"] = sum(r.get("requests", 0) for r in results)
        result.update(messages=done, requested=n, processes=args.producers,
                      **_durability(results),
                      latency_ms=stats.summarize(x for r in results for x in r["lat_ms"]),
                      latency_what=results[0]["what"])
        result.update(_rates(args, done, min(r["t_start"] for r in results), max(r["t_end"] for r in results)))
        result["cpu_pct_of_one_core"] = {"server": results[0].get("server_cpu_pct"), "producers": _cpu_pct(results),
                                         "machine": results[0].get("machine_busy_pct")}
        _add_node_cpu(result, results[0].get("node_cpu_pct"))
        if any(r.get("timed_out") for r in results):
            result["warnings"].append(f"--max-seconds {args.max_seconds} reached: {done} of {n} messages")
    elif args.workload == "consume":
        n = args.messages
        pre = _produce_phase(args, endpoint, topic, n, "prefill", client_mode="batch")
        with BlockingClient(address, timeout=30.0) as bc:
            if cluster is not None:  # from each leader: a follower's high watermark may lag a heartbeat
                hw = {p: bc.list_offsets(topic, p, "latest") for p in range(args.partitions)}
            else:
                described = bc.describe_topic(topic)
                hw = {p["partition"]: p["high_watermark"] for p in described["partitions"]}
        total = sum(hw.values())
        consumers = max(1, min(args.consumers, args.partitions))
        phase = _Phase(args, "consume", total)
        phase.server_pid = server_pid
        for c in range(consumers):
            cfg = _base_cfg(args, endpoint, topic)
            cfg["expected"] = {str(p): w for p, w in hw.items() if p % consumers == c}
            cfg["max_bytes"] = min(MAX_POLL_BYTES, max(1 << 20, args.batch * (args.size + 128)))
            phase.add(workers.consume_main, cfg)
        results = phase.run(args.max_seconds, profiler, "consumer")
        got = sum(r["received"] for r in results)
        result.update(messages=got, requested=total, processes=consumers, **_durability(pre),
                      latency_ms=stats.summarize(x for r in results for x in r["lat_ms"]),
                      latency_what=results[0]["what"])
        result.update(_rates(args, got, min(r["t_start"] for r in results), max(r["t_end"] for r in results)))
        result["cpu_pct_of_one_core"] = {"server": phase.server_cpu_pct, "consumers": _cpu_pct(results),
                                         "machine": phase.machine_busy_pct}
        _add_node_cpu(result, phase.node_cpu_pct)
        if got < total:
            result["warnings"].append(f"received {got} of {total} messages (--max-seconds {args.max_seconds})")
    else:  # e2e
        n = args.messages if args.messages_given else int(args.rate * args.duration)
        warmup = int(n * args.warmup)
        phase_c = _Phase(args, "e2e-consumer", n)
        consumers = max(1, min(args.consumers, args.partitions))
        for c in range(consumers):
            cfg = _base_cfg(args, endpoint, topic)
            cfg.update(messages=n, warmup=warmup, assigned=[p for p in range(args.partitions) if p % consumers == c],
                       max_seconds=args.max_seconds + 10)
            phase_c.add(workers.e2e_consumer_main, cfg)
        phase_c.start()
        phase_c.start_evt.set()
        try:
            phase_p = _Phase(args, "e2e", n)
            phase_p.server_pid = server_pid
            shares = _split(n, args.producers)
            for k, share in enumerate(shares):
                cfg = _base_cfg(args, endpoint, topic)
                cfg.update(messages=share, rate=args.rate / args.producers, first_index=k, stride=args.producers,
                           batch=max(1, args.batch))
                phase_p.add(workers.e2e_producer_main, cfg)
            phase_p.start()
            started = None
            if profiler is not None:
                pids = {f"producer{i}": p.pid for i, p in enumerate(phase_p.procs)}
                pids.update({f"consumer{i}": p.pid for i, p in enumerate(phase_c.procs)})
                _add_server_pids(pids, server_pid, args)
                started = lambda: profiler.start(pids)  # noqa: E731
            try:
                presults = phase_p.go(args.max_seconds, started)
            finally:
                if profiler is not None:
                    profiler.stop()
            phase_c.total = 0
            cresults = phase_c.go(args.max_seconds + 15)
        finally:
            phase_c.kill()
        sent = sum(r["sent"] for r in presults)
        got = sum(r["received"] for r in cresults)
        t0, t1 = min(r["t_start"] for r in presults), max(r["t_end"] for r in presults)
        result.update(messages=sent, requested=n, received=got, processes=args.producers, target_rate=args.rate,
                      warmup_excluded=warmup, **_durability(presults),
                      latency_ms=stats.summarize(x for r in cresults for x in r["lat_ms"]),
                      latency_what=cresults[0]["what"],
                      ack_latency_ms=stats.summarize(x for r in presults for x in r["ack_lat_ms"][warmup // args.producers:]),
                      ack_latency_what=presults[0]["what"])
        result.update(_rates(args, sent, t0, t1))
        result["cpu_pct_of_one_core"] = {"server": phase_p.server_cpu_pct, "producers": _cpu_pct(presults),
                                         "consumers": _cpu_pct(cresults), "machine": phase_p.machine_busy_pct}
        _add_node_cpu(result, phase_p.node_cpu_pct)
        if got < sent:
            result["warnings"].append(f"the consumer received {got} of {sent} messages")
    if not result["warnings"]:
        del result["warnings"]
    return result


def main_with_args(args: Any) -> int:
    args.messages_given = args.messages is not None
    if args.profile and py_spy() is None:
        print("streamlog bench: --profile records with py-spy, which is not installed here "
              "(pip install py-spy, into this venv)", file=sys.stderr)
        return 2
    if args.messages is None:
        args.messages = 200_000
    if args.producers < 1 or args.partitions < 1 or args.batch < 1 or args.messages < 1 or args.size < 0:
        print("bench: --producers, --partitions, --batch and --messages must be at least 1", file=sys.stderr)
        return 2
    scrape = getattr(args, "scrape_metrics", 0.0) or 0.0
    if scrape < 0 or (scrape > 0 and (args.bench_connect or args.nodes > 1)):
        print("bench: --scrape-metrics takes seconds > 0 and scrapes the one server the bench starts "
              "(not with --connect or --nodes)", file=sys.stderr)
        return 2
    result = run(args)
    text = stats.format_report(result)
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        print(text)
    return 0

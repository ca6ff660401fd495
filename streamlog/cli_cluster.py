"""C{streamlog cluster}: start a local cluster to try (C{up}) and look at a running one (C{status}).

    streamlog cluster up --nodes 3              # foreground; Ctrl-C stops every node
    streamlog cluster status                    # the nodes of `cluster up`'s default ports
    streamlog cluster status --connect 10.0.0.1:7070,10.0.0.2:7070 --json

C{status} asks one node for the cluster's C{Metadata} (trying each address of
the bootstrap list in turn), then pings every node the answer lists, at the
same time, so that a node that is down costs one C{--timeout} at most, not
one each.  It shows what the answering node believes (C{UP}: whether that
node sees the other alive) beside what this command saw (C{PING}): the two
differ while a failure is being noticed, and that is worth seeing.

C{up} lives in L{streamlog.cli_cluster_up}; this module only parses its options.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs

from streamlog import errors
from streamlog.cli import EXIT_ERROR, EXIT_OK, _leaf, emit_json
from streamlog.client.addresses import address_key, check_bootstrap, describe_address
from streamlog.client.blocking import BlockingClient
from streamlog.client.metadata import MetadataAnswer, PartitionInfo, ReplicaOffset

#: Where C{cluster up} puts node 1 by default (7070 stays free for a lone default server).
DEFAULT_BASE_PORT = 7071
#: What C{status} asks without C{--connect} or C{$STREAMLOG_CONNECT}: the nodes of a default C{cluster up}.
DEFAULT_STATUS_CONNECT = ",".join(f"127.0.0.1:{DEFAULT_BASE_PORT + i}" for i in range(3))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    cluster = sub.add_parser("cluster", help="start a local cluster to try, or show a cluster's status",
                             parents=[common])
    csub = cluster.add_subparsers(dest="cluster_command", metavar="{up,status}", required=True)

    p = csub.add_parser(
        "status", parents=[common], help="nodes, controller, partition leaders, in-sync replicas and lag",
        description="Ask a node of --connect (each in turn until one answers) for the cluster's Metadata, "
                    "ping every node it lists, and print the cluster id, the controller, the nodes (UP: "
                    "as the answering node sees them; PING: whether they answer this command now) and "
                    "every partition's leader, term, replicas, in-sync replicas and followers' lag (from "
                    "each leader's own Metadata). Without --connect "
                    f"(and $STREAMLOG_CONNECT): {DEFAULT_STATUS_CONNECT}, the nodes of 'cluster up'. "
                    "Exit status 0 once a node answered (even if others are down), 1 if none did.")
    _leaf(p, cmd_status)

    from streamlog import cli_cluster_up  # its options live with it

    cli_cluster_up.register(csub, common)


# --- status ----------------------------------------------------------------------------------


@attrs.frozen
class PingResult:
    """What pinging one node gave: its round trip (connect included), or why it failed."""

    ok: bool
    ms: float | None = None
    error: str | None = None
    version: str | None = None


@attrs.frozen
class Status:
    answered_by: str
    metadata: MetadataAnswer
    pings: dict[int, PingResult]
    #: (topic, partition) -> the replicas' offsets as the partition's leader answered them.
    offsets: dict[tuple[str, int], tuple[ReplicaOffset, ...]] = attrs.field(factory=dict)

    def lag(self, topic: str, p: PartitionInfo) -> dict[int, int | None] | None:
        """Each replica's lag behind the leader's log end, in records (None: behind its log
        start), or None if the leader's offsets are not known."""
        offsets = self.offsets.get((topic, p.partition))
        ends = {r.node_id: r.log_end_offset for r in offsets or ()}
        top = ends.get(p.leader) if p.leader is not None else None
        if top is None:
            return None
        return {node: None if ends.get(node) is None else top - ends[node]  # type: ignore[operator]
                for node in p.replicas}


class NoMetadata(errors.StreamlogError):
    """No node of the bootstrap list answered C{Metadata} (client side only, as C{CONNECTION_LOST})."""

    code = "CONNECTION_LOST"


def fetch_metadata(bootstrap: list[Any], timeout: float | None) -> tuple[str, MetadataAnswer]:
    """The first C{Metadata} answer of the bootstrap list, tried in order, and who gave it.

    @raise NoMetadata: no address answered; the message says what each one did.  A node
        that answers C{METHOD_NOT_FOUND} runs a streamlog from before clusters: the
        message says so (it is a single node, and the other commands work with it).
    """
    said: list[str] = []
    old: list[str] = []
    for address in bootstrap:
        name = describe_address(address)
        try:
            with BlockingClient(address, timeout=timeout) as client:
                result = client.call("Metadata", {})
        except errors.MethodNotFound:
            old.append(name)
            said.append(f"{name}: no Metadata method (a single node of a streamlog before clusters)")
            continue
        except errors.StreamlogError as e:
            said.append(f"{name}: {e.code}: {e.message}" if not isinstance(e, (errors.ConnectionLost, errors.Timeout))
                        else f"{name}: {_short(e)}")
            continue
        return address_key(address), MetadataAnswer.parse(result)
    if old and len(old) == len(bootstrap):
        which = ", ".join(old)
        raise NoMetadata(f"{which} {'is a single node' if len(old) == 1 else 'are single nodes'} of a streamlog "
                         f"from before clusters (Metadata is METHOD_NOT_FOUND): there is no cluster status to "
                         f"show; 'streamlog ping' and 'streamlog topics describe' work with it", nodes=old)
    raise NoMetadata("no node answered Metadata: " + "; ".join(said), nodes=[describe_address(a) for a in bootstrap])


def _short(e: errors.StreamlogError) -> str:
    """C{cannot connect to 127.0.0.1:7071: Connection refused} -> C{Connection refused}."""
    address = e.details.get("address")
    prefix = f"cannot connect to {address}: "
    if isinstance(address, str) and e.message.startswith(prefix):
        return e.message[len(prefix):]
    return e.message


def ping(address: str, timeout: float | None) -> PingResult:
    """Ping one node on a connection of its own; the time includes connecting (what a client would wait)."""
    started = time.monotonic()
    try:
        with BlockingClient(address, timeout=timeout) as client:
            result = client.ping()
    except errors.StreamlogError as e:
        text = _short(e) if isinstance(e, (errors.ConnectionLost, errors.Timeout)) else f"{e.code}: {e.message}"
        return PingResult(False, error=text)
    version = result.get("version") if isinstance(result, dict) else None
    return PingResult(True, ms=(time.monotonic() - started) * 1000.0,
                      version=version if isinstance(version, str) else None)


def ask_metadata(address: str, timeout: float | None) -> MetadataAnswer | None:
    """One node's own Metadata answer (its replica offsets are for what it leads), or None."""
    try:
        with BlockingClient(address, timeout=timeout) as client:
            return MetadataAnswer.parse(client.call("Metadata", {}))
    except errors.StreamlogError:
        return None


def gather_status(bootstrap: list[Any], timeout: float | None,
                  pinger: Callable[[str, float | None], PingResult] = ping,
                  asker: Callable[[str, float | None], MetadataAnswer | None] = ask_metadata) -> Status:
    """Metadata from the first node that answers, then a Ping at every node it lists and
    their own Metadata (for the replica offsets each leader knows), all in parallel."""
    answered_by, metadata = fetch_metadata(bootstrap, timeout)
    nodes = list(metadata.nodes)
    pings: dict[int, PingResult] = {}
    answers: dict[int, MetadataAnswer | None] = {}
    if nodes:
        with ThreadPoolExecutor(max_workers=min(2 * len(nodes), 16)) as pool:
            futures = {n.node_id: pool.submit(pinger, n.address, timeout) for n in nodes}
            asked = {n.node_id: pool.submit(asker, n.address, timeout) for n in nodes}
            pings = {node_id: f.result() for node_id, f in futures.items()}
            answers = {node_id: f.result() for node_id, f in asked.items()}
    offsets: dict[tuple[str, int], tuple[ReplicaOffset, ...]] = {}
    for t in metadata.topics:
        for p in t.partitions:
            for answer in (answers.get(p.leader) if p.leader is not None else None, metadata):
                theirs = next((q for u in (answer.topics if answer else ()) if u.topic == t.topic
                               for q in u.partitions if q.partition == p.partition), None)
                if theirs is not None and theirs.replica_offsets and theirs.leader == p.leader:
                    offsets[(t.topic, p.partition)] = theirs.replica_offsets
                    break
    return Status(answered_by, metadata, pings, offsets)


def status_json(status: Status) -> dict[str, Any]:
    """The C{--json} document: the Metadata answer as checked, each node with what its Ping gave."""
    m = status.metadata

    def node(n: Any) -> dict[str, Any]:
        p = status.pings.get(n.node_id)
        entry: dict[str, Any] = {"node_id": n.node_id, "address": n.address, "up": n.up,
                                 "ping": None if p is None else {"ok": p.ok, "ms": None if p.ms is None else round(p.ms, 3),
                                                                 "error": p.error, "version": p.version}}
        return entry

    def partition(topic: str, p: PartitionInfo) -> dict[str, Any]:
        lag = status.lag(topic, p)
        return {"partition": p.partition, "leader": p.leader, "leader_term": p.leader_term,
                "replicas": list(p.replicas), "isr": list(p.isr),
                "replica_offsets": [attrs.asdict(r) for r in status.offsets.get((topic, p.partition), ())],
                "lag": None if lag is None else {str(n): v for n, v in lag.items()},
                "under_replicated": _under_replicated(p)}

    return {
        "answered_by": status.answered_by,
        "cluster_id": m.cluster_id,
        "alone": m.alone,
        "controller": m.controller,
        "nodes": [node(n) for n in m.nodes],
        "topics": [{"topic": t.topic, "topic_id": t.topic_id, "partitions": [partition(t.topic, p) for p in t.partitions]}
                   for t in m.topics]
                  + [{"topic": name, "error": e.to_wire()} for name, e in sorted(m.topic_errors.items())],
    }


def _under_replicated(p: PartitionInfo) -> bool:
    return p.leader is None or set(p.isr) != set(p.replicas)


def _lag(lag: dict[int, int | None] | None, leader: int | None) -> str:
    """The followers' lag in records, worst first: C{0}, C{2:15,3:0}; C{-} unknown (no leader,
    or its offsets not heard); C{?} for a follower behind the leader's log start."""
    if lag is None:
        return "-"
    followers = {n: v for n, v in lag.items() if n != leader}
    if not followers or all(v == 0 for v in followers.values()):
        return "0"
    return ",".join(f"{n}:{'?' if v is None else v}" for n, v in sorted(followers.items()))


def _ids(ids: tuple[int, ...]) -> str:
    return ",".join(str(i) for i in ids) or "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def status_lines(status: Status) -> list[str]:
    """The human-readable status, as lines."""
    m = status.metadata
    by_id = {n.node_id: n for n in m.nodes}
    if m.alone:
        lines = [f"a node alone (started without --peers: a cluster of one)  (metadata from {status.answered_by})"]
    else:
        lines = [f"cluster {m.cluster_id or '(no id yet)'}  (metadata from {status.answered_by})"]
    if m.controller is None:
        lines.append("controller: none (the metadata group is electing one)")
    else:
        where = by_id[m.controller].address if m.controller in by_id else "address unknown"
        lines.append(f"controller: node {m.controller} ({where})")
    lines.append("")
    rows = []
    for n in m.nodes:
        p = status.pings.get(n.node_id)
        if p is None:
            said = "-"
        elif p.ok:
            said = f"ok {p.ms:.1f} ms" if p.ms is not None else "ok"
        else:
            said = f"no: {p.error}"
        rows.append([str(n.node_id), n.address, "yes" if n.up else "no", said])
    lines += _table(["NODE", "ADDRESS", "UP", "PING"], rows)
    lines.append("")
    if not m.topics and not m.topic_errors:
        lines.append("no topics")
        return lines
    rows = []
    for t in m.topics:
        for p in t.partitions:
            leader = "none" if p.leader is None else str(p.leader)
            rows.append([t.topic, str(p.partition), leader, str(p.leader_term), _ids(p.replicas), _ids(p.isr),
                         _lag(status.lag(t.topic, p), p.leader)])
    lines += _table(["TOPIC", "PARTITION", "LEADER", "TERM", "REPLICAS", "ISR", "LAG"], rows)
    for name, e in sorted(m.topic_errors.items()):
        lines.append(f"{name}: {e.code}: {e.message}")
    parts = [p for t in m.topics for p in t.partitions]
    leaderless = sum(1 for p in parts if p.leader is None)
    under = sum(1 for p in parts if _under_replicated(p))
    lines.append("")
    lines.append(f"{len(parts)} partition(s) in {len(m.topics)} topic(s): {under} under-replicated "
                 f"(in-sync replicas fewer than replicas, or no leader), {leaderless} without a leader")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    connect = args.connect if args.connect_from is not None else DEFAULT_STATUS_CONNECT
    try:
        status = gather_status(check_bootstrap(connect, blocking=True), args.timeout)
    except NoMetadata as e:
        hint = "" if args.connect_from is not None else \
            " (no --connect given: these are the nodes of a default 'streamlog cluster up')"
        print(f"error: {e.message}{hint}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        emit_json(status_json(status))
    else:
        print("\n".join(status_lines(status)))
    return EXIT_OK

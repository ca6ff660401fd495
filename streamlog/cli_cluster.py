"""C{streamlog cluster}: start a local cluster to try (C{up}) and look at a running one (C{status}).

    streamlog cluster up --nodes 3              # foreground; Ctrl-C stops every node
    streamlog cluster status                    # the nodes of `cluster up`'s default ports
    streamlog cluster status --connect 10.0.0.1:7070,10.0.0.2:7070 --json
    streamlog top                               # the same status, redrawn every 2 s, with msgs/s

C{status} asks one node for the cluster's C{Metadata} (trying each address of
the bootstrap list in turn), then pings every node the answer lists, at the
same time, so that a node that is down costs one C{--timeout} at most, not
one each (one C{--connect-timeout} if it drops packets).  It shows what the answering node believes (C{UP}: whether that
node sees the other alive) beside what this command saw (C{PING}): the two
differ while a failure is being noticed, and that is worth seeing.

C{status --watch} (also C{streamlog top}) asks again every C{--interval}
seconds and redraws in place on a terminal (one frame after another, a blank
line between, when the output is a pipe or a file; one JSON document per line
with C{--json}), adding each partition's messages per second: how far its
leader's log end moved since the last frame.  A frame in which no node
answered says so and the next one tries again: a monitor must outlive the
failures it is there to show.  Ctrl-C ends it with status 0.

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
from streamlog.cli import DEFAULT_CONNECT, EXIT_ERROR, EXIT_OK, _leaf, _Usage, emit_json
from streamlog.client.addresses import address_key, check_bootstrap, describe_address
from streamlog.client.blocking import BlockingClient
from streamlog.client.metadata import MetadataAnswer, PartitionInfo, ReplicaOffset
from streamlog.client.retry import DEFAULT_CONNECT_TIMEOUT

#: Where C{cluster up} puts node 1 by default (7070 stays free for a lone default server).
DEFAULT_BASE_PORT = 7071
#: Seconds between two frames of C{status --watch} and C{top}.
DEFAULT_WATCH_INTERVAL = 2.0
#: What C{status} asks without C{--connect} or C{$STREAMLOG_CONNECT}: the nodes of a default C{cluster up}.
#: then the default lone server's (what README's first command starts), so that C{streamlog top}
#: next to either shows it without options.
DEFAULT_STATUS_CONNECT = ",".join([*(f"127.0.0.1:{DEFAULT_BASE_PORT + i}" for i in range(3)), DEFAULT_CONNECT])


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
                    f"(and $STREAMLOG_CONNECT): {DEFAULT_STATUS_CONNECT}, the nodes of 'cluster up' then a default lone server. "
                    "Exit status 0 once a node answered (even if others are down), 1 if none did.")
    _watch_options(p, watch_default=False)
    _leaf(p, cmd_status)

    top = sub.add_parser(
        "top", parents=[common], help="a live view of the cluster: cluster status --watch",
        description="The status of 'cluster status' redrawn in place every --interval seconds, with each "
                    "partition's messages per second (how far its leader's log end moved since the last "
                    "frame). A frame in which no node answered says so, and the next one asks again. "
                    "Ctrl-C stops it (exit status 0). Without --connect (and $STREAMLOG_CONNECT): "
                    f"{DEFAULT_STATUS_CONNECT}, the nodes of 'cluster up' then a default lone server.")
    _watch_options(top, watch_default=True)
    _leaf(top, cmd_status)

    from streamlog import cli_cluster_up  # its options live with it

    cli_cluster_up.register(csub, common)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 3600 seconds, not {text}")
    return value


def _frames(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def _watch_options(p: argparse.ArgumentParser, watch_default: bool) -> None:
    if not watch_default:
        p.add_argument("--watch", "-w", action="store_true",
                       help="ask again every --interval seconds and redraw in place, with each partition's "
                            "messages per second (what 'streamlog top' does)")
    else:
        p.set_defaults(watch=True)
    p.add_argument("--interval", type=_positive_seconds, default=None, metavar="SECONDS",
                   help=f"seconds between two frames of --watch (default {DEFAULT_WATCH_INTERVAL:g}; 0.1 to 3600)")
    p.add_argument("--count", type=_frames, default=None, metavar="N",
                   help="with --watch: stop after N frames (default: until Ctrl-C)")


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


def fetch_metadata(bootstrap: list[Any], timeout: float | None,
                   connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT) -> tuple[str, MetadataAnswer]:
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
            with BlockingClient(address, timeout=timeout, connect_timeout=connect_timeout) as client:
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


def ping(address: str, timeout: float | None, connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT) -> PingResult:
    """Ping one node on a connection of its own; the time includes connecting (what a client would wait)."""
    started = time.monotonic()
    try:
        with BlockingClient(address, timeout=timeout, connect_timeout=connect_timeout) as client:
            result = client.ping()
    except errors.StreamlogError as e:
        text = _short(e) if isinstance(e, (errors.ConnectionLost, errors.Timeout)) else f"{e.code}: {e.message}"
        return PingResult(False, error=text)
    version = result.get("version") if isinstance(result, dict) else None
    return PingResult(True, ms=(time.monotonic() - started) * 1000.0,
                      version=version if isinstance(version, str) else None)


def ask_metadata(address: str, timeout: float | None,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT) -> MetadataAnswer | None:
    """One node's own Metadata answer (its replica offsets are for what it leads), or None."""
    try:
        with BlockingClient(address, timeout=timeout, connect_timeout=connect_timeout) as client:
            return MetadataAnswer.parse(client.call("Metadata", {}))
    except errors.StreamlogError:
        return None


def gather_status(bootstrap: list[Any], timeout: float | None,
                  pinger: Callable[..., PingResult] = ping,
                  asker: Callable[..., MetadataAnswer | None] = ask_metadata,
                  connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT) -> Status:
    """Metadata from the first node that answers, then a Ping at every node it lists and
    their own Metadata (for the replica offsets each leader knows), all in parallel.
    C{pinger} and C{asker} are called as C{(address, timeout, connect_timeout)}."""
    answered_by, metadata = fetch_metadata(bootstrap, timeout, connect_timeout)
    nodes = list(metadata.nodes)
    pings: dict[int, PingResult] = {}
    answers: dict[int, MetadataAnswer | None] = {}
    if nodes:
        with ThreadPoolExecutor(max_workers=min(2 * len(nodes), 16)) as pool:
            futures = {n.node_id: pool.submit(pinger, n.address, timeout, connect_timeout) for n in nodes}
            asked = {n.node_id: pool.submit(asker, n.address, timeout, connect_timeout) for n in nodes}
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


def leader_log_end(status: Status, topic: str, p: PartitionInfo) -> int | None:
    """The partition's log end offset as its leader answered it, or None if not heard."""
    for r in status.offsets.get((topic, p.partition), ()):
        if r.node_id == p.leader:
            return r.log_end_offset
    return None


def rates(before: Status, after: Status, seconds: float) -> dict[tuple[str, int], float | None]:
    """Messages per second into each partition of C{after} since C{before}: how far the
    leader's log end moved (the log is the same whoever leads it). None where either frame
    did not hear the leader's offsets, or the log end went back (the topic was recreated)."""
    ends = {(t.topic, p.partition): leader_log_end(before, t.topic, p)
            for t in before.metadata.topics for p in t.partitions}
    out: dict[tuple[str, int], float | None] = {}
    for t in after.metadata.topics:
        for p in t.partitions:
            then, now = ends.get((t.topic, p.partition)), leader_log_end(after, t.topic, p)
            ok = then is not None and now is not None and now >= then and seconds > 0
            out[(t.topic, p.partition)] = (now - then) / seconds if ok else None  # type: ignore[operator]
    return out


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


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


def status_lines(status: Status, per_second: dict[tuple[str, int], float | None] | None = None) -> list[str]:
    """The human-readable status, as lines; with C{per_second} (see L{rates}) a MSG/S column
    and a total."""
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
            if per_second is not None:
                rows[-1].append(_rate(per_second.get((t.topic, p.partition))))
    header = ["TOPIC", "PARTITION", "LEADER", "TERM", "REPLICAS", "ISR", "LAG"]
    lines += _table(header + (["MSG/S"] if per_second is not None else []), rows)
    for name, e in sorted(m.topic_errors.items()):
        lines.append(f"{name}: {e.code}: {e.message}")
    parts = [p for t in m.topics for p in t.partitions]
    leaderless = sum(1 for p in parts if p.leader is None)
    under = sum(1 for p in parts if _under_replicated(p))
    lines.append("")
    lines.append(f"{len(parts)} partition(s) in {len(m.topics)} topic(s): {under} under-replicated "
                 f"(in-sync replicas fewer than replicas, or no leader), {leaderless} without a leader")
    if per_second is not None:
        known = [v for v in per_second.values() if v is not None]
        unknown = len(per_second) - len(known)
        if not known:
            lines.append("in: - msgs/s (a rate needs two frames in which the leaders' offsets were heard)")
        else:
            lines.append(f"in: {_rate(sum(known))} msgs/s"
                         + (f" ({unknown} partition(s) not counted: leader's offsets not heard)" if unknown else ""))
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    connect = args.connect if args.connect_from is not None else DEFAULT_STATUS_CONNECT
    hint = "" if args.connect_from is not None else \
        " (no --connect given: these are the nodes of a default 'streamlog cluster up' and a default lone server)"
    bootstrap = check_bootstrap(connect, blocking=True)
    if args.watch:
        interval = DEFAULT_WATCH_INTERVAL if args.interval is None else args.interval
        return watch(bootstrap, args.timeout, interval, args.count, args.json, hint,
                     gather=lambda b, t: gather_status(b, t, connect_timeout=args.connect_timeout))
    if args.interval is not None or args.count is not None:
        raise _Usage("--interval and --count go with --watch")
    try:
        status = gather_status(bootstrap, args.timeout, connect_timeout=args.connect_timeout)
    except NoMetadata as e:
        print(f"error: {e.message}{hint}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        emit_json(status_json(status))
    else:
        print("\n".join(status_lines(status)))
    return EXIT_OK


#: On a terminal each frame starts at the top left and each line clears what is left of the old
#: one, then what is below the frame is cleared: a redraw in place, without the flicker of a
#: full clear.
_HOME, _CLEAR_LINE, _CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def watch(bootstrap: list[Any], timeout: float | None, interval: float, count: int | None, as_json: bool,
          hint: str = "", gather: Callable[[list[Any], float | None], Status] | None = None,
          out: Any = None, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep, wall: Callable[[], float] = time.time) -> int:
    """C{status --watch}: a frame every C{interval} seconds (C{count} of them, or until Ctrl-C)."""
    out = out or sys.stdout
    gather = gather or gather_status
    tty = not as_json and out.isatty()
    previous: tuple[float, Status] | None = None
    frames = 0
    try:
        while True:
            started = clock()
            stamp = time.strftime("%H:%M:%S", time.localtime(wall()))
            try:
                status = gather(bootstrap, timeout)
            except NoMetadata as e:
                status, problem = None, f"{e.message}{hint}"
            per_second = None
            if status is not None and previous is not None:
                per_second = rates(previous[1], status, started - previous[0])
            if as_json:
                doc: dict[str, Any] = {"time": wall()}
                if status is None:
                    doc["error"] = {"code": NoMetadata.code, "message": problem}
                else:
                    doc.update(status_json(status))
                    doc["msgs_per_second"] = None if per_second is None else [
                        {"topic": t, "partition": n, "value": v} for (t, n), v in sorted(per_second.items())]
                emit_json(doc, out)
            else:
                lines = [f"{stamp}  every {interval:g} s (Ctrl-C to stop)", ""]
                if status is None:
                    lines.append(f"no node answered: {problem}")
                else:
                    # The first frame has nothing to measure a rate against: its column is all "-".
                    lines += status_lines(status, per_second if per_second is not None else
                                          {(t.topic, p.partition): None for t in status.metadata.topics
                                           for p in t.partitions})
                if tty:
                    out.write(_HOME + "".join(line + _CLEAR_LINE + "\n" for line in lines) + _CLEAR_BELOW)
                else:
                    out.write("\n".join(lines) + "\n\n")
            out.flush()
            if status is not None:
                previous = (started, status)
            frames += 1
            if count is not None and frames >= count:
                return EXIT_OK
            sleep(max(0.0, interval - (clock() - started)))
    except KeyboardInterrupt:
        return EXIT_OK

"""C{streamlog}: the admin command line (topics, produce, consume, ping), over the blocking client.

    streamlog topics create events --partitions 3
    streamlog topics list
    streamlog produce events hello world            # two messages
    seq 5 | streamlog produce events --json-values  # one message per stdin line
    streamlog consume events --from earliest --count 10
    streamlog --json topics describe events
    streamlog cluster up --nodes 3                  # a local cluster (streamlog.cli_cluster_up)
    streamlog cluster status                        # its nodes, controller, leaders (streamlog.cli_cluster)

Output is for people by default; C{--json} prints JSON (one object per line
for C{produce} and C{consume}).  Exit status: 0 success; 1 an error from the
server or the connection (its code and message on stderr, e.g.
C{error: UNKNOWN_TOPIC: unknown topic 'x'}); 2 a usage error; 130
interrupted; 141 the output was closed (C{| head}), as a shell reports for
C{cat} killed by SIGPIPE, and without a traceback.

Subcommands are added by registration functions C{register(subparsers,
common)} (see L{COMMANDS}, L{register_command}); C{common} is a parent parser
holding C{--connect/--json/--timeout/--connect-timeout}, to pass as C{parents=[common]}.  A
C{streamlog.bench} module that defines such a C{register} function is picked
up by L{build_parser} without changes here.  Each subcommand sets
C{func(args) -> int} (the exit status); L{make_client} builds the blocking
client for C{args}.  C{args.connect_from} says where the address came from
(C{"--connect"}, C{"$STREAMLOG_CONNECT"}, or None for the default), so that
a subcommand with a different default (bench starts its own server) can tell.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TextIO

import orjson

import streamlog
from streamlog import errors
from streamlog.client import positions, requests
from streamlog.client.addresses import check_bootstrap
from streamlog.client.blocking import BlockingClient
from streamlog.client.retry import DEFAULT_CONNECT_TIMEOUT, backoff_policy
from streamlog.tap.output import output_closed

DEFAULT_CONNECT = "127.0.0.1:7070"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: The output was closed under us (128 + SIGPIPE: what a shell shows for cat in the same spot).
EXIT_BROKEN_PIPE = 141


# --- shared helpers (also for subcommands that live elsewhere, e.g. bench) --------------


def make_client(args: argparse.Namespace) -> BlockingClient:
    """The blocking client for C{--connect} (one address or a bootstrap list), C{--timeout} and
    C{--connect-timeout}."""
    return BlockingClient(args.connect, timeout=args.timeout, connect_timeout=args.connect_timeout)


def emit_json(obj: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(orjson.dumps(obj).decode() + "\n")


def _common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Options accepted before and after the subcommand (defaults only on the top parser).

    C{--connect} has no default here: L{main} fills it in (from
    C{$STREAMLOG_CONNECT}, else L{DEFAULT_CONNECT}) and notes where it came from.
    """
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    parser.add_argument("--connect", "-c", metavar="ADDR[,ADDR...]", default=d(None),
                        help=f"server address: HOST:PORT, tcp:HOST:PORT or unix:/path/to/socket, or several "
                             f"separated by commas (a cluster's bootstrap list) "
                             f"(default: $STREAMLOG_CONNECT, else {DEFAULT_CONNECT})")
    parser.add_argument("--json", action="store_true", default=d(False), help="machine-readable JSON output")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", default=d(30.0),
                        help="seconds to wait for the connection and each answer (default 30)")
    parser.add_argument("--connect-timeout", type=float, metavar="SECONDS", default=d(DEFAULT_CONNECT_TIMEOUT),
                        help=f"seconds a connection attempt to a node may take, at most --timeout: a node that "
                             f"drops packets then fails as a refused one does and another is asked "
                             f"(default {DEFAULT_CONNECT_TIMEOUT:g}; a tcp: address naming its own timeout= "
                             f"keeps it)")


def _leaf(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    """Make C{parser} run C{func}; usage mistakes found later are reported with its usage line."""
    parser.set_defaults(func=func, _parser=parser)


def _value_parser(as_json: bool) -> Callable[[str], Any]:
    if not as_json:
        return lambda text: text
    return orjson.loads


# --- topics ----------------------------------------------------------------------------


def register_topics(sub: Any, common: argparse.ArgumentParser) -> None:
    topics = sub.add_parser("topics", help="create, list, describe and delete topics", parents=[common])
    tsub = topics.add_subparsers(dest="topics_command", metavar="{create,list,describe,delete}", required=True)

    p = tsub.add_parser("create", help="create a topic", parents=[common])
    p.add_argument("topic")
    p.add_argument("--partitions", "-p", type=int, default=1, help="number of partitions (default 1)")
    p.add_argument("--retention-ms", type=int, help="delete data older than this (ms)")
    p.add_argument("--retention-bytes", type=int, help="keep at most this many bytes per partition")
    p.add_argument("--segment-bytes", type=int, help="roll segments at this size")
    p.add_argument("--segment-ms", type=int, help="roll segments at this age (ms)")
    _leaf(p, cmd_topics_create)

    p = tsub.add_parser("list", help="list topics", parents=[common])
    _leaf(p, cmd_topics_list)

    p = tsub.add_parser("describe", help="partitions and offsets of a topic", parents=[common])
    p.add_argument("topic")
    _leaf(p, cmd_topics_describe)

    p = tsub.add_parser("delete", help="delete a topic and its data", parents=[common])
    p.add_argument("topic")
    _leaf(p, cmd_topics_delete)


def cmd_topics_create(args: argparse.Namespace) -> int:
    config = {k: getattr(args, k) for k in ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms")
              if getattr(args, k) is not None}
    with make_client(args) as client:
        result = client.create_topic(args.topic, args.partitions, config or None)
    if args.json:
        emit_json(result)
    else:
        print(f"created topic {result['topic']} with {len(result['partitions'])} partition(s)")
    return EXIT_OK


def cmd_topics_list(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        topics = client.list_topics()
    if args.json:
        emit_json({"topics": topics})
    elif not topics:
        print("no topics")
    else:
        width = max(5, *(len(t["topic"]) for t in topics))
        print(f"{'TOPIC':<{width}}  PARTITIONS")
        for t in topics:
            print(f"{t['topic']:<{width}}  {t['partitions']}")
    return EXIT_OK


def cmd_topics_describe(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        result = client.describe_topic(args.topic)
    if args.json:
        emit_json(result)
        return EXIT_OK
    print(f"topic {result['topic']}: {len(result['partitions'])} partition(s)")
    config = {k: v for k, v in (result.get("config") or {}).items() if v is not None}
    if config:
        print("config: " + ", ".join(f"{k}={v}" for k, v in sorted(config.items())))
    print(f"{'PARTITION':>9}  {'START':>12}  {'HIGH_WATERMARK':>14}  {'END':>12}  {'MESSAGES':>10}")
    for p in result["partitions"]:
        print(f"{p['partition']:>9}  {p['log_start_offset']:>12}  {p['high_watermark']:>14}  "
              f"{p['log_end_offset']:>12}  {p['high_watermark'] - p['log_start_offset']:>10}")
    return EXIT_OK


def cmd_topics_delete(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        result = client.delete_topic(args.topic)
    if args.json:
        emit_json(result)
    else:
        print(f"deleted topic {args.topic}")
    return EXIT_OK


# --- produce ---------------------------------------------------------------------------


def register_produce(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "produce", parents=[common], help="send messages (from the arguments, or one per stdin line)",
        description="Send each VALUE as one message; without VALUEs, each line of standard input. "
                    "Values are sent as JSON strings unless --json-values parses them as JSON. "
                    "Options may come before, between or after the values.")
    p.intermixed = True  # "produce TOPIC --key K VALUE" (see _Parser)
    p.add_argument("topic")
    p.add_argument("values", nargs="*", metavar="VALUE", default=[])
    p.add_argument("--key", "-k", help="key of every message")
    p.add_argument("--partition", "-p", type=int, help="send to this partition")
    p.add_argument("--header", "-H", action="append", type=_header, metavar="NAME=VALUE", dest="headers",
                   help="a header of every message (repeatable)")
    p.add_argument("--json-values", "-J", action="store_true", help="parse each value as JSON")
    p.add_argument("--acks", choices=("all", "leader", "none"), default="all")
    p.add_argument("--no-idempotence", action="store_true",
                   help="send without a producer id and sequence numbers (implied by --acks none): a request "
                        "whose answer was lost then fails instead of being sent again")
    p.add_argument("--batch-size", type=int, default=500, help="most messages per request (default 500)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing for acknowledged messages")
    _leaf(p, cmd_produce)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def _stdin_batches(stream: BinaryIO, batch_size: int) -> Iterator[list[str]]:
    """Lines of C{stream}, in batches: a batch ends when full or when no more input is ready now."""
    batch: list[str] = []
    fd = stream.fileno() if hasattr(stream, "fileno") else None
    for raw in stream:
        batch.append(raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace"))
        if len(batch) >= batch_size or not _more_ready(fd):
            yield batch
            batch = []
    if batch:
        yield batch


def _more_ready(fd: int | None) -> bool:
    if fd is None:
        return True
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def cmd_produce(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise _Usage("--batch-size must be at least 1")
    parse = _value_parser(args.json_values)
    headers = dict(args.headers or ())
    if args.values:
        batches: Iterator[list[str]] = iter([args.values[i:i + args.batch_size]
                                             for i in range(0, len(args.values), args.batch_size)])
    else:
        batches = _stdin_batches(sys.stdin.buffer, args.batch_size)
    sent = 0
    with make_client(args) as client:
        # Idempotent by default: a request whose answer is lost is sent again with the same
        # sequence numbers, and stored once.
        sender = client if args.no_idempotence or args.acks == "none" else client.idempotent_sender()
        for texts in batches:
            messages = []
            for text in texts:
                try:
                    value = parse(text)
                except orjson.JSONDecodeError as e:
                    raise _Usage(f"value {sent + len(messages) + 1} is not valid JSON: {e}") from None
                messages.append(requests.message(value, args.key, args.partition, headers))
            result = sender.send_batch(args.topic, messages, acks=args.acks)
            if not args.quiet:
                _report_sent(args, result, messages)
            sent += len(messages)
    if sent == 0:
        print("nothing to send", file=sys.stderr)
    return EXIT_OK


def _report_sent(args: argparse.Namespace, result: dict[str, Any] | None, messages: list[dict[str, Any]]) -> None:
    """One line per message: where it went (messages of one request share key/partition, so one partition)."""
    if result is None:  # acks=none
        if args.json:
            emit_json({"topic": args.topic, "sent": len(messages), "acks": "none"})
        else:
            print(f"sent {len(messages)} message(s) without acknowledgement")
        return
    offsets = []
    for placed in result["partitions"]:
        offsets += [(placed["partition"], placed["base_offset"] + i) for i in range(placed["count"])]
    for partition, offset in offsets:
        if args.json:
            emit_json({"topic": result["topic"], "partition": partition, "offset": offset,
                       "timestamp": result["timestamp"], "durability": result["durability"]})
        else:
            print(f"{result['topic']}/{partition} offset {offset}")
    sys.stdout.flush()


# --- consume ---------------------------------------------------------------------------


def register_consume(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "consume", parents=[common], help="print messages of a topic (every partition, or one)",
        description="Print the messages of every partition of a topic (or of --partition P), merged as "
                    "they arrive, from --from up to the end as it was when the command started (or "
                    "--count messages); with --follow, keep waiting for new ones. Each line says its "
                    "partition: PARTITION, OFFSET, KEY, VALUE, HEADERS separated by tabs (tabs, "
                    "newlines and other control characters in keys and values are written as \\t, "
                    "\\n, \\xNN; a backslash as \\\\; '-' for no key and no headers), or with --json "
                    "one JSON object per message.")
    p.add_argument("topic")
    p.add_argument("--partition", "-p", type=int, help="read only this partition (default: all of them)")
    p.add_argument("--from", "-f", dest="start", default=positions.EARLIEST, type=_start, metavar="WHERE",
                   help="where to start in each partition: earliest (default), latest, an offset N, "
                        "-N (N before the end), @MS or an ISO 8601 time (the first message at or after it)")
    p.add_argument("--count", "-n", type=int, help="stop after this many messages (over all partitions)")
    p.add_argument("--follow", "-F", action="store_true", help="keep waiting for new messages")
    p.add_argument("--max-wait-ms", type=int, default=1000, help="long-poll wait with --follow (default 1000)")
    g = p.add_argument_group("consumer groups", "with --group, the group's coordinator assigns the partitions "
                                                "and the member resumes from the group's committed offsets "
                                                "(--from only where none is committed)")
    g.add_argument("--group", "-g", help="consume as a member of this consumer group")
    g.add_argument("--group-instance-id", metavar="ID", help="static membership: a restart within the session "
                                                             "timeout gets the same partitions back")
    g.add_argument("--session-timeout-ms", type=int, default=10_000, metavar="MS",
                   help="the member's session timeout (default 10000)")
    g.add_argument("--commit-interval", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between commits of what was printed (default 5; also on exit)")
    g.add_argument("--commit-each-batch", action="store_true",
                   help="commit after each printed batch, before reading on")
    _leaf(p, cmd_consume)


def _start(text: str) -> positions.Start:
    try:
        return positions.parse_start(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: Control characters (C0, DEL, C1) and the backslash, as people read them in one line.
_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_ESCAPES.update({ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"})


def escape_text(text: str) -> str:
    """C{text} on one line, without tabs: C{\\t}, C{\\n}, C{\\r}, C{\\xNN} for other controls, C{\\\\}."""
    return text.translate(_ESCAPES)


def format_message(partition: int, m: dict[str, Any]) -> str:
    """C{PARTITION<TAB>OFFSET<TAB>KEY<TAB>VALUE<TAB>HEADERS}: one line per message, whatever it holds."""
    value = m["value"]
    text = escape_text(value) if isinstance(value, str) else orjson.dumps(value).decode()
    key = escape_text(m["key"]) if m.get("key") is not None else "-"
    headers = orjson.dumps(m["headers"]).decode() if m.get("headers") else "-"
    return f"{partition}\t{m['offset']}\t{key}\t{text}\t{headers}"


def cmd_consume(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise _Usage("--count must be at least 1")
    if args.partition is not None and args.partition < 0:
        raise _Usage("--partition must be 0 or more")
    if not 0 <= args.max_wait_ms <= requests.MAX_WAIT_MS:
        raise _Usage(f"--max-wait-ms must be between 0 and {requests.MAX_WAIT_MS} (the server's limit)")
    if args.group is not None:
        return _consume_in_group(args)
    if args.group_instance_id is not None or args.commit_each_batch:
        raise _Usage("--group-instance-id and --commit-each-batch need --group")
    with make_client(args) as client:
        if args.follow:
            description = _wait_for_topic(client, args)
        else:
            description = client.describe_topic(args.topic)
        ranges = {p["partition"]: p for p in description["partitions"]}
        if args.partition is not None and args.partition not in ranges:
            raise errors.UnknownPartition(f"topic {args.topic!r} has {len(ranges)} partition(s), not {args.partition}",
                                          topic=args.topic, partitions=len(ranges))
        chosen = [args.partition] if args.partition is not None else sorted(ranges)
        starts = {p: _start_offset(client, args, ranges[p]) for p in chosen}
        ends = None if args.follow else {p: ranges[p]["high_watermark"] for p in chosen}
        return _PartitionsReader(client, args, starts, ends).run()


def _consume_in_group(args: argparse.Namespace) -> int:
    """C{consume --group}: a GroupConsumer on the reactor (L{streamlog.cli_group_consume})."""
    from streamlog import cli_group_consume
    from streamlog.client.group import check_member_settings

    if args.partition is not None:
        raise _Usage("--partition and --group exclude each other: the group assigns the partitions")
    try:
        check_member_settings(args.group, args.group_instance_id, args.session_timeout_ms, args.commit_interval)
    except ValueError as e:
        raise _Usage(str(e)) from None
    return cli_group_consume.run(args)


def _start_offset(client: BlockingClient, args: argparse.Namespace, range_: dict[str, Any]) -> int:
    """Where to start in one partition; an explicit offset outside the log is an error, with or without --follow."""
    partition = range_["partition"]
    start: positions.Start = args.start
    offset = start.offset_in(range_["log_start_offset"], range_["high_watermark"])
    if offset is None:
        offset = client.list_offsets(args.topic, partition, start.at)
    first, end = range_["log_start_offset"], range_["log_end_offset"]
    if not first <= offset <= end:
        where = "past its end" if offset > end else "before its start (removed by retention)"
        holds = f"is empty (its next offset is {end})" if first == end else f"holds offsets [{first}, {end})"
        raise errors.OffsetOutOfRange(
            f"{args.topic}/{partition} {holds}: offset {offset} is {where}; "
            f"use --from earliest, latest or -N{'' if args.partition is not None else ', or --partition'}",
            log_start_offset=first, high_watermark=range_["high_watermark"], log_end_offset=end)
    return offset


class _PartitionsReader:
    """One Poll in flight per partition on one connection; messages printed as answers come.

    Without C{--follow} a partition is done once it reaches its end as it was
    at the start (C{ends}); with it, every answer is followed by the next long
    Poll.  A Poll refused with C{TOO_MANY_WAITING_POLLS} is asked again after a
    backoff.  With C{--follow} the standard output is checked about every
    second, so that C{| head -1} ends the command even when nothing arrives.
    """

    def __init__(self, client: BlockingClient, args: argparse.Namespace, starts: dict[int, int],
                 ends: dict[int, int] | None) -> None:
        self.client = client
        self.args = args
        self.positions = dict(starts)
        self.ends = ends
        self.remaining: int | None = args.count
        #: Whether Polls say max_messages (what --count still needs, at most the server's limit).
        #: Cleared if the server refuses it (a lower --max-poll-messages): it then sends its
        #: default, and what is past --count is not printed.
        self.ask_count = True
        self.in_flight: dict[int, tuple[int, float]] = {}  # request id -> (partition, sent at)
        self.retry_at: dict[int, float] = {}
        self.refusals: dict[int, int] = {}
        self.backoff = backoff_policy(0.1, 5.0)

    def run(self) -> int:
        for p in sorted(self.positions):
            if self.ends is None or self.positions[p] < self.ends[p]:
                self._submit(p)
        while self.in_flight or self.retry_at:
            if self.args.follow and output_closed(sys.stdout.fileno()):
                raise BrokenPipeError("the reader of standard output went away")
            now = time.monotonic()
            for p, at in list(self.retry_at.items()):
                if at <= now:
                    del self.retry_at[p]
                    self._submit(p)
            wait = self._wait(now)
            if not self.in_flight:
                time.sleep(wait)
                continue
            answer = self.client.next_answer(wait)
            if answer is None:
                self._check_overdue()
                continue
            rid, value = answer
            entry = self.in_flight.pop(rid, None)
            if entry is None:
                continue
            if self._handle(entry[0], value):
                return EXIT_OK
        return EXIT_OK

    def _wait(self, now: float) -> float:
        wait = self.args.timeout if self.args.timeout is not None else 3600.0
        if self.retry_at:
            wait = min(wait, max(0.0, min(self.retry_at.values()) - now))
        if self.args.follow:
            wait = min(wait, 1.0)
        return wait

    def _submit(self, partition: int) -> None:
        wanted = None
        if self.remaining is not None and self.ask_count:
            wanted = min(self.remaining, requests.MAX_POLL_MESSAGES)
        params = requests.poll(self.args.topic, partition, self.positions[partition], max_messages=wanted,
                               max_wait_ms=self.args.max_wait_ms if self.args.follow else 0)
        rid = self.client.submit("Poll", params)
        self.in_flight[rid] = (partition, time.monotonic())

    def _check_overdue(self) -> None:
        if self.args.timeout is None:
            return
        allowed = self.args.timeout + (self.args.max_wait_ms / 1000.0 if self.args.follow else 0.0)
        oldest = min(sent for _, sent in self.in_flight.values())
        if time.monotonic() - oldest > allowed:
            self.client.close()
            raise errors.Timeout(f"no answer to Poll within {allowed:g}s", method="Poll")

    def _handle(self, partition: int, value: Any) -> bool:
        """Print one answer; True once --count messages are printed."""
        if isinstance(value, errors.TooManyWaitingPolls):
            self.refusals[partition] = n = self.refusals.get(partition, 0) + 1
            self.retry_at[partition] = time.monotonic() + self.backoff(n)
            return False
        if isinstance(value, errors.InvalidParams) and value.details.get("field") == "max_messages" and self.ask_count:
            self.ask_count = False  # the server allows fewer per Poll than asked: take its default
            self._submit(partition)
            return False
        if isinstance(value, errors.StreamlogError):
            raise value
        self.refusals.pop(partition, None)
        messages = value["messages"]
        if self.remaining is not None:
            messages = messages[: self.remaining]
        for m in messages:
            print(orjson.dumps({"partition": partition, **m}).decode() if self.args.json
                  else format_message(partition, m))
        sys.stdout.flush()
        self.positions[partition] = value["next_offset"]
        if self.remaining is not None:
            self.remaining -= len(messages)
            if self.remaining <= 0:
                return True
        if self.ends is not None and (self.positions[partition] >= self.ends[partition] or not value["messages"]):
            return False  # this partition is read up to where it ended (or it shrank under us)
        self._submit(partition)
        return False


def _wait_for_topic(client: BlockingClient, args: argparse.Namespace) -> dict[str, Any]:
    """With --follow, a topic (or partition) that does not exist yet is waited for (a producer may create it)."""
    said = False
    while True:
        try:
            description = client.describe_topic(args.topic)
            if args.partition is None or args.partition < len(description["partitions"]):
                return description
            why = f"topic {args.topic!r} has {len(description['partitions'])} partition(s)"
        except errors.UnknownTopic as e:
            why = e.message
        if not said:
            which = args.topic if args.partition is None else f"{args.topic}/{args.partition}"
            print(f"waiting for {which}: {why}", file=sys.stderr)
            said = True
        if output_closed(sys.stdout.fileno()):
            raise BrokenPipeError("the reader of standard output went away")
        time.sleep(max(args.max_wait_ms, 100) / 1000.0)


# --- ping ------------------------------------------------------------------------------


def register_ping(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ping", parents=[common], help="check that the server answers")
    _leaf(p, cmd_ping)


def cmd_ping(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        result = client.ping()
        answered = client.answered_by
    if args.json:
        emit_json(result)
    else:
        print(f"pong from {answered} (version {result.get('version')})")
    return EXIT_OK


# --- cluster ---------------------------------------------------------------------------------


def register_cluster(sub: Any, common: argparse.ArgumentParser) -> None:
    """C{cluster up} and C{cluster status}: they live in L{streamlog.cli_cluster} (imported here, late,
    because it builds on this module's helpers)."""
    from streamlog import cli_cluster

    cli_cluster.register(sub, common)


def register_chaos(sub: Any, common: argparse.ArgumentParser) -> None:
    """C{chaos}: the fault-injection runner, in L{streamlog.cli_chaos} (imported late, as cluster is)."""
    from streamlog import cli_chaos

    cli_chaos.register(sub, common)


def register_groups(sub: Any, common: argparse.ArgumentParser) -> None:
    """C{groups list|describe|reset|delete}: in L{streamlog.cli_groups} (imported late, as cluster)."""
    from streamlog import cli_groups

    cli_groups.register(sub, common)


# --- the parser and main ---------------------------------------------------------------------


#: Registration functions, called in order by L{build_parser} with (subparsers, common parent parser).
COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    register_topics, register_produce, register_consume, register_ping, register_cluster,
    register_chaos,
    register_groups,
]

#: Modules that add subcommands when present: each has C{register(subparsers, common)}.
EXTENSIONS = ["streamlog.bench"]


class _Usage(Exception):
    """A usage mistake found after parsing (exit status 2, with the subcommand's usage line)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands may take options between their positional arguments.

    argparse fills a C{nargs="*"} positional at its first chance, so
    C{produce TOPIC --key K VALUE} left C{VALUE} unrecognized.  A parser with
    C{intermixed = True} parses with C{parse_known_intermixed_args} (options
    first, then the positionals, wherever they were).
    """

    intermixed = False
    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if not self.intermixed or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back here for its two passes
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="streamlog", description="Administer and use a streamlog server.",
        epilog="Exit status: 0 ok, 1 error from the server or the connection (code on stderr), 2 usage, "
               "130 interrupted, 141 the output was closed (e.g. | head).")
    parser.add_argument("--version", action="version", version=f"streamlog {streamlog.__version__}")
    _common_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub, common)
    for register in _extension_registrations():
        register(sub, common)
    return parser


def register_command(register: Callable[[Any, argparse.ArgumentParser], None]) -> None:
    """Add a subcommand registration (called by L{build_parser} with subparsers and the common parser)."""
    if register not in COMMANDS:
        COMMANDS.append(register)


def _extension_registrations() -> list[Callable[[Any, argparse.ArgumentParser], None]]:
    """C{register} functions of the L{EXTENSIONS} modules that exist and define one.

    An extension that cannot be imported is skipped (the rest of the CLI must
    keep working); set C{STREAMLOG_DEBUG=1} to see why.
    """
    found = []
    for name in EXTENSIONS:
        try:
            if importlib.util.find_spec(name) is None:
                continue
            module = importlib.import_module(name)
        except Exception as e:
            if os.environ.get("STREAMLOG_DEBUG"):
                print(f"streamlog: cannot load {name}: {e!r}", file=sys.stderr)
            continue
        register = getattr(module, "register", None)
        if callable(register) and register not in COMMANDS:
            found.append(register)
    return found


def resolve_connect(args: argparse.Namespace) -> None:
    """Fill in C{args.connect} and say where it came from in C{args.connect_from}."""
    if getattr(args, "connect", None) is not None:
        args.connect_from = "--connect"
    elif os.environ.get("STREAMLOG_CONNECT"):
        args.connect, args.connect_from = os.environ["STREAMLOG_CONNECT"], "$STREAMLOG_CONNECT"
    else:
        args.connect, args.connect_from = DEFAULT_CONNECT, None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    usage_of: argparse.ArgumentParser = getattr(args, "_parser", None) or parser
    if extras:  # argparse would report these with the top-level usage, not the subcommand's
        usage_of.error(f"unrecognized arguments: {' '.join(extras)}")
    resolve_connect(args)
    if not 0 < args.connect_timeout < float("inf"):
        usage_of.error(f"--connect-timeout must be more than 0 seconds and finite, not {args.connect_timeout:g}")
    try:
        check_bootstrap(args.connect, blocking=True)
    except ValueError as e:
        where = "" if args.connect_from in (None, "--connect") else f" (from {args.connect_from})"
        usage_of.error(f"--connect{where}: {e}")
    try:
        return args.func(args)
    except _Usage as e:
        usage_of.error(str(e))  # exits 2
    except errors.StreamlogError as e:
        _flush_quietly()
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as cat does
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    return EXIT_OK  # pragma: no cover


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that flushing what is still buffered at exit cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    # Run the main of streamlog.cli as imported, not of this __main__ copy: subcommands in other
    # modules (cluster, bench) raise streamlog.cli's own exception classes.
    from streamlog.cli import main as _main

    sys.exit(_main())

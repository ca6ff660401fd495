"""C{streamlog}: the admin command line (topics, produce, consume, ping), over the blocking client.

    streamlog topics create events --partitions 3
    streamlog topics list
    streamlog produce events hello world            # two messages
    seq 5 | streamlog produce events --json-values  # one message per stdin line
    streamlog consume events --from earliest --count 10
    streamlog --json topics describe events

Output is for people by default; C{--json} prints JSON (one object per line
for C{produce} and C{consume}).  Exit status: 0 success; 1 an error from the
server or the connection (its code and message on stderr, e.g.
C{error: UNKNOWN_TOPIC: unknown topic 'x'}); 2 a usage error; 130 interrupted.

Subcommands are added by registration functions C{register(subparsers,
common)} (see L{COMMANDS}, L{register_command}); C{common} is a parent parser
holding C{--connect/--json/--timeout}, to pass as C{parents=[common]}.  A
C{streamlog.bench} module that defines such a C{register} function is picked
up by L{build_parser} without changes here.  Each subcommand sets
C{func(args) -> int} (the exit status); L{make_client} builds the blocking
client for C{args}.
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

from streamlog import errors
from streamlog.client.blocking import BlockingClient
from streamlog.client.connection import parse_address

DEFAULT_CONNECT = "127.0.0.1:7070"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --- shared helpers (also for subcommands that live elsewhere, e.g. bench) --------------


def make_client(args: argparse.Namespace) -> BlockingClient:
    """The blocking client for C{--connect} and C{--timeout}."""
    return BlockingClient(args.connect, timeout=args.timeout)


def emit_json(obj: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(orjson.dumps(obj).decode() + "\n")


def _common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Options accepted before and after the subcommand (defaults only on the top parser)."""
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    parser.add_argument("--connect", "-c", metavar="ADDR", default=d(os.environ.get("STREAMLOG_CONNECT", DEFAULT_CONNECT)),
                        help=f"server address: HOST:PORT or tcp:HOST:PORT (default {DEFAULT_CONNECT}, or $STREAMLOG_CONNECT)")
    parser.add_argument("--json", action="store_true", default=d(False), help="machine-readable JSON output")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", default=d(30.0),
                        help="seconds to wait for the connection and each answer (default 30)")


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
    p.set_defaults(func=cmd_topics_create)

    p = tsub.add_parser("list", help="list topics", parents=[common])
    p.set_defaults(func=cmd_topics_list)

    p = tsub.add_parser("describe", help="partitions and offsets of a topic", parents=[common])
    p.add_argument("topic")
    p.set_defaults(func=cmd_topics_describe)

    p = tsub.add_parser("delete", help="delete a topic and its data", parents=[common])
    p.add_argument("topic")
    p.set_defaults(func=cmd_topics_delete)


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
                    "Values are sent as JSON strings unless --json-values parses them as JSON.")
    p.add_argument("topic")
    p.add_argument("values", nargs="*", metavar="VALUE")
    p.add_argument("--key", "-k", help="key of every message")
    p.add_argument("--partition", "-p", type=int, help="send to this partition")
    p.add_argument("--json-values", "-J", action="store_true", help="parse each value as JSON")
    p.add_argument("--acks", choices=("all", "leader", "none"), default="all")
    p.add_argument("--batch-size", type=int, default=500, help="most messages per request (default 500)")
    p.set_defaults(func=cmd_produce)


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
    if args.values:
        batches: Iterator[list[str]] = iter([args.values[i:i + args.batch_size]
                                             for i in range(0, len(args.values), args.batch_size)])
    else:
        batches = _stdin_batches(sys.stdin.buffer, args.batch_size)
    sent = 0
    with make_client(args) as client:
        for texts in batches:
            messages = []
            for text in texts:
                try:
                    message: dict[str, Any] = {"value": parse(text)}
                except orjson.JSONDecodeError as e:
                    raise _Usage(f"value {sent + len(messages) + 1} is not valid JSON: {e}") from None
                if args.key is not None:
                    message["key"] = args.key
                if args.partition is not None:
                    message["partition"] = args.partition
                messages.append(message)
            result = client.send_batch(args.topic, messages, acks=args.acks)
            _report_sent(args, result, messages)
            sent += len(messages)
    if not args.json and sent == 0:
        print("nothing to send", file=sys.stderr)
    return EXIT_OK


def _report_sent(args: argparse.Namespace, result: dict[str, Any] | None, messages: list[dict[str, Any]]) -> None:
    """One line per message: where it went (messages of one request share key/partition, so one partition)."""
    if result is None:  # acks=none
        if not args.json:
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
        "consume", parents=[common], help="print messages of one partition",
        description="Print the messages of one partition, from --from up to the end as it was when the "
                    "command started (or --count messages); with --follow, keep waiting for new ones.")
    p.add_argument("topic")
    p.add_argument("--partition", "-p", type=int, default=0)
    p.add_argument("--from", "-f", dest="start", default="earliest", help="earliest (default), latest or an offset")
    p.add_argument("--count", "-n", type=int, help="stop after this many messages")
    p.add_argument("--follow", "-F", action="store_true", help="keep waiting for new messages")
    p.add_argument("--max-wait-ms", type=int, default=1000, help="long-poll wait with --follow (default 1000)")
    p.set_defaults(func=cmd_consume)


def _format_message(m: dict[str, Any]) -> str:
    value = m["value"]
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    key = m["key"] if m.get("key") is not None else "-"
    return f"{m['offset']}\t{key}\t{text}"


def cmd_consume(args: argparse.Namespace) -> int:
    start: str | int = args.start
    if start not in ("earliest", "latest"):
        try:
            start = int(start)
        except ValueError:
            raise _Usage("--from must be earliest, latest or an offset") from None
    if args.count is not None and args.count < 1:
        raise _Usage("--count must be at least 1")
    printed = 0
    with make_client(args) as client:
        if args.follow:
            _wait_for_topic(client, args)
        position = start if isinstance(start, int) else client.list_offsets(args.topic, args.partition, start)
        end = None if args.follow else client.list_offsets(args.topic, args.partition, "latest")
        while args.count is None or printed < args.count:
            if end is not None and position >= end:
                break
            want = None if args.count is None else args.count - printed
            result = client.poll(args.topic, args.partition, position, max_messages=want,
                                 max_wait_ms=args.max_wait_ms if args.follow else 0)
            messages = result["messages"]
            if end is not None and not messages:
                break  # the log shrank under us (e.g. deleted): nothing more to read
            for m in messages:
                print(orjson.dumps(m).decode() if args.json else _format_message(m))
            sys.stdout.flush()
            printed += len(messages)
            position = result["next_offset"]
    return EXIT_OK


def _wait_for_topic(client: BlockingClient, args: argparse.Namespace) -> None:
    """With --follow, a topic that does not exist yet is waited for (it may be auto-created by a producer)."""
    said = False
    while True:
        try:
            client.list_offsets(args.topic, args.partition, "earliest")
            return
        except (errors.UnknownTopic, errors.UnknownPartition) as e:
            if not said:
                print(f"waiting for {args.topic}/{args.partition}: {e.message}", file=sys.stderr)
                said = True
            time.sleep(max(args.max_wait_ms, 100) / 1000.0)


# --- ping ------------------------------------------------------------------------------


def register_ping(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ping", parents=[common], help="check that the server answers")
    p.set_defaults(func=cmd_ping)


def cmd_ping(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        result = client.ping()
    if args.json:
        emit_json(result)
    else:
        print(f"pong from {args.connect} (version {result.get('version')})")
    return EXIT_OK


# --- the parser and main ---------------------------------------------------------------------


#: Registration functions, called in order by L{build_parser} with (subparsers, common parent parser).
COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    register_topics, register_produce, register_consume, register_ping,
]

#: Modules that add subcommands when present: each has C{register(subparsers, common)}.
EXTENSIONS = ["streamlog.bench"]


class _Usage(Exception):
    """A usage mistake found after parsing (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamlog", description="Administer and use a streamlog server.",
        epilog="Exit status: 0 ok, 1 error from the server or the connection (code on stderr), 2 usage.")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "connect", None) is not None:  # an extension (bench) may have no address
        try:
            parse_address(args.connect)
        except ValueError as e:
            parser.error(f"--connect: {e}")
    try:
        return args.func(args)
    except _Usage as e:
        parser.error(str(e))  # exits 2
    except errors.StreamlogError as e:
        sys.stdout.flush()
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. piped into head
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    return EXIT_OK  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())

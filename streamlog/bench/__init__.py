"""C{streamlog bench produce|consume|e2e}: throughput and latency of a streamlog server.

Modelled on kafka-producer-perf-test and C{nats bench}.  Unless given a
server (its C{--connect}, C{streamlog --connect ADDR bench ...} or
C{$STREAMLOG_CONNECT}), it starts its own on a free port of 127.0.0.1 (fresh
data dir, C{--storage}/C{--fsync} as given) and stops it by PID at the end.  The
load runs in separate processes (multiprocessing, "spawn"), each with its own
Twisted reactor and the streamlog client library; C{--producers K} runs K
producer processes.  A progress bar (tqdm) goes to stderr.

Hooking it into another argparse CLI::

    from streamlog import bench
    bench.register(subparsers)          # adds "bench" with produce|consume|e2e

or run it alone: C{python -m streamlog.bench produce --messages 200000 --size 100}.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

WORKLOADS = ("produce", "consume", "e2e")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the workload sub-commands and their options to C{parser}."""
    sub = parser.add_subparsers(dest="workload", metavar="{produce,consume,e2e,failover,group}")
    sub.required = True
    helps = {
        "produce": "send N messages in batches; throughput and per-batch ack latency",
        "consume": "write N messages, then read them back; throughput and per-poll latency",
        "e2e": "send at a steady --rate; latency from send to a consumer process receiving it",
    }
    for name in WORKLOADS:
        p = sub.add_parser(name, help=helps[name], description=helps[name],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        _add_common(p, name)
    from streamlog.bench import failover

    fo = sub.add_parser("failover", help=FAILOVER_HELP, description=FAILOVER_HELP,
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    failover.add_arguments(fo)
    fo.set_defaults(workload="failover", _parser=fo)
    from streamlog.bench import group

    gr = sub.add_parser("group", help=group.HELP, description=group.HELP,
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group.add_arguments(gr)
    gr.set_defaults(workload="group", _parser=gr)
    parser.set_defaults(func=main_with_args)


FAILOVER_HELP = ("start a local 3-node cluster, SIGKILL partition 0's leader --kills times under a steady "
                 "acks=all producer; failover times (median/max) and acknowledged messages lost")


def _add_common(p: argparse.ArgumentParser, workload: str) -> None:
    p.add_argument("--messages", "-n", type=int, default=None,
                   help="messages to send (default 200000; e2e: --rate x --duration)")
    p.add_argument("--size", "-s", type=int, default=100, help="message value size in bytes")
    p.add_argument("--batch", "-b", type=int, default=1000,
                   help="messages per SendBatch (produce); max messages per Poll (consume)")
    p.add_argument("--acks", choices=("all", "leader", "none"), default="all")
    p.add_argument("--partitions", "-p", type=int, default=1, help="partitions of the bench topic")
    p.add_argument("--producers", "-k", type=int, default=1, help="producer processes")
    p.add_argument("--consumers", type=int, default=1, help="consumer processes (at most --partitions)")
    p.add_argument("--rate", type=float, default=2000.0, help="e2e: messages per second, all producers together")
    p.add_argument("--duration", type=float, default=5.0, help="e2e: seconds of sending (with --rate)")
    p.add_argument("--warmup", type=float, default=0.1, help="e2e: fraction of the first messages excluded")
    p.add_argument("--in-flight", type=int, default=8, help="SendBatch requests outstanding per producer")
    p.add_argument("--linger-ms", type=float, default=5.0, help="Producer linger (client=producer)")
    p.add_argument("--client-gc-threshold", type=int, default=None,
                   help="young-generation GC threshold of the load processes (streamlog.gctune; "
                        "default: streamlog's tuning, 50000; 0: Python's own, 700)")
    p.add_argument("--client", choices=("producer", "batch"), default="producer",
                   help="producer: the library's Producer.send() per message (default); "
                        "batch: StreamlogClient.send_batch() with a prepared list (the lean loop)")
    # dest differs from the streamlog CLI's global --connect: without any address
    # (here, before "bench", or $STREAMLOG_CONNECT) the bench starts its own server.
    p.add_argument("--idempotence", choices=("on", "off"), default="on",
                   help="client=producer: an idempotent Producer (the library's default) or not; "
                        "always off with --acks none")
    p.add_argument("--keys", type=int, default=0,
                   help="produce: give the messages keys, cycling through this many distinct ones (0: no keys)")
    p.add_argument("--connect", "-c", dest="bench_connect", default=None, metavar="ADDR[,ADDR...]",
                   help="use this server (HOST:PORT, tcp:HOST:PORT or unix:/path), or the cluster of this "
                        "bootstrap list (addresses separated by commas), instead of starting one; "
                        "so do streamlog's --connect before 'bench' and $STREAMLOG_CONNECT")
    p.add_argument("--nodes", type=int, choices=(1, 3, 5), default=1,
                   help="how many nodes the bench starts: 1, one server (as before clusters); 3 or 5, a local "
                        "cluster (as 'cluster up' plans it), whose topics get replication factor min(3, nodes)")
    p.add_argument("--storage", choices=("segmented", "memory"), default="segmented",
                   help="storage of the server the bench starts")
    p.add_argument("--fsync", default="always", help="fsync policy of the server the bench starts: "
                   "always, interval:MS or never")
    p.add_argument("--server-arg", action="append", help="extra argument for the server (repeatable)")
    p.add_argument("--scrape-metrics", type=float, default=0.0, metavar="SECONDS",
                   help="give the server the bench starts (one node) its HTTP listener and GET its /metrics every "
                        "SECONDS while the load runs (0: no HTTP listener), to measure what metrics cost")
    p.add_argument("--topic", default=None, help="topic name (default: a fresh bench-* topic)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time cap of each load loop")
    # SUPPRESS: keeps the value of the streamlog CLI's global --json when given before "bench".
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the result as JSON on stdout")
    p.add_argument("--json-out", default=None, help="append the JSON result as one line to this file")
    p.add_argument("--label", default=None, help="free text stored in the JSON result (e.g. a sweep name)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--keep-data", action="store_true", help="keep the started server's data dir")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="py-spy record (raw) the server (every node of a cluster the bench starts) and load "
                        "processes into DIR during the measured phase")
    p.add_argument("--profile-seconds", type=float, default=None, help="py-spy duration (default --max-seconds)")
    p.set_defaults(workload=workload, _parser=p)  # _parser: streamlog's usage errors show this usage line


DESCRIPTION = ("Benchmark a streamlog server: produce, consume or end-to-end latency. Starts its own server "
               "on a free port of 127.0.0.1 unless given --connect.")


def build_parser(prog: str = "streamlog bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def register(subparsers: Any, common: argparse.ArgumentParser | None = None,
             name: str = "bench") -> argparse.ArgumentParser:
    """Add C{bench} to an argparse sub-command set; dispatch with C{args.func(args)}.

    This is the C{register(subparsers, common)} hook that C{streamlog.cli}
    picks up from its EXTENSIONS list.  C{common} (the CLI's global
    C{--connect/--json/--timeout}) is not used as a parent: the bench's own
    C{--connect} has no default, because without it the bench starts a server.
    """
    parser = subparsers.add_parser(name, help="benchmark a streamlog server (produce, consume, e2e)",
                                   description=DESCRIPTION)
    add_arguments(parser)
    return parser


def use_given_server(args: Any) -> str | None:
    """Set C{args.bench_connect} from an address given outside the bench's own C{--connect}.

    Under C{streamlog}, its global C{--connect} (before "bench") and
    C{$STREAMLOG_CONNECT} arrive as C{args.connect}/C{args.connect_from};
    run alone (C{python -m streamlog.bench}), C{$STREAMLOG_CONNECT} is read
    here.  Returns where the address came from (None: the bench starts a server).
    """
    if getattr(args, "bench_connect", None):
        return "--connect"
    if hasattr(args, "connect_from"):  # parsed by streamlog.cli
        source = args.connect_from
        if source is not None:
            args.bench_connect = args.connect
        return source
    if os.environ.get("STREAMLOG_CONNECT"):
        args.bench_connect = os.environ["STREAMLOG_CONNECT"]
        return "$STREAMLOG_CONNECT"
    return None


def main_with_args(args: Any) -> int:
    args.json = getattr(args, "json", False)
    if args.workload == "failover":
        from streamlog.bench.failover import main_with_args as failover_main

        return failover_main(args)
    if args.workload == "group":
        from streamlog.bench.group import main_with_args as group_main

        return group_main(args)
    source = use_given_server(args)
    if source not in (None, "--connect") and not getattr(args, "quiet", False):
        print(f"bench: using the server at {args.bench_connect} (from {source}), not starting one",
              file=sys.stderr)
    from streamlog.bench.run import main_with_args as run_main

    return run_main(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return main_with_args(args)


__all__ = ["add_arguments", "build_parser", "main", "main_with_args", "register"]

"""C{streamlog chaos}: a local cluster of real processes under seeded faults, its history checked.

    streamlog chaos --nodes 3 --duration 60s --faults kill,stop,partition,restart --seed 7 --report run.html

The run itself is L{streamlog.chaos.runner.ChaosRun} (processes, proxy, clients,
faults); this module parses the options, runs the reactor, checks the history with
L{streamlog.chaos.checker}, prints the summary (or C{--json}) and writes the HTML report
(L{streamlog.chaos.html_report}).  Exit status: 0 no safety anomaly, 1 a safety anomaly
(the checker's, or the runner's own: a faulted node's acknowledgement, replicas that did
not converge), 2 usage (including C{--faults wipe} on a streamlog whose wiped nodes
cannot rejoin yet), 3 the run could not be completed (the cluster did not form or
recover in time: see the nodes' logs in the data directory, which is then kept).
"""

from __future__ import annotations

import argparse
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from streamlog.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, _leaf, _Usage

EXIT_ABORTED = 3
DEFAULT_DURATION = "60s"


def parse_duration(text: str) -> float:
    """C{"60s"}, C{"2m"}, C{"1m30s"}, C{"90"} (seconds) -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if not text or m is None:
        raise ValueError(f"--duration {text!r}: give seconds (90), or 60s, 5m, 1m30s")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "chaos", parents=[common], help="run a local cluster under seeded faults and check what clients saw",
        description="Start a local cluster of real streamlog servers (127.0.0.x), create a topic with "
                    "replication factor 3, run producers (acks=all, unique values) and consumers through "
                    "streamlog.client while injecting faults on a schedule drawn from --seed, heal, drain every "
                    "partition, and check the recorded history for lost, duplicated, reordered or invented "
                    "messages (docs/reliability.md). Exit status: 0 no safety anomaly; 1 a safety anomaly; "
                    "2 usage; 3 the run could not be completed.",
        epilog="example: streamlog chaos --duration 5m --seed 42 --report chaos.html")
    p.add_argument("--nodes", "-n", type=int, default=3, help="cluster size: 3 or 5 (default 3)")
    p.add_argument("--duration", default=DEFAULT_DURATION,
                   help=f"how long the workload and the faults run: 90, 60s, 5m (default {DEFAULT_DURATION})")
    p.add_argument("--faults", default=None,
                   help="comma-separated fault kinds: kill (SIGKILL, restart), stop (SIGSTOP past the election "
                        "timeout, SIGCONT), partition (cut one node's peer links), restart (rolling restart with "
                        "SIGTERM), wipe (SIGKILL, remove the data directory, restart); with --group-consumers "
                        "also member-kill (SIGKILL a member, restart it) and member-stop (SIGSTOP a member around "
                        "its session timeout); default kill,stop,partition,restart (and member-kill,member-stop "
                        "with --group-consumers)")
    p.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: a random one, printed)")
    p.add_argument("--steps", metavar="KIND:TARGET:HOLD,...",
                   help="a fixed schedule instead of the seeded one, run to its end whatever --duration says: "
                        "TARGET nN (node N) or pP (partition P's leader when the step starts), HOLD seconds; "
                        "e.g. kill:p0:1.5,kill:p0:1.5,stop:p0:3")
    p.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report with a timeline")
    p.add_argument("--history", metavar="FILE.jsonl",
                   help="where to write the history (default: history.jsonl in the data directory)")
    p.add_argument("--topic-partitions", type=int, default=3, help="partitions of the chaos topic (default 3)")
    p.add_argument("--rate", type=float, default=200.0, help="messages per second, all producers together (default 200)")
    p.add_argument("--producers", type=int, default=3, help="producer processes (default 3)")
    p.add_argument("--consumers", type=int, default=2, help="consumer processes, each reading every partition (default 2)")
    p.add_argument("--group-consumers", type=int, default=0, metavar="N",
                   help="also run N streamlog-consumer --group daemons in one group over the topic, and check "
                        "what the group processed and committed (docs/reliability.md, \"The group workload\"; "
                        "default 0: none)")
    p.add_argument("--data-dir", "-d",
                   help="the nodes' data and logs (default: a new temporary directory, removed after a clean run)")
    p.add_argument("--keep-data", action="store_true", help="keep the data directory after a clean run too")
    p.add_argument("--base-port", "-P", type=int, default=0,
                   help="node 1's client port B: clients B.., peers B+100.., proxy links B+200.. "
                        "(default: free ports found at random)")
    p.add_argument("--host", default="127.0.0.1", help="a loopback address 127.0.0.x to run on (default 127.0.0.1)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    p.add_argument("--server-command", metavar="COMMAND",
                   help="the command that starts one server, before its options (default: this Python's twistd)")
    p.add_argument("server_options", nargs="*", metavar="-- SERVER_OPTION",
                   help="options given to every server, e.g. -- --election-timeout-ms 300")
    _leaf(p, cmd_chaos)


def _config(args: argparse.Namespace) -> Any:
    from streamlog.chaos.runner import RunConfig
    from streamlog.chaos.schedule import DEFAULT_KINDS, MEMBER_KINDS, ScheduleError, parse_kinds, parse_steps

    if args.server_options and not args.server_options[0].startswith("-"):
        raise _Usage(f"unexpected argument {args.server_options[0]!r}: options for the servers go after --")
    if args.nodes not in (3, 5):
        raise _Usage(f"--nodes {args.nodes}: use 3 or 5 (faults need a majority that survives one node)")
    if not 0 <= args.group_consumers <= 20:
        raise _Usage("--group-consumers must be between 0 and 20")
    faults = args.faults
    if faults is None:
        faults = ",".join(DEFAULT_KINDS + (MEMBER_KINDS if args.group_consumers else ()))
    try:
        duration = parse_duration(args.duration)
        steps = parse_steps(args.steps, args.nodes, members=args.group_consumers) if args.steps else None
        kinds = tuple(dict.fromkeys(s.kind for s in steps)) if steps else parse_kinds(faults)
    except (ValueError, ScheduleError) as e:
        raise _Usage(str(e)) from None
    if not args.group_consumers and any(k in MEMBER_KINDS for k in kinds):
        raise _Usage(f"--faults {','.join(k for k in kinds if k in MEMBER_KINDS)}: member faults need "
                     f"--group-consumers")
    if duration <= 0:
        raise _Usage("--duration must be more than 0")
    if args.topic_partitions < 1 or args.producers < 1 or args.consumers < 1 or args.rate <= 0:
        raise _Usage("--topic-partitions, --producers and --consumers must be at least 1, --rate more than 0")
    if not args.host.startswith("127.0.0.") or len(args.host.split(".")) != 4:
        raise _Usage(f"--host {args.host}: the chaos runner only runs on a loopback address 127.0.0.x")
    if args.base_port and not 1024 <= args.base_port <= 65535 - 200 - args.nodes * args.nodes:
        raise _Usage(f"--base-port {args.base_port}: the run needs ports BASE..BASE+{200 + args.nodes * args.nodes}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    return RunConfig(nodes=args.nodes, duration=duration, kinds=kinds, seed=seed, partitions=args.topic_partitions,
                     rate=args.rate, producers=args.producers, consumers=args.consumers,
                     group_consumers=args.group_consumers,
                     base_port=args.base_port, host=args.host, server_options=tuple(args.server_options),
                     steps=steps)


def run_chaos(config: Any, history_path: Path, server_command: list[str] | None = None) -> tuple[Any, BaseException | None]:
    """Run C{config} on the global reactor (once per process); (observations, error)."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from streamlog.chaos.runner import ChaosRun

    outcome: dict[str, Any] = {}
    with open(history_path, "wb") as history:
        run = ChaosRun(config, history, reactor, server_command)

        def start() -> None:
            d = ensureDeferred(run.run())

            def done(result: Any) -> None:
                if hasattr(result, "value"):  # a Failure
                    outcome["error"] = result.value
                outcome.setdefault("obs", run.obs)
                reactor.stop()  # type: ignore[attr-defined]

            d.addBoth(done)

        reactor.callWhenRunning(start)  # type: ignore[attr-defined]
        try:
            reactor.run()  # type: ignore[attr-defined]
        finally:
            if run.group is not None:
                run.group.kill_all()
            for node in run.nodes.values():  # interrupted (Ctrl-C): no node outlives the run
                if node.alive():
                    node.signal(18)  # SIGCONT, in case it is stopped
                    node.signal(9)
        if "obs" not in outcome:
            outcome["error"] = KeyboardInterrupt()
            outcome["obs"] = run.obs
    return outcome["obs"], outcome.get("error")


def runner_findings(obs: Any) -> dict[str, list[str]]:
    """The run's own safety findings (beside the checker's), by kind."""
    findings: dict[str, list[str]] = {}
    for ack in obs.stale_acks:
        findings.setdefault("stale-ack", []).append(
            f"node {ack['node']} ({ack['why']}) acknowledged {ack['value']} at {ack['partition']}@{ack['offset']} "
            f"(sent {ack['sent']}s, answered {ack['answered']}s)")
    if obs.diverged:
        findings["replicas-diverged"] = list(obs.diverged)
    return {k: v for k, v in findings.items() if v}


def failover_lines(history: Any) -> list[str]:
    """Per fault kind, the time without an acknowledged send around each fault: of the
    partition that waited longest (its failover), and of all partitions at once (the
    whole client waited); median and max over the faults of the kind."""
    from streamlog.chaos.report import partition_write_gaps, write_gaps

    by_kind: dict[str, tuple[list[float], list[float]]] = {}
    for (fault, worst), (_, every) in zip(partition_write_gaps(history), write_gaps(history), strict=True):
        worst_partition, all_partitions = by_kind.setdefault(fault.kind, ([], []))
        worst_partition.append(max(worst.values(), default=0.0))
        all_partitions.append(every)
    lines = []
    for kind, (worst_partition, all_partitions) in sorted(by_kind.items()):
        worst_partition.sort()
        all_partitions.sort()
        n = len(worst_partition)
        lines.append(f"  {kind:<10} {n:>4} fault(s): worst partition median {worst_partition[n // 2]:.2f}s "
                     f"max {worst_partition[-1]:.2f}s; all partitions at once median {all_partitions[n // 2]:.2f}s "
                     f"max {all_partitions[-1]:.2f}s")
    return lines


def runner_text(obs: Any, config: Any, findings: dict[str, list[str]], history: Any = None) -> str:
    lines = [f"seed {config.seed}; workload {obs.workload_end - obs.workload_start:.1f}s of a "
             f"{obs.ended - obs.started:.1f}s run; faults {', '.join(config.kinds)}"]
    for step in obs.steps:
        probes = step.get("probes")
        extra = f"; probes to it: {probes}" if probes else ""
        if str(step["node"]).startswith("m"):
            lines.append(f"  fault {step['step']}: {step['kind']} {step['node']} {step['start']:.1f}s-{step['end']:.1f}s")
            continue
        target = " (the group's coordinator)" if step.get("coordinator") else ""
        lines.append(f"  fault {step['step']}: {step['kind']} node {step['node']}{target} (led {step['led'] or 'nothing'}) "
                     f"{step['start']:.1f}s-{step['end']:.1f}s{extra}")
    if history is not None and history.faults:
        lines.append("failover: longest time without an acknowledged send around each fault, by kind")
        lines.extend(failover_lines(history))
    lines.append(f"final drain: {', '.join(f'p{p} to {o}' for p, o in sorted(obs.drained.items())) or 'none'}")
    conv = "; ".join(f"p{p}: " + ", ".join(f"n{n} {v[0]}/{v[1]}" for n, v in nodes.items())
                     for p, nodes in obs.convergence.items())
    lines.append(f"replicas (log end/high watermark): {conv or 'not compared'}")
    stored = "; ".join(f"p{p}: " + ", ".join(f"n{n} {c}" for n, c in nodes.items()) for p, nodes in obs.stored.items())
    lines.append(f"stored records after the stop (compared byte for byte): {stored or 'not compared'}")
    for n, found in sorted(obs.node_errors.items()):
        lines.append(f"node {n} logged {found['critical']} critical event(s) (see its log), e.g.:")
        lines.extend(f"    {example}" for example in found["examples"])
    for note in obs.notes + obs.node_exits:
        lines.append(f"note: {note}")
    for kind in ("stale-ack", "replicas-diverged"):
        lines.append(f"{kind:<24} {len(findings.get(kind, [])):>9}  safety (runner)")
        for item in findings.get(kind, [])[:5]:
            lines.append(f"  {item}")
    return "\n".join(lines)


def cmd_chaos(args: argparse.Namespace) -> int:
    from streamlog.chaos.checker import check
    from streamlog.chaos.history import load
    from streamlog.chaos.html_report import render
    from streamlog.chaos.report import partition_write_gaps, summary, write_gaps
    from streamlog.chaos.runner import RunAborted, WipeUnsupported

    config = _config(args)
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="streamlog-chaos-")) if temporary else Path(args.data_dir)
    config.data_dir = data_dir / "nodes"
    data_dir.mkdir(parents=True, exist_ok=True)
    history_path = Path(args.history) if args.history else data_dir / "history.jsonl"
    if not args.quiet:
        def progress(line: str) -> None:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        config.progress = progress
    command = shlex.split(args.server_command) if args.server_command else None
    say = config.progress or (lambda line: None)
    say(f"streamlog chaos: seed {config.seed}, {config.nodes} nodes, {config.duration:g}s, faults "
        f"{','.join(config.kinds)}; history {history_path}")
    began = time.monotonic()
    obs, error = run_chaos(config, history_path, command)
    if isinstance(error, WipeUnsupported):
        sys.stderr.write(f"streamlog chaos: --faults wipe: {error}\n")
        return EXIT_USAGE
    if isinstance(error, KeyboardInterrupt):
        sys.stderr.write(f"streamlog chaos: interrupted; the data and history are kept in {data_dir}\n")
        return 130
    history = load(history_path)
    result = check(history)
    findings = runner_findings(obs)
    text = runner_text(obs, config, findings, history)
    aborted = error is not None
    if aborted:
        why = str(error) if isinstance(error, RunAborted) else f"{type(error).__name__}: {error}"
        text += f"\nrun aborted: {why}"
    valid = result.valid and not findings
    if args.report:
        Path(args.report).write_text(render(history, result, {"findings": findings, "text": text}))
    if args.json:
        gaps = [{"kind": f.kind, "node": f.node, "start": round(f.start, 3), "gap": round(g, 3),
                 "partitions": {str(tp[1]): round(pg, 3) for tp, pg in per.items()}}
                for (f, g), (_, per) in zip(write_gaps(history), partition_write_gaps(history), strict=True)]
        out = {"valid": valid, "seed": config.seed, "aborted": str(error) if aborted else None,
               "history": str(history_path), "stats": result.stats, "counts": result.counts,
               "runner_findings": findings, "gaps": gaps, "run": obs.to_json(),
               "faults": [{"kind": f.kind, "node": f.node, "start": f.start, "end": f.end} for f in history.faults],
               "elapsed": round(time.monotonic() - began, 2)}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    else:
        sys.stdout.write(summary(result, history) + "\n\n" + text + "\n")
        sys.stdout.write(f"result: {'VALID' if valid else 'INVALID'}"
                         f"{' (run aborted)' if aborted else ''}; seed {config.seed}\n")
    sys.stdout.flush()
    keep = args.keep_data or not valid or aborted or not temporary
    if temporary and not keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    elif temporary:
        sys.stderr.write(f"streamlog chaos: data, node logs and history kept in {data_dir}\n")
    if aborted:
        sys.stderr.write(f"streamlog chaos: the run could not be completed: {text.rsplit('run aborted: ', 1)[-1]}\n")
        return EXIT_ABORTED if valid else EXIT_ERROR
    return EXIT_OK if valid else EXIT_ERROR

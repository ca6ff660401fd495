"""C{python -m streamlog.cluster.sim}: run seeds of the whole-cluster simulator.

    python -m streamlog.cluster.sim --seed 5000000 --seeds 200 [--nodes 3] [--broken NAME]

Prints one line per seed and a summary; exits 1 if any seed failed, with
the command that replays the first failing seed (and its violations).  A
seed replays byte-identically: the process re-runs itself with
C{PYTHONHASHSEED=0} when it is not set so, because the iteration order of
sets of strings (which some of the node's code walks) depends on it.

C{--broken NAME} runs a deliberately broken variant from C{--variants}
(default C{tests/cluster/sim_variants.py}, its C{VARIANTS} table), to see how
many seeds the checker needs to catch it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time as _wallclock_for_cli_only
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamlog.cluster.sim.world import SimConfig, Variant, run_seed


def load_variant(name: str, path: str) -> Variant:
    spec = importlib.util.spec_from_file_location("streamlog_sim_variants", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load broken variants from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    variants: dict[str, Any] = module.VARIANTS
    if name not in variants:
        raise SystemExit(f"unknown variant {name!r}; {path} has: {', '.join(sorted(variants))}")
    variant: Variant = variants[name]
    return variant


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m streamlog.cluster.sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed (default 1)")
    p.add_argument("--nodes", type=int, default=3, choices=(3, 5), help="nodes in the cluster (default 3)")
    p.add_argument("--partitions", type=int, default=SimConfig().partitions, help="partitions of the topic (default 2)")
    p.add_argument("--duration", type=float, default=SimConfig().duration,
                   help="simulated seconds of load and faults per seed (default 3)")
    p.add_argument("--broken", metavar="NAME", help="run a deliberately broken variant (see --variants)")
    p.add_argument("--variants", default="tests/cluster/sim_variants.py", help="where --broken variants are")
    p.add_argument("--quiet", action="store_true", help="print failing seeds and the summary only")
    p.add_argument("--stop-on-failure", action="store_true", help="stop at the first failing seed")
    p.add_argument("--stop-on-safety", action="store_true",
                   help="stop at the first seed with a safety violation (not liveness or crash only)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    variant = load_variant(args.broken, args.variants) if args.broken else None
    config = SimConfig(nodes=args.nodes, partitions=args.partitions, duration=args.duration)
    failed: list[Any] = []
    began = _wallclock_for_cli_only.monotonic()
    for seed in range(args.seed, args.seed + args.seeds):
        result = run_seed(seed, config, variant)
        if not result.ok:
            failed.append(result)
        if not args.quiet or not result.ok:
            print(result.line(), flush=True)
            for violation in result.violations[:5]:
                print(f"    {violation}", flush=True)
        if (failed and args.stop_on_failure) or (args.stop_on_safety and result.safety):
            args.seeds = seed - args.seed + 1
            break
    took = _wallclock_for_cli_only.monotonic() - began
    passed = args.seeds - len(failed)
    print(f"{passed} of {args.seeds} seeds passed ({args.seed}..{args.seed + args.seeds - 1}, {args.nodes} nodes"
          f"{', broken: ' + args.broken if args.broken else ''}); {took:.1f} s, {took / max(args.seeds, 1):.2f} s per seed")
    if failed:
        first = failed[0]
        extra = f" --nodes {args.nodes}" + (f" --broken {args.broken}" if args.broken else "")
        if args.partitions != SimConfig().partitions:
            extra += f" --partitions {args.partitions}"
        if args.duration != SimConfig().duration:
            extra += f" --duration {args.duration}"
        print(f"failed seeds: {' '.join(str(r.seed) for r in failed[:50])}")
        print(f"replay: python -m streamlog.cluster.sim --seed {first.seed}{extra}")
        return 1
    return 0


def _reexec_with_fixed_hash_seed() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        os.execve(sys.executable, [sys.executable, "-m", "streamlog.cluster.sim", *sys.argv[1:]], env)


if __name__ == "__main__":
    _reexec_with_fixed_hash_seed()
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False, discardBuffer=True)  # failures are counted, not printed
    sys.exit(main())

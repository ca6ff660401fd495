"""Run the protocol fuzzer by hand, longer than CI does.

    python tests/fuzz/run_fuzz.py --seed 7 --requests 200000            # in memory
    python tests/fuzz/run_fuzz.py --target server --requests 50000      # a real twistd server
    python tests/fuzz/run_fuzz.py --seeds 1-20 --requests 20000         # many seeds

It keeps going after a finding (resynchronising its model from the node) and
prints, per seed, how many requests it sent, the answer codes it saw, the
known issues it tolerated and every finding with the lines that caused it.
Exit status 1 if anything was found.  Use --strict to treat the known issues
(protofuzz.model.KNOWN_ISSUES) as findings too.  A finding names its seed and
step: the same --seed replays it exactly (in memory; a real server's timing
varies).  The pytest runs take STREAMLOG_FUZZ_SEED, STREAMLOG_FUZZ_REQUESTS,
STREAMLOG_FUZZ_SERVER_REQUESTS and STREAMLOG_FUZZ_SERVER_SECONDS.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protofuzz.session import Session  # noqa: E402
from protofuzz.setups import harness_setup, server_setup  # noqa: E402


def seed_list(text: str) -> list[int]:
    """"1-20" or "1,5,9" -> the seeds."""
    try:
        if "-" in text.strip("-"):
            lo, hi = text.split("-", 1)
            seeds = list(range(int(lo), int(hi) + 1))
        else:
            seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed list: use 1-20 or 1,5,9") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seed (is the range backwards?)")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=None, help="one seed (default: from the clock, printed)")
    parser.add_argument("--seeds", type=seed_list, default=None, help="several seeds: 1-20 or 1,5,9")
    parser.add_argument("--requests", type=int, default=20_000,
                        help="request lines per seed, at least (a step may send several; default 20000)")
    parser.add_argument("--seconds", type=float, default=None, help="stop each seed after this long")
    parser.add_argument("--target", choices=("memory", "server"), default="memory")
    parser.add_argument("--strict", action="store_true", help="known issues count as findings")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the server's data and log here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be more than 0")
    if args.seed is not None and args.seeds is not None:
        parser.error("give --seed or --seeds, not both")
    seeds = args.seeds or [args.seed if args.seed is not None else int(time.time()) % 1_000_000]
    known = {} if args.strict else None
    total = 0
    found = 0
    for seed in seeds:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="streamlog-fuzz-") as tmp:
            workdir = tmp if args.workdir is None else args.workdir / f"seed-{seed}"
            Path(workdir).mkdir(parents=True, exist_ok=True)
            if args.target == "memory":
                target, limits, config, extra = harness_setup()
            else:
                target, limits, config, extra = server_setup(Path(workdir))
            try:
                session = Session(target, seed, limits=limits, config=config, known=known, fail_fast=False, **extra)
                session.setup()
                session.run(args.requests, args.seconds)
            finally:
                target.close()
                server = getattr(target, "server", None)
                if server is not None:
                    server.stop()
            if args.workdir is not None and server is not None:
                print(f"server log: {server.log_path}")
        total += session.requests
        found += len(session.findings)
        print(session.summary())
        print(f"  ({time.monotonic() - started:.1f} s)\n", flush=True)
    print(f"{total} requests over {len(seeds)} seed(s), {found} finding(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

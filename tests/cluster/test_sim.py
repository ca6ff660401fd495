"""The whole-cluster simulator (streamlog.cluster.sim): it replays, it passes, it has teeth.

- a seed replays identically (the digest of its event trace and history), in one
  process and across processes (the CLI);
- CI_SEEDS seeds of a short run pass (real nodes, faults, the checker);
- every broken variant of sim_variants.py is caught within its budget of seeds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sim_variants import VARIANTS

from streamlog.cluster.sim import SimConfig, run_seed
from streamlog.cluster.sim.__main__ import main

ROOT = Path(__file__).resolve().parents[2]

#: The CI run: many seeds, each short (load and faults for CI_DURATION simulated seconds).
CI_SEEDS = 200
CI_DURATION = 1.0
CI = SimConfig(duration=CI_DURATION)

#: Seeds each broken variant must be caught within (measured: see docs/cluster.md).
BUDGET = {
    "ack-before-majority-fsync": 40,
    "follower-truncates-committed": 10,
    "leader-serves-uncommitted": 20,
    "acks-on-leader-append": 10,
}


def test_a_seed_replays_identically_and_another_seed_differs():
    first, again, other = run_seed(11, CI), run_seed(11, CI), run_seed(12, CI)
    assert first.ok, first.violations
    assert (first.digest, first.stats, first.faults) == (again.digest, again.stats, again.faults)
    assert first.digest != other.digest
    assert first.stats["acked"] > 50 and first.stats["faults"] >= 1  # it did run load and faults


def test_the_cli_replays_a_seed_byte_identically_across_processes():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    runs = [subprocess.run([sys.executable, "-m", "streamlog.cluster.sim", "--seed", "3", "--duration", "1.0"],
                           cwd=ROOT, env={**env, "PYTHONHASHSEED": seed}, capture_output=True, timeout=120)
            for seed in ("1", "random")]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-2000:] for r in runs]
    lines = [r.stdout.decode().splitlines()[0] for r in runs]
    assert lines[0] == lines[1] and "seed 3: ok" in lines[0]


def test_ci_seeds_pass():
    failed = [r for r in (run_seed(seed, CI) for seed in range(CI_SEEDS)) if not r.ok]
    assert not failed, "\n".join(f"{r.line()}\n  {r.violations[:3]}" for r in failed[:5])


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_a_broken_variant_is_caught_within_its_budget(name):
    for seed in range(BUDGET[name]):
        result = run_seed(seed, CI, VARIANTS[name])
        if not result.ok:
            assert any(not v.startswith("crash") for v in result.violations), result.violations
            return
    pytest.fail(f"{name} was not caught in {BUDGET[name]} seeds")


def test_the_cli_says_which_seed_to_replay_when_one_fails(capsys):
    code = main(["--seed", "0", "--seeds", "3", "--duration", str(CI_DURATION), "--broken", "acks-on-leader-append",
                 "--variants", str(ROOT / "tests/cluster/sim_variants.py"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert "replay: python -m streamlog.cluster.sim --seed " in out and "--broken acks-on-leader-append" in out

"""`streamlog bench group` at CI size: it runs against its own server and reports sane figures
(rebalance times in their bounds, every message read in each throughput round), no performance level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_group_bench_reports_rebalance_times_and_both_throughputs():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "streamlog.bench", "group", "--json", "--quiet", "--partitions", "3", "--messages",
         "900", "--members", "2", "--rounds", "1", "--throughput-rounds", "1", "--session-timeout-ms", "1000",
         "--max-seconds", "60"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["workload"] == "group" and r["partitions"] == 3 and r["members"] == 2
    rb = r["rebalance"]
    assert len(rb["rounds"]) == 1 and rb["session_timeout_ms"] == 1000
    # A join waits for the old members' next heartbeat (a third of the session); a death for the session.
    assert 0 < rb["join_s"]["median"] < 10
    assert 1.0 <= rb["death_s"]["median"] < 10
    tp = r["throughput"]
    assert [x["members"] for x in tp["rounds"]] == [1, 2]
    assert all(x["messages"] == 900 and x["msgs_per_s"] > 0 for x in tp["rounds"])
    assert tp["ratio"] > 0 and isinstance(r["load_before"], float)

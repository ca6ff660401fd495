"""`streamlog chaos` end to end: a short run of real nodes under kill, stop and partition.

It must exit 0 (no safety anomaly), record acknowledged sends and a fault of each kind,
and write a readable self-contained HTML report.  About 20 s of workload; the whole test
stays under a minute on the shared 2-core machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import orjson

from streamlog.chaos.checker import check
from streamlog.chaos.history import OK, load
from streamlog.testing import child_env


def chaos(tmp_path, *options, timeout=150):
    command = [sys.executable, "-m", "streamlog.cli", "chaos", "--json", "-q", "--data-dir", str(tmp_path / "run"),
               *options]
    return subprocess.run(command, env=child_env(), capture_output=True, timeout=timeout, cwd=tmp_path)


def test_a_short_run_with_kill_stop_and_partition_is_clean_and_reported(tmp_path):
    done = chaos(tmp_path, "--duration", "20s", "--faults", "kill,stop,partition", "--seed", "5",
                 "--rate", "150", "--report", str(tmp_path / "report.html"))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    out = orjson.loads(done.stdout)
    assert out["valid"] is True and out["aborted"] is None and out["seed"] == 5
    history = load(tmp_path / "run" / "history.jsonl")
    assert history.meta["seed"] == 5 and history.meta["faults"] == ["kill", "stop", "partition"]
    acked = [s for s in history.sends if s.outcome == OK]
    assert len(acked) > 500
    # idempotent producers and plain ones both ran (p1 and p3 idempotent, p2 not)
    # (result.valid below: no duplicate of an idempotent send, each producer's order kept)
    assert {s.idempotent for s in acked} == {True, False}
    assert {f.kind for f in history.faults} == {"kill", "stop", "partition"}
    assert all(f.end is not None and f.end > f.start for f in history.faults)
    assert {d.partition for d in history.drains} == {0, 1, 2}
    result = check(history)
    assert result.valid and result.count("unseen") == 0
    assert out["counts"] == result.counts and out["runner_findings"] == {}
    assert out["run"]["node_errors"] == {}  # no node logged a critical event (a callback that raised)
    # every replica of every partition ended with the same log
    for nodes in out["run"]["convergence"].values():
        assert len(nodes) == 3 and len({tuple(v) for v in nodes.values()}) == 1
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "VALID" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    assert "<script" not in page
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))
    shaded = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.get("fill-opacity") == "0.18"]
    assert len(shaded) == 2 * len(history.faults)  # each fault shaded in both panels


def test_a_run_with_wipes_is_clean_and_the_wiped_node_rejoins(tmp_path):
    """A node killed, its data directory deleted and started again comes back as a new
    incarnation (docs/operations.md, "Replacing a node"): the run (its check before the
    workload, then the scheduled wipes) ends clean, with every replica alike."""
    done = chaos(tmp_path, "--duration", "8s", "--faults", "wipe", "--seed", "1")
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    out = orjson.loads(done.stdout)
    assert out["valid"] is True and out["runner_findings"] == {}
    assert {f.kind for f in load(tmp_path / "run" / "history.jsonl").faults} == {"wipe"}
    for nodes in out["run"]["convergence"].values():
        assert len(nodes) == 3 and len({tuple(v) for v in nodes.values()}) == 1


def test_a_group_run_with_member_and_coordinator_faults_is_clean_and_the_group_checked(tmp_path):
    # Fixed steps: a member stopped past its 3 s session (its partitions move; it must notice when
    # it resumes), the coordinator's node killed, a member killed (restarted as a new member).
    done = chaos(tmp_path, "--group-consumers", "3", "--steps", "member-stop:m1:4,kill:g:1.5,member-kill:m2:1",
                 "--rate", "150", "--seed", "7400002", "--report", str(tmp_path / "report.html"))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    out = orjson.loads(done.stdout)
    assert out["valid"] is True and out["aborted"] is None
    history = load(tmp_path / "run" / "history.jsonl")
    assert {f.kind for f in history.faults} == {"member-stop", "kill", "member-kill"}
    assert any(step.get("coordinator") for step in out["run"]["steps"])
    result = check(history)
    assert result.valid and result.group
    stats = result.stats
    acked = {(s.partition, s.offset) for s in history.sends if s.outcome == OK}
    # Every stored message processed by some member (the distinct count is the drained total).
    assert stats["group_distinct"] == sum(d.end_offset for d in history.drains) >= len(acked) > 300
    assert stats["group_members"] == 4  # m1.1, m2.1, m2.2 (after the kill), m3.1
    assert stats["group_lost"] >= 1  # the stopped member gave its partitions up when it resumed
    assert stats["group_commits"] > 0 and stats["group_fetches"] > 0
    assert out["counts"]["group-skip"] == out["counts"]["double-owner"] == out["counts"]["commit-backwards"] == 0
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Consumer group</h2>" in page and "processed again (uncommitted windows)" in page

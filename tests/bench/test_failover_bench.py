"""`streamlog bench failover`: its figures (pure) and one short run against real node processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamlog.bench.failover_stats import AckLedger, KillRecord, leadership_balanced, summary

ROOT = Path(__file__).resolve().parents[2]


def test_a_kill_counts_only_acks_of_sends_made_after_it_on_the_partitions_the_node_led():
    r = KillRecord(kill=1, node=2, led=(0, 5))
    r.saw_ack(0, sent_at=9.9, acked_at=10.4, killed_at=10.0)  # sent before the kill: not a failover figure
    r.saw_ack(3, sent_at=10.1, acked_at=10.2, killed_at=10.0)  # another node's partition
    assert r.first_ack_s is None and r.all_acked_s is None
    r.saw_ack(5, sent_at=10.1, acked_at=10.3, killed_at=10.0)
    assert r.first_ack_s is None and r.all_acked_s is None  # partition 0 is the watched one
    r.saw_ack(0, sent_at=10.2, acked_at=10.5, killed_at=10.0)
    r.saw_ack(0, sent_at=10.3, acked_at=10.6, killed_at=10.0)  # only the first counts
    assert abs(r.first_ack_s - 0.5) < 1e-9 and abs(r.all_acked_s - 0.5) < 1e-9


def test_the_summary_gives_median_and_max_of_the_kills_that_measured_each_interval():
    records = [KillRecord(kill=i, node=1, led=(0,), first_ack_s=v, leader_seen_s=v / 2)
               for i, v in enumerate([0.3, 0.1, 0.2, 0.9], 1)]
    records.append(KillRecord(kill=5, node=1, led=(0,)))
    s = summary(records)
    assert s["kills"] == 5
    assert s["first_ack"] == {"n": 4, "median_s": 0.25, "max_s": 0.9, "min_s": 0.1}
    assert s["back_in_isr"]["n"] == 0 and s["back_in_isr"]["median_s"] is None


def test_leadership_is_balanced_when_the_preferred_leaders_lead_or_the_counts_are_within_one():
    nodes = (1, 2, 3)
    preferred = {p: p % 3 + 1 for p in range(6)}  # 1, 2, 3, 1, 2, 3
    assert leadership_balanced(dict(preferred), preferred, nodes, 6)
    # Two each, not all preferred: balanced too.
    assert leadership_balanced({0: 2, 1: 1, 2: 3, 3: 1, 4: 2, 5: 3}, preferred, nodes, 6)
    # The restarted node 3 has none back yet, or only one: not balanced.
    assert not leadership_balanced({0: 1, 1: 2, 2: 1, 3: 1, 4: 2, 5: 2}, preferred, nodes, 6)
    assert not leadership_balanced({0: 1, 1: 2, 2: 3, 3: 1, 4: 2, 5: 2}, preferred, nodes, 6)
    # A partition without a leader: not balanced.
    assert not leadership_balanced({0: 1, 1: 2, 2: 3, 3: 1, 4: 2}, preferred, nodes, 6)
    # One partition: whoever leads it, the counts (1, 0, 0) are within one.
    assert leadership_balanced({0: 2}, {0: 1}, nodes, 1)
    # 1,000 partitions: 334/333/333 is balanced, 476/191/333 is not.
    pref = {p: p % 3 + 1 for p in range(1000)}
    assert leadership_balanced(dict(pref), pref, nodes, 1000)
    skewed = {p: (1 if p < 476 else 2 if p < 667 else 3) for p in range(1000)}
    assert not leadership_balanced(skewed, pref, nodes, 1000)
    assert KillRecord(kill=1, node=1, led=(0, 3, 6)).to_json()["led_count"] == 3


def test_the_ledger_counts_lost_changed_reordered_and_doubled_acknowledged_messages():
    ledger = AckLedger()
    for partition, offset, value in [(0, 0, "a"), (0, 1, "b"), (0, 3, "c"), (0, 2, "d"), (1, 0, "e"), (1, 1, "f")]:
        ledger.add(partition, offset, value)
    stored = {0: {0: "a", 1: "b", 2: "d", 3: "x", 4: "b"}, 1: {0: "e"}}
    got = ledger.check(stored)
    assert (got["acknowledged"], got["lost"], got["changed"], got["out_of_order"], got["duplicates"]) == (6, 1, 1, 1, 1)
    assert ledger.check({0: {0: "a", 1: "b", 2: "d", 3: "c"}, 1: {0: "e", 1: "f"}})["lost"] == 0


def test_two_kills_of_a_real_cluster_lose_no_acknowledged_message(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "streamlog.bench", "failover", "--kills", "2", "--partitions", "3", "--rate", "100",
         "--settle", "0.3", "--json", "--quiet", "--seed", "7", "--data-dir", str(tmp_path / "cluster")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["workload"] == "failover" and len(r["records"]) == 2
    for record in r["records"]:
        assert record["new_leader"] != record["node"]
        assert 0 < record["leader_seen_s"] < 30 and 0 < record["first_ack_s"] <= record["all_acked_s"] < 30
        assert record["back_in_isr_s"] > 0
    assert r["summary"]["first_ack"]["n"] == 2
    assert r["summary"]["balanced"] == [True, True]  # each kill waited for balanced leadership
    assert r["summary"]["led"] == [record["led_count"] for record in r["records"]]
    assert r["readback"]["acknowledged"] > 0
    assert r["readback"]["lost"] == 0 and r["readback"]["changed"] == 0 and r["readback"]["out_of_order"] == 0
    assert r["send_failures"] == 0


@pytest.mark.parametrize("fault", ["stop", "partition"])
def test_a_paused_or_cut_off_leader_is_left_by_the_producer_and_loses_nothing(tmp_path, fault):
    # stop: SIGSTOP, SIGCONT after; partition: cut from its peers (chaos proxy) and from the
    # producer (a proxy that goes silent, connections up): the producer's stall detection moves on.
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "streamlog.bench", "failover", "--fault", fault, "--kills", "1", "--rate", "100",
         "--settle", "0.3", "--json", "--quiet", "--seed", "7", "--kill-timeout", "60", "--request-timeout", "10",
         "--data-dir", str(tmp_path / "cluster")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["fault"] == fault and len(r["records"]) == 1
    record = r["records"][0]
    assert record["new_leader"] != record["node"]
    # Under the request timeout, which is what a paused leader cost without stall detection (the
    # margin is for a loaded machine: about 0.6 s on a quiet one, docs/benchmarks.md).
    assert 0 < record["first_ack_s"] < 10.0, record
    assert r["readback"]["lost"] == 0 and r["readback"]["changed"] == 0 and r["readback"]["out_of_order"] == 0
    assert r["send_failures"] == 0

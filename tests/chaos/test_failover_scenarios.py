"""Issue 9's real-process failure scenarios, run by `streamlog chaos --steps` (a fixed schedule).

3 nodes, one RF=3 partition, acks=all producers and consumers running throughout:

- the partition's leader SIGKILLed and restarted five times, then SIGSTOPped past the
  election timeout and resumed: every acknowledged message is read at the offset it was
  acknowledged with, in send order, with no gap and no offset holding two values (the
  checker); the stopped old leader acknowledged none of the writes sent straight to it
  while it was stopped (answered after SIGCONT), and none of them is in the log;
- the leader cut off from the others by the proxy: the minority side acknowledges none of
  the writes sent to it, and after healing every replica holds the same log.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import orjson

from streamlog.chaos.checker import check
from streamlog.chaos.history import OK, load
from streamlog.testing import child_env


def run_steps(tmp_path, steps: str):
    command = [sys.executable, "-m", "streamlog.cli", "chaos", "--json", "-q", "--data-dir", str(tmp_path / "run"),
               "--topic-partitions", "1", "--rate", "150", "--steps", steps, "--seed", "9"]
    done = subprocess.run(command, env=child_env(), capture_output=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    return orjson.loads(done.stdout), load(tmp_path / "run" / "history.jsonl")


def assert_every_ack_read_in_place_and_in_order(history):
    result = check(history)
    assert result.valid, result.counts  # no lost write, no offset with two values, no skip
    assert result.count("unseen") == 0  # the drain read every acknowledged offset
    read = defaultdict(set)  # value -> offsets (a resend may store a value twice: a retry duplicate)
    offsets_read = set()
    for p in history.polls:
        for offset, value in p.messages:
            read[value].add(offset)
            offsets_read.add(offset)
    by_producer = defaultdict(list)
    for s in sorted(history.sends, key=lambda s: s.id):
        if s.outcome == OK:
            assert s.offset in read[s.value]  # read at the offset it was acknowledged with
            by_producer[s.producer_name].append(s.offset)
    for offsets in by_producer.values():
        assert offsets == sorted(offsets)  # in send order
    ends = {d.partition: d.end_offset for d in history.drains}
    assert sorted(offsets_read) == list(range(ends[0]))  # dense: no gap
    return read


def probe_values(history, node=None):
    return {s.value for s in history.sends if s.process.startswith("probe-") and (node is None or
                                                                                  s.process == f"probe-n{node}")}


def test_leader_killed_five_times_then_stopped_loses_and_reorders_nothing(tmp_path):
    out, history = run_steps(tmp_path, ",".join(["kill:p0:1.0"] * 5 + ["stop:p0:3.0"]))
    steps = out["run"]["steps"]
    assert [s["kind"] for s in steps] == ["kill"] * 5 + ["stop"]
    assert all(s["led"] == [0] for s in steps)  # each time it was the partition's leader that was hit
    assert len([f for f in history.faults if f.kind == "kill"]) == 5
    read = assert_every_ack_read_in_place_and_in_order(history)
    assert sum(1 for s in history.sends if s.outcome == OK and not s.process.startswith("probe-")) > 1000
    # The stopped leader: the writes sent to it while stopped were all answered after
    # SIGCONT, and none with an acknowledgement; none of them is in the log.
    stopped = steps[-1]
    assert out["runner_findings"] == {}
    assert stopped["replaced"] == [0]  # the others elected a newer leader while it was stopped
    assert sum(stopped["probes"].values()) == 3 and "ok" not in stopped["probes"], stopped["probes"]
    assert probe_values(history, stopped["node"]) and not probe_values(history, stopped["node"]) & set(read)


def test_a_leader_cut_off_acknowledges_nothing_and_the_logs_converge_after_healing(tmp_path):
    out, history = run_steps(tmp_path, "partition:p0:4.0,partition:p0:4.0")
    steps = out["run"]["steps"]
    assert [s["kind"] for s in steps] == ["partition", "partition"] and all(s["led"] == [0] for s in steps)
    read = assert_every_ack_read_in_place_and_in_order(history)
    for step in steps:  # the minority side: timeouts, NOT_LEADER or LEADER_NOT_AVAILABLE, never an ack
        assert step["replaced"] == [0]  # while the majority elected a leader of its own
        assert sum(step["probes"].values()) == 3 and "ok" not in step["probes"], step["probes"]
    assert not probe_values(history) & set(read)
    assert out["runner_findings"] == {}
    (nodes,) = out["run"]["convergence"].values()
    assert len(nodes) == 3 and len({tuple(v) for v in nodes.values()}) == 1  # same log end and high watermark
    assert nodes["1"][0] == {d.partition: d.end_offset for d in history.drains}[0]
    # and once stopped, the three stored replicas hold the same records, byte for byte
    assert out["run"]["stored"] == {"0": {"1": nodes["1"][0], "2": nodes["1"][0], "3": nodes["1"][0]}}

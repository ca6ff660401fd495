"""`python -m streamlog.chaos.checker history.jsonl`: the summary and the exit status."""

from __future__ import annotations

import subprocess
import sys

from chaos_builders import Builder

from streamlog.chaos.checker import main
from streamlog.chaos.history import dump
from streamlog.testing import child_env


def valid_history(path):
    b = Builder()
    b.ok("p", "a", 0, 0)
    b.info("p", "b")
    b.poll("c", 0, 0, [(0, "a"), (1, "b")])
    b.fault("kill", "n2", 1.0, 3.5)
    b.fault("stop", "n1", 2.0, None)
    b.drain(0, 2)
    dump(b.history, path)


def invalid_history(path):
    b = Builder()
    b.ok("p", "a", 0, 0)
    b.ok("p", "b", 0, 1)
    b.fail("p", "x")
    b.poll("c", 0, 0, [(0, "a")])
    b.poll("c", 0, 1, [(1, "x")])
    b.drain(0, 2)
    dump(b.history, path)


def test_valid_history_exits_0_with_its_summary(tmp_path, capsys):
    valid_history(tmp_path / "h.jsonl")
    assert main([str(tmp_path / "h.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "operations: 3  (sends 2: ok 1, fail 0, info 1; polls 1: ok 1)" in out
    assert "result: VALID" in out
    assert "faults: 2  (kill x1 (2.5s), 1 never healed)" in out
    assert "info sends read later: 1" in out


def test_safety_anomaly_exits_1_with_evidence(tmp_path, capsys):
    invalid_history(tmp_path / "h.jsonl")
    assert main([str(tmp_path / "h.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "result: INVALID (lost 1, inconsistent-offset 1, aborted-read 1)" in out
    assert "aborted-read (1):" in out
    assert "[ops 3, 5]" in out


def test_evidence_0_prints_counts_only(tmp_path, capsys):
    invalid_history(tmp_path / "h.jsonl")
    assert main([str(tmp_path / "h.jsonl"), "--evidence", "0"]) == 1
    out = capsys.readouterr().out
    assert "aborted-read (1):" not in out
    assert "aborted-read                 1  safety" in out


def test_unreadable_histories_exit_2_with_a_message(tmp_path, capsys):
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"type":"history","version":1}\n{"type":"send"}\n{}\n')
    assert main([str(bad)]) == 2
    assert "line 2: a send record needs" in capsys.readouterr().err
    (tmp_path / "dir.jsonl").mkdir()
    assert main([str(tmp_path / "dir.jsonl")]) == 2


def test_run_as_a_module(tmp_path):
    invalid_history(tmp_path / "h.jsonl")
    done = subprocess.run([sys.executable, "-m", "streamlog.chaos.checker", str(tmp_path / "h.jsonl")],
                          capture_output=True, text=True, env=child_env(), timeout=60)
    assert done.returncode == 1, done.stderr
    assert "result: INVALID" in done.stdout
    usage = subprocess.run([sys.executable, "-m", "streamlog.chaos.checker"],
                           capture_output=True, text=True, env=child_env(), timeout=60)
    assert usage.returncode == 2
    assert "usage: python -m streamlog.chaos.checker" in usage.stderr


def test_an_empty_history_says_nothing_was_checked(tmp_path, capsys):
    dump(Builder().history, tmp_path / "h.jsonl")
    assert main([str(tmp_path / "h.jsonl")]) == 0
    assert "nothing was checked" in capsys.readouterr().out


def test_the_report_is_the_same_whatever_the_hash_seed(tmp_path):
    b = Builder()
    b.info("p", "a")
    b.info("q", 7)
    b.poll("c1", 0, 0, [(0, "a"), (1, "ghost-1"), (2, "ghost-2"), (3, "ghost-3")])
    b.poll("c2", 0, 0, [(0, 7), (1, "ghost-4")])
    dump(b.history, tmp_path / "h.jsonl")
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**child_env(), "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-m", "streamlog.chaos.checker", str(tmp_path / "h.jsonl")],
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 1, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    invalid_history(tmp_path / "h.jsonl")
    checker = subprocess.Popen([sys.executable, "-m", "streamlog.chaos.checker", str(tmp_path / "h.jsonl")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    assert checker.stdout is not None
    checker.stdout.close()  # as `| head -0` would
    _, err = checker.communicate(timeout=60)
    assert checker.returncode == 1
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err

"""docs/reliability.md says what the checker does: every anomaly kind has its paragraph,
and the example output is what the command prints for the history it describes."""

from __future__ import annotations

from pathlib import Path

from chaos_builders import Builder

from streamlog.chaos.checker import KINDS, SAFETY, main
from streamlog.chaos.group_checker import GROUP_KINDS, GROUP_SAFETY
from streamlog.chaos.history import DEFINITE_REFUSALS, dump

DOC = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()


def test_every_kind_has_its_paragraph_saying_whether_it_is_safety():
    for kind in KINDS + GROUP_KINDS:
        title = kind.replace("-", " ").replace("non ", "non-")
        marker = f"**{title}** ({'safety' if kind in SAFETY | GROUP_SAFETY else 'counted'}"
        assert marker in DOC, marker


def test_every_definite_refusal_is_listed():
    for code in DEFINITE_REFUSALS:
        assert f"`{code}`" in DOC, code


def test_the_example_output_is_real(tmp_path, capsys):
    b = Builder()
    b.ok("p1", "p1-1", 0, 0)
    b.ok("p1", "p1-2", 0, 1)
    b.info("p1", "p1-3")
    b.fail("p1", "p1-4", "MESSAGE_TOO_LARGE")
    b.poll("c1", 0, 0, [(0, "p1-1"), (1, "p1-2")])
    b.poll("c1", 0, 2, [(2, "p1-3")])
    b.ok("p1", "p1-5", 0, 3)
    b.fault("kill", "n2", 3.0, 4.5)
    b.drain(0, 3)
    dump(b.history, tmp_path / "history.jsonl")
    assert main([str(tmp_path / "history.jsonl")]) == 1
    out = capsys.readouterr().out
    assert f"$ python -m streamlog.chaos.checker history.jsonl\n{out}$ echo $?\n1\n" in DOC


def test_every_chaos_option_and_fault_kind_is_documented():
    import argparse

    from streamlog.chaos.schedule import KINDS
    from streamlog.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chaos = sub.choices["chaos"]
    runner = DOC[DOC.index("## The chaos runner"):DOC.index("## The history checker")]
    for action in chaos._actions:
        for option in action.option_strings:
            # The streamlog command's common options are documented with it (docs/clients.md).
            if option.startswith("--") and option not in ("--help", "--connect", "--timeout", "--connect-timeout"):
                assert option in runner, option
    for kind in KINDS:
        assert f"| `{kind}` |" in runner, kind

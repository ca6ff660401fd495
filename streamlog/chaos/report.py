"""The checker's text summary: what was run, what was found, and the evidence.

Plain text for a terminal and a CI log; the HTML report of a chaos run (timeline plot)
belongs to the runner.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from streamlog.chaos.checker import Result
from streamlog.chaos.history import OK, Fault, History


def _longest_gap(acks: list[float], f: Fault) -> float:
    """The longest pause between two successive times of C{acks} (sorted) that overlaps the
    fault's window (from its start to its end, or to the last ack if it never healed)."""
    end = f.end if f.end is not None else (acks[-1] if acks else f.start)
    i = max(bisect.bisect_left(acks, f.start) - 1, 0)
    longest = 0.0
    while i + 1 < len(acks) and acks[i] <= end:
        longest = max(longest, acks[i + 1] - acks[i])
        i += 1
    return longest


def write_gaps(history: History) -> list[tuple[Fault, float]]:
    """For each fault, the longest time without an acknowledged send around it: the gap
    between two successive acks (by completion time) that overlaps the fault's window
    (from its start to its end, or to the last ack if it never healed).  It measures what
    producers saw: a failover's unavailability, plus their retry backoff."""
    acks = sorted(s.complete for s in history.sends if s.outcome == OK)
    return [(f, _longest_gap(acks, f)) for f in history.faults]


def partition_write_gaps(history: History) -> list[tuple[Fault, dict[tuple[str, int], float]]]:
    """For each fault, the same gap in the acks of each partition (by topic and partition).

    With several partitions, L{write_gaps} only sees the time when no partition at all was
    acknowledged; a partition whose leader was hurt shows its own failover here, and a pause
    of every partition at once shows that the whole client waited."""
    acks: dict[tuple[str, int], list[float]] = defaultdict(list)
    for s in history.sends:
        if s.outcome == OK and s.partition is not None:
            acks[(s.topic, s.partition)].append(s.complete)
    for times in acks.values():
        times.sort()
    return [(f, {tp: _longest_gap(times, f) for tp, times in sorted(acks.items())}) for f in history.faults]


def _n(x: int) -> str:
    return f"{x:,}"


def group_figures(result: Result) -> list[tuple[str, str]]:
    """The consumer group's figures, (label, value): for the summary and the HTML report."""
    st = result.stats
    return [
        ("members (incarnations)", _n(st["group_members"])),
        ("generations seen", _n(st["group_generations"])),
        ("partitions assigned / revoked / lost", f"{_n(st['group_assigned'])} / {_n(st['group_revoked'])} / "
                                                 f"{_n(st['group_lost'])}"),
        ("messages processed (distinct)", f"{_n(st['group_processed'])} ({_n(st['group_distinct'])})"),
        ("processed again (uncommitted windows)", _n(st["group_duplicates"])),
        ("commits acknowledged / offsets reads", f"{_n(st['group_commits'])} / {_n(st['group_fetches'])}"),
    ]


def group_lines(result: Result) -> list[str]:
    return ["consumer group: " + "; ".join(f"{label} {value}" for label, value in group_figures(result))]


def summary(result: Result, history: History | None = None, *, evidence: int = 5) -> str:
    """The summary table of C{result}, with up to C{evidence} anomalies of each kind shown."""
    st = result.stats
    lines = [
        f"operations: {_n(st['sends'] + st['polls'])}"
        f"  (sends {_n(st['sends'])}: ok {_n(st['sends_ok'])}, fail {_n(st['sends_fail'])}, info {_n(st['sends_info'])};"
        f" polls {_n(st['polls'])}: ok {_n(st['polls_ok'])})",
        f"messages read: {_n(st['messages_read'])}  (distinct values {_n(st['values_read'])};"
        f" info sends read later: {_n(st['recovered'])})",
    ]
    if st["sends"] + st["polls"] == 0:
        lines.append("note: the history holds no operations: nothing was checked")
    if history is not None:
        if history.truncated:
            lines.append("note: the history's last line was half-written and was dropped")
        if history.faults:
            by_kind: dict[str, list[float]] = defaultdict(list)
            open_faults = 0
            for f in history.faults:
                if f.end is None:
                    open_faults += 1
                else:
                    by_kind[f.kind].append(f.end - f.start)
            parts = [f"{kind} x{len(d)} ({sum(d):.1f}s)" for kind, d in sorted(by_kind.items())]
            if open_faults:
                parts.append(f"{open_faults} never healed")
            lines.append(f"faults: {_n(len(history.faults))}  ({', '.join(parts)})")
            gaps = [(f, g) for f, g in write_gaps(history) if g > 0]
            if gaps:
                worst = max(gaps, key=lambda fg: fg[1])
                f = worst[0]
                where = f" on {f.node}" if f.node else ""
                lines.append(f"longest time without an acknowledged send around a fault: {worst[1]:.2f}s "
                             f"({f.kind}{where} at {f.start:.2f}); median over faults "
                             f"{sorted(g for _, g in gaps)[len(gaps) // 2]:.2f}s")
        else:
            lines.append("faults: none recorded")
        if history.drains:
            lines.append(f"final drain: {len(history.drains)} partition(s)")
        else:
            lines.append("final drain: none recorded (acknowledged sends no read covered count as unseen, not lost)")
    if result.group:
        lines.extend(group_lines(result))
    lines.append("")
    kinds, safety = result.kinds, result.safety
    width = max(len(k) for k in kinds)
    lines.append(f"{'anomaly':<{width}}  {'count':>9}  kind")
    for kind in kinds:
        lines.append(f"{kind:<{width}}  {_n(result.count(kind)):>9}  {'safety' if kind in safety else 'counted'}")
    lines.append("")
    if result.valid:
        lines.append("result: VALID (no safety anomaly)")
    else:
        found = ", ".join(f"{k} {_n(result.count(k))}" for k in kinds if k in safety and result.count(k))
        lines.append(f"result: INVALID ({found})")
    if evidence:
        for kind in kinds:
            found_of_kind = result.anomalies.get(kind, [])
            if not found_of_kind:
                continue
            lines.append("")
            lines.append(f"{kind} ({_n(len(found_of_kind))}):")
            for a in found_of_kind[:evidence]:
                lines.append(f"  {a.detail}  [ops {', '.join(map(str, a.ops))}]")
            if len(found_of_kind) > evidence:
                lines.append(f"  ... and {_n(len(found_of_kind) - evidence)} more")
    return "\n".join(lines)

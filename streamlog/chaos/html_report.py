"""The HTML report of a chaos run: one self-contained file, readable without scripts.

An inline SVG timeline (acknowledged sends per second and their latency over the run,
each fault a shaded span of its kind's colour) above the summary tables (operations by
outcome, faults, each anomaly kind's count, the time without an acknowledged send around
each fault) and the checker's text summary.  Nothing is fetched: no fonts, styles or
scripts from elsewhere, so the file opens the same on a machine without network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from streamlog.chaos.checker import Result
from streamlog.chaos.history import OK, History
from streamlog.chaos.report import group_figures, partition_write_gaps, summary, write_gaps

#: The colour of each fault kind's spans (others: grey).
FAULT_COLOURS: Final = {"kill": "#d62728", "stop": "#9467bd", "partition": "#ff7f0e", "restart": "#2ca02c",
                        "wipe": "#8c564b"}
WIDTH: Final = 960
PANEL: Final = 180
MARGIN_LEFT: Final = 64
MARGIN_RIGHT: Final = 16
TOP: Final = 28
GAP: Final = 36


def _bins(history: History, span: float) -> tuple[float, list[int], list[float], list[float]]:
    """Bin width, acks per bin, median and maximum ack latency (ms) per bin (0 when none)."""
    width = max(0.25, _nice(span / 120))
    count = max(1, math.ceil(span / width))
    acks = [0] * count
    latencies: list[list[float]] = [[] for _ in range(count)]
    for s in history.sends:
        if s.outcome != OK:
            continue
        i = min(int(s.complete / width), count - 1)
        acks[i] += 1
        latencies[i].append((s.complete - s.invoke) * 1000.0)
    medians = [sorted(b)[len(b) // 2] if b else 0.0 for b in latencies]
    maxima = [max(b) if b else 0.0 for b in latencies]
    return width, acks, medians, maxima


def _nice(x: float) -> float:
    """The round number (1, 2, 5 times a power of ten) at or above C{x}."""
    if x <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if x <= m * power:
            return float(m * power)
    return float(10 * power)


def _ticks(top: float, n: int = 4) -> list[float]:
    step = _nice(top / n) if top > 0 else 1.0
    return [step * i for i in range(int(top / step) + 1)]


def _polyline(points: Sequence[tuple[float, float]], colour: str, width: float = 1.5) -> str:
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{path}"/>'


def timeline_svg(history: History) -> str:
    """The timeline plot as an C{<svg>} element."""
    ends = [s.complete for s in history.sends] + [p.complete for p in history.polls]
    ends += [f.end if f.end is not None else f.start for f in history.faults]
    span = max(ends, default=1.0) or 1.0
    bin_width, acks, medians, maxima = _bins(history, span)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    height = TOP + 2 * PANEL + GAP + 40

    def x_of(t: float) -> float:
        return MARGIN_LEFT + plot_w * t / span

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
           '<title>throughput and latency over the run, faults shaded</title>']
    panels = [(TOP, "acknowledged sends / s", [a / bin_width for a in acks], [], "#1f77b4"),
              (TOP + PANEL + GAP, "ack latency, ms (median, max)", medians, maxima, "#1f77b4")]
    for y0, label, series, upper, colour in panels:
        top = max([*series, *upper, 1.0])
        ticks = _ticks(top)
        top = max(top, ticks[-1])
        out.append(f'<rect x="{MARGIN_LEFT}" y="{y0}" width="{plot_w}" height="{PANEL}" fill="#fafafa" '
                   f'stroke="#ccc"/>')
        for f in history.faults:
            x1 = x_of(f.start)
            x2 = x_of(f.end if f.end is not None else span)
            fill = FAULT_COLOURS.get(f.kind, "#7f7f7f")
            node = f" {f.node}" if f.node else ""
            out.append(f'<rect x="{x1:.1f}" y="{y0}" width="{max(x2 - x1, 1.0):.1f}" height="{PANEL}" '
                       f'fill="{fill}" fill-opacity="0.18"><title>{html.escape(f.kind + node)} '
                       f'{f.start:.2f}s-{(f.end or span):.2f}s</title></rect>')
            if y0 == TOP:
                out.append(f'<text x="{x1 + 2:.1f}" y="{y0 + 11}" fill="{fill}" font-size="9">'
                           f'{html.escape(f.kind + node)}</text>')
        for t in ticks:
            y = y0 + PANEL - PANEL * t / top
            out.append(f'<line x1="{MARGIN_LEFT - 4}" y1="{y:.1f}" x2="{MARGIN_LEFT}" y2="{y:.1f}" stroke="#999"/>')
            out.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 3:.1f}" text-anchor="end">{t:g}</text>')
        out.append(f'<text x="{MARGIN_LEFT}" y="{y0 - 6}" font-weight="bold">{html.escape(label)}</text>')

        def pts(values: Sequence[float], y0: int = y0, top: float = top) -> list[tuple[float, float]]:
            return [(x_of((i + 0.5) * bin_width), y0 + PANEL - PANEL * v / top) for i, v in enumerate(values)]

        if upper:
            out.append(_polyline(pts(upper), "#aec7e8", 1.0))
        out.append(_polyline(pts(series), colour))
    axis_y = TOP + 2 * PANEL + GAP
    for t in _ticks(span, 10):
        x = x_of(t)
        out.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#999"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 15}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{MARGIN_LEFT + plot_w / 2:.0f}" y="{axis_y + 30}" text-anchor="middle">'
               f'seconds since the run started (bins of {bin_width:g}s)</text>')
    lx = MARGIN_LEFT + plot_w - 5
    for kind, colour in reversed(list(FAULT_COLOURS.items())):
        if any(f.kind == kind for f in history.faults):
            out.append(f'<rect x="{lx - 60}" y="6" width="10" height="10" fill="{colour}" fill-opacity="0.5"/>'
                       f'<text x="{lx - 47}" y="15">{kind}</text>')
            lx -= 70
    out.append("</svg>")
    return "\n".join(out)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def render(history: History, result: Result, run: Mapping[str, Any] | None = None,
           title: str = "streamlog chaos run") -> str:
    """The whole report as an HTML document (a string)."""
    run = run or {}
    st = result.stats
    meta = history.meta
    verdict = "VALID" if result.valid and not run.get("findings") else "INVALID"
    parts = [f"<h1>{html.escape(title)}: {verdict}</h1>"]
    facts = [("seed", meta.get("seed")), ("nodes", meta.get("nodes")), ("faults asked", ", ".join(meta.get("faults", []))),
             ("duration", f"{meta.get('duration')} s"), ("partitions", meta.get("partitions")),
             ("rate", f"{meta.get('rate')} msgs/s"), ("started", meta.get("started_at"))]
    parts.append(_table(["", ""], [(k, v) for k, v in facts if v is not None]))
    parts.append("<h2>Timeline</h2>")
    parts.append(timeline_svg(history))
    parts.append("<h2>Operations</h2>")
    parts.append(_table(["operation", "total", "ok", "fail", "info (unknown)"], [
        ("send", st["sends"], st["sends_ok"], st["sends_fail"], st["sends_info"]),
        ("poll", st["polls"], st["polls_ok"], st["polls"] - st["polls_ok"], ""),
    ]))
    by_kind: dict[str, list[float]] = {}
    for f in history.faults:
        by_kind.setdefault(f.kind, []).append((f.end - f.start) if f.end is not None else float("nan"))
    parts.append("<h2>Faults</h2>")
    parts.append(_table(["kind", "count", "seconds in all"],
                        [(k, len(v), f"{sum(v):.1f}") for k, v in sorted(by_kind.items())] or [("none", 0, "")]))
    gaps = write_gaps(history)
    if gaps:
        parts.append("<h3>Failover: longest time without an acknowledged send around each fault</h3>")
        parts.append(_table(["kind", "node", "start (s)", "lasted (s)", "worst partition (s)", "all partitions (s)"], [
            (f.kind, f.node or "", f"{f.start:.2f}", f"{(f.end - f.start):.2f}" if f.end is not None else "never healed",
             f"{max(per.values(), default=0.0):.2f}", f"{g:.2f}")
            for (f, g), (_, per) in zip(gaps, partition_write_gaps(history), strict=True)]))
    if result.group:
        parts.append("<h2>Consumer group</h2>")
        parts.append(_table(["", ""], group_figures(result)))
    parts.append("<h2>Anomalies</h2>")
    parts.append(_table(["anomaly", "count", "kind"],
                        [(k, result.count(k), "safety" if k in result.safety else "counted") for k in result.kinds]
                        + [(k, len(v), "safety (runner)") for k, v in (run.get("findings") or {}).items()]))
    parts.append("<h2>Checker summary</h2>")
    parts.append(f"<pre>{html.escape(summary(result, history))}</pre>")
    if run.get("text"):
        parts.append("<h2>Runner</h2>")
        parts.append(f"<pre>{html.escape(str(run['text']))}</pre>")
    style = ("body{font-family:sans-serif;margin:24px;max-width:1000px}table{border-collapse:collapse;"
             "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "pre{background:#f6f6f6;padding:8px;overflow:auto}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")

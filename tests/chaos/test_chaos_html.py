"""The HTML report: self-contained, an SVG timeline with each fault shaded, the summary tables."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from chaos_builders import Builder

from streamlog.chaos.checker import check
from streamlog.chaos.html_report import render, timeline_svg

SVG = "{http://www.w3.org/2000/svg}"


def history():
    b = Builder()
    for i in range(20):
        b.ok("p1", f"p1-{i}", 0, i)
    b.poll("c1", 0, 0, [(i, f"p1-{i}") for i in range(20)])
    b.fault("kill", "n2", 1.0, 3.5)
    b.fault("partition", "n1", 5.0, None)
    b.drain(0, 20)
    return b.history


def test_the_timeline_is_valid_svg_with_both_panels_and_every_fault_shaded():
    h = history()
    svg = ET.fromstring(timeline_svg(h))
    shaded = [r for r in svg.iter(f"{SVG}rect") if r.get("fill-opacity") == "0.18"]
    assert len(shaded) == 2 * len(h.faults)
    assert len(list(svg.iter(f"{SVG}polyline"))) == 3  # throughput; latency median and max
    texts = {t.text for t in svg.iter(f"{SVG}text")}
    assert {"kill n2", "partition n1", "acknowledged sends / s"} <= texts


def test_the_page_has_the_summary_and_fetches_nothing():
    h = history()
    page = render(h, check(h), {"findings": {"stale-ack": ["node 1 acknowledged x"]}, "text": "seed 3"})
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]  # the SVG namespace only
    assert "INVALID" in page  # a runner finding makes the run invalid
    assert "<td>stale-ack</td><td>1</td><td>safety (runner)</td>" in page
    assert "<td>lost</td><td>0</td><td>safety</td>" in page
    assert "<td>send</td><td>20</td><td>20</td><td>0</td><td>0</td>" in page


def test_the_failover_table_shows_the_partition_that_waited_and_all_at_once():
    b = Builder()
    for i, t in enumerate((1.0, 2.0, 6.0)):
        b.ok("p1", f"a{i}", 0, i)
        b.history.sends[-1].complete = t
    for i, t in enumerate((1.5, 2.5, 3.0, 3.5)):
        b.ok("p1", f"b{i}", 1, i)
        b.history.sends[-1].complete = t
    b.fault("kill", "n1", 2.2, 3.0)
    h = b.history
    page = render(h, check(h))
    assert "<td>kill</td><td>n1</td><td>2.20</td><td>0.80</td><td>4.00</td><td>0.50</td>" in page

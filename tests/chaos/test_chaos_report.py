"""The summary's numbers: the longest time without an acknowledged send around each fault."""

from __future__ import annotations

from streamlog.chaos.checker import check
from streamlog.chaos.history import OK, Fault, History, Send
from streamlog.chaos.report import summary, write_gaps


def acked_at(*times: float) -> list[Send]:
    return [Send(i, "p", t - 0.1, t, "t", f"v{i}", OK, 0, i) for i, t in enumerate(times)]


def test_write_gap_is_the_longest_pause_between_acks_overlapping_the_fault():
    h = History(sends=acked_at(1.0, 2.0, 3.0, 7.5, 8.0, 20.0, 21.0),
                faults=[Fault("kill", "n1", 3.2, 4.0), Fault("stop", "n2", 9.0, None), Fault("wipe", "n3", 30.0, 31.0)])
    gaps = write_gaps(h)
    assert [(f.kind, g) for f, g in gaps] == [("kill", 4.5), ("stop", 12.0), ("wipe", 0.0)]
    text = summary(check(h), h)
    assert "longest time without an acknowledged send around a fault: 12.00s (stop on n2 at 9.00); median over faults 12.00s" in text


def test_no_acks_no_gaps():
    h = History(faults=[Fault("kill", "n1", 1.0, 2.0)])
    assert write_gaps(h) == [(h.faults[0], 0.0)]
    assert "longest time without" not in summary(check(h), h)

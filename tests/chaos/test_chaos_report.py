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


def test_partition_gaps_show_the_failover_of_the_partition_that_waited():
    from streamlog.chaos.report import partition_write_gaps

    p0 = [Send(i, "p", t - 0.1, t, "t", f"a{i}", OK, 0, i) for i, t in enumerate((1.0, 2.0, 6.0, 7.0))]
    p1 = [Send(10 + i, "p", t - 0.1, t, "t", f"b{i}", OK, 1, i) for i, t in enumerate((1.5, 2.5, 3.0, 3.5, 4.0))]
    h = History(sends=p0 + p1, faults=[Fault("kill", "n1", 2.2, 3.0)])
    [(fault, gaps)] = partition_write_gaps(h)
    assert gaps == {("t", 0): 4.0, ("t", 1): 1.0}  # p0 waited 2.0 -> 6.0; p1 went on
    assert write_gaps(h) == [(fault, 0.5)]  # some partition was acknowledged every 0.5 s

"""FastLineReceiver: linear-time splitting, and a partial line that costs what it holds.

Driven with plain C{dataReceived} calls on a StringTransport: the behaviour is
the receiver's, not the socket's.
"""

from __future__ import annotations

import time
import tracemalloc

from twisted.internet.testing import StringTransport

from streamlog import wire
from streamlog.protocol import FastLineReceiver


class Lines(FastLineReceiver):
    MAX_LENGTH = 4 * 1024 * 1024

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.too_long: list[int] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.too_long.append(len(line))


def receiver() -> Lines:
    r = Lines()
    r.makeConnection(StringTransport())
    return r


def test_a_partial_line_dripped_in_tiny_reads_costs_about_its_own_length():
    # The review saw 16 connections dripping 1-byte segments raise RSS from 38 to 64 MB
    # for 1.08 MB sent: one bytes object per read was kept until the line ended.
    r = receiver()
    reads = 200_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(reads):
            r.dataReceived(b"%03d" % (i % 1000))  # a new object per read, as socket reads are
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    received = 3 * reads
    assert held < 2 * received, f"{held} bytes held for a {received}-byte partial line"
    r.dataReceived(b"\n")
    assert r.lines == [b"".join(b"%03d" % (i % 1000) for i in range(reads))]
    assert not r.has_unread_input()


def test_a_partial_line_past_the_limit_across_reads_is_refused_once():
    r = receiver()
    r.MAX_LENGTH = 1000
    for _ in range(400):
        r.dataReceived(b"abc")
    assert r.too_long == [1002] and r.lines == []


def test_a_long_line_in_many_reads_then_many_small_lines_split_in_linear_time():
    r = receiver()
    line = b"x" * 1_000_000
    started = time.perf_counter()
    for i in range(0, len(line), 1000):
        r.dataReceived(line[i : i + 1000])
    small = b"".join(wire.encode_request(i, "Ping", {}) for i in range(50_000))
    r.dataReceived(b"\n" + small)
    elapsed = time.perf_counter() - started
    assert r.lines[0] == line and len(r.lines) == 50_001
    # Quadratic splitting (re-splitting the rest once per line) copies ~50,000 x 1.3 MB here.
    assert elapsed < 2.0, elapsed


def test_end_input_ends_a_partial_line_kept_across_reads():
    r = receiver()
    for chunk in (b"ab", b"cd", b"ef"):
        r.dataReceived(chunk)
    assert r.has_partial_line()
    r.end_input()
    assert r.lines == [b"abcdef"] and not r.has_partial_line()
    r.dataReceived(b"  ")
    r.dataReceived(b" ")
    r.end_input()  # a blank tail is dropped, not a line
    assert r.lines == [b"abcdef"] and not r.has_unread_input()

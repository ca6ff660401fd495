"""Regression tests for what the protocol fuzzer found (one test per finding)."""

from __future__ import annotations

from streamlog.testing import BrokerHarness


def test_a_line_nested_past_the_parser_limit_says_which_limit(clock):
    """Found by the fuzzer: the parser's own NESTING_TOO_DEEP (a line nested
    deeper than 1024) lacked the `limit` field docs/protocol.md gives the code,
    and its message named --max-depth (64), which is not the limit it passed."""
    h = BrokerHarness(clock=clock)
    try:
        _check_parser_depth_limit(h.connect())
    finally:
        h.stop()


def _check_parser_depth_limit(conn):
    deep = b"[" * 1100 + b"]" * 1100
    conn.send_line(b'{"id":1,"method":"Send","params":{"topic":"t","value":' + deep + b"}}")
    [answer] = conn.answers()
    assert answer["id"] is None
    assert answer["error"]["code"] == "NESTING_TOO_DEEP"
    assert answer["error"]["limit"] == 1024
    assert "1024" in answer["error"]["message"]
    # a value past --max-depth but within the parser's limit keeps its id and --max-depth
    conn.send_line(b'{"id":2,"method":"Send","params":{"topic":"t","value":' + b"[" * 65 + b"]" * 65 + b"}}")
    [answer] = conn.answers()
    assert (answer["id"], answer["error"]["code"], answer["error"]["limit"]) == (2, "NESTING_TOO_DEEP", 64)

"""Regression tests for what the protocol fuzzer found (one test per finding)."""

from __future__ import annotations

from fuzz_support import known_issue

from streamlog.storage.segmented import SegmentedStorage
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


@known_issue("long-topic-delete")
def test_deleting_a_topic_with_a_long_valid_name_keeps_the_node_up(clock, tmp_path):
    """Found by the fuzzer against a real server: two valid requests stopped the node.

    Repro on `twistd -n streamlog-server`: CreateTopic {"topic": "Z"*214} (any name of
    214-249 characters), then DeleteTopic of it: no answer, the connection closes and
    the process exits with status 70 (fail-stop, "File name too long"); after a restart
    the topic and its data are still there.  The rename to '.deleted-<name>-<32 hex>'
    is longer than NAME_MAX (255).  In memory (this test) the broker answers
    STORAGE_ERROR and calls on_fatal.
    """
    storage = SegmentedStorage(str(tmp_path / "data"))
    h = BrokerHarness(storage=storage, clock=clock)
    fatal: list = []
    h.broker.on_fatal = fatal.append
    try:
        conn = h.connect()
        name = "Z" * 249
        assert "result" in conn.call("CreateTopic", {"topic": name})
        answer = conn.call("DeleteTopic", {"topic": name})
        assert answer.get("result") == {"topic": name, "deleted": True}, answer
        assert not fatal
        assert conn.call("ListTopics")["result"] == {"topics": []}
    finally:
        h.stop()
        storage.close()

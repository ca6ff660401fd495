"""streamlog consume's reader of several partitions, against a scripted connection (no server)."""

from __future__ import annotations

import argparse
import time
from collections import deque

import orjson

from streamlog import errors
from streamlog.cli import _PartitionsReader


class ScriptedConnection:
    """BlockingClient's submit/next_answer, each Poll answered by C{answer(params, n)} at once, in order."""

    def __init__(self, answer):
        self.answer = answer
        self.polls: list[dict] = []
        self._answers: deque = deque()

    def submit(self, method, params):
        assert method == "Poll"
        self.polls.append(params)
        rid = len(self.polls)
        self._answers.append((rid, self.answer(params, rid)))
        return rid

    def next_answer(self, timeout):
        return self._answers.popleft() if self._answers else None

    def close(self):
        pass


def page(partition, offsets):
    return {"messages": [{"offset": o, "timestamp": 1, "key": None, "value": f"{partition}:{o}", "headers": {}}
                         for o in offsets],
            "next_offset": offsets[-1] + 1 if offsets else 0, "high_watermark": 2, "log_start_offset": 0}


def args(**kw):
    base = {"topic": "t", "follow": False, "max_wait_ms": 1000, "count": None, "timeout": 5.0, "json": True}
    return argparse.Namespace(**{**base, **kw})


def test_a_poll_refused_with_too_many_waiting_polls_is_asked_again_after_a_backoff(capsys):
    asked_1 = []

    def answer(params, n):
        if params["partition"] == 1:
            asked_1.append(time.monotonic())
            if len(asked_1) <= 2:
                return errors.TooManyWaitingPolls("too many polls parked", limit=1, scope="connection")
        return page(params["partition"], [0, 1])

    connection = ScriptedConnection(answer)
    assert _PartitionsReader(connection, args(), {0: 0, 1: 0}, {0: 2, 1: 2}).run() == 0
    printed = [(m["partition"], m["offset"]) for m in map(orjson.loads, capsys.readouterr().out.splitlines())]
    assert sorted(printed) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(asked_1) == 3  # refused twice, then answered
    assert asked_1[1] - asked_1[0] >= 0.05 and asked_1[2] - asked_1[1] >= 0.1  # backing off, not spinning


def test_another_error_ends_the_read():
    connection = ScriptedConnection(lambda params, n: errors.UnknownTopic("no topic 't'", topic="t"))
    try:
        _PartitionsReader(connection, args(), {0: 0}, {0: 2}).run()
    except errors.UnknownTopic as e:
        assert e.details == {"topic": "t"}
    else:
        raise AssertionError("UnknownTopic was not raised")


def test_count_stops_over_all_partitions_and_asks_no_more_than_it_needs(capsys):
    connection = ScriptedConnection(lambda params, n: page(params["partition"], [0, 1]))
    assert _PartitionsReader(connection, args(count=3), {0: 0, 1: 0}, {0: 2, 1: 2}).run() == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert all(p["max_messages"] == 3 for p in connection.polls)

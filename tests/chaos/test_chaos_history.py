"""The history model: the Recorder's lines, loading them back, a crashed run's prefix, and
which client errors are definite failures."""

from __future__ import annotations

import io
from itertools import count

import orjson
import pytest

from streamlog import errors
from streamlog.chaos.history import (
    FAIL,
    INFO,
    OK,
    Drain,
    Fault,
    History,
    HistoryError,
    Poll,
    Recorder,
    Send,
    describe_error,
    dump,
    dumps,
    load,
    loads,
    outcome_of_error,
)


def ticking() -> tuple[Recorder, io.BytesIO]:
    out = io.BytesIO()
    ticks = count()
    return Recorder(out, clock=lambda: float(next(ticks)), meta={"seed": 7}), out


def test_recorder_writes_one_line_per_completion_and_loads_back():
    rec, out = ticking()
    a = rec.invoke_send("p1", "t", "p1-1", partition=0, producer="prod", idempotent=True)
    b = rec.invoke_send("p1", "t", "p1-2")
    assert out.getvalue().count(b"\n") == 1  # the header only: invoking writes nothing
    rec.send_ok(b, 0, 4)
    rec.send_failed(a, errors.Timeout("no answer"))
    poll = rec.invoke_poll("c1", "t", 0, 4)
    rec.poll_ok(poll, [{"offset": 4, "value": "p1-2", "timestamp": 1}], next_offset=5, log_start_offset=0)
    fault = rec.fault_started("kill", "n2")
    rec.fault_healed(fault)
    rec.drained("t", 0, 5)
    assert rec.pending == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    assert orjson.loads(lines[0]) == {"type": "history", "version": 1, "seed": 7}

    h = loads(out.getvalue())
    assert h.meta == {"seed": 7}
    assert h.sends == [
        Send(2, "p1", 1.0, 2.0, "t", "p1-2", OK, 0, 4),
        Send(1, "p1", 0.0, 3.0, "t", "p1-1", INFO, 0, None, "prod", True, "TIMEOUT"),
    ]
    assert h.polls == [Poll(3, "c1", 4.0, 5.0, "t", 0, 4, OK, ((4, "p1-2"),), 5, 0)]
    assert h.faults == [Fault("kill", "n2", 6.0, 7.0)]
    assert h.drains == [Drain("t", 0, 5, 8.0)]
    assert not h.truncated


def test_dump_and_load_round_trip(tmp_path):
    h = History(
        sends=[Send(1, "p", 0.0, 1.0, "t", 5, FAIL, 2, None, None, False, "UNKNOWN_PARTITION")],
        polls=[Poll(2, "c", 1.0, 2.0, "t", 0, 3, FAIL, (), None, 9, "OFFSET_OUT_OF_RANGE")],
        faults=[Fault("partition", None, 1.0, None, "n1|n2,n3")],
        drains=[Drain("t", 0, 0, 3.0)],
        meta={"nodes": 3},
    )
    path = tmp_path / "h.jsonl"
    dump(h, path)
    assert load(path) == h
    assert loads(dumps(h)) == h


def test_a_half_written_last_line_is_dropped():
    rec, out = ticking()
    rec.send_ok(rec.invoke_send("p", "t", "a"), 0, 0)
    rec.send_ok(rec.invoke_send("p", "t", "b"), 0, 1)
    data = out.getvalue()
    h = loads(data[:-9])  # the writer died inside the last line
    assert h.truncated
    assert [s.value for s in h.sends] == ["a"]
    assert not loads(data).truncated


def test_a_bad_line_in_the_middle_names_its_line():
    rec, out = ticking()
    rec.send_ok(rec.invoke_send("p", "t", "a"), 0, 0)
    data = out.getvalue() + b"{not json\n" + b'{"type":"drain","topic":"t","partition":0,"end_offset":1}\n'
    with pytest.raises(HistoryError, match="line 3: not JSON"):
        loads(data)


@pytest.mark.parametrize("line, message", [
    (b'{"type":"send","id":1,"outcome":"info","value":"v"}', "line 2: a send record needs 'process'"),
    (b'{"type":"what"}', "unknown record type 'what'"),
    (b'[1]', "a record is a JSON object"),
    (b'{"type":"send","id":1,"process":"p","invoke":0,"complete":1,"topic":"t","value":true,"outcome":"info"}',
     "a value must be a string or an integer"),
    (b'{"type":"send","id":1,"process":"p","invoke":0,"complete":1,"topic":"t","value":"v","outcome":"ok"}',
     "an ok send needs its partition and offset"),
    (b'{"type":"send","id":1,"process":"p","invoke":0,"complete":1,"topic":"t","value":"v","outcome":"maybe"}',
     "outcome must be ok, fail or info"),
    (b'{"type":"poll","id":1,"process":"p","invoke":0,"complete":1,"topic":"t","partition":0,"offset":0,"outcome":"ok"}',
     "an ok poll needs its next_offset"),
])
def test_bad_records_are_refused_clearly(line, message):
    with pytest.raises(HistoryError, match=message):
        loads(b'{"type":"history","version":1}\n' + line + b"\n")


def test_another_format_version_is_refused():
    with pytest.raises(HistoryError, match="version 2, this checker reads 1"):
        loads(b'{"type":"history","version":2}\n')


def test_close_writes_what_is_still_open_as_unknown():
    rec, out = ticking()
    rec.invoke_send("p", "t", "a", partition=1, idempotent=True)
    rec.invoke_poll("c", "t", 0, 0)
    rec.fault_started("stop", "n3")
    rec.close()
    rec.close()  # twice is fine
    h = loads(out.getvalue())
    assert [(s.value, s.outcome, s.error, s.partition, s.idempotent) for s in h.sends] == [("a", INFO, "PENDING", 1, True)]
    assert [(p.outcome, p.error) for p in h.polls] == [(INFO, "PENDING")]
    assert h.faults == [Fault("stop", "n3", 2.0, None)]
    with pytest.raises(ValueError, match="closed"):
        rec.drained("t", 0, 0)


def test_completing_twice_is_a_bug_of_the_runner():
    rec, _ = ticking()
    op = rec.invoke_send("p", "t", "a")
    rec.send_ok(op, 0, 0)
    with pytest.raises(ValueError, match="not pending"):
        rec.send_failed(op, "TIMEOUT")


def test_recorder_refuses_values_the_checker_cannot_follow():
    rec, _ = ticking()
    with pytest.raises(HistoryError, match="string or an integer"):
        rec.invoke_send("p", "t", {"n": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("error, outcome", [
    (errors.MessageTooLarge("too big", limit=1, size=2), FAIL),
    (errors.UnknownTopic("no", topic="t"), FAIL),
    (errors.LeaderNotAvailable("electing"), FAIL),
    (errors.ShuttingDown("stopping"), FAIL),
    (errors.Timeout("no answer"), INFO),
    (errors.Timeout("no answer", sent=False), FAIL),
    (errors.ConnectionLost("gone"), INFO),
    (errors.ConnectionLost("gone", sent=False), FAIL),
    (errors.DeliveryTimeout("gave up", attempts=3, sent=True), INFO),
    (errors.DeliveryTimeout("gave up", attempts=0, sent=False), FAIL),
    # a leader that lost leadership while the write waited for its commit says NOT_LEADER:
    # the next leader may still commit it
    (errors.NotLeader("moved", leader=2), INFO),
    (errors.StorageError("fsync failed"), INFO),
    (errors.Internal("bug"), INFO),
    (RuntimeError("no code at all"), INFO),
    ("SOME_FUTURE_CODE", INFO),
    ("INVALID_PARAMS", FAIL),
])
def test_which_errors_are_definite_failures(error, outcome):
    code, sent = describe_error(error)
    assert outcome_of_error(code, sent=sent) == outcome


def test_send_failed_records_the_code_and_classifies_it():
    rec, out = ticking()
    rec.send_failed(rec.invoke_send("p", "t", "a"), errors.ConnectionLost("gone", sent=False))
    rec.send_failed(rec.invoke_send("p", "t", "b"), errors.NotLeader("moved"))
    op = rec.invoke_poll("c", "t", 0, 0)
    rec.poll_failed(op, errors.OffsetOutOfRange("gone", log_start_offset=7, high_watermark=9, log_end_offset=9))
    h = loads(out.getvalue())
    assert [(s.value, s.outcome, s.error) for s in h.sends] == [("a", FAIL, "CONNECTION_LOST"), ("b", INFO, "NOT_LEADER")]
    assert [(p.error, p.log_start_offset) for p in h.polls] == [("OFFSET_OUT_OF_RANGE", 7)]


@pytest.mark.parametrize("field, bad", [
    ("id", "1"), ("partition", True), ("offset", 1.5), ("topic", 3), ("invoke", None), ("idempotent", 1),
])
def test_fields_of_the_wrong_type_are_refused(field, bad):
    record = {"type": "send", "id": 1, "process": "p", "invoke": 0, "complete": 1.5, "topic": "t",
              "value": "v", "outcome": "ok", "partition": 0, "offset": 0, field: bad}
    with pytest.raises(HistoryError, match=f"line 2: {field} must be"):
        loads(b'{"type":"history","version":1}\n' + orjson.dumps(record) + b"\n")


@pytest.mark.parametrize("messages", [[[0]], [[0, "a", 1]], [["0", "a"]], [[0, None]], [[-1, "a"]], 5])
def test_bad_poll_messages_are_refused(messages):
    record = {"type": "poll", "id": 1, "process": "c", "invoke": 0, "complete": 1, "topic": "t",
              "partition": 0, "offset": 0, "outcome": "ok", "messages": messages, "next_offset": 1}
    with pytest.raises(HistoryError, match="line 2: (a message must be|messages must be)"):
        loads(b'{"type":"history","version":1}\n' + orjson.dumps(record) + b"\n")


def test_two_records_on_one_line_are_refused():
    line = b'{"type":"drain","topic":"t","partition":0,"end_offset":1},{"type":"drain","topic":"t","partition":1,"end_offset":1}'
    with pytest.raises(HistoryError, match="line 2: not JSON"):
        loads(b'{"type":"history","version":1}\n' + line + b"\n")


@pytest.mark.parametrize("data", [b"", b"\n\n", b'{"type":"drain","topic":"t","partition":0,"end_offset":1}\n', b"[]\n"])
def test_a_file_without_the_header_is_not_a_history(data):
    with pytest.raises(HistoryError, match="not a streamlog history"):
        loads(data)


def test_a_runner_can_say_an_earlier_attempt_may_have_landed():
    rec, out = ticking()
    rec.send_failed(rec.invoke_send("p", "t", "a"), errors.UnknownTopic("gone", topic="t"), may_have_landed=True)
    rec.send_failed(rec.invoke_send("p", "t", "b"), errors.ConnectionLost("closed", sent=False), may_have_landed=True)
    rec.send_failed(rec.invoke_send("p", "t", "c"), errors.ConnectionLost("closed", sent=False))
    assert [(s.outcome, s.error) for s in loads(out.getvalue()).sends] == [
        (INFO, "UNKNOWN_TOPIC"), (INFO, "CONNECTION_LOST"), (FAIL, "CONNECTION_LOST")]


def test_definite_refusals_are_real_codes_and_agree_with_the_client_retry_rules():
    from streamlog.chaos.history import DEFINITE_REFUSALS
    from streamlog.client import retry

    assert DEFINITE_REFUSALS <= set(errors.BY_CODE)
    assert not DEFINITE_REFUSALS & {cls.code for cls in retry.NO_ANSWER}
    # the client's refusals are definite, except NOT_LEADER (see outcome_of_error)
    assert {cls.code for cls in retry.REFUSALS} - DEFINITE_REFUSALS == {"NOT_LEADER"}


def test_the_recorder_closes_as_a_context_manager(tmp_path):
    with open(tmp_path / "h.jsonl", "wb") as f, Recorder(f) as rec:
        rec.invoke_send("p", "t", "a")
    assert rec.closed
    assert [(s.value, s.outcome) for s in load(tmp_path / "h.jsonl").sends] == [("a", INFO)]

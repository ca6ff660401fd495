"""A history recorded from a real server, through a SIGKILL with sends in flight and a
restart, checks valid: the Recorder fits the client library, and what the client sees of a
crash (lost connections: maybe) is judged as the checker's docs say."""

from __future__ import annotations

import signal

from streamlog import errors
from streamlog.chaos.checker import LOST, UNSEEN, check
from streamlog.chaos.history import INFO, OK, Recorder, load
from streamlog.chaos.report import summary
from streamlog.client.blocking import BlockingClient
from streamlog.testing import ServerProcess

TOPIC = "chaos"
PARTITIONS = 2


def send_burst(client: BlockingClient, rec: Recorder, first: int, count: int, kill: ServerProcess | None = None) -> None:
    """Pipeline C{count} sends (alternating partitions), SIGKILL C{kill} right after writing
    them if given, then record every answer (a lost connection is a maybe)."""
    pending = {}
    for n in range(first, first + count):
        value = f"p1-{n}"
        partition = n % PARTITIONS
        op = rec.invoke_send("p1", TOPIC, value, partition=partition)
        rid = client.submit("Send", {"topic": TOPIC, "value": value, "partition": partition})
        pending[rid] = op
    if kill is not None:
        kill.signal(signal.SIGKILL)
        kill.wait(10)
    while pending:
        try:
            answer = client.next_answer(timeout=10)
        except errors.ConnectionLost as e:
            for op in pending.values():  # written, never answered
                rec.send_failed(op, e)
            return
        assert answer is not None, "no answer within 10 s"
        rid, result = answer
        op = pending.pop(rid)
        if isinstance(result, errors.StreamlogError):
            rec.send_failed(op, result)
        else:
            rec.send_ok(op, result["partition"], result["offset"])


def drain(client: BlockingClient, rec: Recorder) -> None:
    for partition in range(PARTITIONS):
        offset = 0
        for _ in range(1000):  # bounded: a few hundred messages
            op = rec.invoke_poll("drain", TOPIC, partition, offset)
            answer = client.poll(TOPIC, partition, offset, max_messages=50)
            rec.poll_ok(op, answer["messages"], answer["next_offset"], answer["log_start_offset"])
            if answer["next_offset"] == offset:
                break
            offset = answer["next_offset"]
        rec.drained(TOPIC, partition, answer["high_watermark"])


def test_history_through_a_kill_and_restart_checks_valid(tmp_path):
    path = tmp_path / "history.jsonl"
    with open(path, "wb") as out:
        rec = Recorder(out, meta={"test": "kill-restart"})
        server = ServerProcess(tmp_path, ["--fsync", "always"])
        try:
            with BlockingClient(server.address, timeout=10) as client:
                client.create_topic(TOPIC, partitions=PARTITIONS)
                send_burst(client, rec, 0, 40)
                # a consumer reads part of partition 0 before the crash
                op = rec.invoke_poll("c1", TOPIC, 0, 0)
                answer = client.poll(TOPIC, 0, 0, max_messages=5)
                rec.poll_ok(op, answer["messages"], answer["next_offset"], answer["log_start_offset"])
                fault = rec.fault_started("kill", "n1")
                send_burst(client, rec, 40, 200, kill=server)
        finally:
            server.stop()
        server = ServerProcess(tmp_path, ["--fsync", "always"])
        rec.fault_healed(fault)
        try:
            with BlockingClient(server.address, timeout=10) as client:
                send_burst(client, rec, 240, 20)
                drain(client, rec)
        finally:
            server.stop()
        rec.close()

    history = load(path)
    result = check(history)
    assert result.valid, summary(result, history)
    assert result.count(LOST) == 0 and result.count(UNSEEN) == 0, summary(result, history)
    outcomes = [s.outcome for s in history.sends]
    assert outcomes.count(OK) >= 60  # both bursts before and after the crash were acknowledged
    assert len(history.sends) == 260
    assert history.faults[0].kind == "kill" and history.faults[0].end is not None
    # every acknowledged value is read exactly where its ack said
    read = {(p.partition, o): v for p in history.polls for o, v in p.messages}
    for s in history.sends:
        if s.outcome == OK:
            assert read[(s.partition, s.offset)] == s.value
    # the sends caught by the kill are maybes, not failures
    assert all(s.outcome in (OK, INFO) for s in history.sends), summary(result, history)

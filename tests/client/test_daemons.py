"""The producer and consumer daemons: options, and their services against a Broker on iosim."""

from __future__ import annotations

import io
import random

import orjson
import pytest
from client_support import result_of, run_until
from twisted.python import usage

from streamlog.client import StreamlogClient
from streamlog.tap import consumer as consumer_tap
from streamlog.tap import producer as producer_tap
from streamlog.testing import stored_records


def producer_options(*argv):
    o = producer_tap.Options()
    o.parseOptions(list(argv))
    return o


def consumer_options(*argv):
    o = consumer_tap.Options()
    o.parseOptions(list(argv))
    return o


# --- options ---------------------------------------------------------------------


def test_producer_defaults():
    o = producer_options("--topic", "t")
    assert o["connect"] == "tcp:127.0.0.1:7070"
    assert o["interval"] == 1.0 and o["count"] is None and o["acks"] == "all"
    assert o["value"] is None and not o["stdin"]


def test_producer_message_is_a_string_unless_json():
    assert producer_options("-t", "t", "--message", '{"a": 1}')["value"] == '{"a": 1}'
    assert producer_options("-t", "t", "--message", '{"a": 1}', "--json")["value"] == {"a": 1}


@pytest.mark.parametrize("argv", [
    [],
    ["--topic", "bad topic"],
    ["--topic", "t", "--message", "x", "--stdin"],
    ["--topic", "t", "--interval", "0"],
    ["--topic", "t", "--count", "0"],
    ["--topic", "t", "--count", "many"],
    ["--topic", "t", "--acks", "none"],
    ["--topic", "t", "--json"],
    ["--topic", "t", "--json", "--message", "{nope"],
    ["--topic", "t", "--partition", "-1"],
])
def test_bad_producer_options_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        producer_options(*argv)


def test_consumer_defaults_and_from():
    o = consumer_options("--topic", "t")
    assert o["start"] == "earliest" and o["partition"] == 0 and o["output"] == "-"
    assert consumer_options("-t", "t", "--from", "latest")["start"] == "latest"
    assert consumer_options("-t", "t", "--from", "42")["start"] == 42


@pytest.mark.parametrize("argv", [
    [],
    ["--topic", ".."],
    ["--topic", "t", "--from", "soon"],
    ["--topic", "t", "--from", "-3"],
    ["--topic", "t", "--partition", "-1"],
    ["--topic", "t", "--interval", "-1"],
    ["--topic", "t", "--max-wait-ms", "-1"],
    ["--topic", "t", "--max-wait-ms", "999999"],
    ["--topic", "t", "--count", "0"],
    ["--topic", "t", "--on-out-of-range", "shrug"],
])
def test_bad_consumer_options_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        consumer_options(*argv)


# --- services -----------------------------------------------------------------------


@pytest.fixture
def client(network, clock):
    c = StreamlogClient(network, clock=clock, rng=random.Random(5), reconnect_min=0.1, reconnect_max=1.0,
                        request_timeout=2.0)
    network.pump()
    yield c
    d = c.close()
    network.pump()
    result_of(d)


def stored(network, topic, partition=0):
    return stored_records(network.broker, topic, partition)


def start_producer(client, clock, *argv):
    finished = []
    svc = producer_tap.ProducerService(producer_options(*argv), client=client, clock=clock,
                                       on_finish=finished.append, read_stdin=False,
                                       rng=random.Random(1))
    svc.startService()
    return svc, finished


def test_producer_sends_count_messages_then_finishes_with_0(network, clock, client):
    svc, finished = start_producer(client, clock, "-t", "t", "--interval", "0.5", "--count", "4", "--key", "k")
    run_until(clock, network, lambda: finished)
    assert finished == [0]
    assert [m["value"] for m in stored(network, "t")] == [f"message {i}" for i in range(1, 5)]
    assert all(m["key"] == "k" for m in stored(network, "t"))
    assert 1.4 <= clock.seconds() <= 2.0  # periodic: ticks at 0, .5, 1, 1.5
    svc.stopService()


def test_producer_json_message(network, clock, client):
    svc, finished = start_producer(client, clock, "-t", "t", "--count", "2", "--message", "[1, 2]", "--json")
    run_until(clock, network, lambda: finished)
    assert [m["value"] for m in stored(network, "t")] == [[1, 2], [1, 2]]
    svc.stopService()


def test_producer_resends_in_order_while_the_server_is_unreachable(network, clock, client):
    network.drop()
    network.up = False
    svc, finished = start_producer(client, clock, "-t", "t", "--interval", "0.2", "--count", "10",
                                   "--timeout", "1")
    clock.pump([0.1] * 50)  # 5 s of a dead server: requests time out, the queue grows
    network.pump()
    assert not finished and svc.acknowledged == 0
    network.up = True
    run_until(clock, network, lambda: finished, limit=120)
    assert finished == [0]
    assert [m["value"] for m in stored(network, "t")] == [f"message {i}" for i in range(1, 11)]
    svc.stopService()


def test_producer_resends_after_connection_loss_without_dropping(network, clock, client):
    svc, finished = start_producer(client, clock, "-t", "t", "--interval", "0.1", "--count", "6")
    run_until(clock, network, lambda: svc.acknowledged >= 2)
    svc._tick()  # a request goes out...
    network.drop()  # ...and its connection drops before the answer
    run_until(clock, network, lambda: finished, limit=120)
    values = [m["value"] for m in stored(network, "t")]
    # every message landed, in order; one may be there twice (a resend of one that had landed)
    assert sorted(set(values), key=lambda v: int(v.split()[1])) == [f"message {i}" for i in range(1, 7)]
    deduped = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
    assert deduped == [f"message {i}" for i in range(1, 7)]
    svc.stopService()


def test_producer_stdin_lines_then_eof_finishes_after_acks(network, clock, client):
    svc, finished = start_producer(client, clock, "-t", "t", "--stdin", "--interval", "0.1")
    for line in [b"one\n", b"two\r\n", b"\n", "caf\u00e9\n".encode()]:
        svc.line_received(line)
    svc.input_ended()
    assert not finished  # not before the acknowledgements
    run_until(clock, network, lambda: finished)
    assert finished == [0]
    assert [m["value"] for m in stored(network, "t")] == ["one", "two", "", "caf\u00e9"]
    svc.stopService()


def test_producer_stdin_json_lines_and_bad_line_stops_with_1(network, clock, client):
    svc, finished = start_producer(client, clock, "-t", "t", "--stdin", "--json")
    svc.line_received(b'{"a": 1}\n')
    svc.line_received(b"oops\n")
    assert finished == [1]
    svc.stopService()


def test_producer_permanent_error_stops_with_1(network, clock, client):
    network.broker.limits = network.broker.limits.__class__(max_message_bytes=100)
    svc, finished = start_producer(client, clock, "-t", "t", "--message", "x" * 500, "--count", "1")
    run_until(clock, network, lambda: finished)
    assert finished == [1]
    svc.stopService()


def start_consumer(client, clock, *argv):
    finished = []
    out = io.BytesIO()
    svc = consumer_tap.ConsumerService(consumer_options(*argv), client=client, clock=clock, out=out,
                                       on_finish=finished.append)
    svc.startService()
    return svc, out, finished


def lines(out):
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def send(network, clock, client, topic, values, **kw):
    for v in values:
        d = client.send(topic, v, **kw)
        run_until(clock, network, lambda d=d: d.called)
        result_of(d)


def test_consumer_prints_json_lines_and_exits_after_count(network, clock, client):
    send(network, clock, client, "t", ["a", {"b": 2}, None])
    svc, out, finished = start_consumer(client, clock, "-t", "t", "--count", "5", "--interval", "0.5")
    run_until(clock, network, lambda: len(lines(out)) == 3)
    send(network, clock, client, "t", ["d", "e", "f"])
    run_until(clock, network, lambda: finished)
    assert finished == [0]
    got = lines(out)
    assert [m["value"] for m in got] == ["a", {"b": 2}, None, "d", "e"]
    assert [m["offset"] for m in got] == [0, 1, 2, 3, 4]
    assert set(got[0]) == {"offset", "timestamp", "key", "value", "headers"}
    svc.stopService()
    run_until(clock, network, lambda: client.protocol is None or client.protocol.in_flight == 0)


def test_consumer_keeps_position_across_reconnects_and_never_repeats(network, clock, client):
    send(network, clock, client, "t", [0, 1, 2])
    svc, out, finished = start_consumer(client, clock, "-t", "t", "--interval", "0.2", "--max-wait-ms", "1000")
    run_until(clock, network, lambda: len(lines(out)) == 3)
    network.drop()
    network.up = False
    clock.pump([0.2] * 20)
    network.up = True
    send(network, clock, client, "t", [3, 4])
    run_until(clock, network, lambda: len(lines(out)) == 5)
    clock.pump([0.2] * 10)
    network.pump()
    assert [m["value"] for m in lines(out)] == [0, 1, 2, 3, 4]
    svc.stopService()
    network.drop()


def test_consumer_waits_for_an_unknown_topic(network, clock, client):
    svc, out, finished = start_consumer(client, clock, "-t", "later", "--interval", "0.2", "--count", "1")
    clock.pump([0.2] * 10)
    network.pump()
    assert not finished and out.getvalue() == b""
    send(network, clock, client, "later", ["hello"])
    run_until(clock, network, lambda: finished)
    assert [m["value"] for m in lines(out)] == ["hello"]
    svc.stopService()


def test_consumer_from_past_the_end_resets_to_the_end(network, clock, client):
    send(network, clock, client, "t", ["old"])
    svc, out, finished = start_consumer(client, clock, "-t", "t", "--from", "10", "--count", "1",
                                        "--interval", "0.2", "--max-wait-ms", "0")
    run_until(clock, network, lambda: svc.consumer.position == 1)
    send(network, clock, client, "t", ["new"])
    run_until(clock, network, lambda: finished)
    assert [m["value"] for m in lines(out)] == ["new"]
    svc.stopService()


def test_consumer_out_of_range_exit_policy(network, clock, client):
    send(network, clock, client, "t", ["old"])
    svc, out, finished = start_consumer(client, clock, "-t", "t", "--from", "10", "--on-out-of-range", "exit")
    run_until(clock, network, lambda: finished)
    assert finished == [1]
    svc.stopService()

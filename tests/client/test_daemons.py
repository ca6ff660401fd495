"""The producer and consumer daemons: options, and their services against a Broker on iosim."""

from __future__ import annotations

import errno
import os
import random

import attrs
import orjson
import pytest
from client_support import result_of, run_until
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage

from streamlog import errors
from streamlog.client import StreamlogClient, positions
from streamlog.tap import consumer as consumer_tap
from streamlog.tap import producer as producer_tap
from streamlog.tap.output import LineOutput
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
    assert o["start"] == positions.EARLIEST and o["partition"] is None and o["output"] == "-"
    assert consumer_options("-t", "t", "--from", "latest")["start"] == positions.LATEST
    assert consumer_options("-t", "t", "--from", "42")["start"] == positions.Start("offset", 42)
    assert consumer_options("-t", "t", "--from", "-3")["start"] == positions.Start("back", 3)
    assert consumer_options("-t", "t", "--from", "@1700000000000")["start"] == positions.Start("timestamp", 1700000000000)
    assert consumer_options("-t", "t", "--from", "2023-11-14T22:13:20Z")["start"] == \
        positions.Start("timestamp", 1700000000000)
    assert consumer_options("-t", "t", "--partition", "2")["partition"] == 2


@pytest.mark.parametrize("argv", [
    [],
    ["--topic", ".."],
    ["--topic", "t", "--from", "soon"],
    ["--topic", "t", "--from", "-x"],
    ["--topic", "t", "--from", "@soon"],
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
    # every message landed once, in order (the resend carried the same sequence numbers)
    assert values == [f"message {i}" for i in range(1, 7)]
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


class Captured:
    """What a LineOutput wrote, through an injected write function (optionally failing)."""

    def __init__(self, fail_after=None, error=errno.EPIPE):
        self.data = bytearray()
        self.fail_after = fail_after  # bytes taken before writes fail
        self.error = error

    def write(self, fd, view):
        if self.fail_after is not None:
            room = self.fail_after - len(self.data)
            if room <= 0:
                raise OSError(self.error, os.strerror(self.error))
            view = view[:room]  # a short write, as a pipe or a nearly full disk gives
        self.data += view
        return len(view)

    def getvalue(self):
        return bytes(self.data)


def start_consumer(client, clock, *argv, captured=None, out=None):
    finished = []
    captured = captured if captured is not None else Captured()
    if out is None:
        out = LineOutput(-1, "test output", write=captured.write)
    svc = consumer_tap.ConsumerService(consumer_options(*argv), client=client, clock=clock, out=out,
                                       on_finish=finished.append)
    svc.startService()
    return svc, captured, finished


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
    assert set(got[0]) == {"partition", "offset", "timestamp", "key", "value", "headers"}
    assert next(iter(got[0])) == "partition" and got[0]["partition"] == 0
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
    run_until(clock, network, lambda: svc.readers and svc.readers[0].consumer.position == 1)
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


# --- the consumer: every partition, --from forms ---------------------------------------------


def create(network, clock, client, topic, partitions):
    d = client.create_topic(topic, partitions=partitions)
    run_until(clock, network, lambda: d.called)
    result_of(d)


def test_consumer_reads_every_partition_merged_each_line_saying_its_partition(network, clock, client):
    create(network, clock, client, "m", 3)
    for p in range(3):
        send(network, clock, client, "m", [f"p{p}-{i}" for i in range(2)], partition=p)
    svc, out, finished = start_consumer(client, clock, "-t", "m", "--count", "6", "--interval", "0.2")
    run_until(clock, network, lambda: finished)
    assert finished == [0]
    got = lines(out)
    assert sorted((m["partition"], m["offset"], m["value"]) for m in got) == \
        [(p, i, f"p{p}-{i}") for p in range(3) for i in range(2)]
    for p in range(3):  # within a partition, the log's order
        assert [m["offset"] for m in got if m["partition"] == p] == [0, 1]
    svc.stopService()


def test_consumer_partition_option_reads_that_partition_only(network, clock, client):
    create(network, clock, client, "m", 2)
    send(network, clock, client, "m", ["zero"], partition=0)
    send(network, clock, client, "m", ["one"], partition=1)
    svc, out, finished = start_consumer(client, clock, "-t", "m", "--partition", "1", "--interval", "0.2")
    clock.pump([0.2] * 10)
    network.pump()
    assert [(m["partition"], m["value"]) for m in lines(out)] == [(1, "one")]
    svc.stopService()


def test_consumer_waits_for_the_topic_then_reads_all_its_partitions(network, clock, client):
    svc, out, finished = start_consumer(client, clock, "-t", "later", "--interval", "0.2", "--count", "2")
    with capturedLogs() as events:
        clock.pump([0.2] * 10)
        network.pump()
    assert not finished and svc.readers is None
    assert [e for e in events if "cannot read the partitions of later yet (UNKNOWN_TOPIC" in formatEvent(e)]
    create(network, clock, client, "later", 2)
    send(network, clock, client, "later", ["a"], partition=0)
    send(network, clock, client, "later", ["b"], partition=1)
    run_until(clock, network, lambda: finished)
    assert sorted(m["value"] for m in lines(out)) == ["a", "b"]
    svc.stopService()


def test_consumer_from_minus_n_is_per_partition(network, clock, client):
    create(network, clock, client, "m", 3)
    send(network, clock, client, "m", [f"a{i}" for i in range(5)], partition=0)
    send(network, clock, client, "m", ["b0"], partition=1)
    svc, out, finished = start_consumer(client, clock, "-t", "m", "--from", "-2", "--count", "3",
                                        "--interval", "0.2")
    run_until(clock, network, lambda: finished)
    assert sorted((m["partition"], m["offset"]) for m in lines(out)) == [(0, 3), (0, 4), (1, 0)]
    svc.stopService()


def test_consumer_from_a_timestamp(network, clock, client):
    send(network, clock, client, "t", ["old-1", "old-2"])
    clock.advance(10)
    cut = int(clock.seconds() * 1000)
    send(network, clock, client, "t", ["new-1", "new-2"])
    svc, out, finished = start_consumer(client, clock, "-t", "t", "--from", f"@{cut}", "--count", "2")
    run_until(clock, network, lambda: finished)
    assert [m["value"] for m in lines(out)] == ["new-1", "new-2"]
    svc.stopService()


def test_consumer_backs_off_on_too_many_waiting_polls_then_reads(network, clock, client):
    broker = network.broker
    real_poll = broker.handlers["Poll"]
    refused = []

    def refusing_poll(params):
        if len(refused) < 3:
            refused.append(params["offset"])
            raise errors.TooManyWaitingPolls("too many polls parked on this connection", limit=1,
                                             scope="connection")
        return real_poll(params)

    network.replace_handler("Poll", refusing_poll)
    send(network, clock, client, "t", ["x"])
    with capturedLogs() as events:
        svc, out, finished = start_consumer(client, clock, "-t", "t", "--partition", "0", "--count", "1",
                                            "--interval", "0.2")
        run_until(clock, network, lambda: finished)
    assert finished == [0] and len(refused) == 3
    assert [m["value"] for m in lines(out)] == ["x"]
    text = [formatEvent(e) for e in events]
    assert len([t for t in text if "TOO_MANY_WAITING_POLLS" in t]) == 1  # logged once, not per retry
    svc.stopService()


# --- the consumer's output: never past what was written --------------------------------------


def served_lines(network, topic, partition=0):
    return [orjson.dumps({"partition": partition, **m}) + b"\n" for m in stored(network, topic, partition)]


def test_consumer_output_failure_stops_with_1_at_the_first_message_not_written(network, clock, client):
    send(network, clock, client, "t", [f"value {i}" for i in range(10)])
    whole = served_lines(network, "t")
    captured = Captured(fail_after=len(whole[0]) + len(whole[1]) + 5)  # a short write, then EPIPE
    with capturedLogs() as events:
        svc, out, finished = start_consumer(client, clock, "-t", "t", "--interval", "0.2", captured=captured)
        run_until(clock, network, lambda: finished)
    assert finished == [1]
    assert svc.readers[0].consumer.position == 2 and svc.printed == 2
    assert captured.getvalue() == whole[0] + whole[1] + whole[2][:5]
    text = "\n".join(formatEvent(e) for e in events)
    assert "Broken pipe" in text and "t/0 stays at offset 2 (2 of the 10 message(s)" in text
    clock.pump([0.2] * 10)  # stopped: no more polls, no more writes
    network.pump()
    assert len(captured.getvalue()) == len(whole[0]) + len(whole[1]) + 5
    svc.stopService()


def test_consumer_output_file_full_cuts_the_torn_line_and_keeps_the_position(network, clock, client, tmp_path):
    send(network, clock, client, "t", [f"value {i}" for i in range(10)])
    whole = served_lines(network, "t")
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"earlier":true}\n')
    room = len(whole[0]) + len(whole[1]) + 7

    def nearly_full_disk(fd, view):
        left = room - (os.fstat(fd).st_size - len(b'{"earlier":true}\n'))
        if left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, view[:left])

    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    out = LineOutput(fd, str(path), write=nearly_full_disk, cut_torn_line=True, owns_fd=True)
    with capturedLogs() as events:
        svc, _, finished = start_consumer(client, clock, "-t", "t", "--output", str(path), out=out)
        run_until(clock, network, lambda: finished)
    assert finished == [1]
    assert svc.readers[0].consumer.position == 2
    assert path.read_bytes() == b'{"earlier":true}\n' + whole[0] + whole[1]  # whole lines only
    text = "\n".join(formatEvent(e) for e in events)
    assert "No space left on device" in text and "the torn last line was cut: 7 bytes" in text
    svc.stopService()


def test_consumer_count_does_not_count_messages_it_did_not_write(network, clock, client):
    send(network, clock, client, "t", list(range(10)))
    svc, out, finished = start_consumer(client, clock, "-t", "t", "--count", "3")
    run_until(clock, network, lambda: finished)
    assert [m["value"] for m in lines(out)] == [0, 1, 2]
    assert svc.readers[0].consumer.position == 3  # not 10: the other seven were never printed
    svc.stopService()


def test_consumer_stops_when_the_reader_of_its_pipe_goes_away_even_when_idle(network, clock, client):
    send(network, clock, client, "t", ["only"])
    r, w = os.pipe()
    try:
        out = LineOutput(w, "standard output")
        svc, _, finished = start_consumer(client, clock, "-t", "t", "--interval", "0.2", out=out)
        run_until(clock, network, lambda: svc.printed == 1)
        assert orjson.loads(os.read(r, 4096))["value"] == "only"
        clock.pump([0.2] * 5)
        network.pump()
        assert not finished  # a reader is there: idle is fine
        os.close(r)
        r = None
        run_until(clock, network, lambda: finished, limit=2)
        assert finished == [1] and svc.readers[0].consumer.position == 1
        svc.stopService()
    finally:
        if r is not None:
            os.close(r)
        os.close(w)


# --- log lines that say what happened --------------------------------------------------------


def test_consumer_log_says_where_it_retries_from_before_the_start_is_resolved(network, clock, client):
    with capturedLogs() as events:
        svc, out, finished = start_consumer(client, clock, "-t", "later", "--partition", "0", "--interval", "0.2")
        clock.pump([0.2] * 5)
        network.pump()
    text = [formatEvent(e) for e in events if "retrying every tick" in formatEvent(e)]
    assert text and "from earliest (not resolved yet)" in text[0] and "None" not in text[0]
    svc.stopService()


def test_consumer_works_again_line_names_the_first_offset_it_got(network, clock, client):
    with capturedLogs() as events:
        svc, out, finished = start_consumer(client, clock, "-t", "later", "--partition", "0", "--count", "1",
                                            "--interval", "0.2")
        clock.pump([0.2] * 5)
        network.pump()
        send(network, clock, client, "later", ["first"])
        run_until(clock, network, lambda: finished)
    again = [formatEvent(e) for e in events if "works again" in formatEvent(e)]
    assert again == ["polling later/0 works again from offset 0"]
    svc.stopService()


def test_consumer_stop_with_a_poll_in_flight_is_not_logged_as_trouble(network, clock, client):
    send(network, clock, client, "t", ["x"])
    svc, out, finished = start_consumer(client, clock, "-t", "t", "--interval", "0.2", "--max-wait-ms", "5000")
    run_until(clock, network, lambda: svc.printed == 1)
    clock.advance(0.2)  # the next long poll is parked on the server
    network.pump()
    with capturedLogs() as events:
        svc.stopService()
        network.pump()
    text = [formatEvent(e) for e in events]
    assert not [t for t in text if "CONNECTION_LOST" in t or "failed" in t], text
    assert [t for t in text if "stopping after 1 message(s) written; positions: t/0 offset 1" in t]


def test_producer_refusal_is_not_said_to_duplicate(network, clock, client):
    network.broker.config = attrs.evolve(network.broker.config, auto_create_topics=False)
    with capturedLogs() as events:
        svc, finished = start_producer(client, clock, "-t", "absent", "--count", "1", "--interval", "0.5")
        run_until(clock, network, lambda: svc._failures >= 2)
    text = [formatEvent(e) for e in events if "UNKNOWN_TOPIC" in formatEvent(e)]
    assert text and all("nothing of it was appended" in t and "duplicate" not in t for t in text)
    svc.stopService()


def test_producer_lost_connection_is_resent_and_stored_once(network, clock, client):
    svc, finished = start_producer(client, clock, "-t", "t", "--interval", "0.1", "--count", "3")
    run_until(clock, network, lambda: svc.acknowledged >= 1)
    real = network.broker.handlers["SendBatch"]
    lost = []

    def store_then_drop(params):
        answer = real(params)  # appended ...
        if not lost:
            lost.append(params)
            clock.callLater(0, network.drop)  # ... and the connection drops before the answer is read
            return Deferred()
        return answer

    network.replace_handler("SendBatch", store_then_drop)
    with capturedLogs() as events:
        run_until(clock, network, lambda: finished, limit=60)
    text = [formatEvent(e) for e in events]
    assert lost and not [t for t in text if "duplicate" in t], text
    assert [m["value"] for m in stored(network, "t")] == [f"message {i}" for i in range(1, 4)]
    assert svc.producer is not None and svc.producer.retries >= 1
    svc.stopService()


def test_producer_stop_with_a_request_in_flight_says_so_instead_of_failing(network, clock, client):
    svc, finished = start_producer(client, clock, "-t", "t", "--interval", "0.5")
    run_until(clock, network, lambda: svc.acknowledged == 1)
    clock.advance(0.5)  # message 2 goes out; its answer has not been read yet
    with capturedLogs() as events:
        svc.stopService()
        network.pump()
    text = [formatEvent(e) for e in events]
    assert not [t for t in text if "failed" in t or "resending" in t], text
    assert "stopping: 1 message(s) acknowledged" in text
    assert [t for t in text if "messages 2-2 were not acknowledged; messages 2-2 were in flight" in t]


def test_producer_stop_while_unreachable_says_nothing_was_sent(network, clock, client):
    network.drop()
    network.up = False
    svc, finished = start_producer(client, clock, "-t", "t", "--interval", "0.5")
    clock.pump([0.5] * 3)  # messages queue; the first request waits in the client (2 s) for a connection
    with capturedLogs() as events:
        svc.stopService()
    text = [formatEvent(e) for e in events]
    assert [t for t in text if "messages 1-1 were waiting for a connection (never sent)" in t], text
    assert not [t for t in text if "may or may not" in t]


def test_consumer_output_that_cannot_be_opened_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match="--output: cannot open .*No such file or directory"):
        consumer_options("-t", "t", "--output", str(tmp_path / "missing" / "out.jsonl"))
    consumer_options("-t", "t", "--output", str(tmp_path / "out.jsonl"))
    assert (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("error", [
    errors.KeyTooLarge("key of 300 bytes is longer than 256", limit=256, size=300),
    errors.TooManyPartitions("at most 1024 partitions", limit=1024),
])
def test_producer_stops_on_the_new_permanent_errors(network, clock, client, error):
    def refuse(params):
        raise error

    network.replace_handler("SendBatch", refuse)
    with capturedLogs() as events:
        svc, finished = start_producer(client, clock, "-t", "t", "--count", "1", "--key", "k" * 300)
        run_until(clock, network, lambda: finished)
    assert finished == [1]
    assert [e for e in events if f"failed permanently: {error.code}" in formatEvent(e)]
    svc.stopService()

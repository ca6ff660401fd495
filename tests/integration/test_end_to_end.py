"""The three twistd daemons as real processes: what the producer sends, the consumer prints."""

from __future__ import annotations

import orjson

from streamlog.testing import Daemon, ServerProcess, wait_for


def test_consumer_prints_exactly_what_the_producer_sent_in_order(tmp_path, daemons):
    server = ServerProcess(tmp_path)  # the durable default: segmented storage, fsync always
    daemons.append(server)
    # The consumer starts first: the topic does not exist yet, so it waits for it.
    consumer = Daemon("consumer", [
        "streamlog-consumer", "--connect", server.endpoint, "--topic", "e2e",
        "--from", "earliest", "--interval", "0.05", "--count", "30",
    ], tmp_path)
    daemons.append(consumer)
    producer = Daemon("producer", [
        "streamlog-producer", "--connect", server.endpoint, "--topic", "e2e",
        "--interval", "0.02", "--count", "30",
    ], tmp_path)
    daemons.append(producer)

    assert producer.wait(60) == 0, producer.log()
    assert consumer.wait(60) == 0, consumer.log()

    # stdout holds only the messages, one JSON object per line (logs went to --logfile).
    printed = [orjson.loads(line) for line in consumer.stdout().splitlines()]
    assert [m["value"] for m in printed] == [f"message {i}" for i in range(1, 31)]
    assert [m["offset"] for m in printed] == list(range(30))
    acked = producer.log().count("acknowledged")
    assert acked >= 30, producer.log()


def test_producer_waits_for_a_server_that_starts_later(tmp_path, daemons):
    # Reserve a port by starting and stopping a server, then start the producer first.
    first = ServerProcess(tmp_path, ["--storage", "memory"], name="first")
    port = first.port
    first.stop()
    producer = Daemon("producer", [
        "streamlog-producer", "--connect", f"tcp:127.0.0.1:{port}", "--topic", "late",
        "--interval", "0.05", "--count", "3", "--retry-max", "0.2",
    ], tmp_path)
    daemons.append(producer)
    wait_for(lambda: "refused" in producer.log().lower() or "unreachable" in producer.log().lower()
             or "connect" in producer.log().lower(), 20, "the producer to try and fail to connect")
    server = ServerProcess(tmp_path, ["--storage", "memory", "--listen", f"tcp:{port}:interface=127.0.0.1"],
                           name="second")
    daemons.append(server)
    assert producer.wait(60) == 0, producer.log()

"""The daemons with a bootstrap list, against a fake cluster whose leaders move."""

from __future__ import annotations

import random

import orjson
import pytest
from fake_cluster import run_for, run_until
from twisted.python import usage

from streamlog.tap import consumer as consumer_tap
from streamlog.tap import producer as producer_tap
from streamlog.tap.output import LineOutput


def options(module, *argv):
    o = module.Options()
    o.parseOptions(list(argv))
    return o


def test_connect_takes_a_comma_separated_bootstrap_list(monkeypatch):
    monkeypatch.delenv("STREAMLOG_CONNECT", raising=False)
    o = options(producer_tap, "-t", "t", "--connect", "127.0.0.1:7071, 127.0.0.1:7072,tcp:10.0.0.3:7073")
    assert o["bootstrap"] == ["127.0.0.1:7071", "127.0.0.1:7072", "tcp:10.0.0.3:7073"]
    assert options(consumer_tap, "-t", "t", "-c", "unix:/run/s.sock")["bootstrap"] == ["unix:/run/s.sock"]
    assert options(consumer_tap, "-t", "t")["bootstrap"] == ["tcp:127.0.0.1:7070"]


def test_connect_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("STREAMLOG_CONNECT", "127.0.0.1:7071,127.0.0.1:7072")
    assert options(producer_tap, "-t", "t")["bootstrap"] == ["127.0.0.1:7071", "127.0.0.1:7072"]
    assert options(producer_tap, "-t", "t", "-c", "h:1")["bootstrap"] == ["h:1"]  # --connect wins
    monkeypatch.setenv("STREAMLOG_CONNECT", "127.0.0.1:7071,,x")
    with pytest.raises(usage.UsageError, match=r"--connect \(from \$STREAMLOG_CONNECT\): empty address"):
        options(producer_tap, "-t", "t")


@pytest.mark.parametrize("connect, why", [
    ("127.0.0.1:7071,", "empty address"),
    ("127.0.0.1:7071,nope", "cannot read an address from 'nope'"),
    ("127.0.0.1:port", "bad port"),
])
def test_a_bad_bootstrap_entry_is_a_usage_error_naming_it(monkeypatch, connect, why):
    monkeypatch.delenv("STREAMLOG_CONNECT", raising=False)
    with pytest.raises(usage.UsageError, match=why):
        options(consumer_tap, "-t", "t", "--connect", connect)


@pytest.fixture
def cluster_client_options():
    return {"seed": 9, "request_timeout": 2.0}


class Captured:
    def __init__(self):
        self.data = bytearray()

    def write(self, fd, view):
        self.data += view
        return len(view)

    def lines(self):
        return [orjson.loads(line) for line in bytes(self.data).splitlines()]


def test_the_producer_daemon_follows_a_moving_leader_and_drops_nothing(clock, cluster, client):
    cluster.create_topic("t", 1, leaders=[1])
    finished = []
    svc = producer_tap.ProducerService(options(producer_tap, "-t", "t", "--interval", "0.05", "--count", "40",
                                               "--connect", cluster.bootstrap),
                                       client=client, clock=clock, on_finish=finished.append, read_stdin=False,
                                       rng=random.Random(1))
    svc.startService()
    run_until(clock, cluster, lambda: svc.acknowledged >= 10)
    cluster.move_leader("t", 0, 2)
    run_until(clock, cluster, lambda: svc.acknowledged >= 25)
    cluster.kill(2)
    cluster.move_leader("t", 0, 3)
    run_until(clock, cluster, lambda: finished, limit=60)
    assert finished == [0]
    assert cluster.values("t", 0) == [f"message {i}" for i in range(1, 41)]
    assert {n for n, _ in cluster.sent("SendBatch")} == {1, 2, 3}
    svc.stopService()


def test_the_consumer_daemon_follows_a_moving_leader_and_prints_each_message_once(clock, cluster, client):
    cluster.create_topic("t", 2)  # leaders 1 and 2
    for p in range(2):
        part = cluster.topics["t"][p]
        for i in range(20):
            part.records.append({"offset": i, "timestamp": 1, "key": None, "value": f"{p}-{i}", "headers": {}})
    captured = Captured()
    finished = []
    svc = consumer_tap.ConsumerService(options(consumer_tap, "-t", "t", "--interval", "0.1", "--max-messages", "5",
                                               "--count", "60"),
                                       client=client, clock=clock, out=LineOutput(-1, "test", write=captured.write),
                                       on_finish=finished.append)
    svc.startService()
    run_until(clock, cluster, lambda: svc.printed >= 10)
    cluster.move_leader("t", 0, 3)
    cluster.kill(2)
    cluster.move_leader("t", 1, 1)
    run_until(clock, cluster, lambda: svc.printed >= 40, limit=60)
    for p in range(2):
        part = cluster.topics["t"][p]
        for i in range(20, 30):
            part.records.append({"offset": i, "timestamp": 1, "key": None, "value": f"{p}-{i}", "headers": {}})
        cluster.appended("t", p)
    run_until(clock, cluster, lambda: finished, limit=60)
    got = captured.lines()
    for p in range(2):
        assert [m["offset"] for m in got if m["partition"] == p] == list(range(30))
    svc.stopService()
    run_for(clock, cluster, 1.0)


def test_the_consumer_daemon_reads_partitions_that_appear_later(clock, cluster, client):
    cluster.create_topic("t", 1)
    captured = Captured()
    svc = consumer_tap.ConsumerService(options(consumer_tap, "-t", "t", "--interval", "0.1"), client=client,
                                       clock=clock, out=LineOutput(-1, "test", write=captured.write),
                                       on_finish=lambda status: None)
    svc.startService()
    run_until(clock, cluster, lambda: svc.readers is not None)
    assert sorted(svc.readers) == [0]
    cluster.create_topic("t", 3)  # re-created with more partitions
    cluster.topics["t"][2].records.append({"offset": 0, "timestamp": 1, "key": None, "value": "new", "headers": {}})
    refreshed = client.refresh_metadata()
    run_until(clock, cluster, lambda: refreshed.called)
    run_until(clock, cluster, lambda: [m for m in captured.lines() if m["partition"] == 2])
    assert sorted(svc.readers) == [0, 1, 2]
    svc.stopService()
    run_for(clock, cluster, 1.0)

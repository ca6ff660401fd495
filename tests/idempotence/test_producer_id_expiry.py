"""After a partition forgot an idle producer (--producer-id-expiry-ms), its producer carries on.

The partition answers the next batch (its sequence numbers not 0)
UNKNOWN_PRODUCER_ID; the producer takes its next epoch and numbers from 0
again, so every message sent is stored once and nothing acknowledged is
missing.  Checked for the two producers shipped: the Producer (what the
producer daemon runs, with one request in flight) and the CLI's
IdempotentSender (``streamlog produce``), each against a real broker on a
Clock, with the expiry passed lazily (the sweep not run yet) and swept.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamlog import errors
from streamlog.broker.broker import BrokerConfig
from streamlog.client import BlockingClient, ClusterClient, Producer
from streamlog.idempotence.table import ProducerStateConfig
from streamlog.storage.memory import MemoryStorage
from streamlog.testing import BrokerHarness, MemoryNetwork, result_of, stored_records

EXPIRY_MS = 10_000
ADDRESS = "127.0.0.1:7070"


@pytest.fixture
def harness(clock):
    config = BrokerConfig(default_partitions=1, producer_state=ProducerStateConfig(
        expiry_ms=EXPIRY_MS, evict_min_idle_ms=1_000))
    h = BrokerHarness(storage=MemoryStorage(), config=config, clock=clock)
    yield h
    h.stop()


def idle_past_the_expiry(h: BrokerHarness, swept: bool) -> None:
    h.clock.advance(EXPIRY_MS / 1000 + 1)
    if swept:
        h.broker.apply_retention()  # the periodic sweep forgets the producer
        assert h.broker.topics["t"].partitions[0].producers.producer_ids() == []


def values(h: BrokerHarness) -> list[Any]:
    return [r["value"] for r in stored_records(h.broker, "t")]


class HarnessBlockingClient(BlockingClient):
    """A BlockingClient whose requests go to a BrokerHarness connection (no socket, the harness's Clock)."""

    def __init__(self, harness: BrokerHarness) -> None:
        super().__init__(ADDRESS, timeout=5)
        self.conn = harness.connect()
        self.harness = harness
        self.lose_next: set[str] = set()

    def _any_node(self) -> Any:
        return self._node(ADDRESS)  # never connected: every request goes through _call_at

    def _call_at(self, node: Any, method: str, params: dict[str, Any], timeout: float | None = None,
                 expect_answer: bool = True, on_stall: Any = None) -> Any:
        answer = self.conn.call(method, params)
        self.harness.settle()
        if method in self.lose_next:
            self.lose_next.discard(method)
            raise errors.ConnectionLost("the answer was lost", sent=True)
        if "error" in answer:
            raise errors.from_wire(answer["error"])
        return answer["result"]


@pytest.mark.parametrize("swept", [False, True], ids=["lazy", "swept"])
def test_the_cli_sender_takes_its_next_epoch_after_the_partition_forgot_it(harness, swept):
    client = HarnessBlockingClient(harness)
    sender = client.idempotent_sender()
    first = sender.send_batch("t", [{"value": "a"}, {"value": "b"}])
    assert first["partitions"] == [{"partition": 0, "base_offset": 0, "count": 2}]
    identity = sender.identity
    idle_past_the_expiry(harness, swept)
    second = sender.send_batch("t", [{"value": "c"}])
    assert second["partitions"] == [{"partition": 0, "base_offset": 2, "count": 1}]
    assert sender.identity == (identity[0], identity[1] + 1)  # the next epoch, numbered from 0
    third = sender.send_batch("t", [{"value": "d"}])
    assert third["partitions"] == [{"partition": 0, "base_offset": 3, "count": 1}]
    assert values(harness) == ["a", "b", "c", "d"]


def test_the_cli_sender_fails_a_batch_with_a_lost_attempt_rather_than_renumber_it(harness, monkeypatch):
    monkeypatch.setattr(BlockingClient, "_pause", staticmethod(lambda attempt, deadline: None))
    client = HarnessBlockingClient(harness)
    sender = client.idempotent_sender()
    sender.send_batch("t", [{"value": "a"}])
    idle_past_the_expiry(harness, swept=True)
    # The first attempt after the expiry is refused, but its answer is lost: for all the sender
    # knows it was stored (by a leader since replaced), so it is not renumbered: it fails, saying so.
    client.lose_next.add("SendBatch")
    with pytest.raises(errors.UnknownProducerId) as refused:
        sender.send_batch("t", [{"value": "b"}])
    assert refused.value.details["maybe_appended"] is True and "may have stored it" in refused.value.message
    assert sender.epoch_bumps == 0
    # The next batch is refused outright: the next epoch, from 0.
    assert sender.send_batch("t", [{"value": "c"}])["partitions"][0]["base_offset"] == 1
    client.lose_next.add("SendBatch")  # stored, answer lost: resent with the same numbers
    again = sender.send_batch("t", [{"value": "d"}])
    assert again["partitions"] == [{"partition": 0, "base_offset": 2, "count": 1, "duplicate": True}]
    assert sender.epoch_bumps == 1 and values(harness) == ["a", "c", "d"]


def test_the_cli_sender_takes_its_next_epoch_after_a_batch_that_may_be_stored_failed(harness, monkeypatch):
    monkeypatch.setattr(BlockingClient, "_pause", staticmethod(lambda attempt, deadline: None))

    class Losing(HarnessBlockingClient):
        losing = False

        def _call_at(self, node: Any, method: str, params: dict[str, Any], timeout: float | None = None,
                     expect_answer: bool = True, on_stall: Any = None) -> Any:
            if self.losing and method == "SendBatch":
                self.lose_next.add(method)
            return super()._call_at(node, method, params, timeout, expect_answer, on_stall)

    client = Losing(harness)
    client.delivery_timeout = 0.2  # the client's own resends of "b" stop there (real time, bounded)
    sender = client.idempotent_sender()
    sender.send_batch("t", [{"value": "a"}])
    identity = sender.identity
    client.losing = True  # "b" is stored; no answer to any attempt of it comes back
    with pytest.raises((errors.ConnectionLost, errors.Timeout)):
        sender.send_batch("t", [{"value": "b"}])
    client.losing = False
    # The caller goes on: a batch of the same size, numbered as "b" was, would be answered
    # DUPLICATE with b's offset and never stored.  In the next epoch it is a batch of its own.
    third = sender.send_batch("t", [{"value": "c"}])
    assert third["partitions"] == [{"partition": 0, "base_offset": 2, "count": 1}]
    assert sender.identity == (identity[0], identity[1] + 1) and sender.epoch_bumps == 1
    assert sender.send_batch("t", [{"value": "d"}])["partitions"][0]["base_offset"] == 3
    assert sender.epoch_bumps == 1 and values(harness) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("swept", [False, True], ids=["lazy", "swept"])
@pytest.mark.parametrize("in_flight", [1, 8], ids=["daemon", "pipelined"])
def test_the_producer_takes_its_next_epoch_after_the_partition_forgot_it(clock, harness, swept, in_flight):
    net = MemoryNetwork(clock)
    net.listen(ADDRESS, harness.factory)
    client = ClusterClient(ADDRESS, clock=clock, endpoint_factory=net.endpoint, request_timeout=2.0)
    producer = Producer(client, linger_ms=0, batch_size=1, max_in_flight=in_flight)

    def run(ds: list) -> list:
        for _ in range(2000):
            if all(d.called for d in ds):
                break
            clock.advance(0.005)
            net.pump()
            harness.settle()
        return [result_of(d) for d in ds]

    try:
        assert run([producer.send("t", v) for v in "ab"]) == [(0, 0), (0, 1)]
        identity = producer.identity
        idle_past_the_expiry(harness, swept)
        assert run([producer.send("t", v) for v in "cdefghijkl"]) == [(0, i) for i in range(2, 12)]
        assert producer.identity == (identity[0], identity[1] + 1) and producer.epoch_bumps == 1
        assert values(harness) == list("abcdefghijkl")
    finally:
        d = client.close()
        net.pump()
        result_of(d)

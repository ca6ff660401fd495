"""ClientProtocol on a StringTransport, and StreamlogClient against a real Broker on iosim."""

from __future__ import annotations

import random

import orjson
import pytest
from client_support import failure_of, result_of, run_until
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from streamlog import errors
from streamlog.client.connection import (
    ClientProtocol,
    StreamlogClient,
    backoff_policy,
    endpoint_for,
    parse_address,
    parse_target,
)


def connected(clock, timeout=30.0):
    proto = ClientProtocol(clock, request_timeout=timeout)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def written(transport):
    lines = [orjson.loads(line) for line in transport.value().splitlines()]
    transport.clear()
    return lines


def answer(proto, rid, result=None, error=None):
    obj = {"id": rid, "error": error} if error is not None else {"id": rid, "result": result}
    proto.dataReceived(orjson.dumps(obj) + b"\n")


# --- ClientProtocol ---------------------------------------------------------------


def test_requests_are_pipelined_with_distinct_ids(clock):
    proto, transport = connected(clock)
    d1 = proto.request("Ping", {})
    d2 = proto.request("ListTopics", {})
    lines = written(transport)
    assert [line["method"] for line in lines] == ["Ping", "ListTopics"]
    assert lines[0]["id"] != lines[1]["id"]
    assert lines[0]["params"] == {}
    assert proto.in_flight == 2
    answer(proto, lines[0]["id"], {"pong": True})
    answer(proto, lines[1]["id"], {"topics": []})
    assert result_of(d1) == {"pong": True}
    assert result_of(d2) == {"topics": []}
    assert proto.in_flight == 0


def test_out_of_order_answers_reach_their_requests(clock):
    proto, transport = connected(clock)
    ds = [proto.request("Poll", {"n": i}) for i in range(3)]
    ids = [line["id"] for line in written(transport)]
    # answered in reverse, all in one read
    proto.dataReceived(b"".join(orjson.dumps({"id": rid, "result": {"n": i}}) + b"\n"
                                for i, rid in reversed(list(enumerate(ids)))))
    assert [result_of(d) for d in ds] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_answer_split_across_reads(clock):
    proto, transport = connected(clock)
    d = proto.request("Ping", {})
    rid = written(transport)[0]["id"]
    data = orjson.dumps({"id": rid, "result": {"pong": True}}) + b"\n"
    proto.dataReceived(data[:7])
    assert not d.called
    proto.dataReceived(data[7:])
    assert result_of(d) == {"pong": True}


def test_error_answer_is_a_typed_error_with_details(clock):
    proto, transport = connected(clock)
    d = proto.request("Poll", {})
    rid = written(transport)[0]["id"]
    answer(proto, rid, error={"code": "OFFSET_OUT_OF_RANGE", "message": "nope", "log_start_offset": 3})
    f = failure_of(d)
    assert f.check(errors.OffsetOutOfRange)
    assert f.value.details == {"log_start_offset": 3}
    assert f.value.message == "nope"


def test_unknown_error_code_stays_generic(clock):
    proto, transport = connected(clock)
    d = proto.request("Ping", {})
    answer(proto, written(transport)[0]["id"], error={"code": "FUTURE_THING", "message": "?"})
    f = failure_of(d)
    assert isinstance(f.value, errors.StreamlogError) and f.value.code == "FUTURE_THING"


def test_request_times_out_on_the_clock_and_late_answer_is_ignored(clock):
    proto, transport = connected(clock, timeout=5.0)
    d = proto.request("Ping", {})
    rid = written(transport)[0]["id"]
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    f = failure_of(d)
    assert f.check(errors.Timeout)
    assert proto.in_flight == 0
    answer(proto, rid, {"pong": True})  # too late: ignored
    assert proto.connected


def test_per_request_timeout_overrides_default(clock):
    proto, transport = connected(clock, timeout=30.0)
    d = proto.request("Ping", {}, timeout=1.0)
    clock.advance(1.0)
    assert failure_of(d).check(errors.Timeout)


def test_answer_cancels_the_timeout(clock):
    proto, transport = connected(clock, timeout=5.0)
    d = proto.request("Ping", {})
    answer(proto, written(transport)[0]["id"], {"pong": True})
    result_of(d)
    assert clock.getDelayedCalls() == []


def test_connection_lost_fails_in_flight_requests(clock):
    proto, transport = connected(clock)
    ds = [proto.request("Send", {"topic": "t", "value": i}) for i in range(3)]
    proto.connectionLost(Failure(ConnectionDone()))
    for d in ds:
        assert failure_of(d).check(errors.ConnectionLost)
    assert clock.getDelayedCalls() == []
    assert failure_of(proto.request("Ping", {})).check(errors.ConnectionLost)


def test_too_many_connections_is_reported_as_such(clock):
    proto, transport = connected(clock)
    d = proto.request("Ping", {})
    proto.dataReceived(b'{"id":null,"error":{"code":"TOO_MANY_CONNECTIONS","message":"full"}}\n')
    proto.connectionLost(Failure(ConnectionDone()))
    assert failure_of(d).check(errors.TooManyConnections)


def test_cancel_forgets_the_request(clock):
    proto, transport = connected(clock)
    d = proto.request("Ping", {})
    rid = written(transport)[0]["id"]
    d.cancel()
    failure_of(d)
    assert proto.in_flight == 0 and clock.getDelayedCalls() == []
    answer(proto, rid, {"pong": True})


def test_acks_none_gets_no_pending_entry(clock):
    proto, transport = connected(clock)
    d = proto.request("Send", {"topic": "t", "value": 1, "acks": "none"}, expect_answer=False)
    assert result_of(d) is None
    assert proto.in_flight == 0 and clock.getDelayedCalls() == []
    assert written(transport)[0]["params"]["acks"] == "none"


def test_invalid_json_from_server_closes(clock):
    proto, transport = connected(clock)
    d = proto.request("Ping", {})
    proto.dataReceived(b"not json\n")
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert failure_of(d).check(errors.ConnectionLost)


def test_tcp_nodelay_is_set(clock):
    class T(StringTransport):
        nodelay = False

        def setTcpNoDelay(self, enabled):
            self.nodelay = enabled

    proto = ClientProtocol(clock)
    t = T()
    proto.makeConnection(t)
    assert t.nodelay is True


# --- addresses and backoff -----------------------------------------------------------


def test_parse_address_forms():
    assert parse_address("127.0.0.1:7070") == ("127.0.0.1", 7070)
    assert parse_address("tcp:127.0.0.1:7070") == ("127.0.0.1", 7070)
    assert parse_address("tcp:host=localhost:port=9:timeout=3") == ("localhost", 9)
    assert parse_address(("h", "12")) == ("h", 12)
    assert parse_address("[::1]:7070") == ("::1", 7070)
    with pytest.raises(ValueError):
        parse_address("nonsense")


def test_endpoint_for_strings(clock):
    from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
    from twisted.internet.testing import MemoryReactorClock

    r = MemoryReactorClock()
    assert isinstance(endpoint_for("tcp:127.0.0.1:7070", r), TCP4ClientEndpoint)
    assert isinstance(endpoint_for("localhost:7070", r), HostnameEndpoint)


def test_parse_target_knows_unix_sockets_and_refuses_other_endpoints():
    assert parse_target("unix:/run/streamlog.sock") == ("unix", "/run/streamlog.sock")
    assert parse_target("unix:path=/tmp/s:timeout=3") == ("unix", "/tmp/s")
    assert parse_target("tcp:127.0.0.1:7070") == ("tcp", ("127.0.0.1", 7070))
    assert parse_target("localhost:7070") == ("tcp", ("localhost", 7070))
    with pytest.raises(ValueError, match="use HOST:PORT, tcp:HOST:PORT or unix:/path"):
        parse_target("ssl:host=h:port=1")
    with pytest.raises(ValueError, match="no socket path"):
        parse_target("unix:")


def test_connection_failures_are_logged_with_the_address_and_the_reason():
    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import capturedLogs, formatEvent

    reactor = MemoryReactorClock()
    with capturedLogs() as events:
        c = StreamlogClient("tcp:127.0.0.1:1", reactor=reactor, rng=random.Random(1), reconnect_max=1.0)
        for _ in range(4):
            factory = reactor.tcpClients[-1][2]
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            reactor.advance(1.0)
        proto = reactor.tcpClients[-1][2].buildProtocol(None)
        proto.makeConnection(StringTransport())
    text = [formatEvent(e) for e in events]
    assert not [t for t in text if "object at 0x" in t or "Scheduling retry" in t], text
    warned = [t for t in text if t.startswith("cannot connect")]
    assert len(warned) == 1, text  # once per kind of failure, not per attempt
    assert warned[0].startswith("cannot connect to tcp:127.0.0.1:1 (Connection was refused by other side")
    assert "connected to tcp:127.0.0.1:1" in text
    assert c.address == "tcp:127.0.0.1:1" and c.connected
    c.close()


def test_backoff_grows_exponentially_with_jitter_up_to_the_max():
    policy = backoff_policy(0.1, 5.0, random.Random(1))
    delays = [policy(n) for n in range(1, 13)]
    for n, d in enumerate(delays):
        nominal = min(5.0, 0.1 * 2 ** n)
        assert nominal / 2 <= d <= nominal
    assert max(delays) <= 5.0


# --- StreamlogClient against a Broker -------------------------------------------------------


def make_client(network, clock, **kw):
    kw.setdefault("rng", random.Random(7))
    return StreamlogClient(network, clock=clock, **kw)


def got(network, d):
    network.pump()
    return result_of(d)


def finish(client, network):
    d = client.close()
    network.pump()
    result_of(d)


def test_client_round_trip_against_broker(network, clock):
    client = make_client(network, clock)
    network.pump()
    assert client.connected
    created = client.create_topic("t", partitions=2)
    sent = client.send("t", {"a": 1}, key="k")
    batch = client.send_batch("t", [{"value": i, "partition": 1} for i in range(3)])
    network.pump()
    assert result_of(created)["topic"] == "t"
    s = result_of(sent)
    assert s["offset"] == 0 and s["topic"] == "t"
    b = result_of(batch)
    assert b["partitions"] == [{"partition": 1, "base_offset": 0, "count": 3}]
    polled = client.poll("t", 1, 0)
    topics = client.list_topics()
    described = client.describe_topic("t")
    latest = client.list_offsets("t", 1, "latest")
    pong = client.ping()
    network.pump()
    assert [m["value"] for m in result_of(polled)["messages"]] == [0, 1, 2]
    assert result_of(topics) == [{"topic": "t", "partitions": 2}]
    assert len(result_of(described)["partitions"]) == 2
    assert result_of(latest) == 3
    assert result_of(pong)["pong"] is True
    finish(client, network)


def test_client_server_errors_are_typed(network, clock):
    client = make_client(network, clock)
    d1 = client.describe_topic("missing")
    d2 = client.poll("missing", 0, 0)
    d3 = client.create_topic("bad name!")
    network.pump()
    assert failure_of(d1).check(errors.UnknownTopic)
    assert failure_of(d2).check(errors.UnknownTopic)
    assert failure_of(d3).check(errors.InvalidTopic)
    finish(client, network)


def test_acks_none_send_is_appended_without_answer(network, clock):
    client = make_client(network, clock)
    network.pump()
    d = client.send("t", "x", acks="none")
    assert result_of(d) is None
    network.pump()
    polled = client.poll("t", 0, 0)
    network.pump()
    assert [m["value"] for m in result_of(polled)["messages"]] == ["x"]
    finish(client, network)


def test_long_poll_does_not_block_a_send_on_the_same_connection(network, clock):
    client = make_client(network, clock)
    network.pump()
    got(network, client.create_topic("t"))
    network.pump()
    waiting = client.poll("t", 0, 0, max_wait_ms=5000)
    network.pump()
    assert not waiting.called
    sent = client.send("t", "hello")
    network.pump()
    assert result_of(sent)["offset"] == 0
    assert [m["value"] for m in result_of(waiting)["messages"]] == ["hello"]
    finish(client, network)


def test_long_poll_timeout_is_stretched_by_max_wait(network, clock):
    client = make_client(network, clock, request_timeout=1.0)
    network.pump()
    got(network, client.create_topic("t"))
    waiting = client.poll("t", 0, 0, max_wait_ms=3000)
    network.pump()
    clock.advance(2.0)  # past request_timeout, within max_wait
    network.pump()
    assert not waiting.called
    clock.advance(1.0)  # the server's wait ends: an empty answer
    network.pump()
    assert result_of(waiting)["messages"] == []
    finish(client, network)


def test_requests_wait_for_a_connection_and_go_out_once_connected(network, clock):
    network.up = False
    client = make_client(network, clock, reconnect_min=0.5, reconnect_max=4.0)
    d = client.ping()
    assert not d.called and not client.connected
    clock.advance(3.0)
    network.up = True
    run_until(clock, network, lambda: d.called)
    assert result_of(d)["pong"] is True
    finish(client, network)


def test_reconnect_backoff_grows_up_to_max(network, clock):
    network.up = False
    client = make_client(network, clock, reconnect_min=0.5, reconnect_max=4.0, request_timeout=None)
    clock.pump([0.05] * 600)  # 30 s
    gaps = [b - a for a, b in zip(network.attempts, network.attempts[1:])]
    assert len(gaps) >= 6
    # grows: each early gap within [d/2, d] of its nominal delay, capped at max
    for n, gap in enumerate(gaps):
        nominal = min(4.0, 0.5 * 2 ** n)
        assert nominal / 2 - 0.06 <= gap <= nominal + 0.06, (n, gap, gaps)
    assert max(gaps) <= 4.06
    network.up = True
    run_until(clock, network, lambda: client.connected)
    finish(client, network)


def test_waiting_request_times_out_without_connection(network, clock):
    network.up = False
    client = make_client(network, clock, request_timeout=2.0)
    d = client.ping()
    clock.advance(2.0)
    assert failure_of(d).check(errors.Timeout)
    finish(client, network)


def test_in_flight_request_fails_with_connection_lost_and_client_reconnects(network, clock):
    client = make_client(network, clock, reconnect_min=0.2, reconnect_max=1.0)
    network.pump()
    got(network, client.create_topic("t"))
    waiting = client.poll("t", 0, 0, max_wait_ms=10_000)
    network.pump()
    network.drop()
    assert failure_of(waiting).check(errors.ConnectionLost)
    assert not client.connected
    d = client.ping()
    run_until(clock, network, lambda: d.called)
    assert result_of(d)["pong"] is True
    finish(client, network)


def test_close_fails_waiting_requests_and_stops_reconnecting(network, clock):
    network.up = False
    client = make_client(network, clock)
    d = client.ping()
    finish(client, network)
    assert failure_of(d).check(errors.ConnectionLost)
    assert failure_of(client.ping()).check(errors.ConnectionLost)
    n = len(network.attempts)
    clock.advance(100)
    assert len(network.attempts) == n


def test_cancel_a_waiting_request(network, clock):
    network.up = False
    client = make_client(network, clock)
    d = client.ping()
    d.cancel()
    failure_of(d)
    network.up = True
    clock.advance(1)
    network.pump()
    finish(client, network)


# --- dialling early, and not at all ----------------------------------------------------------------


def after_next_attempt(clock, network, then=0.0):
    """Advance until the client's next connection attempt, then C{then} seconds more."""
    n = len(network.attempts)
    while len(network.attempts) == n:
        clock.advance(0.01)
    clock.advance(then)


def test_dial_now_attempts_at_once_and_starts_the_backoff_again(network, clock):
    network.up = False
    client = make_client(network, clock, reconnect_min=0.5, reconnect_max=8.0, request_timeout=None)
    clock.pump([0.05] * 400)  # 20 s: the backoff is at its 8 s cap
    after_next_attempt(clock, network, then=0.6)  # the next one is 4-8 s away
    n = len(network.attempts)
    assert client.dial_now() is False  # attempted now, refused again...
    assert network.attempts[n:] == [clock.seconds()]
    assert client.dial_now() is False  # ...and not again within reconnect_min of that refusal
    assert len(network.attempts) == n + 1
    clock.advance(0.2)
    assert len(network.attempts) == n + 1
    after_next_attempt(clock, network)  # backing off from reconnect_min again: within 0.25-0.5 s
    assert 0.25 <= network.attempts[-1] - network.attempts[-2] <= 0.51
    clock.advance(0.6)
    network.up = True
    assert client.dial_now() is True
    network.pump()
    assert client.connected
    finish(client, network)


def test_dial_now_does_nothing_while_connected_or_closed(network, clock):
    client = make_client(network, clock)
    network.pump()
    assert client.connected and client.dial_now() is True
    assert len(network.attempts) == 1
    finish(client, network)
    assert client.dial_now() is False


def test_a_request_made_while_an_attempt_is_on_waits_for_it(network, clock):
    network.up = False
    client = make_client(network, clock, reconnect_min=0.1, fail_waiting_on_connect_failure=True, request_timeout=5.0)
    assert failure_of(client.ping()).check(errors.ConnectionLost)  # the last attempt failed: at once
    hanging: list = []
    network.up = True
    real = network.connect
    network.connect = lambda factory: hanging.append(factory) or Deferred()  # type: ignore[method-assign]
    clock.advance(0.2)  # the next attempt starts, and hangs
    assert len(hanging) == 1 and client.dialling
    d = client.ping()
    assert not d.called  # it waits for the attempt on, not failed as "cannot connect"
    network.connect = real  # type: ignore[method-assign]
    finish(client, network)
    assert failure_of(d).check(errors.ConnectionLost)


def test_an_idle_connection_stops_dialling_after_the_limit_and_a_request_dials_again(network, clock):
    network.up = False
    client = make_client(network, clock, reconnect_min=0.1, reconnect_max=1.0, idle_dial_limit=3,
                         fail_waiting_on_connect_failure=True, request_timeout=5.0)
    clock.pump([0.1] * 600)  # 60 s
    assert len(network.attempts) == 3 and client.dormant
    network.up = True
    d = client.ping()  # a request needs it: one attempt, now
    assert len(network.attempts) == 4
    assert got(network, d)["pong"] is True
    assert not client.dormant
    finish(client, network)


def test_a_request_to_a_dormant_connection_of_a_dead_node_costs_one_attempt(network, clock):
    network.up = False
    client = make_client(network, clock, reconnect_min=0.1, reconnect_max=1.0, idle_dial_limit=2,
                         fail_waiting_on_connect_failure=True, request_timeout=5.0)
    clock.pump([0.1] * 100)
    assert len(network.attempts) == 2 and client.dormant
    assert failure_of(client.ping()).check(errors.ConnectionLost)  # that attempt failed too: at once
    assert len(network.attempts) == 3
    assert failure_of(client.ping()).check(errors.ConnectionLost)  # within the backoff: no attempt
    assert len(network.attempts) == 3
    clock.pump([0.1] * 100)
    assert len(network.attempts) == 3 and client.dormant  # nothing waits: dormant again
    assert client.refused_unsent == 2
    finish(client, network)


def test_idle_dial_limit_must_be_positive(network, clock):
    with pytest.raises(ValueError):
        make_client(network, clock, idle_dial_limit=0)

"""Connection attempts that never end (a SYN into a black hole: a host powered off, a firewall).

A call waiting for a connection that never comes fails at its timeout (StreamlogClient and
ClusterClient, on a Clock), and the attempt itself fails at the client's C{connect_timeout}, as a
refused one does: the backoff goes on from there, the requests waiting for it fail unsent (a
cluster client's), and a node back from the dead is dialled again on news of it instead of
staying "attempting" for the endpoint's own 30 s.
"""

from __future__ import annotations

import random

import pytest
from client_support import failure_of
from fake_cluster import close_client, cluster_client, run_for, run_until
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from streamlog import cli, errors
from streamlog.client.addresses import check_bootstrap
from streamlog.client.blocking import BlockingClient
from streamlog.client.cluster import ClusterClient
from streamlog.client.connection import StreamlogClient
from streamlog.client.producer import Producer
from streamlog.client.retry import backoff_policy
from streamlog.tap import consumer as consumer_tap
from streamlog.tap import producer as producer_tap
from streamlog.testing import result_of


class NeverConnects:
    """An endpoint whose connection attempts never end (nor fail)."""

    def __init__(self):
        self.attempts = []

    def connect(self, factory):
        d = Deferred()
        self.attempts.append(d)
        return d


def advance_until(clock, d, seconds, step=0.1):
    """Advance in steps until C{d} fired; the virtual time it took."""
    start = clock.seconds()
    while not d.called and clock.seconds() - start < seconds:
        clock.advance(step)
    return clock.seconds() - start


@pytest.mark.parametrize("timeout", [None, 1.5])
def test_a_node_client_call_fails_at_its_timeout(clock, timeout):
    endpoint = NeverConnects()
    client = StreamlogClient(endpoint, clock=clock, request_timeout=3.0)
    d = client.call("Ping", {}, timeout=timeout)
    took = advance_until(clock, d, 60)
    error = failure_of(d).value
    assert isinstance(error, errors.Timeout) and error.details["sent"] is False
    assert took == pytest.approx(timeout or 3.0, abs=0.11)
    client.close()
    for attempt in endpoint.attempts:
        attempt.cancel()


@pytest.mark.parametrize("via", ["bootstrap", "over"])
def test_a_cluster_client_call_fails_at_its_timeout(clock, via):
    endpoint = NeverConnects()
    if via == "over":
        client = ClusterClient.over(StreamlogClient(endpoint, clock=clock, request_timeout=30.0))
    else:
        client = ClusterClient("127.0.0.1:1", clock=clock, endpoint_factory=lambda address: endpoint,
                               request_timeout=30.0)
    d = client.call("Ping", {}, timeout=2.0)
    took = advance_until(clock, d, 60)
    assert isinstance(failure_of(d).value, errors.Timeout)
    assert took == pytest.approx(2.0, abs=0.11)
    client.close()
    clock.advance(60)  # what the closed client still had scheduled runs out
    for attempt in endpoint.attempts:
        attempt.cancel()


# --- connect_timeout --------------------------------------------------------------------------


def run_timers(clock, until):
    """Run the clock's timers in order, each at its own time (not a step grid's), up to C{until}."""
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.active()]
        if not due or min(due) > until:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, until - clock.seconds()))


class TimedNeverConnects(NeverConnects):
    """L{NeverConnects}, noting when each attempt started and when it failed."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.started, self.ended = [], []

    def connect(self, factory):
        self.started.append(self.clock.seconds())
        d = super().connect(factory)
        d.addErrback(lambda f: self.ended.append(self.clock.seconds()) or f)
        return d


def test_an_attempt_that_never_ends_fails_at_the_connect_timeout_and_the_next_follows_the_backoff(clock):
    endpoint = TimedNeverConnects(clock)
    client = StreamlogClient(endpoint, clock=clock, connect_timeout=2.0, reconnect_min=1.0, reconnect_max=4.0,
                             rng=random.Random(5))
    run_timers(clock, until=12.0)
    backoff = backoff_policy(1.0, 4.0, random.Random(5))  # the same jitter as the client's
    expected = [0.0]
    for n in (1, 2):
        expected.append(expected[-1] + 2.0 + backoff(n))
    assert endpoint.started[:3] == pytest.approx(expected)
    assert endpoint.ended[:2] == pytest.approx([2.0, expected[1] + 2.0])
    assert client._named.timed_out >= 2
    assert client._named.last_error == "The connection attempt timed out: no connection within 2s (connect timeout)."
    close_and_drain(clock, client, endpoint)


def test_a_timed_out_attempt_fails_the_waiting_requests_as_a_refused_one_does(clock):
    """A cluster client's node connection fails what waits for it at once when an attempt fails
    (it then asks elsewhere): a timed-out attempt is such a failure, at connect_timeout, not at
    the request's own timeout."""
    endpoint = NeverConnects()
    client = StreamlogClient(endpoint, clock=clock, request_timeout=20.0, connect_timeout=1.5,
                             fail_waiting_on_connect_failure=True)
    d = client.call("Ping", {})
    took = advance_until(clock, d, 30)
    error = failure_of(d).value
    assert isinstance(error, errors.ConnectionLost) and error.details["sent"] is False
    assert "connect timeout" in error.message
    assert took == pytest.approx(1.5, abs=0.11)
    assert client.refused_unsent == 1
    close_and_drain(clock, client, endpoint)


def test_without_a_connect_timeout_the_attempt_lasts_as_long_as_the_endpoint_lets_it(clock):
    endpoint = NeverConnects()
    client = StreamlogClient(endpoint, clock=clock, connect_timeout=None)
    clock.advance(60)
    assert len(endpoint.attempts) == 1 and client.dialling
    assert not clock.getDelayedCalls()  # no timer of the client's own
    close_and_drain(clock, client, endpoint)


def test_closing_while_an_attempt_is_on_cancels_it_and_its_timer(clock):
    endpoint = NeverConnects()
    client = StreamlogClient(endpoint, clock=clock, connect_timeout=5.0)
    clock.advance(1)
    client.close()
    assert endpoint.attempts[0].called and not client.dialling
    assert client._named.timed_out == 0  # stopped, not timed out
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def close_and_drain(clock, client, endpoint):
    client.close()
    clock.advance(60)
    for attempt in endpoint.attempts:
        if not attempt.called:
            attempt.cancel()


@pytest.mark.parametrize(("address", "given", "expected"), [
    ("127.0.0.1:7070", 2.5, 2.5),  # HostnameEndpoint(timeout=)
    ("tcp:127.0.0.1:7070", 2.5, 3),  # whole seconds in an endpoint string, rounded up
    ("tcp:127.0.0.1:7070:timeout=60", 2.5, 60),  # the user's own is kept
    ("tcp:host=127.0.0.1:port=7070", 0.2, 1),
    ("127.0.0.1:7070", None, 30),  # Twisted's default
    ("tcp:127.0.0.1:7070", None, 30),
])
def test_the_endpoint_is_built_with_the_connect_timeout(address, given, expected):
    reactor = MemoryReactorClock()
    client = StreamlogClient(address, reactor=reactor, clock=reactor, connect_timeout=given)
    reactor.advance(0)  # HostnameEndpoint resolves (at once here), then connects
    assert [c[:2] for c in reactor.tcpClients] == [("127.0.0.1", 7070)]
    assert reactor.tcpClients[0][3] == expected
    client.close()


def test_a_unix_endpoint_string_gets_the_connect_timeout_too():
    reactor = MemoryReactorClock()
    client = StreamlogClient("unix:/tmp/no-such.sock", reactor=reactor, clock=reactor, connect_timeout=4)
    assert reactor.unixClients[0][0] == "/tmp/no-such.sock" and reactor.unixClients[0][2] == 4
    client.close()


def test_the_attempt_is_given_up_on_the_clients_clock_and_its_connector_stopped():
    reactor = MemoryReactorClock()  # it never connects nor times anything out itself
    client = StreamlogClient("127.0.0.1:7070", reactor=reactor, clock=reactor, connect_timeout=2.0,
                             reconnect_min=5.0, reconnect_max=5.0)
    reactor.advance(1.9)
    assert client.dialling and not reactor.connectors[0].stoppedConnecting
    reactor.advance(0.2)
    assert not client.dialling and reactor.connectors[0].stoppedConnecting
    assert "connect timeout" in client._named.last_error
    client.close()


def test_an_endpoint_string_naming_its_own_timeout_keeps_it_for_the_attempt_too():
    reactor = MemoryReactorClock()
    client = StreamlogClient("tcp:127.0.0.1:7070:timeout=6", reactor=reactor, clock=reactor, connect_timeout=2.0,
                             reconnect_min=5.0, reconnect_max=5.0)
    reactor.advance(5.9)
    assert client.dialling
    reactor.advance(0.2)
    assert not client.dialling and "within 6s" in client._named.last_error
    client.close()


def test_a_cluster_client_gives_its_connect_timeout_to_its_node_connections():
    reactor = MemoryReactorClock()
    client = ClusterClient("tcp:127.0.0.1:7071:timeout=4,127.0.0.1:7072", reactor=reactor, clock=reactor,
                           connect_timeout=2.0)
    first, second = (client.node_client(a) for a in client.bootstrap)
    reactor.advance(0)
    assert sorted(c[3] for c in reactor.tcpClients) == [2.0, 4]
    assert (first._named.timeout, second._named.timeout) == (4, 2.0)
    over = ClusterClient.over(StreamlogClient("127.0.0.1:7073", reactor=reactor, clock=reactor, connect_timeout=3.0))
    assert over.connect_timeout == 3.0
    assert over.node_client("127.0.0.1:7074")._named.timeout == 3.0
    client.close()
    over.close()


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_a_connect_timeout_that_is_not_positive_is_refused(bad):
    for make in (lambda: StreamlogClient(NeverConnects(), clock=Clock(), connect_timeout=bad),
                 lambda: ClusterClient("127.0.0.1:1", clock=Clock(), endpoint_factory=lambda a: NeverConnects(),
                                       connect_timeout=bad),
                 lambda: BlockingClient("127.0.0.1:1", connect_timeout=bad)):
        with pytest.raises(ValueError, match="connect_timeout must be positive"):
            make()


@pytest.mark.parametrize("bad", ["tcp:127.0.0.1:7070:timeout=0", "tcp:127.0.0.1:7070:timeout=soon",
                                 "tcp:127.0.0.1:7070:timeout=2.5", "unix:/tmp/s:timeout=inf"])
def test_a_bad_timeout_in_an_endpoint_string_is_refused_with_the_address(bad):
    with pytest.raises(ValueError, match="the connect timeout must be a positive (whole )?number"):
        check_bootstrap(bad)


def test_the_blocking_client_connects_within_its_connect_timeout_at_most_its_timeout():
    assert BlockingClient("127.0.0.1:1", timeout=30.0)._nodes["127.0.0.1:1"].connect_timeout == 10.0
    assert BlockingClient("127.0.0.1:1", timeout=3.0)._nodes["127.0.0.1:1"].connect_timeout == 3.0
    assert BlockingClient("127.0.0.1:1", timeout=None, connect_timeout=None)._nodes["127.0.0.1:1"].connect_timeout \
        is None
    named = BlockingClient("tcp:127.0.0.1:1:timeout=20", timeout=30.0, connect_timeout=2.0)
    assert named._nodes["127.0.0.1:1"].connect_timeout == 20.0



def test_the_kernels_own_connect_timeout_without_ours_is_a_timeout_error_not_a_crash(monkeypatch):
    # timeout=None, connect_timeout=None: the kernel gives up on its SYNs (ETIMEDOUT, a
    # TimeoutError in Python) after minutes; the message formatted None and raised TypeError.
    import errno
    import socket

    def dark(*args, **kwargs):
        raise TimeoutError(errno.ETIMEDOUT, "Connection timed out")

    monkeypatch.setattr(socket, "create_connection", dark)
    node = BlockingClient("127.0.0.1:1", timeout=None, connect_timeout=None)._nodes["127.0.0.1:1"]
    with pytest.raises(errors.Timeout, match=r"timed out \(the system's connect timeout\)") as timed_out:
        node.connect()
    assert timed_out.value.details["sent"] is False

# --- a node powered off, and back: the cluster client -------------------------------------------


def power_off(cluster, node_id):
    """The node's machine goes dark: its connections close and dials to it get no answer
    (their SYNs are dropped) until it is back (L{FakeCluster.revive})."""
    cluster.kill(node_id)
    cluster.nodes[node_id].drop_syns = True


def send(clock, cluster, producer, n, limit=60.0):
    d = producer.send("t", {"n": n}, partition=0)
    run_until(clock, cluster, lambda: d.called, limit=limit)
    result_of(d)
    return clock.seconds()


@pytest.mark.parametrize(("connect_timeout", "dark"), [(3.0, 4.1), (3.0, 12.0), (None, 3.0)])
def test_a_node_back_from_a_power_off_is_dialled_again_within_the_connect_timeout(clock, cluster, connect_timeout,
                                                                                  dark):
    """Partition 0's leader goes dark for C{dark} seconds (a dial to it waits for an answer that
    never comes), its partition moves, and it comes back and leads again while a dial is on: the
    Send routed there is acknowledged once that dial has failed at the connect timeout (at most
    3 s after it started) and the next one, noted on the NOT_LEADER hint's news, has gone
    C{reconnect_min} (0.1 s) later; the call's own retry backoff (at most 1 s) on top.  Without a
    connect timeout the node stays "attempting" until the dial's own (Twisted's 30 s here), and
    the Send waits that long."""
    client = cluster_client(clock, cluster, seed=3, request_timeout=5.0, connect_timeout=connect_timeout)
    producer = Producer(client, linger_ms=1, delivery_timeout=60.0)
    cluster.create_topic("t", 1, leaders=[1])
    send(clock, cluster, producer, 0)
    power_off(cluster, 1)
    cluster.move_leader("t", 0, 2)
    send(clock, cluster, producer, 1)
    run_for(clock, cluster, dark, step=0.05)
    node_1 = client.connections[cluster.nodes[1].address]
    assert node_1.dialling  # a dial into the dark is on
    assert (node_1._named.timed_out == 0) == (connect_timeout is None)  # dials given up at the connect timeout
    cluster.revive(1)
    cluster.move_leader("t", 0, 1)
    back = clock.seconds()
    took = send(clock, cluster, producer, 2) - back
    assert [v["n"] for v in cluster.values("t", 0)] == [0, 1, 2]
    if connect_timeout is not None:
        assert took <= connect_timeout + 0.1 + 1.0, f"acknowledged {took:.2f}s after the node was back"
    else:
        assert took > 20.0  # the dial started before the node was back ends at its 30 s
    close_client(client, cluster)


def test_news_of_a_node_while_a_dial_is_on_brings_the_next_one_at_reconnect_min_if_it_fails(clock):
    """A dial that started while the node was dark ends only at the connect timeout; the cluster
    said meanwhile that the node is up (L{StreamlogClient.dial_now} then finds the attempt on): the
    next attempt goes C{reconnect_min} after it failed, not after a backoff grown by the failures
    in the dark, and the backoff starts again from there."""
    endpoint = TimedNeverConnects(clock)
    client = StreamlogClient(endpoint, clock=clock, connect_timeout=2.0, reconnect_min=0.5, reconnect_max=8.0,
                             rng=random.Random(1))
    run_timers(clock, until=20.0)  # failures in a row: the backoff is seconds long by now
    while not client.dialling:
        run_timers(clock, until=clock.seconds() + 0.01)
    assert client.dial_now() is True  # an attempt is on: noted, nothing dialled
    attempts = len(endpoint.started)
    run_timers(clock, until=endpoint.started[-1] + 2.0)
    assert len(endpoint.started) == attempts and endpoint.ended[-1] == pytest.approx(endpoint.started[-1] + 2.0)
    failed_at = endpoint.ended[-1]
    run_timers(clock, until=failed_at + 0.5)
    assert endpoint.started[-1] == pytest.approx(failed_at + 0.5)
    run_timers(clock, until=failed_at + 0.5 + 2.0)  # that one fails too: the backoff starts from reconnect_min
    assert client._waits == 1
    close_and_drain(clock, client, endpoint)


# --- the daemons' and the command's --connect-timeout ---------------------------------------------


def daemon_options(module, *argv):
    o = module.Options()
    o.parseOptions(["-t", "t", *argv])
    return o


@pytest.mark.parametrize("module", [producer_tap, consumer_tap])
def test_the_daemons_take_a_connect_timeout(monkeypatch, module):
    monkeypatch.delenv("STREAMLOG_CONNECT", raising=False)
    assert daemon_options(module)["connect-timeout"] == 10.0
    assert daemon_options(module, "--connect-timeout", "2.5")["connect-timeout"] == 2.5
    for bad in ("0", "-1", "inf"):
        with pytest.raises(usage.UsageError, match="--connect-timeout must be positive"):
            daemon_options(module, "--connect-timeout", bad)
    with pytest.raises(usage.UsageError, match=r"--connect: timeout=x in .*positive whole number of seconds"):
        daemon_options(module, "--connect", "tcp:127.0.0.1:7070:timeout=x")


def test_the_daemon_builds_its_cluster_client_with_the_connect_timeout(monkeypatch):
    monkeypatch.delenv("STREAMLOG_CONNECT", raising=False)
    reactor = MemoryReactorClock()  # dials that never connect: nothing real is touched
    options = daemon_options(producer_tap, "--connect", "127.0.0.1:7071,tcp:127.0.0.1:7072:timeout=7",
                             "--connect-timeout", "2.5", "--count", "1")
    service = producer_tap.ProducerService(options, reactor=reactor, on_finish=lambda status: None, read_stdin=False)
    service.startService()
    try:
        assert service.client.connect_timeout == 2.5
        reactor.advance(0)
        assert [c[1] for c in reactor.tcpClients] == [7071]  # the first of the bootstrap list
        reactor.advance(3.0)  # its dial timed out at 2.5 s: the next bootstrap address is asked
        assert [(c[1], c[3]) for c in reactor.tcpClients] == [(7071, 2.5), (7072, 7)]
    finally:
        service.stopService()
        reactor.advance(60)


class RecordingClient:
    """Stands in for the blocking client of C{streamlog}: notes how it was made; Ping fails."""

    made: list = []

    def __init__(self, address, **kw):
        RecordingClient.made.append(kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def ping(self):
        raise errors.ConnectionLost("cannot connect (test)", sent=False)


@pytest.mark.parametrize("argv", [["--connect-timeout", "2.5", "ping"], ["ping", "--connect-timeout", "2.5"]])
def test_the_command_passes_its_connect_timeout_to_the_client(monkeypatch, argv):
    monkeypatch.setattr(cli, "BlockingClient", RecordingClient)
    RecordingClient.made = []
    assert cli.main(["--connect", "127.0.0.1:1", *argv]) == cli.EXIT_ERROR
    assert RecordingClient.made == [{"timeout": 30.0, "connect_timeout": 2.5}]


def test_a_connect_timeout_that_is_not_positive_is_a_usage_error_of_the_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--connect", "127.0.0.1:1", "--connect-timeout", "0", "ping"])
    assert exit_.value.code == cli.EXIT_USAGE
    assert "--connect-timeout must be more than 0" in capsys.readouterr().err


class Refuses:
    def connect(self, factory):
        return fail(ConnectionRefusedError())


@pytest.mark.parametrize("endpoint", [Refuses, NeverConnects])
def test_a_client_closed_by_a_request_failed_for_want_of_a_connection_stops(clock, endpoint):
    """The requests waiting for a connection fail from inside ClientService's own transition (its
    retry policy); a caller that closes the client right there (as code that gives up on a
    server does) got automat's RuntimeError (a reentrant stop) and a service left running."""
    client = StreamlogClient(endpoint(), clock=clock, connect_timeout=1.0, fail_waiting_on_connect_failure=True,
                             start=False)
    closed = []
    d = client.call("Ping", {})  # waits for the first attempt
    d.addErrback(lambda f: closed.append(client.close()) or f)
    client.start()
    clock.advance(1.0)
    assert isinstance(failure_of(d).value, errors.ConnectionLost)
    clock.advance(0)
    result_of(closed[0])
    assert not client._service.running and not client.dialling

"""The cluster simulator's network (streamlog.cluster.sim.network): what it does to a dial.

A dial to a paused (SIGSTOPped) host connects at once, as the host's kernel completes the
handshake while the process is stopped; the dialer's bytes wait, and the process accepts the
connection when resumed; should it die first, the dialer sees the connection close. (Held
unanswered instead, a dial kept the real client's connection "attempting" for the rest of a run,
seed 91020; held until SIGCONT, it was given up at the peers' 2 s connect timeout, which a real
paused host never makes a dialer do: the protocol stalls on an open connection instead.)
"""

from __future__ import annotations

import random

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol

from streamlog.cluster.sim.clock import NodeClock, SimClock
from streamlog.cluster.sim.network import SimNetwork


class Recorder(Protocol):
    """Keeps what it is given, and every instance made."""

    made: list[Recorder] = []

    def __init__(self) -> None:
        self.received = b""
        self.lost: list = []
        Recorder.made.append(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.lost.append(reason)


def network_with_a_paused_server() -> tuple[SimClock, SimNetwork, NodeClock]:
    clock = SimClock()
    network = SimNetwork(clock, random.Random(1))
    server = NodeClock(clock, "n1")
    network.add_host("n1", "127.0.0.1", server)
    network.add_host("client", "127.0.9.1")
    network.listen("127.0.0.1:7000", "n1", Factory.forProtocol(Recorder))
    server.pause()
    Recorder.made = []
    return clock, network, server


def run(clock: SimClock, seconds: float) -> None:
    for _ in range(round(seconds / 0.01)):
        clock.advance(0.01)


def outcome(d):
    box = []
    d.addBoth(box.append)
    return box


def test_a_dial_to_a_paused_host_connects_at_once_and_its_bytes_wait_for_the_process():
    clock, network, server = network_with_a_paused_server()
    got = outcome(network.endpoint("client", "127.0.0.1:7000").connect(Factory.forProtocol(Recorder)))
    run(clock, 0.1)
    assert len(got) == 1 and isinstance(got[0], Recorder)  # the kernel's handshake: no process needed
    assert Recorder.made == [got[0]]  # the server's process has accepted nothing
    got[0].transport.write(b"hello")
    run(clock, 5.0)
    assert Recorder.made == [got[0]]  # still stopped: the bytes wait
    server.resume()
    run(clock, 0.1)
    accepted = Recorder.made[1]
    assert accepted.received == b"hello" and not got[0].lost


def test_a_connection_a_paused_host_never_accepted_closes_when_it_dies():
    clock, network, server = network_with_a_paused_server()
    got = outcome(network.endpoint("client", "127.0.0.1:7000").connect(Factory.forProtocol(Recorder)))
    run(clock, 0.1)
    server.kill()  # power loss while stopped: the process never accepts
    network.kill("n1")
    run(clock, 0.1)
    assert len(got) == 1 and len(got[0].lost) == 1 and got[0].lost[0].check(ConnectionDone)
    assert Recorder.made == [got[0]]

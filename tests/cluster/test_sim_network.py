"""The cluster simulator's network (streamlog.cluster.sim.network): what it does to a dial.

A dial to a paused host is accepted once the host is resumed; should the host
die first, the dial is refused.  Left unanswered, it kept the real client's
connection "attempting" for the rest of the run (seed 91020: a producer never
reached the partition's leader again after a pause and a power loss), which
no TCP stack does: a dialer's SYN is reset by the rebooted host, or times out.
"""

from __future__ import annotations

import random

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol

from streamlog.cluster.sim.clock import NodeClock, SimClock
from streamlog.cluster.sim.network import SimNetwork


def network_with_a_paused_server() -> tuple[SimClock, SimNetwork, NodeClock]:
    clock = SimClock()
    network = SimNetwork(clock, random.Random(1))
    server = NodeClock(clock, "n1")
    network.add_host("n1", "127.0.0.1", server)
    network.add_host("client", "127.0.9.1")
    network.listen("127.0.0.1:7000", "n1", Factory.forProtocol(Protocol))
    server.pause()
    return clock, network, server


def outcome(d):
    box = []
    d.addBoth(box.append)
    return box


def test_a_dial_to_a_paused_host_is_accepted_once_it_is_resumed():
    clock, network, server = network_with_a_paused_server()
    got = outcome(network.endpoint("client", "127.0.0.1:7000").connect(Factory.forProtocol(Protocol)))
    clock.advance(1.0)
    assert got == []  # held while the host is stopped
    server.resume()
    clock.advance(0.1)
    assert len(got) == 1 and isinstance(got[0], Protocol)


def test_a_dial_held_by_a_paused_host_that_dies_is_refused():
    clock, network, server = network_with_a_paused_server()
    got = outcome(network.endpoint("client", "127.0.0.1:7000").connect(Factory.forProtocol(Protocol)))
    clock.advance(0.1)
    server.kill()  # power loss while stopped: the held accept never runs
    network.kill("n1")
    clock.advance(0.1)
    assert len(got) == 1 and got[0].check(ConnectionRefusedError)

"""The Twisted driver: groups multiplexed over one connection per node pair, in memory."""

import random

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from streamlog.raft.core import LEADER, RaftConfig, Send, SyncLog
from streamlog.raft.driver import GroupCallbacks, MemoryGroupStorage, NotLeaderError, PeerProtocol, RaftHost
from streamlog.raft.log import MemoryRaftLog
from streamlog.raft.messages import AppendEntries, InstallSnapshot, TimeoutNow, from_dict, to_dict

CFG = RaftConfig(election_timeout=0.3, heartbeat_interval=0.05)
IDS = ["a", "b", "c"]


class Recorder(GroupCallbacks):
    def __init__(self):
        self.commits: dict[str, int] = {}
        self.roles: list[tuple] = []

    def committed(self, group, upto):
        self.commits[group] = upto

    def role_changed(self, group, role, term, leader):
        self.roles.append((group, role, term, leader))


def cluster(groups=("g1", "g2", "g3")):
    clock = Clock()
    recorders = {i: Recorder() for i in IDS}
    hosts = {i: RaftHost(i, IDS, CFG, recorders[i], clock=clock, rng=random.Random(i)) for i in IDS}
    for h in hosts.values():
        for g in groups:
            h.add_group(g, IDS, MemoryGroupStorage(MemoryRaftLog()))
        h.start()
    pumps = []
    for x, y in [("a", "b"), ("a", "c"), ("b", "c")]:
        client, server, pump = iosim.connectedServerAndClient(
            lambda y=y: PeerProtocol(hosts[y]), lambda x=x: PeerProtocol(hosts[x]))
        pumps.append(pump)

    def run(seconds, step=0.01):
        for _ in range(int(seconds / step)):
            clock.advance(step)
            clock.advance(0)
            for p in pumps:
                p.flush()
            clock.advance(0)
            for p in pumps:
                p.flush()

    return clock, hosts, recorders, run


def leader_of(hosts, group):
    leaders = [h for h in hosts.values() if h.groups[group].node.role == LEADER]
    return max(leaders, key=lambda h: h.groups[group].node.term) if leaders else None


def test_many_groups_elect_and_commit_over_one_connection_per_pair():
    clock, hosts, recorders, run = cluster()
    run(2.0)
    assert all(len(h.connections) == 2 for h in hosts.values())
    for g in ("g1", "g2", "g3"):
        leader = leader_of(hosts, g)
        assert leader is not None
        index = leader.propose(g, b"hello " + g.encode())
        assert isinstance(index, int)
        run(0.3)
        assert all(recorders[i].commits.get(g, 0) >= index for i in IDS)
        for h in hosts.values():
            assert h.groups[g].node.log.entries(index, index + 1, 100)[0].data == b"hello " + g.encode()
    for h in hosts.values():
        h.stop()
    assert not clock.getDelayedCalls()


def test_leadership_transfer_through_the_driver():
    clock, hosts, recorders, run = cluster(groups=("g1",))
    run(2.0)
    leader = leader_of(hosts, "g1")
    target = next(i for i in IDS if i != leader.node_id)
    leader.transfer_leadership("g1", target)
    run(0.5)
    assert leader_of(hosts, "g1") is hosts[target]
    for h in hosts.values():
        h.stop()


class CountingTransport(StringTransport):
    writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)


def connected(host, peer="b"):
    proto = PeerProtocol(host)
    transport = CountingTransport()
    proto.makeConnection(transport)
    proto.dataReceived(orjson.dumps({"node": peer}) + b"\n")
    transport.clear()
    transport.writes = 0
    return proto, transport


def test_lines_for_many_groups_in_one_turn_share_one_write():
    clock = Clock()
    host = RaftHost("a", ["a", "b"], CFG, clock=clock)
    proto, transport = connected(host)
    for g in range(50):
        host._send("b", f"g{g}", AppendEntries(1, "a", 0, 0, (), 0))
    assert transport.writes == 0
    clock.advance(0)
    assert transport.writes == 1
    lines = transport.value().splitlines()
    assert len(lines) == 50
    assert orjson.loads(lines[7]) == {"group": "g7", "from": "a", "msg": to_dict(AppendEntries(1, "a", 0, 0, (), 0))}


def test_bad_lines_are_dropped_and_the_connection_kept():
    clock = Clock()
    host = RaftHost("a", ["a", "b"], CFG, clock=clock)
    host.add_group("g", ["a", "b"], MemoryGroupStorage(MemoryRaftLog()))
    proto, transport = connected(host)
    proto.dataReceived(b"{not json\n")
    proto.dataReceived(orjson.dumps({"group": "g", "from": "c", "msg": to_dict(TimeoutNow(1, "c"))}) + b"\n")
    proto.dataReceived(orjson.dumps({"group": "g", "from": "b", "msg": {"type": "nope"}}) + b"\n")
    proto.dataReceived(orjson.dumps({"group": "g", "from": "b", "msg": {"type": ["append_entries"]}}) + b"\n")
    proto.dataReceived(orjson.dumps({"group": "zz", "from": "b", "msg": to_dict(TimeoutNow(1, "b"))}) + b"\n")
    assert not transport.disconnecting
    assert host.groups["g"].node.term == 0


def test_unknown_peer_is_disconnected():
    host = RaftHost("a", ["a", "b"], CFG, clock=Clock())
    proto = PeerProtocol(host)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b'{"node": "mallory"}\n')
    assert transport.disconnecting
    assert host.connections == {}


def test_later_effects_wait_for_the_fsync_deferred():
    clock = Clock()
    host = RaftHost("a", ["a", "b"], CFG, clock=clock)

    class SlowDisk(MemoryGroupStorage):
        pending: list = []

        def sync_log(self):
            d = Deferred()
            self.pending.append(d)
            return d

    storage = SlowDisk(MemoryRaftLog())
    host.add_group("g", ["a", "b"], storage)
    sent = []
    host._send = lambda peer, group, msg: sent.append((peer, group, msg))
    runner = host.groups["g"]
    msg = AppendEntries(1, "a", 0, 0, (), 0)
    runner.feed([SyncLog(1), Send("b", msg)])
    runner.feed([Send("b", msg)])  # a later call's effects queue behind the barrier too
    assert sent == []
    storage.pending[0].callback(None)
    assert sent == [("b", "g", msg), ("b", "g", msg)]


def test_a_failed_fsync_stops_the_group():
    host = RaftHost("a", ["a", "b"], CFG, clock=Clock())

    class BrokenDisk(MemoryGroupStorage):
        def sync_log(self):
            raise OSError("disk gone")

    host.add_group("g", ["a", "b"], BrokenDisk(MemoryRaftLog()))
    sent = []
    host._send = lambda peer, group, msg: sent.append(msg)
    host.groups["g"].feed([SyncLog(1), Send("b", AppendEntries(1, "a", 0, 0, (), 0))])
    assert sent == []
    assert host.groups["g"].blocked


def test_a_joining_node_is_added_through_the_driver():
    clock = Clock()
    ids = IDS + ["d"]  # d knows no members of g1 yet
    recorders = {i: Recorder() for i in ids}
    hosts = {i: RaftHost(i, ids, CFG, recorders[i], clock=clock, rng=random.Random(i)) for i in ids}
    for i, h in hosts.items():
        h.add_group("g1", IDS if i != "d" else [], MemoryGroupStorage(MemoryRaftLog()))
        h.start()
    pumps = []
    for n, x in enumerate(ids):
        for y in ids[n + 1:]:
            _, _, pump = iosim.connectedServerAndClient(
                lambda y=y: PeerProtocol(hosts[y]), lambda x=x: PeerProtocol(hosts[x]))
            pumps.append(pump)

    def run(seconds, step=0.01):
        for _ in range(int(seconds / step)):
            clock.advance(step)
            for _ in range(2):
                clock.advance(0)
                for p in pumps:
                    p.flush()

    run(2.0)
    leader = leader_of(hosts, "g1")
    assert leader is not None and leader.node_id != "d"
    index = leader.change_membership("g1", add="d")
    assert isinstance(index, int)
    run(0.5)
    assert recorders["d"].commits["g1"] >= index
    assert hosts["d"].groups["g1"].node.voters == set(ids)
    for h in hosts.values():
        h.stop()
    assert not clock.getDelayedCalls()


def test_a_thousand_lines_in_one_read_and_a_line_split_across_reads():
    clock = Clock()
    host = RaftHost("a", ["a", "b"], CFG, clock=clock)
    got = []
    host._receive = lambda peer, group, msg: got.append((peer, group, msg))
    proto, transport = connected(host)
    line = orjson.dumps({"group": "g", "from": "b", "msg": to_dict(TimeoutNow(1, "b"))}) + b"\n"
    proto.dataReceived(line * 1000 + line[:10])
    assert len(got) == 1000
    proto.dataReceived(line[10:])
    assert len(got) == 1001 and got[-1] == ("b", "g", TimeoutNow(1, "b"))


def test_an_over_long_line_closes_the_connection():
    host = RaftHost("a", ["a", "b"], CFG, clock=Clock())
    proto, transport = connected(host)
    proto.MAX_LENGTH = 100
    proto.dataReceived(b"x" * 101)
    assert transport.disconnecting


def test_install_snapshot_carries_the_applications_state():
    clock = Clock()

    class App(GroupCallbacks):
        def snapshot_data(self, group, index):
            return b"state@%d" % index

    host = RaftHost("a", ["a", "b"], CFG, App(), clock=clock)
    proto, transport = connected(host)
    host._send("b", "g", InstallSnapshot(2, "a", 41, 2, b"", ("a", "b")))
    clock.advance(0)
    msg = orjson.loads(transport.value().splitlines()[0])["msg"]
    assert from_dict(msg) == InstallSnapshot(2, "a", 41, 2, b"state@41", ("a", "b"))


def test_submit_fires_when_committed_and_fails_off_the_leader():
    clock, hosts, recorders, run = cluster(groups=("g1",))
    run(2.0)
    leader = leader_of(hosts, "g1")
    follower = next(h for h in hosts.values() if h is not leader)
    results = []
    leader.submit("g1", b"x").addBoth(results.append)
    assert results == []
    run(0.3)
    (index,) = results
    assert leader.groups["g1"].node.log.entries(index, index + 1, 10)[0].data == b"x"
    assert recorders[leader.node_id].commits["g1"] >= index
    refused = []
    follower.submit("g1", b"y").addErrback(lambda f: refused.append(f.value))
    assert isinstance(refused[0], NotLeaderError) and refused[0].leader == leader.node_id
    for h in hosts.values():
        h.stop()


def test_pending_submissions_fail_when_leadership_moves():
    clock, hosts, recorders, run = cluster(groups=("g1",))
    run(2.0)
    leader = leader_of(hosts, "g1")
    runner = leader.groups["g1"]
    outcome = []
    leader.submit("g1", b"z").addErrback(lambda f: outcome.append(f.value))
    runner.feed(runner.node.receive("b" if leader.node_id != "b" else "c",
                                    AppendEntries(runner.node.term + 1, "q", 0, 0, (), 0), clock.seconds()))
    assert isinstance(outcome[0], NotLeaderError)
    for h in hosts.values():
        h.stop()


class FakeEndpoint:
    """Connects to an in-memory peer host each time, recording the transports."""

    def __init__(self, remote_host):
        self.remote = remote_host
        self.pumps = []

    def connect(self, factory):
        from twisted.internet.defer import succeed

        client = factory.buildProtocol(None)
        server = PeerProtocol(self.remote)
        client_transport = iosim.FakeTransport(client, isServer=False)
        server_transport = iosim.FakeTransport(server, isServer=True)
        self.pumps.append(iosim.connect(server, server_transport, client, client_transport, greet=False))
        return succeed(client)


def test_dial_connects_once_per_pair_and_reconnects_after_a_drop():
    clock = Clock()
    a = RaftHost("a", ["a", "b"], CFG, clock=clock)
    b = RaftHost("b", ["a", "b"], CFG, clock=clock)
    endpoint = FakeEndpoint(b)
    assert b.dial("a", FakeEndpoint(a)) is False  # the larger id only accepts
    assert a.dial("b", endpoint) is True
    endpoint.pumps[-1].flush()
    assert set(a.connections) == {"b"} and set(b.connections) == {"a"}
    a.connections["b"].transport.loseConnection()
    endpoint.pumps[-1].flush()
    assert a.connections == {}
    clock.advance(2.0)  # the backoff
    endpoint.pumps[-1].flush()
    assert len(endpoint.pumps) == 2 and set(a.connections) == {"b"}
    a.stop()
    b.stop()
    endpoint.pumps[-1].flush()
    assert not clock.getDelayedCalls()

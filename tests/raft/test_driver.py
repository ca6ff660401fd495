"""The Twisted driver over the peer transport: groups multiplexed over one connection per node
pair, in memory (iosim), with a Clock."""

import random

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.test import iosim

from streamlog.raft.core import LEADER, RaftConfig, Send, SyncLog
from streamlog.raft.driver import GroupCallbacks, MemoryGroupStorage, NotLeaderError, RaftHost
from streamlog.raft.log import MemoryRaftLog
from streamlog.raft.messages import AppendEntries

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


class Net:
    """Hosts connected pairwise by iosim pumps; `run` advances the clock in small steps."""

    def __init__(self, hosts, clock):
        self.hosts = hosts
        self.clock = clock
        self.pumps: dict[tuple[str, str], iosim.IOPump] = {}
        self.cut: set[str] = set()

    def connect(self, x, y):
        """x dials y (x < y)."""
        server, client, pump = iosim.connectedServerAndClient(
            lambda: self.hosts[y].peer_factory().buildProtocol(None),
            lambda: self.hosts[x].peer_factory(expect=y).buildProtocol(None))
        self.pumps[(x, y)] = pump
        return server, client, pump

    def connect_all(self):
        ids = sorted(self.hosts)
        for n, x in enumerate(ids):
            for y in ids[n + 1:]:
                self.connect(x, y)

    def run(self, seconds, step=0.01):
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            for _ in range(3):
                self.clock.advance(0)
                for (x, y), p in list(self.pumps.items()):
                    if x not in self.cut and y not in self.cut:
                        p.flush()

    def kill(self, node):
        """The process dies: its sockets close (the peers see the connection drop at once)."""
        self.close(node)
        self.hosts[node].stop()

    def close(self, node, reset=False):
        """Close `node`'s connections; `reset`: the bytes still in them are lost (a partition)."""
        for (x, y), p in list(self.pumps.items()):
            if node in (x, y):
                if reset:
                    p.client.transport.stream.clear()
                    p.server.transport.stream.clear()
                p.client.transport.loseConnection()
                p.server.transport.loseConnection()
                p.flush()
                del self.pumps[(x, y)]


def cluster(groups=("g1", "g2", "g3"), ids=IDS, cfg=CFG, incarnations=False):
    clock = Clock()
    recorders = {i: Recorder() for i in ids}
    hosts = {i: RaftHost(i, ids, cfg, recorders[i], clock=clock, rng=random.Random(i),
                         incarnation=f"inc{i}" if incarnations else None) for i in ids}
    members = [h.member_id for h in hosts.values()]
    for h in hosts.values():
        for g in groups:
            h.add_group(g, members, MemoryGroupStorage(MemoryRaftLog()))
        h.start()
    net = Net(hosts, clock)
    net.connect_all()
    return clock, hosts, recorders, net


def leader_of(hosts, group, among=None):
    leaders = [h for i, h in hosts.items() if (among is None or i in among) and h.groups[group].node.role == LEADER]
    return max(leaders, key=lambda h: h.groups[group].node.term) if leaders else None


def stop_all(hosts, clock, net=None):
    for h in hosts.values():
        h.stop()
    if net is not None:
        for p in net.pumps.values():
            p.flush()
    clock.advance(0)


def test_many_groups_elect_and_commit_over_one_connection_per_pair():
    clock, hosts, recorders, net = cluster()
    net.run(2.0)
    assert all(len(h.connections) == 2 for h in hosts.values())
    for g in ("g1", "g2", "g3"):
        leader = leader_of(hosts, g)
        assert leader is not None
        index = leader.propose(g, b"hello " + g.encode())
        assert isinstance(index, int)
        net.run(0.3)
        assert all(recorders[i].commits.get(g, 0) >= index for i in IDS)
        for h in hosts.values():
            assert h.groups[g].node.log.entries(index, index + 1, 100)[0].data == b"hello " + g.encode()
    stop_all(hosts, clock, net)
    assert not clock.getDelayedCalls()


def test_entries_travel_as_checked_raw_frames_and_member_ids_route_by_node():
    clock, hosts, recorders, net = cluster(groups=("g1",), incarnations=True)
    net.run(2.0)
    leader = leader_of(hosts, "g1")
    assert leader.member_id.startswith(leader.node_id + ".inc")
    index = leader.propose("g1", b"payload \x00\xff bytes")  # not JSON-safe: only raw frames carry it
    net.run(0.3)
    for h in hosts.values():
        assert h.groups["g1"].node.log.entries(index, index + 1, 100)[0].data == b"payload \x00\xff bytes"
        assert h.transport.stats["frames_received"] + h.transport.stats["frames_sent"] > 0
    stop_all(hosts, clock, net)


def test_a_message_for_another_incarnation_of_this_node_is_dropped_and_counted():
    clock, hosts, recorders, net = cluster(groups=("g1",), incarnations=True)
    net.run(1.0)
    b = hosts["b"]
    before = b.groups["g1"].node.term
    b.deliver("a", "g1", "b.old", "a.inca", AppendEntries(before + 5, "a.inca", 0, 0, (), 0))
    assert b.stats["misaddressed"] == 1 and b.groups["g1"].node.term == before
    stop_all(hosts, clock, net)


def test_leadership_transfer_through_the_driver():
    clock, hosts, recorders, net = cluster(groups=("g1",))
    net.run(2.0)
    leader = leader_of(hosts, "g1")
    target = next(i for i in IDS if i != leader.node_id)
    outcome = []
    leader.submit("g1", b"during a transfer").addBoth(outcome.append)
    leader.transfer_leadership("g1", target)
    net.run(0.5)
    assert leader_of(hosts, "g1") is hosts[target]
    # The old leader heard from the new one (a later term, a leader known): not a check-quorum
    # step-down, so what it appended waited for its commit and is acknowledged.
    assert len(outcome) == 1 and isinstance(outcome[0], int), outcome
    stop_all(hosts, clock, net)


def test_later_effects_wait_for_a_barrier_fsync_but_not_for_the_leaders_own():
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
    runner.feed([SyncLog(0), Send("b", msg)])
    runner.feed([Send("b", msg)])  # a later call's effects queue behind the barrier too
    assert sent == []
    storage.pending[0].callback(None)
    assert sent == [("b", "g", msg), ("b", "g", msg)]
    runner.feed([SyncLog(0, barrier=False), Send("b", msg)])  # a leader's own: sends go on
    assert len(sent) == 3 and len(storage.pending) == 2


def test_submissions_of_one_turn_go_as_one_append_entries_and_commit_without_a_tick():
    clock, hosts, recorders, net = cluster(groups=("g1",))
    net.run(2.0)
    leader = leader_of(hosts, "g1")
    followers = [h for h in hosts.values() if h is not leader]
    received = [h.stats["received"] for h in followers]
    frames = [h.stats["frames_received"] for h in followers]
    sent = leader.stats["frames_sent"]
    results = []
    for i in range(5):  # five Sends read in one reactor turn
        leader.submit("g1", b"m%d" % i).addBoth(results.append)
    assert leader.stats["frames_sent"] == sent  # appended; sent at the next turn, together
    clock.advance(0)  # that turn: handed to the connections and written, not left for one more turn
    assert leader.stats["frames_sent"] == sent + 10
    assert all(c._flush_call is None and not c._bulk for c in leader.connections.values())
    # No clock time passes: only reactor turns (advance(0)) and the network, so nothing waits
    # for a tick or a timer.
    for _ in range(6):
        clock.advance(0)
        for p in net.pumps.values():
            p.flush()
    assert len(results) == 5 and all(isinstance(r, int) for r in results)
    # Each follower got the five entries as one message, and answered once.
    assert [h.stats["frames_received"] - f for h, f in zip(followers, frames)] == [5, 5]
    assert [h.stats["received"] - r for h, r in zip(followers, received)] == [1, 1]
    stop_all(hosts, clock, net)


def test_the_leader_commits_on_followers_disks_before_its_own_fsync_completes():
    # acks=all's critical path: the slower of the leader's fsync and the followers' round trip.
    clock, hosts, recorders, net = cluster(groups=("g1",))
    net.run(2.0)
    leader = leader_of(hosts, "g1")
    runner = leader.groups["g1"]

    class StuckDisk(MemoryGroupStorage):
        def __init__(self, log):
            super().__init__(log)
            self.pending = []

        def sync_log(self):
            d = Deferred()
            self.pending.append(d)
            return d

    stuck = StuckDisk(runner.storage.log)
    runner.storage = stuck
    results = []
    leader.submit("g1", b"x").addBoth(results.append)
    net.run(0.1)
    assert stuck.pending and results and isinstance(results[0], int)  # committed, own fsync pending
    assert runner.node.durable_index < results[0]
    for d in stuck.pending:
        d.callback(None)
    net.run(0.1)
    assert runner.node.durable_index >= results[0]
    stop_all(hosts, clock, net)


def test_a_failed_fsync_stops_the_group_and_calls_on_fatal():
    fatal = []
    host = RaftHost("a", ["a", "b"], CFG, clock=Clock(), on_fatal=fatal.append)

    class BrokenDisk(MemoryGroupStorage):
        def sync_log(self):
            raise OSError("disk gone")

    host.add_group("g", ["a", "b"], BrokenDisk(MemoryRaftLog()))
    sent = []
    host._send = lambda peer, group, msg: sent.append(msg)
    host.groups["g"].feed([SyncLog(1), Send("b", AppendEntries(1, "a", 0, 0, (), 0))])
    assert sent == []
    assert host.groups["g"].blocked and len(fatal) == 1 and fatal[0].check(OSError)


def test_a_joining_node_is_added_through_the_driver():
    clock = Clock()
    ids = IDS + ["d"]  # d knows no members of g1 yet
    recorders = {i: Recorder() for i in ids}
    hosts = {i: RaftHost(i, ids, CFG, recorders[i], clock=clock, rng=random.Random(i)) for i in ids}
    for i, h in hosts.items():
        h.add_group("g1", IDS if i != "d" else [], MemoryGroupStorage(MemoryRaftLog()))
        h.start()
    net = Net(hosts, clock)
    net.connect_all()
    net.run(2.0)
    leader = leader_of(hosts, "g1")
    assert leader is not None and leader.node_id != "d"
    index = leader.change_membership("g1", add="d")
    assert isinstance(index, int)
    net.run(0.5)
    assert recorders["d"].commits["g1"] >= index
    assert hosts["d"].groups["g1"].node.voters == set(ids)
    stop_all(hosts, clock, net)
    assert not clock.getDelayedCalls()


def test_install_snapshot_carries_the_applications_state_as_a_raw_body():
    clock = Clock()

    class App(Recorder):
        def snapshot_data(self, group, index):
            return b"state@%d\x00" % index

    got = []

    class Installed(Recorder):
        def snapshot_installed(self, group, index, term, data):
            got.append((index, data))

    hosts = {"a": RaftHost("a", ["a", "b"], CFG, App(), clock=clock, rng=random.Random(1)),
             "b": RaftHost("b", ["a", "b"], CFG, Installed(), clock=clock, rng=random.Random(2))}
    for h in hosts.values():
        h.add_group("g", ["a", "b"], MemoryGroupStorage(MemoryRaftLog()))
        h.start()
    net = Net(hosts, clock)
    net.connect_all()
    net.run(1.5)
    leader = leader_of(hosts, "g")
    follower = hosts["b" if leader is hosts["a"] else "a"]
    net.cut = {follower.node_id}
    for i in range(5):
        leader.propose("g", b"e%d" % i)
    net.cut = set()
    net.run(0.3)
    node = leader.groups["g"].node
    net.cut = {follower.node_id}
    for i in range(5):
        leader.propose("g", b"f%d" % i)
    net.run(0.05)
    node.compact(node.log.last_index)  # the follower's next entries are gone
    net.cut = set()
    net.run(0.5)
    if leader is hosts["a"]:
        assert got and got[0][1] == b"state@%d\x00" % got[0][0]
    assert follower.groups["g"].node.log.last_index == node.log.last_index
    stop_all(hosts, clock, net)


def test_submit_fires_when_committed_and_fails_off_the_leader():
    clock, hosts, recorders, net = cluster(groups=("g1",))
    net.run(2.0)
    leader = leader_of(hosts, "g1")
    follower = next(h for h in hosts.values() if h is not leader)
    results = []
    leader.submit("g1", b"x").addBoth(results.append)
    assert results == []
    net.run(0.3)
    (index,) = results
    assert leader.groups["g1"].node.log.entries(index, index + 1, 10)[0].data == b"x"
    assert recorders[leader.node_id].commits["g1"] >= index
    refused = []
    follower.submit("g1", b"y").addErrback(lambda f: refused.append(f.value))
    assert isinstance(refused[0], NotLeaderError) and refused[0].leader == leader.node_id
    stop_all(hosts, clock, net)


class StuckDisk(MemoryGroupStorage):
    """Log fsyncs wait until `release()`; afterwards they complete at once."""

    def __init__(self, log):
        super().__init__(log)
        self.pending = []
        self.released = False

    def sync_log(self):
        if self.released:
            return None
        d = Deferred()
        self.pending.append(d)
        return d

    def release(self):
        self.released = True
        for d in self.pending:
            d.callback(None)


def test_a_pending_submission_survives_a_graceful_transfer_and_fires_once_committed():
    clock, hosts, recorders, net = cluster(groups=("g1",))
    net.run(2.0)
    leader = leader_of(hosts, "g1")
    runner = leader.groups["g1"]
    target, other = [i for i in IDS if i != leader.node_id]
    disk = runner.storage = StuckDisk(runner.storage.log)
    net.cut = {other}  # only the target gets the entry, and the leader's own fsync hangs
    outcome = []
    leader.submit("g1", b"z").addBoth(outcome.append)
    net.run(0.1)
    assert outcome == []  # not committed: one durable copy of three
    leader.transfer_leadership("g1", target)
    net.run(0.3)
    assert leader_of(hosts, "g1") is hosts[target] and runner.node.role != LEADER
    assert outcome == []  # leadership moved; the write is not failed for that
    disk.release()
    net.cut = set()
    net.run(0.5)
    assert len(outcome) == 1 and isinstance(outcome[0], int), outcome  # committed in its term
    stop_all(hosts, clock, net)


#: Without check-quorum a cut-off leader stays leader: its writes wait for a replacement or the timeout.
NO_CHECK_QUORUM = RaftConfig(election_timeout=0.3, heartbeat_interval=0.05, check_quorum=False)


def led_without_check_quorum():
    """One group g1 on three hosts, elected: (clock, hosts, net, its leader's host)."""
    clock, hosts, recorders, net = cluster(groups=("g1",), cfg=NO_CHECK_QUORUM)
    net.run(2.0)
    return clock, hosts, net, leader_of(hosts, "g1")


def test_a_pending_submission_fails_when_its_entry_is_replaced():
    clock, hosts, net, leader = led_without_check_quorum()
    runner = leader.groups["g1"]
    outcome = []
    net.cut = {leader.node_id}  # isolated: its entry never leaves
    leader.submit("g1", b"lost").addErrback(lambda f: outcome.append(f.value))
    for h in hosts.values():
        if h is not leader:
            h._node_lost(leader.node_id)  # its node heartbeats stopped
    net.run(1.0)
    assert outcome == [] or isinstance(outcome[0], NotLeaderError)
    net.cut = set()
    net.run(1.0)
    assert runner.node.role != LEADER
    assert len(outcome) == 1 and isinstance(outcome[0], NotLeaderError)
    assert not outcome[0].outcome_unknown  # replaced: it can never commit, a resend cannot duplicate it
    stop_all(hosts, clock, net)


def test_a_pending_submission_covered_by_an_installed_snapshot_fails_with_its_outcome_unknown():
    # A cut-off leader's entry is replaced (the next leader's no-op takes its index) and the
    # next leader's log is compacted past it before the old leader hears again: the old one
    # catches up by InstallSnapshot, its log restarting after the snapshot. It cannot tell its
    # entry from another's there, and the application applied neither (seen: cluster sim seed
    # 9400052, an InitProducer answered with a result-less {"index"}, KeyError 'producer_id').
    clock, hosts, net, leader = led_without_check_quorum()
    runner = leader.groups["g1"]
    outcome = []
    net.cut = {leader.node_id}
    leader.submit("g1", b"lost").addBoth(outcome.append)
    (index,) = runner.waiters
    net.run(0.01)
    net.close(leader.node_id, reset=True)  # its entry never leaves
    net.cut = set()
    net.run(0.8)
    successor = leader_of(hosts, "g1", among=set(IDS) - {leader.node_id})
    assert successor is not None and successor is not leader
    for i in range(3):
        successor.submit("g1", b"next%d" % i)
    net.run(0.1)
    node = successor.groups["g1"].node
    assert node.commit_index > index and node.log.term_at(index) != runner.waiters[index].term
    node.compact(node.commit_index)  # the old leader's next entries are gone
    assert outcome == []
    for other in set(IDS) - {leader.node_id}:
        net.connect(*sorted((leader.node_id, other)))
    net.run(0.5)
    assert runner.node.role != LEADER and runner.node.log.start_index > index  # caught up by a snapshot
    assert len(outcome) == 1 and not isinstance(outcome[0], int), outcome  # never "committed at index"
    error = outcome[0].value
    assert isinstance(error, NotLeaderError) and error.outcome_unknown, error
    stop_all(hosts, clock, net)


def test_a_pending_submission_fails_after_the_proposal_timeout():
    clock, hosts, net, leader = led_without_check_quorum()
    outcome = []
    net.cut = set(IDS) - {leader.node_id}  # the leader is alone: nothing commits
    leader.submit("g1", b"late").addErrback(lambda f: outcome.append(f.value))
    net.run(leader.proposal_timeout - 0.1)
    assert outcome == []
    net.run(0.2)
    assert isinstance(outcome[0], NotLeaderError) and "outcome unknown" in str(outcome[0])
    assert outcome[0].outcome_unknown  # appended here, and a next leader may still commit it
    stop_all(hosts, clock, net)


def test_a_leader_cut_off_fails_its_pending_submissions_when_check_quorum_steps_it_down():
    # Cut off, it can never learn the outcome; its writers hear at the step-down (within two
    # election timeouts), not at the proposal timeout, and go to the next leader.
    clock, hosts, recorders, net = cluster(groups=("g1",))
    net.run(2.0)
    leader = leader_of(hosts, "g1")
    runner = leader.groups["g1"]
    outcome = []
    net.cut = {leader.node_id}
    leader.submit("g1", b"cut off").addErrback(lambda f: outcome.append((clock.seconds(), f.value)))
    began = clock.seconds()
    net.run(2 * CFG.election_timeout + 0.05)
    assert runner.node.role != LEADER
    assert len(outcome) == 1, outcome
    at, error = outcome[0]
    assert isinstance(error, NotLeaderError) and error.outcome_unknown  # a next leader may commit it
    assert "check-quorum" in str(error)
    assert at - began <= 2 * CFG.election_timeout + 0.02 < leader.proposal_timeout
    stop_all(hosts, clock, net)


class FakeEndpoint:
    """Connects to an in-memory peer host each time, recording the pumps."""

    def __init__(self, remote_host):
        self.remote = remote_host
        self.pumps = []

    def connect(self, factory):
        from twisted.internet.defer import succeed

        client = factory.buildProtocol(None)
        server = self.remote.peer_factory().buildProtocol(None)
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
    clock.advance(0)
    assert not clock.getDelayedCalls()


class RefusingEndpoint:
    """Refuses `failures` attempts (connection refused), then connects like FakeEndpoint."""

    def __init__(self, remote_host, failures):
        self.inner = FakeEndpoint(remote_host)
        self.failures = failures
        self.attempts = 0

    def connect(self, factory):
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        self.attempts += 1
        if self.attempts <= self.failures:
            return fail(ConnectionRefusedError("127.0.0.1:7172"))
        return self.inner.connect(factory)


def test_an_unreachable_peer_is_logged_once_per_streak_with_the_reason_not_per_retry():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = Clock()
        a = RaftHost("a", ["a", "b"], CFG, clock=clock)
        b = RaftHost("b", ["a", "b"], CFG, clock=clock)
        endpoint = RefusingEndpoint(b, failures=6)
        a.dial("b", endpoint)
        for _ in range(20):
            clock.advance(2.0)
            if endpoint.inner.pumps:
                endpoint.inner.pumps[-1].flush()
        assert endpoint.attempts == 7 and set(a.connections) == {"b"}
        texts = [e.get("log_format", "") for e in events]
        assert not [t for t in texts if "Scheduling retry" in t]  # Twisted's line per retry
        reached = [e for e in events if "cannot reach peer node" in e.get("log_format", "")]
        assert len(reached) == 1 and reached[0]["peer"] == "b" and "7172" in reached[0]["why"]
        a.stop()
        b.stop()
        endpoint.inner.pumps[-1].flush()
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)


class BlackHoleEndpoint:
    """A peer behind a black hole (its SYNs dropped: powered off, a firewall) while `dark`:
    an attempt then never ends, nor fails; once lit, it connects like FakeEndpoint."""

    def __init__(self, remote_host, clock):
        self.inner = FakeEndpoint(remote_host)
        self.clock = clock
        self.dark = True
        #: [began, ended (None while on)] of every attempt made while dark.
        self.attempts = []

    def connect(self, factory):
        if not self.dark:
            return self.inner.connect(factory)
        attempt = [self.clock.seconds(), None]
        self.attempts.append(attempt)

        def ended(failure):
            attempt[1] = self.clock.seconds()
            return failure

        return Deferred().addErrback(ended)

    def gaps(self):
        """How long each attempt lasted, and the wait before the next one began."""
        lasted = [end - began for began, end in self.attempts if end is not None]
        waited = [b[0] - a[1] for a, b in zip(self.attempts, self.attempts[1:], strict=False)]
        return lasted, waited


STEP = 0.01


def run_pumps(clock, pumps, seconds, step=STEP):
    for _ in range(round(seconds / step)):
        clock.advance(step)
        for _ in range(3):
            clock.advance(0)
            for p in pumps():
                p.flush()


def test_a_dial_into_a_black_hole_is_given_up_at_the_connect_timeout_and_retried_with_the_backoff():
    timeout = 2.0  # TransportLimits().connect_timeout, --peer-connect-timeout's default
    clock = Clock()
    hosts = {i: RaftHost(i, IDS, CFG, Recorder(), clock=clock, rng=random.Random(i)) for i in IDS}
    members = [h.member_id for h in hosts.values()]
    for h in hosts.values():
        h.dial_jitter = lambda: 0.0  # the backoff without its jitter: 0.05 * 1.5 ** failures
        h.add_group("g", members, MemoryGroupStorage(MemoryRaftLog()))
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    to_b, to_c = BlackHoleEndpoint(b, clock), FakeEndpoint(c)
    a.start()
    c.start()  # b is powered off: not running, not dialing c
    a.dial("b", to_b)
    a.dial("c", to_c)

    def pumps():
        return to_b.inner.pumps + to_c.pumps + b_to_c.pumps

    b_to_c = FakeEndpoint(c)
    run_pumps(clock, pumps, timeout - 0.05)
    assert to_b.attempts == [[0.0, None]]  # still on
    # Votes and heartbeats between a and c are not held up by the dial of b: they elect and commit.
    leader = leader_of({"a": a, "c": c}, "g")
    assert leader is not None
    committed = leader.submit("g", b"while b is dark")
    run_pumps(clock, pumps, 0.1)
    assert committed.called
    # Given up at the connect timeout, as a refusal: the next attempt follows the backoff.
    assert to_b.attempts[0][1] == pytest.approx(timeout, abs=STEP) and a.stats["dial_timeouts"] == 1
    run_pumps(clock, pumps, 0.1)
    assert len(to_b.attempts) == 2 and to_b.gaps()[1] == pytest.approx([0.075], abs=STEP)
    # Nothing queues for the dark peer meanwhile: its messages are not sent (Raft counts them lost).
    assert "b" not in a.connections and a.stats["unsent_no_connection"] > 0
    run_pumps(clock, pumps, 2 * timeout)
    lasted, waited = to_b.gaps()
    assert lasted == pytest.approx([timeout, timeout], abs=STEP) and waited == pytest.approx([0.075, 0.1125], abs=STEP)
    assert a.stats["dial_timeouts"] == 2 and len(to_b.attempts) == 3 and to_b.attempts[2][1] is None
    # b is back while the third dial is in the dark: that one ends at its timeout, the next one
    # (after the backoff) connects, and traffic flows: b learns the leader and what it committed.
    to_b.dark = False
    lit = clock.seconds()
    b.start()
    b.dial("c", b_to_c)
    while "b" not in a.connections and clock.seconds() - lit < 3 * timeout:
        run_pumps(clock, pumps, STEP)
    assert clock.seconds() - lit <= timeout + 0.05 * 1.5 ** 3 + STEP  # within the timeout and a backoff
    assert a.stats["dial_timeouts"] == 3 and len(to_b.inner.pumps) == 1
    run_pumps(clock, pumps, 1.0)
    assert set(a.connections) == {"b", "c"} and set(b.connections) == {"a", "c"}
    assert b.groups["g"].node.commit_index == leader.groups["g"].node.commit_index >= 2
    for h in hosts.values():
        h.stop()
    for p in pumps():
        p.flush()
    clock.advance(0)
    assert not clock.getDelayedCalls()


def test_the_dial_timeout_is_the_transports_connect_timeout():
    from streamlog.raft.transport import TransportLimits

    clock = Clock()
    a = RaftHost("a", ["a", "b"], CFG, clock=clock, limits=TransportLimits(connect_timeout=0.5))
    b = RaftHost("b", ["a", "b"], CFG, clock=clock)
    a.dial_jitter = lambda: 0.0
    endpoint = BlackHoleEndpoint(b, clock)
    a.dial("b", endpoint)
    clock.pump([STEP] * 60)
    assert endpoint.gaps() == ([pytest.approx(0.5, abs=STEP)], [pytest.approx(0.075, abs=STEP)])
    assert a.stats["dial_timeouts"] == 1 and len(endpoint.attempts) == 2
    a.stop()  # cancels the attempt on, and its timer
    b.stop()
    assert endpoint.attempts[1][1] is not None and not clock.getDelayedCalls()
    assert a.stats["dial_timeouts"] == 1


# ---------------------------------------------------------------- quiescence and failover


def test_a_leader_that_goes_quiet_with_a_follower_node_down_announces_the_in_sync_replicas_it_committed_with():
    # One silent follower node among three no longer wakes a quiet group led here, and a group
    # may go quiet in the turn its commit moved (a dead follower is no reason to stay awake):
    # the in-sync replicas of that commit must still reach the other nodes (Metadata at a
    # follower shows them), not wait for a wake-up that may never come.
    clock, hosts, recorders, net = cluster(groups=("g1",))
    net.run(3.0)
    leader = leader_of(hosts, "g1")
    runner = leader.groups["g1"]
    f1, f2 = [i for i in IDS if i != leader.node_id]
    assert runner.node.quiet
    net.cut = {f2}
    net.run(2 * CFG.election_timeout)  # f2's node is silent here now
    index = leader.propose("g1", b"with f2 down")
    for _ in range(200):  # to the commit, without letting a tick run after it
        net.run(0.01)
        if runner.node.commit_index >= index:
            break
    assert runner.node.commit_index >= index and not runner.node.quiet
    runner.node._heartbeat_due = clock.seconds()  # the next tick is its heartbeat: it goes quiet there
    net.run(1.0)
    assert recorders[f1].commits["g1"] >= index and runner.node.quiet
    announced = hosts[f1].remote_leadership[leader.node_id]["g1"]
    assert sorted(announced[1]) == sorted([leader.member_id, hosts[f1].member_id])
    stop_all(hosts, clock, net)



def count_deliveries(hosts):
    """Wrap every host's deliver: returns the list of (node, group) each group message adds."""
    seen = []
    for h in hosts.values():
        real = h.deliver

        def deliver(node, group, to, frm, msg, real=real):
            seen.append((node, group, type(msg).__name__))
            real(node, group, to, frm, msg)

        h.transport.host = type("Wrapped", (), {})()
        for name in ("peer_connected", "peer_lost", "peer_back", "leadership", "forwarded", "cluster_mismatch"):
            setattr(h.transport.host, name, getattr(h, name))
        h.transport.host.deliver = deliver
    return seen


def test_idle_groups_go_quiet_and_then_only_node_heartbeats_flow():
    groups = tuple(f"g{i}" for i in range(50))
    clock, hosts, recorders, net = cluster(groups=groups)
    net.run(3.0)
    assert all(h.awake_groups() == frozenset() for h in hosts.values())
    seen = count_deliveries(hosts)
    received = {i: h.transport.stats["received"] for i, h in hosts.items()}
    net.run(3.0)  # ten election timeouts
    assert seen == []  # not one group message
    for i, h in hosts.items():
        beats = h.transport.stats["received"] - received[i]
        # Two peers, one node heartbeat each per 50 ms: about 120 in 3 s, whatever the groups.
        assert 100 <= beats <= 130, beats
    assert all(len({leader_of(hosts, g).groups[g].node.term}) == 1 for g in groups)
    # A proposal wakes its group (only it), commits, and the group goes quiet again.
    leader = leader_of(hosts, "g7")
    index = leader.propose("g7", b"wake up")
    net.run(0.3)
    assert all(recorders[i].commits["g7"] >= index for i in IDS)
    assert {g for _, g, _ in seen} == {"g7"}
    net.run(0.5)
    assert all(h.awake_groups() == frozenset() for h in hosts.values())
    stop_all(hosts, clock, net)


def test_when_the_leaders_process_dies_its_quiet_groups_elect_new_leaders_quickly():
    groups = tuple(f"g{i}" for i in range(20))
    clock, hosts, recorders, net = cluster(groups=groups)
    net.run(3.0)
    victim = leader_of(hosts, "g0").node_id
    led = [g for g in groups if leader_of(hosts, g).node_id == victim]
    assert led and all(not h.awake_groups() for h in hosts.values())
    net.kill(victim)  # SIGKILL: its connections close at once
    alive = {i: h for i, h in hosts.items() if i != victim}
    elapsed = 0.0
    while any(leader_of(alive, g) is None for g in groups) and elapsed < 2.0:
        net.run(0.01)
        elapsed += 0.01
    # The followers hear the connection close and campaign after a small random delay (pre-vote
    # first): well under one election timeout (0.3 s here), not after it.
    assert elapsed < CFG.election_timeout, elapsed
    for g in led:
        new = leader_of(alive, g)
        assert new is not None and new.groups[g].node.term > hosts[victim].groups[g].node.term
    stop_all(alive, clock, net)


def test_a_silent_leader_node_is_replaced_and_its_minority_acknowledges_nothing():
    clock, hosts, recorders, net = cluster(groups=("g1", "g2"))
    net.run(3.0)
    old = leader_of(hosts, "g1")
    net.cut = {old.node_id}  # SIGSTOP or a partition: no connection closes, node heartbeats stop
    outcome = []
    old.submit("g1", b"minority").addBoth(outcome.append)
    majority = {i: h for i, h in hosts.items() if h is not old}
    elapsed = 0.0
    while leader_of(majority, "g1") is None and elapsed < 3.0:
        net.run(0.01)
        elapsed += 0.01
    # Node heartbeats silent for an election timeout wake the groups; then an election timer
    # ([T, 2T)) and a campaign: within three timeouts.
    assert elapsed < 3 * CFG.election_timeout + 0.1, elapsed
    net.run(1.0)
    assert not any(isinstance(r, int) for r in outcome)  # the minority acknowledged nothing
    new = leader_of(majority, "g1")
    index = new.propose("g1", b"majority")
    net.run(0.3)
    assert all(recorders[i].commits["g1"] >= index for i in majority)
    net.cut = set()
    net.run(1.0)
    assert len(outcome) == 1 and isinstance(outcome[0].value, NotLeaderError)
    assert old.groups["g1"].node.log.entries(index, index + 1, 100)[0].data == b"majority"
    stop_all(hosts, clock, net)


def test_a_stalled_reactor_does_not_find_every_election_timer_expired():
    # The reactor was busy for 3 s (ten election timeouts) and ticks once: Raft time moved by
    # at most two ticks, so no follower campaigns on account of the stall alone.
    cfg = RaftConfig(election_timeout=0.3, heartbeat_interval=0.05, quiesce=False)
    clock, hosts, recorders, net = cluster(groups=("g1", "g2"), cfg=cfg)
    net.run(2.0)
    terms = {(i, g): h.groups[g].node.term for i, h in hosts.items() for g in ("g1", "g2")}
    clock.advance(3.0)
    assert all(h.groups[g].node.role in ("leader", "follower") for h in hosts.values() for g in ("g1", "g2"))
    assert {(i, g): h.groups[g].node.term for i, h in hosts.items() for g in ("g1", "g2")} == terms
    net.run(1.0)
    assert {(i, g): h.groups[g].node.term for i, h in hosts.items() for g in ("g1", "g2")} == terms
    stop_all(hosts, clock, net)


def test_record_batches_replicate_as_their_stored_frames_into_segmented_logs(tmp_path):
    from streamlog.storage.base import RecordBatch
    from streamlog.storage.log import SegmentedLog

    class SegmentedStorage(MemoryGroupStorage):
        def sync_log(self):
            self.log.sync()

    clock = Clock()
    logs = {i: SegmentedLog(str(tmp_path / i)) for i in IDS}
    hosts = {i: RaftHost(i, IDS, CFG, Recorder(), clock=clock, rng=random.Random(i)) for i in IDS}
    for i, h in hosts.items():
        h.add_group("t-0", IDS, SegmentedStorage(logs[i]))
        h.start()
    net = Net(hosts, clock)
    net.connect_all()
    net.run(2.0)
    leader = leader_of(hosts, "t-0")
    log = logs[leader.node_id]
    batch = RecordBatch(log.end_offset, 2, 0, 5, 6, b'{"offset":0,"value":1}\n{"offset":1,"value":2}')
    done = []
    leader.submit("t-0", batch).addBoth(done.append)
    net.run(0.3)
    (index,) = done
    frames = {}
    for i, lg in logs.items():
        (entry,) = lg.entries(index, index + 1, 1 << 20)
        assert isinstance(entry.data, RecordBatch) and entry.data.payload == batch.payload
        frames[i] = entry.data.header + entry.data.payload
    assert len(set(frames.values())) == 1  # byte for byte the leader's stored frame, on every node
    assert sum(h.transport.stats["frames_received"] for h in hosts.values()) >= 2
    stop_all(hosts, clock, net)
    for lg in logs.values():
        lg.close()


def test_leadership_is_announced_to_peers_in_full_on_connect_and_then_as_deltas():
    clock, hosts, recorders, net = cluster(groups=("g1", "g2", "g3"))
    net.run(2.0)
    for h in hosts.values():
        for g in ("g1", "g2", "g3"):
            leader = leader_of(hosts, g)
            if leader is not h:
                term = leader.groups[g].node.term
                assert h.remote_leadership[leader.node_id][g][0] == term
                assert leader.member_id in h.remote_leadership[leader.node_id][g][1]
    old = leader_of(hosts, "g1")
    target = next(i for i in IDS if i != old.node_id)
    old.transfer_leadership("g1", target)
    net.run(0.5)
    observer = next(h for i, h in hosts.items() if i not in (old.node_id, target))
    assert "g1" not in observer.remote_leadership.get(old.node_id, {})
    assert "g1" in observer.remote_leadership[target]
    stop_all(hosts, clock, net)


def test_groups_are_added_and_removed_at_run_time():
    clock, hosts, recorders, net = cluster(groups=("g1",))
    net.run(1.5)
    for h in hosts.values():
        h.add_group("late", IDS, MemoryGroupStorage(MemoryRaftLog()))
    net.run(1.5)
    leader = leader_of(hosts, "late")
    assert leader is not None and all("late" not in h.awake_groups() for h in hosts.values())
    pending = []
    net.cut = set(IDS) - {leader.node_id}
    leader.submit("late", b"x").addErrback(lambda f: pending.append(f.value))
    clock.advance(0)  # the next reactor turn hands the entry to the (cut) connections
    leader.remove_group("late")
    assert isinstance(pending[0], NotLeaderError) and "removed" in str(pending[0])
    net.cut = set()
    net.run(0.5)  # the others keep running the group; messages for it here are dropped, counted
    assert leader.stats["unknown_group"] > 0 and "late" not in leader.groups
    stop_all(hosts, clock, net)


def test_campaign_leads_a_group_of_one_at_once_without_posing_as_a_peer():
    clock = Clock()
    recorder = Recorder()
    host = RaftHost("a", (), CFG, recorder, clock=clock)
    host.add_group("solo", ["a"], MemoryGroupStorage(MemoryRaftLog()))
    host.campaign("solo")
    clock.advance(0)
    assert host.groups["solo"].node.role == LEADER
    assert ("solo", LEADER, 1, "a") in recorder.roles
    assert host.stats["misaddressed"] == 0 and host.stats["unknown_group"] == 0
    host.stop()


def test_a_heartbeat_late_by_a_little_more_than_the_election_timeout_costs_no_pre_vote():
    # A starved node's frames stop for a little more than an election timeout, then resume
    # (its connections stay open). The followers its silence woke go back to quiet when it is
    # heard again, before their election timers ([T, 2T) from the wake) fire: no pre-vote, no
    # term change, and every group quiet again. The groups led elsewhere with a member on the
    # late node are not woken at all: the two other nodes are still a quorum.
    groups = tuple(f"g{i}" for i in range(30))
    clock, hosts, recorders, net = cluster(groups=groups)
    net.run(3.0)
    assert all(h.awake_groups() == frozenset() for h in hosts.values())
    late = leader_of(hosts, "g0").node_id
    led_by_late = [g for g in groups if leader_of(hosts, g).node_id == late]
    led_elsewhere = [g for g in groups if g not in led_by_late]
    assert led_by_late and led_elsewhere
    terms = {g: leader_of(hosts, g).groups[g].node.term for g in groups}
    seen = count_deliveries(hosts)
    net.cut = {late}
    net.run(CFG.election_timeout + 0.05)
    others = [h for i, h in hosts.items() if i != late]
    for h in others:  # the silence woke the followers of the late node's groups, and only them
        assert h.awake_groups() == frozenset(led_by_late)
    net.cut = set()
    net.run(0.05)
    assert all(h.awake_groups() == frozenset() for h in others)
    net.run(3 * CFG.election_timeout)
    assert [kind for _, _, kind in seen if kind == "RequestVote"] == []
    assert {g: leader_of(hosts, g).groups[g].node.term for g in groups} == terms
    assert all(h.awake_groups() == frozenset() for h in hosts.values())
    stop_all(hosts, clock, net)


def test_a_follower_the_silence_woke_stays_awake_if_it_campaigned_meanwhile():
    # The silence lasts past the election timer: the follower pre-votes, the leader (alive,
    # only slow) refuses and heartbeats it, and nothing is put back to quiet by force: the
    # group goes quiet through its leader, in the same term, with one round trip.
    clock, hosts, recorders, net = cluster(groups=("g1",))
    net.run(3.0)
    old = leader_of(hosts, "g1")
    term = old.groups["g1"].node.term
    seen = count_deliveries(hosts)
    net.cut = {old.node_id}
    net.run(3 * CFG.election_timeout)  # long enough for a pre-vote among the two others
    net.cut = set()
    net.run(2.0)
    assert any(kind == "RequestVote" for _, _, kind in seen)
    new = leader_of(hosts, "g1")
    assert new is not None and all(h.awake_groups() == frozenset() for h in hosts.values())
    assert all(h.groups["g1"].node.leader_id == new.groups["g1"].node.id for h in hosts.values())
    assert new is not old or new.groups["g1"].node.term == term
    stop_all(hosts, clock, net)


def test_the_silent_leader_test_catches_a_node_that_wakes_no_group_on_silence(monkeypatch):
    # The liveness test above, with the broken variant: its followers stay quiet in the lease
    # of a stopped leader, and no leader is elected among the majority.
    from broken_variants import SilenceWakesNoGroup
    monkeypatch.setattr(RaftHost, "node_class", SilenceWakesNoGroup)
    clock, hosts, recorders, net = cluster(groups=("g1", "g2"))
    net.run(3.0)
    old = leader_of(hosts, "g1")
    net.cut = {old.node_id}
    majority = {i: h for i, h in hosts.items() if h is not old}
    net.run(3.0)  # ten election timeouts
    assert leader_of(majority, "g1") is None
    stop_all(hosts, clock, net)

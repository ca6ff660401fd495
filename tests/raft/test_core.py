"""The sans-io core, driven step by step: inputs in, effect lists out."""

import random

from streamlog.raft.core import (
    CANDIDATE,
    FOLLOWER,
    LEADER,
    PRE_CANDIDATE,
    Commit,
    HardState,
    NotLeader,
    PersistHardState,
    RaftConfig,
    RaftNode,
    RoleChange,
    Send,
    SnapshotInstalled,
    SyncLog,
)
from streamlog.raft.log import Entry, MemoryRaftLog
from streamlog.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)

CFG = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1, max_inflight=4, max_batch_bytes=1 << 20, quiesce=True)
IDS = ["a", "b", "c"]


def node(node_id="a", entries=(), term=0, voted_for=None, config=CFG, peers=IDS, seed=0):
    log = MemoryRaftLog(entries)
    return RaftNode(node_id, peers, log, HardState(term, voted_for), config, random.Random(seed))


def sends(effects):
    return [(e.to, e.msg) for e in effects if isinstance(e, Send)]


def disk(n, effects=(), now=10.0):
    """An instant disk: every fsync `n` asked for completes now; returns `effects` and what the
    reports caused."""
    out = list(effects)
    while n._sync_points:
        out += n.log_synced(n._sync_points[0], now)
    return out


class Cluster:
    """Instant network, instant disks: enough to drive the core through whole scenarios."""

    def __init__(self, ids=IDS, config=CFG):
        self.nodes = {i: node(i, config=config, peers=ids, seed=n) for n, i in enumerate(ids)}
        self.now = 0.0
        self.cut: set[str] = set()
        self.commits: dict[str, int] = {i: 0 for i in ids}

    def run(self, effects_by_node):
        queue = list(effects_by_node)
        while queue:
            frm, effects = queue.pop(0)
            for e in effects:
                if isinstance(e, Commit):
                    self.commits[frm] = e.upto
                if isinstance(e, SyncLog):
                    queue.append((frm, self.nodes[frm].log_synced(e.upto, self.now)))
                if isinstance(e, Send) and frm not in self.cut and e.to not in self.cut:
                    queue.append((e.to, self.nodes[e.to].receive(frm, e.msg, self.now)))

    def advance(self, seconds, step=0.01):
        end = self.now + seconds
        while self.now < end:
            self.now += step
            self.run([(i, n.tick(self.now)) for i, n in self.nodes.items()])

    def leader(self):
        leaders = [n for n in self.nodes.values() if n.role == LEADER]
        return max(leaders, key=lambda n: n.term) if leaders else None


def test_follower_times_out_and_pre_votes_without_changing_term():
    n = node()
    assert n.tick(0.5) == []
    effects = n.tick(2.0)
    assert n.role == PRE_CANDIDATE and n.term == 0
    assert not any(isinstance(e, PersistHardState) for e in effects)
    reqs = sends(effects)
    assert {to for to, _ in reqs} == {"b", "c"}
    assert all(m == RequestVote(1, "a", 0, 0, pre_vote=True) for _, m in reqs)


def test_candidate_persists_term_and_vote_before_asking():
    n = node()
    n.tick(2.0)
    effects = n.receive("b", RequestVoteResponse(1, True, pre_vote=True), 2.0)
    assert n.role == CANDIDATE and n.term == 1 and n.voted_for == "a"
    kinds = [type(e) for e in effects]
    assert kinds.index(PersistHardState) < kinds.index(Send)
    assert effects[0] == PersistHardState(1, "a")


def test_vote_is_persisted_before_the_grant_is_sent():
    n = node("b")
    effects = n.receive("a", RequestVote(1, "a", 0, 0), 5.0)
    assert effects[:2] == [PersistHardState(1, None), PersistHardState(1, "a")]
    assert sends(effects) == [("a", RequestVoteResponse(1, True, False))]


def test_vote_refused_to_a_candidate_with_an_older_log():
    n = node("b", entries=[Entry(1, 1), Entry(2, 2)], term=2)
    assert sends(n.receive("a", RequestVote(3, "a", 5, 1), 5.0)) == [("a", RequestVoteResponse(3, False))]
    assert n.voted_for is None


def test_one_vote_per_term():
    n = node("c")
    n.receive("a", RequestVote(1, "a", 0, 0), 5.0)
    assert sends(n.receive("b", RequestVote(1, "b", 0, 0), 5.0)) == [("b", RequestVoteResponse(1, False))]


def test_new_leader_sends_its_noop_without_waiting_for_its_own_fsync():
    n = node()
    n.tick(2.0)
    n.receive("b", RequestVoteResponse(1, True, pre_vote=True), 2.0)
    effects = n.receive("b", RequestVoteResponse(1, True), 2.0)
    assert n.role == LEADER
    assert n.log.entries(1, 2, 100) == [Entry(1, 1, b"")]
    syncs = [e for e in effects if isinstance(e, SyncLog)]
    assert syncs == [SyncLog(1, barrier=False)]  # the driver starts it and releases the sends
    assert RoleChange(LEADER, 1, "a") in effects


def test_leader_counts_itself_only_at_its_durable_index():
    # 3 voters: b's acknowledgement plus the leader's own copy is a majority, but only once the
    # leader's fsync has completed: a leader that crashes before it would lose its copy.
    n = node()
    n.tick(2.0)
    n.receive("b", RequestVoteResponse(1, True, pre_vote=True), 2.0)
    n.receive("b", RequestVoteResponse(1, True), 2.0)
    assert n.durable_index == 0
    effects = n.receive("b", AppendEntriesResponse(1, True, match_index=1), 2.0)
    assert n.commit_index == 0 and not any(isinstance(e, Commit) for e in effects)
    assert n.log_synced(1, 2.0) == [Commit(1)] and n.durable_index == 1
    # Two followers are a majority without the leader's disk.
    index, _ = n.propose(b"x", 2.0)
    n.receive("b", AppendEntriesResponse(1, True, match_index=index), 2.0)
    effects = n.receive("c", AppendEntriesResponse(1, True, match_index=index), 2.0)
    assert Commit(index) in effects and n.durable_index == 1


def test_a_deposed_leader_acknowledges_its_unsynced_entries_only_after_a_barrier():
    n = node()
    elect(n)
    n.propose(b"x", 10.0)  # entry 2, its fsync not yet reported
    assert n.durable_index == 1
    # A leader of term 2 that holds entry 2 too: the acknowledgement vouches for it.
    effects = n.receive("b", AppendEntries(2, "b", 2, 1, (), 0), 11.0)
    kinds = [type(e) for e in effects if isinstance(e, (SyncLog, Send))]
    assert kinds == [SyncLog, Send] and [e for e in effects if isinstance(e, SyncLog)][0].barrier
    assert sends(effects) == [("b", AppendEntriesResponse(2, True, match_index=2))]


def test_an_fsync_asked_for_before_a_truncation_does_not_vouch_for_the_new_entries():
    n = node("b", entries=[Entry(1, 1), Entry(2, 1)], term=1)
    n.receive("a", AppendEntries(1, "a", 2, 1, (Entry(3, 1, b"old"),), 0), 1.0)  # SyncLog(3) asked
    n.receive("c", AppendEntries(2, "c", 2, 1, (Entry(3, 2, b"new"), Entry(4, 2, b"n2")), 0), 1.0)
    assert n.log_synced(3, 1.0) == [] and n.durable_index == 2  # it may predate the rewrite
    n.log_synced(4, 1.0)
    assert n.durable_index == 4


def test_follower_syncs_entries_before_acknowledging_and_commits_after():
    n = node("b")
    effects = n.receive("a", AppendEntries(1, "a", 0, 0, (Entry(1, 1, b"x"), Entry(2, 1, b"y")), 1), 1.0)
    assert [type(e) for e in effects if not isinstance(e, (RoleChange, PersistHardState))] == [SyncLog, Commit, Send]
    assert sends(effects) == [("a", AppendEntriesResponse(1, True, match_index=2))]
    assert n.commit_index == 1


def test_follower_truncates_a_conflicting_suffix_only():
    n = node("b", entries=[Entry(1, 1), Entry(2, 1), Entry(3, 2)], term=2)
    n.receive("a", AppendEntries(3, "a", 1, 1, (Entry(2, 1), Entry(3, 3)), 0), 1.0)
    assert [n.log.term_at(i) for i in (1, 2, 3)] == [1, 1, 3]
    # A stale, shorter AppendEntries must not cut entries it agrees with.
    n.receive("a", AppendEntries(3, "a", 0, 0, (Entry(1, 1),), 0), 1.0)
    assert n.log.last_index == 3


def test_rejection_hint_names_the_conflicting_term_and_its_first_index():
    n = node("b", entries=[Entry(1, 1), Entry(2, 2), Entry(3, 2), Entry(4, 2)], term=2)
    effects = n.receive("a", AppendEntries(3, "a", 4, 3, (), 0), 1.0)
    assert sends(effects) == [("a", AppendEntriesResponse(3, False, reject_index=4, conflict_term=2, conflict_index=2))]
    short = node("c", entries=[Entry(1, 1)], term=1)
    effects = short.receive("a", AppendEntries(3, "a", 9, 3, (), 0), 1.0)
    assert sends(effects) == [("a", AppendEntriesResponse(3, False, reject_index=9, conflict_index=2))]


def elect(n, voters=("b",)):
    n.tick(10.0)
    for v in voters:
        n.receive(v, RequestVoteResponse(n.term + 1, True, pre_vote=True), 10.0)
    effects = []
    for v in voters:
        effects += n.receive(v, RequestVoteResponse(n.term, True), 10.0)
    assert n.role == LEADER
    return disk(n, effects)


def test_leader_backs_up_over_a_whole_conflicting_term_in_one_round_trip():
    # Leader log: terms 1 1 1 4 4 ; follower has 1 2 2 2 2 2 (a term-2 tail the leader lacks).
    leader = node("a", entries=[Entry(1, 1), Entry(2, 1), Entry(3, 1), Entry(4, 4), Entry(5, 4)], term=4)
    elect(leader)
    last = leader.log.last_index
    effects = leader.receive("c", AppendEntriesResponse(
        5, False, reject_index=last, conflict_term=2, conflict_index=2), 10.0)
    (to, msg), = [s for s in sends(effects) if s[0] == "c"]
    assert msg.prev_index == 1 and msg.entries[0].index == 2


def test_commit_counts_only_entries_of_the_current_term():
    # Figure 8 (c): leader a in term 4 holds an old term-2 entry at index 2.
    leader = node("a", entries=[Entry(1, 1), Entry(2, 2)], term=3, peers=["a", "b", "c", "d", "e"])
    elect(leader, voters=("b", "c"))
    assert leader.term == 4 and leader.log.term_at(3) == 4  # the no-op
    effects = leader.receive("b", AppendEntriesResponse(4, True, match_index=2), 10.0)
    effects += leader.receive("c", AppendEntriesResponse(4, True, match_index=2), 10.0)
    assert leader.commit_index == 0 and not any(isinstance(e, Commit) for e in effects)
    effects = leader.receive("b", AppendEntriesResponse(4, True, match_index=3), 10.0)
    effects += leader.receive("c", AppendEntriesResponse(4, True, match_index=3), 10.0)
    assert Commit(3) in effects


def test_propose_on_a_follower_names_the_leader():
    n = node("b")
    n.receive("a", AppendEntries(1, "a", 0, 0, (), 0), 1.0)
    assert n.propose(b"x", 1.0) == (NotLeader("a"), [])


def test_a_transfer_under_way_names_its_target():
    # The application points its clients there (NOT_LEADER with the target) while proposals are refused.
    leader = node("a", peers=["a", "b", "c"])
    elect(leader, voters=("b",))
    assert leader.transfer_target is None
    leader.transfer_leadership("c", 10.0)
    assert leader.transfer_target == "c"
    assert isinstance(leader.propose(b"x", 10.0)[0], NotLeader)
    leader.tick(11.5)  # an election timeout later the transfer is abandoned
    assert leader.transfer_target is None


def test_pipelining_is_bounded_by_max_inflight():
    cfg = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1, max_inflight=2, max_batch_bytes=1)
    leader = node("a", config=cfg)
    elect(leader)
    leader.receive("b", AppendEntriesResponse(1, True, match_index=1), 10.0)  # b -> replicate
    sent = []
    for i in range(5):
        _, effects = leader.propose(b"p%d" % i, 10.0)
        sent += [m for to, m in sends(effects) if to == "b"]
    assert len(sent) == 2 and all(len(m.entries) == 1 for m in sent)
    effects = leader.receive("b", AppendEntriesResponse(1, True, match_index=2), 10.0)
    assert len([m for to, m in sends(effects) if to == "b"]) == 1


def test_proposals_left_unsent_travel_as_one_append_entries_per_follower():
    leader = node("a")
    elect(leader, voters=("b", "c"))
    for peer in ("b", "c"):
        leader.receive(peer, AppendEntriesResponse(1, True, match_index=1), 10.0)  # -> replicate
    indexes = []
    for i in range(3):
        index, effects = leader.propose(b"p%d" % i, 10.0, replicate=False)
        indexes.append(index)
        assert not sends(effects)  # appended (and its own fsync asked for), nothing sent
    sent = sends(leader.replicate(10.0))
    assert sorted(to for to, _ in sent) == ["b", "c"]
    assert all([e.index for e in m.entries] == indexes for _, m in sent)
    assert not sends(leader.replicate(10.0))  # nothing left to send within the window


def test_replicate_off_the_leader_sends_nothing():
    n = node("b")
    n.receive("a", AppendEntries(1, "a", 0, 0, (), 0), 1.0)
    assert n.replicate(1.0) == []


def test_election_in_a_cluster_and_replication_to_all():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    assert leader is not None
    index, effects = leader.propose(b"hello", c.now)
    c.run([(leader.id, effects)])
    c.advance(0.2)
    assert all(c.commits[i] >= index for i in IDS)
    assert all(n.log.entries(index, index + 1, 100)[0].data == b"hello" for n in c.nodes.values())


def test_pre_vote_keeps_a_rejoining_node_from_deposing_the_leader():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    term = leader.term
    loner = next(i for i in IDS if i != leader.id)
    c.cut = {loner}
    c.advance(5.0)
    assert c.nodes[loner].term == term  # pre-vote failed, so the term never moved
    c.cut = set()
    c.advance(2.0)
    assert c.leader() is leader and leader.term == term


def test_check_quorum_makes_an_isolated_leader_step_down():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    c.cut = {leader.id}
    assert leader.quiet  # an idle group: the driver wakes it when its followers' nodes go silent
    c.run([(leader.id, leader.wake(c.now))])
    others = [n for n in c.nodes.values() if n is not leader]
    c.run([(n.id, n.leader_node_lost(c.now)) for n in others])  # the leader's node heartbeats stopped
    c.advance(2.5)
    assert leader.role in (FOLLOWER, PRE_CANDIDATE)
    assert any(n.role == LEADER for n in others)


def test_vote_requests_are_ignored_while_a_leader_is_alive():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    follower, other = (n for n in c.nodes.values() if n is not leader)
    # (From another node: the leader's own request for a later term says it leads no more.)
    effects = follower.receive(other.id, RequestVote(leader.term + 5, other.id, 99, 99), c.now)
    assert follower.term == leader.term
    assert sends(effects) == [(other.id, RequestVoteResponse(leader.term, False))]


def test_leadership_transfer_hands_over_to_the_target():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    target = next(i for i in IDS if i != leader.id)
    c.run([(leader.id, leader.transfer_leadership(target, c.now))])
    assert isinstance(leader.propose(b"x", c.now)[0], NotLeader) or c.nodes[target].role == LEADER
    c.advance(0.2)
    assert c.leader() is c.nodes[target]
    assert c.nodes[target].term == leader.term


def test_leader_keeps_refusing_proposals_for_an_election_timeout_after_timeout_now():
    # Found by the simulator: the target caught up just before the transfer's deadline, the
    # leader sent TimeoutNow, the deadline passed and it appended a new proposal; every voter
    # then refused the target (no longer up to date) and the transfer ended in a needless
    # election. After TimeoutNow the leader must not append for another election timeout.
    leader = node("a")
    elect(leader)
    leader.receive("b", AppendEntriesResponse(1, True, match_index=1), 10.0)
    leader.receive("c", AppendEntriesResponse(1, True, match_index=1), 10.0)
    leader.propose(b"x", 10.0)
    leader.receive("b", AppendEntriesResponse(1, True, match_index=2), 10.0)
    leader.transfer_leadership("c", 10.0)  # c is behind (match 1 of 2): catch it up first
    effects = leader.receive("c", AppendEntriesResponse(1, True, match_index=2), 10.9)
    assert ("c", TimeoutNow(1, "a")) in sends(effects)
    leader.tick(11.05)  # past the transfer's original deadline (10.0 + 1.0)
    assert isinstance(leader.propose(b"y", 11.05)[0], NotLeader)
    leader.tick(12.0)  # an election timeout after TimeoutNow: the transfer is abandoned
    assert isinstance(leader.propose(b"y", 12.0)[0], int)


def test_timeout_now_starts_an_election_that_skips_pre_vote():
    n = node("b", term=1)
    n.receive("a", AppendEntries(1, "a", 0, 0, (), 0), 1.0)
    effects = n.receive("a", TimeoutNow(1, "a"), 1.0)
    assert n.role == CANDIDATE and n.term == 2
    assert all(m.transfer and not m.pre_vote for _, m in sends(effects))


def test_follower_behind_the_leaders_log_start_catches_up_by_snapshot():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    lagging = next(i for i in IDS if i != leader.id)
    c.cut = {lagging}
    c.nodes[lagging].wake(c.now)  # as the driver does when its leader's node heartbeats stop
    for i in range(10):
        _, effects = leader.propose(b"e%d" % i, c.now)
        c.run([(leader.id, effects)])
    c.advance(0.3)
    leader.compact(leader.commit_index)
    assert leader.log.start_index > c.nodes[lagging].log.last_index + 1
    c.cut = set()
    c.advance(2.5)  # its election timer runs (1-2 s); its pre-vote wakes the quiet leader
    lag = c.nodes[lagging]
    assert lag.log.start_index == leader.log.start_index
    assert lag.log.last_index == leader.log.last_index and lag.commit_index == leader.commit_index


def test_install_snapshot_resets_a_conflicting_log_and_reports_it():
    n = node("b", entries=[Entry(1, 1), Entry(2, 1)], term=1)
    effects = n.receive("a", InstallSnapshot(3, "a", 10, 3, b"state"), 1.0)
    assert SnapshotInstalled(10, 3, b"state") in effects
    assert (n.log.start_index, n.log.last_index, n.commit_index) == (11, 10, 10)
    assert sends(effects) == [("a", AppendEntriesResponse(3, True, match_index=10))]


def test_single_node_group_elects_itself_and_commits_alone():
    n = node("a", peers=["a"])
    n.tick(5.0)
    assert n.role == LEADER
    index, effects = n.propose(b"x", 5.0)
    assert not any(isinstance(e, Commit) for e in effects)  # not before its own fsync
    assert Commit(index) in disk(n, effects, 5.0)


def test_stale_leader_is_told_about_the_newer_term():
    n = node("b", term=5)
    effects = n.receive("a", AppendEntries(3, "a", 0, 0, (), 0), 1.0)
    assert sends(effects) == [("a", AppendEntriesResponse(5, False))]


def test_membership_change_waits_for_the_leaders_first_commit_and_runs_one_at_a_time():
    from streamlog.raft.core import ChangeRefused

    leader = node("a")
    elect(leader)
    result, _ = leader.change_membership(10.0, add="d")
    assert isinstance(result, ChangeRefused) and "not committed" in result.reason
    leader.receive("b", AppendEntriesResponse(1, True, match_index=1), 10.0)
    assert leader.commit_index == 1
    index, effects = leader.change_membership(10.0, add="d")
    effects = disk(leader, effects)
    assert index == 2 and leader.voters == {"a", "b", "c", "d"} and leader.quorum == 3
    assert leader.log.config_at(2) == (2, ("a", "b", "c", "d"))
    assert "d" in {to for to, _ in sends(effects)}
    result, _ = leader.change_membership(10.0, remove="b")
    assert isinstance(result, ChangeRefused) and "in progress" in result.reason
    # Needs 3 of 4 now: b alone is not enough.
    leader.receive("b", AppendEntriesResponse(1, True, match_index=2), 10.0)
    assert leader.commit_index == 1
    leader.receive("d", AppendEntriesResponse(1, True, match_index=2), 10.0)
    assert leader.commit_index == 2


def test_follower_adopts_a_configuration_on_append_and_reverts_on_truncation():
    n = node("b", entries=[Entry(1, 1)], term=1)
    n.receive("a", AppendEntries(1, "a", 1, 1, (Entry(2, 1, b"", ("a", "b")),), 1), 1.0)
    assert n.voters == {"a", "b"}
    n.receive("c", AppendEntries(2, "c", 1, 1, (Entry(2, 2, b"x"),), 1), 1.0)
    assert n.voters == set(IDS)


def test_added_node_catches_up_and_removed_leader_steps_down():
    ids = ["a", "b", "c", "d"]
    c = Cluster(ids=ids)
    c.nodes["d"] = node("d", peers=[], seed=9)  # joins later, knows no members yet
    c.nodes = {i: c.nodes[i] for i in ids}
    for i in ("a", "b", "c"):
        c.nodes[i] = node(i, peers=IDS, seed=ord(i))
    c.advance(3.0)
    leader = c.leader()
    assert leader.id != "d" and c.nodes["d"].role == FOLLOWER
    index, effects = leader.change_membership(c.now, add="d")
    c.run([(leader.id, effects)])
    c.advance(0.5)
    d = c.nodes["d"]
    assert d.voters == set(ids) and d.log.last_index == leader.log.last_index
    index, effects = leader.change_membership(c.now, remove=leader.id)
    c.run([(leader.id, effects)])
    c.advance(2.0)
    assert leader.role != LEADER and leader.id not in leader.voters
    new = c.leader()
    assert new is not None and new.voters == set(ids) - {leader.id}
    index, effects = new.propose(b"after", c.now)
    c.run([(new.id, effects)])
    c.advance(0.3)
    assert all(c.commits[i] >= index for i in ids if i != leader.id)


def test_node_holding_its_own_uncommitted_removal_still_campaigns_and_hands_over():
    # b led {a, b}, appended "remove b" and crashed before it committed; a never got it.
    b = node("b", entries=[Entry(1, 1), Entry(2, 1, b"", ("a",))], term=1, peers=["a", "b"])
    assert b.voters == {"a"}
    effects = b.tick(10.0)
    assert b.role == PRE_CANDIDATE and [to for to, _ in sends(effects)] == ["a"]
    b.receive("a", RequestVoteResponse(2, True, pre_vote=True), 10.0)
    b.receive("a", RequestVoteResponse(2, True), 10.0)
    assert b.role == LEADER  # leading a configuration it is not part of
    effects = b.receive("a", AppendEntriesResponse(2, True, match_index=3), 10.0)
    assert Commit(3) in effects and b.role == FOLLOWER
    assert b.tick(100.0) == [] and b.role == FOLLOWER  # removed for good: never campaigns again


def test_a_learner_is_replicated_to_but_not_counted_until_it_becomes_a_voter():
    leader = node("a", peers=["a", "b"])
    elect(leader)
    leader.receive("b", AppendEntriesResponse(1, True, match_index=1), 10.0)
    effects = leader.add_learner("c", 10.0)
    assert [to for to, _ in sends(effects)] == ["c"] and not leader.caught_up("c")
    _, effects = leader.propose(b"x", 10.0)
    disk(leader)
    assert {to for to, _ in sends(effects)} >= {"b"}
    # The learner's acknowledgement alone commits nothing: quorum is still a and b.
    leader.receive("c", AppendEntriesResponse(1, False, reject_index=1, conflict_index=1), 10.0)
    leader.receive("c", AppendEntriesResponse(1, True, match_index=2), 10.0)
    assert leader.commit_index == 1 and leader.quorum == 2
    leader.receive("b", AppendEntriesResponse(1, True, match_index=2), 10.0)
    assert leader.commit_index == 2 and leader.caught_up("c")
    index, _ = leader.change_membership(10.0, add="c")
    assert leader.voters == {"a", "b", "c"} and index == 3


# ---------------------------------------------------------------- quiescence


def test_an_idle_group_goes_quiet_and_then_sends_nothing():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    assert all(n.quiet for n in c.nodes.values())
    assert all(n.commit_index == leader.log.last_index for n in c.nodes.values())
    assert all(n.next_deadline() == float("inf") for n in c.nodes.values())
    for _ in range(300):  # 3 s: many election timeouts
        c.now += 0.01
        for n in c.nodes.values():
            assert n.tick(c.now) == []
    assert c.leader() is leader and leader.term == max(n.term for n in c.nodes.values())


def test_a_quiet_group_wakes_on_a_proposal_and_goes_quiet_again():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    index, effects = leader.propose(b"x", c.now)
    assert not leader.quiet and sends(effects)
    c.run([(leader.id, effects)])
    assert not any(n.quiet for n in c.nodes.values() if n is not leader)  # woken by the append
    c.advance(1.0)
    assert all(n.quiet and n.commit_index == index for n in c.nodes.values())


def test_a_quiet_follower_refuses_a_vote_and_stays_quiet_while_the_quiet_leader_wakes():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    follower = next(n for n in c.nodes.values() if n is not leader)
    req = RequestVote(leader.term + 1, "x", 99, leader.term, pre_vote=True)
    assert sends(follower.receive("x", req, c.now)) == [("x", RequestVoteResponse(leader.term, False, True))]
    assert follower.quiet
    leader.receive("x", req, c.now)
    assert not leader.quiet  # it heartbeats the stray node back into line


def test_leader_node_lost_wakes_a_quiet_follower_which_soon_campaigns():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    c.cut = {leader.id}
    c.advance(2.0)
    assert all(n.quiet for n in c.nodes.values())  # nobody notices on their own
    lost_at = c.now
    for n in c.nodes.values():
        if n is not leader:
            c.run([(n.id, n.leader_node_lost(c.now))])
    c.advance(CFG.heartbeat_interval * 2 + 0.1)
    new = c.leader()
    assert new is not leader and new.term > leader.term
    assert c.now - lost_at < CFG.election_timeout  # well before an election timeout


def test_survivors_of_a_lost_leader_take_turns_so_the_vote_is_not_split():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    others = [n for n in c.nodes.values() if n is not leader]
    for n in others:
        n.leader_node_lost(c.now)
    first, second = sorted(others, key=lambda n: n.next_deadline())
    assert first.next_deadline() - c.now <= CFG.heartbeat_interval
    assert second.next_deadline() - first.next_deadline() >= CFG.election_timeout / 2 - CFG.heartbeat_interval
    # The order rotates with the term, so the groups of one lost node spread over the survivors.
    ranks = set()
    for term in range(4):
        for n in others:
            n.term = term
            n.leader_id = leader.id
            n.leader_node_lost(c.now)
        ranks.add(min(others, key=lambda n: n.next_deadline()).id)
    assert ranks == {n.id for n in others}


def test_quiescence_can_be_turned_off_and_is_off_in_the_bare_core_by_default():
    import attrs

    for config in (attrs.evolve(CFG, quiesce=False), attrs.evolve(CFG, quiesce=None)):
        c = Cluster(config=config)
        c.advance(3.0)
        assert c.leader() is not None and not any(n.quiet for n in c.nodes.values())


def test_a_leader_goes_quiet_without_a_follower_that_is_down_but_not_without_a_quorum():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    down = next(n for n in c.nodes.values() if n is not leader)
    c.cut = {down.id}
    down.wake(c.now)  # as the driver does when its leader's node heartbeats stop
    c.run([(leader.id, leader.propose(b"x", c.now)[1])])  # wakes the group; the down node misses it
    c.advance(3.0)
    assert leader.quiet and leader.commit_index == leader.log.last_index
    assert down.log.last_index < leader.log.last_index
    # The node comes back: its election timer runs (it is not quiet), and its pre-vote wakes
    # the leader, which catches it up; then the group goes quiet again.
    c.cut = set()
    c.advance(3.0)
    assert down.log.last_index == leader.log.last_index and all(n.quiet for n in c.nodes.values())
    assert c.leader() is leader
    # Cut off from both followers, a leader never goes quiet: check-quorum deposes it.
    c.cut = {leader.id}
    c.run([(leader.id, leader.wake(c.now))])
    c.advance(2.0)
    assert leader.role != LEADER


def test_campaign_elects_a_group_of_one_at_once_above_its_logs_last_term():
    # The hard state lost its last term (a group of one does not wait for that fsync): the
    # log holds term 5, the hard state says 2.  The new leader must write above term 5.
    n = node("a", entries=[Entry(1, 5, b"x")], term=2, peers=["a"])
    effects = disk(n, n.campaign(0.0))
    assert n.role == LEADER and n.term == 6
    assert any(isinstance(e, PersistHardState) and e.term == 6 for e in effects)
    assert n.log.last_term == 6  # the new leader's no-op
    assert n.campaign(0.1) == [] and n.term == 6  # a leader does not campaign again


def test_campaign_in_a_larger_group_asks_for_real_votes_without_pre_vote():
    n = node("a")
    effects = n.campaign(0.0)
    assert n.role == CANDIDATE and n.term == 1
    votes = [m for _, m in sends(effects) if isinstance(m, RequestVote)]
    assert len(votes) == 2 and all(not m.pre_vote and m.term == 1 for m in votes)


def test_followers_lost_are_not_counted_for_quiescence_from_their_last_answers():
    """Both followers answered, then their nodes' connections closed while the leader was
    awake (it was not quiet, so there was nothing to wake): without `followers_lost` their
    answers from before the loss let it go quiet at its next heartbeat, and a quiet leader
    never runs check-quorum again. With it, the leader stays awake and is deposed."""
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    c.run([(leader.id, leader.propose(b"x", c.now)[1])])  # awake, every follower just answered
    assert not leader.quiet
    c.cut = {n.id for n in c.nodes.values() if n is not leader}
    c.run([(leader.id, leader.followers_lost(sorted(c.cut), c.now))])
    c.advance(2.5)
    assert not leader.quiet and leader.role != LEADER


def test_followers_lost_wakes_a_quiet_leader_and_means_nothing_to_a_follower():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    assert leader.quiet
    follower = next(n for n in c.nodes.values() if n is not leader)
    assert follower.followers_lost([leader.id], c.now) == [] and follower.quiet
    c.run([(leader.id, leader.followers_lost([follower.id], c.now))])
    assert not leader.quiet


def test_a_learner_that_missed_its_probe_keeps_the_leader_awake_until_it_has_the_log():
    """A learner's first messages may be dropped (its replica is not created yet). Unlike a
    voter it has no election timer whose pre-vote would wake a quiet leader: the leader stays
    awake, probing on every heartbeat, until the learner holds the whole log."""
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    learner = node("d", peers=())
    c.nodes["d"] = learner
    c.cut = {"d"}  # its first probes are lost
    c.run([(leader.id, leader.add_learner("d", c.now))])
    c.advance(3.0)
    assert not leader.quiet and leader.match_index("d") == 0
    c.cut = set()
    c.advance(1.0)
    assert learner.log.last_index == leader.log.last_index and leader.caught_up("d")
    c.advance(1.0)
    assert leader.quiet and "d" in leader.learners and "d" not in leader.voters


def test_followers_lost_drops_a_learner_there():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    c.nodes["d"] = node("d", peers=())
    c.run([(leader.id, leader.add_learner("d", c.now))])
    assert leader.learners == {"d"}
    c.run([(leader.id, leader.followers_lost(["d"], c.now))])
    assert leader.learners == frozenset() and leader.match_index("d") is None


def _restart(c, n):
    """`n` crashes and restarts from its (instantly synced) log and hard state, same member id."""
    c.nodes[n.id] = RaftNode(n.id, list(c.nodes), n.log, HardState(n.term, n.voted_for), CFG,
                             random.Random(99), c.now)
    return c.nodes[n.id]


def test_a_quiet_follower_leased_to_a_restarted_leader_votes_for_it():
    """Simulator seed 5210602 (stale, 3 nodes, a group of n1 and n2): the quiet leader sent its
    quiet heartbeat and crashed; its follower heard the connection close (leader_node_lost) and
    then the heartbeat, so it was quiet again with a lease for the dead leader. The leader
    restarted (same member, node heartbeats again, so no silence woke anyone) and pre-voted;
    the follower refused as in lease and stayed quiet: nobody could be elected, ever. A
    (pre-)vote request of a later term from its own leader now ends the lease."""
    for ids in (["a", "b"], ["a", "b", "c"]):
        c = Cluster(ids=ids)
        c.advance(3.0)
        old = c.leader()
        assert old is not None and all(n.quiet for n in c.nodes.values())
        last_quiet_heartbeat = AppendEntries(old.term, old.id, old.log.last_index, old.log.last_term, (),
                                             old.commit_index, quiet=True)
        new = _restart(c, old)
        for n in c.nodes.values():
            if n is not new:
                c.run([(n.id, n.leader_node_lost(c.now))])
                c.run([(n.id, n.receive(old.id, last_quiet_heartbeat, c.now))])  # late, after the close
                assert n.quiet and n.leader_id == old.id
        c.advance(3 * CFG.election_timeout)
        leader = c.leader()
        assert leader is not None and leader.term > old.term, ids
        index, effects = leader.propose(b"after", c.now)
        c.run([(leader.id, effects)])
        c.advance(0.5)
        assert all(n.commit_index >= index for n in c.nodes.values()), ids


def test_only_a_later_term_vote_request_from_its_own_leader_ends_a_quiet_followers_lease():
    c = Cluster()
    c.advance(3.0)
    leader = c.leader()
    follower, other = (n for n in c.nodes.values() if n is not leader)
    term, last = leader.term, (leader.log.last_index, leader.log.last_term)
    # Another node, or its leader's request of a term it already has (a stale pre-vote from
    # before it was elected), is refused and leaves it quiet, leased.
    for frm, req in ((other.id, RequestVote(term + 1, other.id, *last, pre_vote=True)),
                     (leader.id, RequestVote(term, leader.id, *last, pre_vote=True))):
        assert sends(follower.receive(frm, req, c.now)) == [(frm, RequestVoteResponse(term, False, True))]
        assert follower.quiet and follower.leader_id == leader.id
    # Its leader asking for term + 1 no longer leads term: granted, awake, its timer running.
    req = RequestVote(term + 1, leader.id, *last, pre_vote=True)
    assert sends(follower.receive(leader.id, req, c.now)) == [(leader.id, RequestVoteResponse(term + 1, True, True))]
    assert not follower.quiet and follower.leader_id is None
    assert c.now + CFG.election_timeout <= follower.next_deadline() < c.now + 2 * CFG.election_timeout


def test_a_deposed_leaders_late_appends_leave_quiet_followers_quiet():
    """Simulator seed 5209921 (stale, 5 nodes): a leader of term 1 behind a slow link went on
    sending appends after the group elected a leader of term 2 and went quiet. Each one woke a
    quiet follower; the quiet leader never heard of it, so it sent them no heartbeat, and an
    election timeout later the woken followers, their leases lapsed, elected one of themselves:
    a healthy leader deposed. A message of an older term is answered and changes nothing: it
    leaves a quiet follower quiet."""
    ids = ["a", "b", "c", "d", "e"]
    c = Cluster(ids=ids)
    c.advance(3.0)
    old = c.leader()
    late = AppendEntries(old.term, old.id, old.log.last_index, old.term, (), old.commit_index)
    target = next(i for i in ids if i != old.id)
    c.run([(old.id, old.transfer_leadership(target, c.now))])
    c.advance(3.0)
    leader = c.leader()
    assert leader.id == target and leader.term == late.term + 1
    assert all(n.quiet for n in c.nodes.values())
    for n in c.nodes.values():
        if n is not old and n is not leader:
            effects = n.receive(old.id, late, c.now)
            assert sends(effects) == [(old.id, AppendEntriesResponse(leader.term, False))]
            assert n.quiet and n.next_deadline() == float("inf")
    c.advance(5 * CFG.election_timeout)
    assert c.leader() is leader and max(n.term for n in c.nodes.values()) == leader.term

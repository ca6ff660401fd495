"""The deterministic simulator: many seeds stay safe, seeds replay exactly, the workload reaches
the states that classic bugs need, and the checker catches the deliberately broken Raft nodes of
broken_variants.py (each within a bounded number of seeds, while the correct node passes)."""

import heapq
from collections import Counter
from pathlib import Path

import attrs
import pytest
from broken_variants import (
    AcceptStaleAppend,
    AckBeforeFsync,
    AckUnsyncedAfterLeading,
    ConcurrentChanges,
    CountStaleSuccess,
    CountUnsyncedIndex,
    NoOngaroFix,
    NoPreVote,
    OldTermCommit,
    QuietFollowerIgnoresNodeNews,
    SilenceWakesNoGroup,
    SnapshotAlwaysResets,
    SnapshotDiscardsFollowingEntries,
    VoteWithoutPersisting,
)

from streamlog.raft.core import LEADER, PersistHardState, RaftNode, Send, SyncLog
from streamlog.raft.log import Entry
from streamlog.raft.messages import AppendEntries, AppendEntriesResponse
from streamlog.raft.sim import ELECTION_TIMEOUT, REGIMES, Simulation, Violation, main, run_seed

# Seeds per cluster size (3 and 5) that CI runs with the correct node: 1,200 runs in all.
CI_SEEDS = {"mixed": 200, "churn": 200, "reconfig": 100, "stale": 100}

# What each regime must reach, summed over its CI seeds (a counter that stays at zero means the
# workload no longer produces the state a family of bugs needs, and the checker would be blind).
REACHES = {
    "mixed": ("config_changes", "refused_in_progress", "refused_own_term", "stale_append", "stale_success",
              "snapshot_behind", "snapshot_conflict", "snapshot_at", "snapshot_ahead", "snapshot_covered",
              "quiesced", "node_lost", "connection_lost", "leader_ahead_of_disk"),
    "churn": ("config_changes", "snapshots"),
    "reconfig": ("config_changes", "refused_in_progress", "refused_own_term"),
    "stale": ("stale_messages", "stale_append", "stale_success", "snapshot_behind",
              "snapshot_conflict", "snapshot_at", "snapshot_ahead", "snapshot_covered"),
}


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("regime", REGIMES)
def test_many_seeds_are_safe_and_live(regime, nodes):
    failures = []
    totals: Counter[str] = Counter()
    for seed in range(CI_SEEDS[regime]):
        result = run_seed(seed, nodes, regime=regime)
        totals.update({k: v for k, v in result.stats.items() if isinstance(v, int)})
        if not result.ok:
            failures.append(result.violation)
    assert failures == []
    unreached = [k for k in REACHES[regime] if not totals[k]]
    if nodes == 3:
        unreached = [k for k in unreached if k != "stale_success"]  # needs a minority with a follower
    assert unreached == [], totals


# Seeds the soak reported against the correct node, now fixed: faults of the simulator, unless
# said otherwise.
SOAK_FINDINGS = [
    # A deposed leader of term 5 that did not know it rewrote a lagging node's entry 122, which
    # a leader of term 6 had committed without that node: Raft allows it; the shrink check now
    # reports only losses on the word of a leader of the commit's term or later.
    (1028337, 5, "mixed"),
    (1107771, 5, "churn"),  # the same: entry 2, committed in a term the lagging node never saw
    # A node removed at 0.4 s and re-added after healing caught up at one entry per round trip
    # (8-byte batches, one in flight) in more than 10 s: the liveness bound is 20 s everywhere.
    (1022821, 5, "mixed"),
    # A fault of the core: a quiet follower was leased again to its crashed leader by the quiet
    # heartbeat that arrived after the connection closed, and refused the leader, restarted as
    # the same member, for ever (a later-term vote request from one's own leader now ends the lease).
    (5210602, 3, "stale"),
    (5212336, 3, "stale"),  # the same, at the leader's second crash
    # A fault of the core: a deposed leader's late appends woke quiet followers behind their
    # quiet leader's back, and they deposed it an election timeout later (a message of an older
    # term now leaves a quiet follower quiet).
    (5209921, 5, "stale"),
]


@pytest.mark.parametrize(("seed", "nodes", "regime"), SOAK_FINDINGS)
def test_seeds_the_soak_reported_now_pass(seed, nodes, regime):
    result = run_seed(seed, nodes, regime=regime)
    assert result.ok, result.violation


def test_single_node_groups_and_the_json_wire_form_survive_the_simulator():
    for seed in range(20):
        assert run_seed(seed, 1).ok
        assert run_seed(seed, 5, wire=True).ok


def test_same_seed_gives_the_same_trace():
    a = run_seed(7, 5, trace=True)
    b = run_seed(7, 5, trace=True)
    assert a.trace == b.trace and a.stats == b.stats
    assert len(a.trace) > 100
    assert run_seed(8, 5, trace=True).trace != a.trace


def test_cli_replays_one_seed(capsys):
    assert main(["--seed", "3", "--nodes", "3", "--trace"]) == 0
    out = capsys.readouterr().out
    assert "seed 3 nodes 3 regime mixed: OK" in out and "elected" in out


def test_cli_soak(capsys):
    assert main(["--soak", "--seeds", "4", "--seed", "10"]) == 0
    assert "soak (mixed): 4 seeds from 10, 0 violations" in capsys.readouterr().out


def test_cli_soak_of_one_cluster_size_and_a_bad_seed_count(capsys):
    assert main(["--soak", "--seeds", "3", "--nodes", "1", "--regime", "stale"]) == 0
    assert "soak (stale): 3 seeds from 0, 0 violations" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--soak", "--seeds", "0"])
    assert e.value.code == 2 and "--seeds must be at least 1" in capsys.readouterr().err


def test_cli_runs_a_broken_variant_from_a_file(capsys):
    variants = Path(__file__).with_name("broken_variants.py")
    assert main(["--soak", "--seeds", "2", "--node-factory", f"{variants}:AckBeforeFsync"]) == 1
    out = capsys.readouterr().out
    assert "before it is durable" in out and "2 seeds from 0, 2 violations" in out


@pytest.mark.parametrize("spec", ["nowhere:Nothing", f"{Path(__file__).with_name('broken_variants.py')}:Nothing",
                                  "no-colon", "missing-file.py:X"])
def test_cli_rejects_a_node_factory_it_cannot_load(spec, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--node-factory", spec])
    assert e.value.code == 2 and "--node-factory" in capsys.readouterr().err


def first_violation(factory, seeds, nodes=(3, 5), **kwargs):
    """The first (seed, nodes, violation) that `factory` produces, seeds in order."""
    for seed in range(seeds):
        for n in nodes:
            result = run_seed(seed, n, node_factory=factory, **kwargs)
            if not result.ok:
                return seed, n, result.violation
    return None


# (broken variant, regime, seed bound, what the report must say). The first catch seen, as
# (seed, nodes), is in the comment; docs/raft.md has the rates over 2,000 seeds.
CATCHES = [
    (VoteWithoutPersisting, "mixed", 20, ("durable term",)),  # (0, 3)
    (AckBeforeFsync, "mixed", 20, ("before it is durable",)),  # (0, 3)
    (OldTermCommit, "churn", 80, ("not protected",)),  # (45, 5)
    # Caught as a liveness failure first (a node without pre-vote keeps deposing leaders).
    (NoPreVote, "mixed", 150, ("disruption", "liveness")),  # (64, 3)
    (ConcurrentChanges, "mixed", 50, ("not protected",)),  # (8, 3)
    (NoOngaroFix, "reconfig", 30, ("not protected",)),  # (6, 5)
    (SnapshotDiscardsFollowingEntries, "mixed", 30, ("loses committed entry", "loses entry")),  # (17, 3)
    (SnapshotAlwaysResets, "mixed", 30, ("loses committed entry", "loses entry")),  # (17, 3)
    # (27, 5), "not protected" since the lease rule for a leader's own campaign changed the
    # schedules (before: "counts", leader knowledge); none in 100 reconfig seeds.
    (CountStaleSuccess, "mixed", 50, ("counts", "not protected")),
    (AcceptStaleAppend, "reconfig", 30, ("loses entry", "loses committed entry")),  # (8, 3)
    # The rules of this round: the leader counts itself at its durable index; a quiet follower
    # leaves quiescence when its leader's node is gone or silent.
    (CountUnsyncedIndex, "mixed", 20, ("not protected",)),  # (0, 5)
    (QuietFollowerIgnoresNodeNews, "mixed", 20, ("liveness",)),  # (0, 3)
]


@pytest.mark.parametrize(("variant", "regime", "bound", "says"), CATCHES, ids=[c[0].__name__ for c in CATCHES])
def test_checker_catches_the_broken_variant_and_passes_the_correct_node(variant, regime, bound, says):
    # The bound stays within the seeds test_many_seeds_are_safe_and_live runs with the correct
    # node in the same regime, so the correct node is known to pass every seed searched here.
    assert bound <= CI_SEEDS[regime]
    found = first_violation(variant, bound, regime=regime)
    assert found is not None, f"{variant.__name__} not caught in {bound} seeds of {regime}"
    seed, nodes, violation = found
    assert any(s in violation for s in says), violation
    assert run_seed(seed, nodes, regime=regime).ok  # the same seed, with the correct node


def test_vote_without_persisting_leads_to_two_leaders_in_one_term():
    # With the direct durability check off, the consequences themselves are caught (first: seed
    # 4, a commit a twice-voting node could undo; seed 9, two leaders of term 1).
    found = first_violation(VoteWithoutPersisting, 80, check_durability=False)
    assert found is not None
    assert any(s in found[2] for s in ("election safety", "log matching", "state machine", "not protected"))


def test_ack_before_fsync_loses_committed_entries():
    found = first_violation(AckBeforeFsync, 50, check_durability=False)
    assert found is not None
    assert any(s in found[2] for s in ("committed", "completeness", "state machine"))


# ---------------------------------------------------------------- the checker itself


def lone_voter(node_id, peers, log, hard_state, config, rng, now):
    """Every node a group of one: each elects itself at once, before its term is on disk."""
    return RaftNode(node_id, [node_id], log, hard_state, config, rng, now)


def pending_fsync(sim, node_id):
    """Complete the fsync `node_id` is waiting for (the simulation's event loop is not run)."""
    for i, (_, _, fn, args) in enumerate(sim._events):
        if fn == sim._fsync_done and args[0] == node_id:
            sim._events.pop(i)
            fn(*args)
            return
    raise AssertionError(f"{node_id} has no fsync in progress")


def test_election_safety_counts_a_leader_once_its_term_is_durable():
    sim = Simulation(0, 3, node_factory=lone_voter)
    for h in sim.hosts.values():
        sim._start(h)
    a, b = sim.hosts["n1"], sim.hosts["n2"]
    sim._feed(a, a.node.tick(a.local(10.0)))  # leads term 1 in memory; its term is not durable
    assert a.node.role == "leader" and a.durable_hs.term == 0 and 1 not in sim.leaders
    sim._crash(a)  # ... and never will be: nobody saw it lead term 1
    sim._feed(b, b.node.tick(b.local(10.0)))
    pending_fsync(sim, "n2")  # n2's term 1 reaches its disk: n2 leads term 1, the only one
    assert sim.leaders == {1: "n2"}
    c = sim.hosts["n3"]
    sim._feed(c, c.node.tick(c.local(10.0)))
    with pytest.raises(Violation, match="election safety: n2 and n3 both lead term 1"):
        pending_fsync(sim, "n3")


def test_an_answer_overtaken_by_a_newer_term_is_not_a_durability_violation():
    # n2 answers n1's AppendEntries of term 1; the answer waits for n2's fsync. Meanwhile n3,
    # leader of term 2, overwrites that entry. When the fsync completes the old answer leaves
    # naming an entry n2 no longer has: false, but harmless (see _check_durable_send).
    sim = Simulation(0, 3)
    for h in sim.hosts.values():
        sim._start(h)
    f = sim.hosts["n2"]
    effects = f.node.receive("n1", AppendEntries(1, "n1", 0, 0, (Entry(1, 1, b"x"),), 0), f.local(1.0))
    assert [e.msg for e in effects if isinstance(e, Send)] == [AppendEntriesResponse(1, True, match_index=1)]
    sim._feed(f, effects)
    assert f.syncing and any(isinstance(e, Send) for e in f.queue)  # the answer is behind the fsyncs
    sim._feed(f, f.node.receive("n3", AppendEntries(2, "n3", 0, 0, (Entry(1, 2, b"y"),), 0), f.local(1.0)))
    assert f.log.entry_at(1) == Entry(1, 2, b"y")
    while f.syncing:
        pending_fsync(sim, "n2")  # does not raise
    assert sim.stats["obsolete_acks"] == 1 and not f.queue
    # The same answer released in its own term, before its entry is on disk, is a violation.
    g = Simulation(0, 3, node_factory=AckBeforeFsync)
    for h in g.hosts.values():
        g._start(h)
    f = g.hosts["n2"]
    g._feed(f, f.node.receive("n1", AppendEntries(1, "n1", 0, 0, (Entry(1, 1, b"x"),), 0), f.local(1.0)))
    with pytest.raises(Violation, match="acknowledges index 1 before it is durable"):
        pending_fsync(g, "n2")  # its term is on disk: out goes the answer, ahead of the entry's fsync


def test_a_node_holding_its_own_uncommitted_removal_counts_as_a_candidate():
    # RaftNode lets it campaign (under the new configuration): so must the protection check.
    sim = Simulation(0, 3)
    sim.initial_voters = ("n1", "n2", "n3")
    removal = (1, 0, (Entry(1, 1), Entry(2, 1, b"", ("n2", "n3"))), None)
    assert sim._campaign_config(removal, "n1", commit=1) == {"n2", "n3"}
    assert sim._campaign_config(removal, "n1", commit=2) is None  # known committed: it stays out
    assert sim._campaign_config(removal, "n2", commit=0) == {"n2", "n3"}
    assert sim._campaign_config((1, 0, (Entry(1, 1),), None), "n1", commit=0) == {"n1", "n2", "n3"}
    joining = Simulation(1, 3)
    joining.initial_voters = ("n1", "n2")
    assert joining._campaign_config((1, 0, (), None), "n3", commit=0) is None  # not a member yet


def complete(sim, node_id, kind):
    """Complete the first pending fsync of `kind` (PersistHardState or SyncLog) of `node_id`."""
    for i, (_, _, fn, args) in enumerate(sim._events):
        if fn == sim._fsync_done and args[0] == node_id and isinstance(args[2], kind):
            sim._events.pop(i)
            fn(*args)
            return
    raise AssertionError(f"{node_id} has no {kind.__name__} in progress")


@pytest.mark.parametrize("factory", [RaftNode, AckUnsyncedAfterLeading])
def test_a_deposed_leader_acknowledges_its_unsynced_entries_only_once_they_are_durable(factory):
    # n1 leads alone (its no-op's fsync is no barrier), is deposed by term 2, and is asked to
    # vouch for that entry; its term-2 hard state reaches the disk before the entry does (two
    # files). The correct node answers behind a barrier; the broken one at once. Soaks rarely
    # reach this window (the new leader's first append usually carries new entries, which
    # bring their own barrier), so it is scripted.
    def lone(node_id, peers, log, hard_state, config, rng, now):
        return factory(node_id, [node_id], log, hard_state, config, rng, now)

    sim = Simulation(0, 3, node_factory=lone)
    for h in sim.hosts.values():
        sim._start(h)
    a = sim.hosts["n1"]
    sim._feed(a, a.node.tick(a.local(10.0)))
    complete(sim, "n1", PersistHardState)
    assert a.node.role == "leader" and a.node.durable_index == 0 and a.log.last_index == 1
    sim._feed(a, a.node.receive("n2", AppendEntries(2, "n2", 1, 1, (), 0), a.local(10.0)))
    if factory is RaftNode:
        complete(sim, "n1", PersistHardState)  # the answer still waits for the entry's fsync
        assert a.syncing and a.sent_ack_upto == 0
        while any(fn == sim._fsync_done and args[0] == "n1" for _, _, fn, args in sim._events):
            complete(sim, "n1", SyncLog)
        assert a.sent_ack_upto == 1
    else:
        with pytest.raises(Violation, match="acknowledges index 1 before it is durable"):
            complete(sim, "n1", PersistHardState)


def _run_until(sim, t):
    while sim._events and sim._events[0][0] <= t:
        at, _, fn, args = heapq.heappop(sim._events)
        sim.now = at
        fn(*args)


def leader_elected_while_the_leader_is_stopped(seed, factory):
    """Scripted: no faults but one, the leader of a quiet group paused (SIGSTOP, its
    connections open) and never resumed. Whether the two others elect a leader within ten
    election timeouts: the soak's liveness check runs only after the faults heal, when the
    resumed leader's heartbeats end the quiet state anyway, so it cannot see this."""
    sim = Simulation(seed, 3, node_factory=factory)
    # No fault but the one below: none struck at a fresh leader, no change at an election.
    sim.profile = attrs.evolve(sim.profile, fresh_leader_fault=0.0, change_on_election=0.0, replay_on_election=0.0)
    for h in sim.hosts.values():
        sim._start(h)
        sim._at(0.001, sim._tick, h.id)
    _run_until(sim, 3.0)
    old = max((h for h in sim.hosts.values() if h.node.role == LEADER), key=lambda h: h.node.term)
    assert old.node.quiet
    old.paused = True
    _run_until(sim, 3.0 + 10 * ELECTION_TIMEOUT)
    return any(h.node.role == LEADER and h.node.term > old.node.term for h in sim.hosts.values() if h is not old)


def test_a_stopped_leaders_quiet_followers_elect_another_and_the_variant_waking_none_does_not():
    seeds = [s for s in range(12) if len(Simulation(s, 3).initial_voters) == 3][:4]
    assert len(seeds) == 4
    for seed in seeds:
        assert leader_elected_while_the_leader_is_stopped(seed, RaftNode), seed
        assert not leader_elected_while_the_leader_is_stopped(seed, SilenceWakesNoGroup), seed

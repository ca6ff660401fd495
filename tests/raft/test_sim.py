"""The deterministic simulator: many seeds stay safe, seeds replay exactly, and the checker
catches deliberately broken Raft variants (defined here, as test-side subclasses)."""

import pytest

from streamlog.raft.core import RaftNode, SyncLog
from streamlog.raft.sim import main, run_seed

CI_SEEDS = 300  # per cluster size and regime: 1200 runs in all


@pytest.mark.parametrize("regime", ["mixed", "churn"])
@pytest.mark.parametrize("nodes", [3, 5])
def test_many_seeds_are_safe_and_live(nodes, regime):
    failures = []
    for seed in range(CI_SEEDS):
        result = run_seed(seed, nodes, regime=regime)
        if not result.ok:
            failures.append(result.violation)
    assert failures == []


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


def first_violation(factory, seeds, nodes=(3, 5), **kwargs):
    for seed in range(seeds):
        for n in nodes:
            result = run_seed(seed, n, node_factory=factory, **kwargs)
            if not result.ok:
                return result.violation
    return None


class VoteWithoutPersisting(RaftNode):
    """Broken: term and vote live only in memory, so a restarted node can vote twice."""

    def _persist_hard_state(self) -> None:
        pass


class AckBeforeFsync(RaftNode):
    """Broken: the follower's acknowledgement (and commit) go out before its fsync."""

    def _handle_append_entries(self, frm, m):
        mark = len(self._effects)
        super()._handle_append_entries(frm, m)
        new = self._effects[mark:]
        syncs = [e for e in new if isinstance(e, SyncLog)]
        self._effects[mark:] = [e for e in new if not isinstance(e, SyncLog)] + syncs


class OldTermCommit(RaftNode):
    """Broken: commits any entry stored on a majority, ignoring Raft §5.4.2."""

    def _can_commit(self, index):
        return True


class NoPreVote(RaftNode):
    """Broken (for availability): campaigns skip pre-vote, so a node that was cut off comes
    back with a higher term and deposes a healthy leader."""

    def _campaign(self, pre_vote, transfer=False):
        super()._campaign(False, transfer)


def test_checker_catches_votes_without_persisting_the_term():
    violation = first_violation(VoteWithoutPersisting, 50)
    assert violation is not None and "durable term" in violation


def test_vote_without_persisting_leads_to_two_leaders_in_one_term():
    # With the direct durability check off, the consequence itself is caught.
    violation = first_violation(VoteWithoutPersisting, 200, check_durability=False)
    assert violation is not None
    assert "election safety" in violation or "log matching" in violation or "state machine" in violation


def test_checker_catches_acknowledging_before_fsync():
    violation = first_violation(AckBeforeFsync, 50)
    assert violation is not None and "before it is durable" in violation


def test_ack_before_fsync_loses_committed_entries():
    violation = first_violation(AckBeforeFsync, 200, check_durability=False)
    assert violation is not None
    assert "committed" in violation or "completeness" in violation or "state machine" in violation


def test_checker_catches_skipping_pre_vote():
    violation = first_violation(NoPreVote, 200)
    assert violation is not None and "disruption" in violation


def test_checker_catches_counting_old_term_entries():
    violation = first_violation(OldTermCommit, 400, regime="churn")
    assert violation is not None and "not protected" in violation


def test_correct_node_passes_the_seeds_that_catch_the_broken_ones():
    # The same seeds, run with the real RaftNode, are clean: the checker is not trigger-happy.
    for regime in ("mixed", "churn"):
        assert first_violation(RaftNode, 20, regime=regime) is None

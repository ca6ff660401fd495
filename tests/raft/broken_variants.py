"""Deliberately broken Raft nodes: one classic bug each, as a one-method subclass of RaftNode.

They exist to prove that the simulator's checker has teeth (tests/raft/test_sim.py), and to
measure how fast it catches each bug:

    python -m streamlog.raft.sim --soak --seeds 2000 --seed 0 \\
        --node-factory tests/raft/broken_variants.py:NoOngaroFix

`VARIANTS` maps a short name to each class. Never use these outside a test.
"""

from __future__ import annotations

from streamlog.raft.core import Effect, RaftNode, SnapshotInstalled, SyncLog
from streamlog.raft.messages import AppendEntries, AppendEntriesResponse, InstallSnapshot, Message


class VoteWithoutPersisting(RaftNode):
    """Broken: term and vote live only in memory, so a restarted node can vote twice."""

    def _persist_hard_state(self) -> None:
        pass


class AckBeforeFsync(RaftNode):
    """Broken: the follower's acknowledgement (and commit) go out before its fsync."""

    def _handle_append_entries(self, frm: str, m: AppendEntries) -> None:
        mark = len(self._effects)
        super()._handle_append_entries(frm, m)
        new = self._effects[mark:]
        syncs = [e for e in new if isinstance(e, SyncLog)]
        self._effects[mark:] = [e for e in new if not isinstance(e, SyncLog)] + syncs


class OldTermCommit(RaftNode):
    """Broken: commits any entry stored on a majority, ignoring Raft §5.4.2 (Figure 8)."""

    def _can_commit(self, index: int) -> bool:
        return True


class NoPreVote(RaftNode):
    """Broken (for availability): campaigns skip pre-vote, so a node that was cut off comes
    back with a higher term and deposes a healthy leader."""

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        super()._campaign(False, transfer)


class ConcurrentChanges(RaftNode):
    """Broken: accepts a membership change while the previous one is still uncommitted, so two
    single-server steps become one two-server change whose old and new majorities can be
    disjoint (thesis §4.1)."""

    def _change_in_progress(self) -> bool:
        return False


class NoOngaroFix(RaftNode):
    """Broken: a new leader changes the configuration before it has committed an entry of its
    own term. An uncommitted change of an earlier leader, which this leader never saw, can then
    win an election and overwrite this leader's committed change (Ongaro, raft-dev 2015)."""

    def _committed_own_term(self) -> bool:
        return True


class SnapshotDiscardsFollowingEntries(RaftNode):
    """Broken: a follower that already holds the snapshot's last entry discards the entries
    after it (Figure 13 says to retain them), although it may have acknowledged them and the
    leader may have counted them towards a commit."""

    def _handle_install_snapshot(self, frm: str, m: InstallSnapshot) -> None:
        if m.last_index > self.commit_index and self.log.term_at(m.last_index) == m.last_term:
            if self.log.last_index > m.last_index:
                self.log.truncate_suffix(m.last_index + 1)
                self._sync_log()
                self._refresh_config()
        super()._handle_install_snapshot(frm, m)


class SnapshotAlwaysResets(RaftNode):
    """Broken: InstallSnapshot resets the log even when it holds the snapshot's last entry
    (and reports a snapshot install), dropping what follows just as the variant above does,
    through `reset` instead of `truncate_suffix`."""

    def _handle_install_snapshot(self, frm: str, m: InstallSnapshot) -> None:
        if m.last_index > self.commit_index and self.log.term_at(m.last_index) == m.last_term:
            self._heard_from_leader(frm)
            self.log.reset(m.last_index, m.last_term, m.config)
            self._sync_log()
            self._refresh_config()
            self._effects.append(SnapshotInstalled(m.last_index, m.last_term, m.data))
            self._set_commit(m.last_index)
            self._send(frm, AppendEntriesResponse(self.term, True, match_index=m.last_index))
            return
        super()._handle_install_snapshot(frm, m)


class CountStaleSuccess(RaftNode):
    """Broken: a leader counts a success response from an older term. It vouches for the log
    the follower had then, matched against the log this node had when it led that older term;
    both may have changed since."""

    def _receive(self, frm: str, msg: Message) -> None:
        if isinstance(msg, AppendEntriesResponse) and msg.success and msg.term < self.term:
            self._handle_append_entries_response(frm, msg)
            return
        super()._receive(frm, msg)


class AcceptStaleAppend(RaftNode):
    """Broken: a follower accepts AppendEntries from a leader of an older term, and truncates
    its log where the deposed leader's log differs."""

    def _receive(self, frm: str, msg: Message) -> None:
        if isinstance(msg, AppendEntries) and msg.term < self.term:
            self._handle_append_entries(frm, msg)
            return
        super()._receive(frm, msg)


class CountUnsyncedIndex(RaftNode):
    """Broken: the leader counts its own last index towards commits, not its durable index.
    It replicates before its own fsync, so an entry can be "committed" on a minority's disks
    plus the leader's page cache, and a crash of the leader loses it."""

    def _self_match(self) -> int:
        return self.log.last_index


class AckUnsyncedAfterLeading(RaftNode):
    """Broken: a deposed leader acknowledges entries it wrote as leader (whose fsync it never
    waited for) without a barrier first, so its answer vouches for entries not yet on disk."""

    def _ack(self, frm: str, match: int) -> None:
        self._send(frm, AppendEntriesResponse(self.term, True, match_index=match))


class QuietFollowerIgnoresNodeNews(RaftNode):
    """Broken: a quiet follower ignores every news of its leader's end (its node's connection
    closed: `leader_node_lost`; its node heartbeats stopped: `wake`; it campaigns itself after
    a restart: `_leader_campaigns`), so a group that was quiet when its leader died never
    elects another: its followers stay quiet, in the lease of a dead leader, for ever. (In the
    simulator a crashed node always restarts, so the last signal alone restores liveness, as
    does silence; the closed connection only makes failover faster.)"""

    def leader_node_lost(self, now: float) -> list[Effect]:
        if self.quiet and self.role != "leader":
            self._now = now
            return self._take()
        return super().leader_node_lost(now)

    def wake(self, now: float) -> list[Effect]:
        if self.quiet and self.role != "leader":
            self._now = now
            return self._take()
        return super().wake(now)

    def _leader_campaigns(self, frm: str, msg: Message) -> bool:
        return not self.quiet and super()._leader_campaigns(frm, msg)


class SilenceWakesNoGroup(RaftNode):
    """Broken (for availability): a quiet follower ignores the silence of its leader's node
    (the driver's `wake`), so a group whose leader's process is stopped or cut off by a
    partition, with its connection still open, elects nobody until that node is heard again.
    (The closed connection, `leader_node_lost`, still works.)"""

    def wake(self, now: float) -> list[Effect]:
        if self.quiet and self.role != "leader":
            self._now = now
            return self._take()
        return super().wake(now)


class RequiesceRegardless(RaftNode):
    """Broken (for availability): the follower woken by its leader's silence goes back to
    quiet when that node is heard again even if it campaigned or follows someone else
    meanwhile, in the lease of a leader that may no longer lead."""

    def requiesce(self, leader: str, term: int, now: float) -> list[Effect]:
        self._now = now
        if self.role != "leader":
            self.quiet = True
            self.leader_id = leader
        return self._take()


VARIANTS: dict[str, type[RaftNode]] = {
    "vote-without-persisting": VoteWithoutPersisting,
    "silence-wakes-no-group": SilenceWakesNoGroup,
    "requiesce-regardless": RequiesceRegardless,
    "ack-before-fsync": AckBeforeFsync,
    "old-term-commit": OldTermCommit,
    "no-pre-vote": NoPreVote,
    "concurrent-changes": ConcurrentChanges,
    "no-ongaro-fix": NoOngaroFix,
    "snapshot-discards-following": SnapshotDiscardsFollowingEntries,
    "snapshot-always-resets": SnapshotAlwaysResets,
    "count-stale-success": CountStaleSuccess,
    "accept-stale-append": AcceptStaleAppend,
    "count-unsynced-index": CountUnsyncedIndex,
    "ack-unsynced-after-leading": AckUnsyncedAfterLeading,
    "quiet-follower-ignores-node-news": QuietFollowerIgnoresNodeNews,
}

"""L{RaftGroupStorage}: one Raft group's durability over the node's shared storage.

The Raft driver asks each group for a C{GroupStorage} (streamlog.raft.driver):
its log, its term and vote, and a way to make the log durable.  On a node
these are shared pieces: the group's partition log (the Raft log I{is} the
storage log), the node's one L{HardStateStore} (saves of every group share
rounds), and the node's L{GroupCommitter} (syncs of every log share sync
workers).  This is the glue, so that wiring a partition as a Raft group is
one line.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from streamlog.raft.core import HardState
from streamlog.storage.group_commit import ALWAYS
from streamlog.storage.hardstate import HardStateStore


class RaftGroupStorage:
    """A C{streamlog.raft.driver.GroupStorage} for group C{group}.

    @param log: the group's Raft log (a L{streamlog.storage.log.SegmentedLog}).
    @param hard_state: the node's hard-state store.
    @param committer: a L{streamlog.storage.group_commit.GroupCommitter} of
        policy C{always}.  A follower's acknowledgement and a leader's own
        vote in the quorum count only entries on disk (docs/raft.md, the
        effects contract), so the barrier must be an fsync whatever the
        broker's C{--fsync} says: with C{never} or C{interval:} the
        committer's C{wait_index} fires C{False} at once, which the driver
        would take for durable.  Such a committer is refused (C{ValueError});
        a node whose C{--fsync} is not C{always} gives its Raft groups a
        committer of their own.
    @raise ValueError: C{committer}'s policy is not C{always}.
    """

    def __init__(self, group: str, log: Any, hard_state: HardStateStore, committer: Any) -> None:
        policy = committer.policy
        if policy.mode != ALWAYS:
            raise ValueError(
                f"Raft group {group}: its log needs a group committer of fsync policy 'always', not '{policy}' "
                "(a Raft barrier must be an fsync; give Raft groups a GroupCommitter(FsyncPolicy('always'), ...) of their own)"
            )
        self.group = group
        self.log = log
        self.hard_state = hard_state
        self.committer = committer

    def load_hard_state(self) -> HardState:
        return self.hard_state.get(self.group)

    def save_hard_state(self, state: HardState) -> Deferred:
        """Fires once C{state} is durable (a round shared with every group saving meanwhile)."""
        return self.hard_state.save(self.group, state)

    def sync_log(self) -> Deferred:
        """Fires once every entry written so far is durable (a sync shared with every append meanwhile)."""
        d: Deferred = self.committer.wait_index(self.log, self.log.last_index)
        return d

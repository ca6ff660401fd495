"""PartitionReplica.holding: how many replicas an acks=all answer says hold the batch."""

from __future__ import annotations

import attrs

from streamlog.cluster.replica import PartitionReplica
from streamlog.raft.core import FOLLOWER, LEADER


@attrs.define
class Log:
    last_index: int = 5
    start_index: int = 1
    start_offset: int = 0
    end_offset: int = 5


@attrs.define
class Core:
    """What holding() reads of a Raft node: the leader's knowledge of each voter."""

    role: str = LEADER
    id: str = "1.a"
    voters: frozenset = frozenset({"1.a", "2.b", "3.c"})
    durable_index: int = 5
    matches: dict = attrs.field(factory=lambda: {"2.b": 5, "3.c": 5})
    log: Log = attrs.field(factory=Log)

    def match_index(self, member):
        return self.matches.get(member) if self.role == LEADER else None


def replica(core):
    r = PartitionReplica("t", 0, core.log, "g", None, core.id, lambda m: (None, None), 3)
    r.node = core
    return r


def test_every_voter_that_acknowledged_and_the_leader_once_synced_are_counted():
    core = Core()
    assert replica(core).holding(5) == 3
    core.matches = {"2.b": 5, "3.c": 4}
    assert replica(core).holding(5) == 2
    assert replica(core).holding(4) == 3


def test_the_leaders_own_unfinished_fsync_is_not_counted():
    assert replica(Core(durable_index=3)).holding(5) == 2  # committed on the two followers' disks


def test_a_node_that_lost_the_leadership_knows_only_a_majority():
    assert replica(Core(role=FOLLOWER)).holding(5) == 2
    assert replica(Core(voters=frozenset({"1.a"}), matches={})).holding(5) == 1

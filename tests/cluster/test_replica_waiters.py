"""PartitionReplica.when_leading: waiters for a read and for a write wake at their own time."""

from __future__ import annotations

from twisted.internet.task import Clock

from streamlog.cluster.replica import PartitionReplica
from streamlog.raft.core import LEADER
from streamlog.storage.base import TopicConfig
from streamlog.storage.memory import MemoryStorage
from streamlog.testing import no_result, result_of


def test_a_read_waiter_kept_while_a_write_waiter_wakes_still_wakes_later():
    clock = Clock()
    log = MemoryStorage().create_topic("t", 1, TopicConfig())[0]
    replica = PartitionReplica("t", 0, getattr(log, "log", log), "g", host=None, member="1",
                               locate=lambda member: (None, None))
    read = replica.when_leading(clock, 5.0)
    write = replica.when_leading(clock, 5.0, write=True)
    replica.role_changed(LEADER, 1, "1")  # the leader: writable, but not ready to serve reads yet
    assert result_of(write) is None
    no_result(read)
    replica.role_changed(LEADER, 1, "1")  # a second wake-up with the read waiter still kept
    no_result(read)
    clock.advance(5.0)  # (it used to break here: the kept waiter had lost its flag)
    assert not clock.getDelayedCalls()

"""PartitionReplica.when_leading: waiters of both kinds at once (found by the cluster simulator).

A new leader is writable before it has committed in its term: a wake then
releases the waiting writes and keeps the waiting reads.  The kept reads
were stored without their kind, so the next wake (or a read's timeout)
raised ValueError inside the Raft driver's callback and the read never
answered (11 of the first 12 seeds of `python -m streamlog.cluster.sim`).
"""

from __future__ import annotations

from twisted.internet.task import Clock

from streamlog.cluster.replica import PartitionReplica
from streamlog.raft.core import LEADER
from streamlog.storage.memory import MemoryLog


def replica() -> PartitionReplica:
    return PartitionReplica("t", 0, MemoryLog(always_durable=True), "g", host=None, member="1.a",
                            locate=lambda member: (None, None))


def test_a_read_kept_waiting_by_a_wake_that_released_a_write_is_released_by_the_next():
    clock = Clock()
    r = replica()
    read, write, fired = r.when_leading(clock, 5.0), r.when_leading(clock, 5.0, write=True), []
    read.addCallback(lambda _: fired.append("read"))
    write.addCallback(lambda _: fired.append("write"))
    r.role_changed(LEADER, 3, "1.a")  # writable, not ready to serve reads (nothing of term 3 committed)
    assert fired == ["write"]
    r.role_changed(LEADER, 3, "1.a")  # another wake with the read still waiting: no error
    assert fired == ["write"]
    r.role_changed("follower", 4, "2.b")  # another leader is known: the read goes and asks it
    assert fired == ["write", "read"]
    assert not clock.getDelayedCalls()


def test_a_kept_read_expires_after_its_timeout():
    clock = Clock()
    r = replica()
    read, fired = r.when_leading(clock, 1.0), []
    r.when_leading(clock, 1.0, write=True)
    read.addCallback(lambda _: fired.append("read"))
    r.role_changed(LEADER, 3, "1.a")
    clock.advance(1.0)
    assert fired == ["read"]

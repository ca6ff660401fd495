"""A replica's requests waiting for leadership (when_leading) are all woken, however many wakes it takes.

Found by `streamlog chaos` (seed 101): a wake that kept a waiter kept it without its kind,
so the next wake (a commit, a role change) raised ValueError inside the Raft callback
(logged "callback ReplicaDirectory.committed failed", hundreds of times a run) and its
timeout timer raised too: every request still waiting then hung until the client's own
timeout, and acks of a partition stalled for seconds after a failover.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from streamlog.cluster.replica import PartitionReplica
from streamlog.raft.core import LEADER

FOLLOWER = "follower"


class QuietLog:
    """Just what a replica reads of its log to take role changes: it holds nothing yet."""

    start_index = 1
    start_offset = 0
    end_offset = 0

    def term_at(self, index: int) -> int:
        return 0


def replica() -> PartitionReplica:
    return PartitionReplica("t", 0, QuietLog(), "g-0", host=None, member="1.a", locate=lambda member: (None, None))


def test_a_read_kept_by_one_wake_is_woken_by_the_next():
    r, clock = replica(), Clock()
    write = r.when_leading(clock, 5.0, write=True)
    read = r.when_leading(clock, 5.0)
    r.role_changed(LEADER, 3, "1.a")  # a leader may take writes at once, serve reads after its first commit
    assert write.called and not read.called
    r.role_changed(FOLLOWER, 4, "2.b")  # it lost leadership before committing: the read learns where to go
    assert read.called
    assert not clock.getDelayedCalls() or all(not c.active() for c in clock.getDelayedCalls())


def test_a_kept_waiter_still_expires_at_its_timeout():
    r, clock = replica(), Clock()
    write = r.when_leading(clock, 5.0, write=True)
    read = r.when_leading(clock, 5.0)
    r.role_changed(LEADER, 3, "1.a")
    assert write.called and not read.called
    clock.advance(5.0)
    assert read.called  # with None: the caller asks again and gets its answer
    assert r._ready_waiters == []


def test_a_commit_waiter_failed_at_a_step_down_says_its_entry_may_still_commit():
    """Found in review: an idempotent duplicate waits for its original's commit; when the
    leader stepped down it was answered a plain NOT_LEADER ("not appended"), though the
    original is in the log and the next leader may commit it."""
    r = replica()
    r.role_changed(LEADER, 3, "1.a")
    waiting = r.when_committed(7)
    r.role_changed(FOLLOWER, 4, "2.b")
    failure = []
    waiting.addErrback(failure.append)
    assert failure and failure[0].value.code == "NOT_LEADER"
    assert failure[0].value.details.get("maybe_appended") is True

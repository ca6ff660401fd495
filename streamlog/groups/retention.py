"""Offsets retention: when an empty group has been idle long enough to be deleted.

Kafka deletes a group that has had no members for C{offsets.retention.minutes}
(7 days) and no offset commit in that time.  A coordinator does the same
(C{--group-offsets-retention}): it writes the C{delete} record DeleteGroup
writes, so every later replay and every later coordinator agree.

What counts is the time of the group's last I{activity}: the timestamp of the
last record of the offsets topic about its membership (C{group}, C{member},
C{member_gone}) or its offsets (C{commit}, C{reset}).  While a group has
members it is never deleted; when the last one goes, its C{member_gone}
record is the last activity, so "idle since" is "empty since" or "last
commit", whichever is later.  Being derived from stored records' timestamps
(which a snapshot keeps, as C{"active_ms"}), it is the same on a replay at a
new coordinator as it was at the old one, not the time the new one loaded
the partition.

L{GroupActivity} is a plain object: the broker feeds it each record's
timestamp as it applies the record (replay) or as its write commits (live),
and asks it which groups are due.  It keeps one queue entry per group (a
heap ordered by the activity time the entry was queued with; an entry found
stale when it comes out is queued again at the newer time), so a group
committing all the time costs no more memory than an idle one, and each call
of L{GroupActivity.expired} looks at a bounded number of entries.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class GroupActivity:
    """The last activity of every group of one offsets partition, and the queue of those to check."""

    def __init__(self) -> None:
        #: group -> the timestamp (ms) of its last membership or offsets record.
        self.last: dict[str, int] = {}
        self._queue: list[tuple[int, str]] = []
        self._queued: set[str] = set()

    def note(self, group: str, timestamp: int) -> None:
        """A record about C{group} stored at C{timestamp} (ms); the latest wins (a new leader's
        clock may be a little behind the old one's)."""
        before = self.last.get(group)
        if before is None or timestamp > before:
            self.last[group] = timestamp
        if group not in self._queued:
            self._queued.add(group)
            heapq.heappush(self._queue, (self.last[group], group))

    def forget(self, group: str) -> None:
        """The group was deleted (its C{delete} record); its queue entry is dropped when it comes out."""
        self.last.pop(group, None)

    def clear(self) -> None:
        """Everything before a snapshot marker is forgotten (the snapshot says it all again)."""
        self.last.clear()
        self._queue.clear()
        self._queued.clear()

    def next_due(self, retention_ms: int) -> int | None:
        """When L{expired} may next have a group to give (ms; None: no group is known).  It may be
        early (the first entry stale): L{expired} then queues it again at its newer time."""
        return self._queue[0][0] + retention_ms if self._queue else None

    def expired(self, now_ms: int, retention_ms: int, has_members: Callable[[str], bool], limit: int) -> list[str]:
        """The groups idle (no membership or offsets record) for C{retention_ms} at C{now_ms}
        that have no members, after looking at C{limit} queue entries at most.

        A group given out is not queued again until a record about it is noted (the C{delete}
        record the caller writes, or a commit or join that came first).  A group with members
        leaves the queue: the record of its last member's going queues it again."""
        out: list[str] = []
        for _ in range(limit):
            if not self._queue or self._queue[0][0] + retention_ms > now_ms:
                break
            at, group = heapq.heappop(self._queue)
            self._queued.discard(group)
            last = self.last.get(group)
            if last is None or has_members(group):
                continue
            if last > at:  # active since it was queued: queued again at its last activity
                self._queued.add(group)
                heapq.heappush(self._queue, (last, group))
                continue
            out.append(group)
        return out

"""The group checker on hand-made histories: a clean hand-over passes, and each anomaly it
looks for is found (and only that one) when a history shows it."""

from __future__ import annotations

import pytest

from streamlog.chaos.checker import check
from streamlog.chaos.group_checker import (
    COMMIT_BACKWARDS,
    DOUBLE_OWNER,
    DUPLICATE_COMMITTED,
    GROUP_DUPLICATE,
    GROUP_KINDS,
    GROUP_SKIP,
    PROCESSED_UNOWNED,
    check_group,
)
from streamlog.chaos.history import OK, Drain, Fault, GroupEvent, History, Send, dumps, loads


class Group:
    """A history of one topic ("t"), its acknowledged sends and a group's events."""

    def __init__(self) -> None:
        self.history = History()
        self._id = 0

    def acked(self, partition: int, count: int) -> None:
        for offset in range(count):
            self._id += 1
            self.history.sends.append(Send(self._id, "p1", 0.0, 0.1, "t", f"v{partition}-{offset}", OK,
                                           partition, offset))
        self.history.drains.append(Drain("t", partition, count, 100.0))

    def event(self, kind: str, process: str, time: float, **kw) -> None:
        self.history.group.append(GroupEvent(kind, process, time, "t", **kw))

    def assigned(self, process: str, time: float, partitions, starts=(), generation=1) -> None:
        self.event("assigned", process, time, generation=generation, partitions=tuple(partitions),
                   offsets=tuple(starts))

    def revoked(self, process: str, time: float, partitions, generation=1) -> None:
        self.event("revoked", process, time, generation=generation, partitions=tuple(partitions))

    def lost(self, process: str, time: float, partitions, until=None) -> None:
        self.event("lost", process, time, partitions=tuple(partitions), until=until)

    def processed(self, process: str, time: float, partition: int, first: int, end: int) -> None:
        self.event("processed", process, time, partitions=(partition,), offsets=((partition, first),), end=end)

    def committed(self, process: str, invoke: float, time: float, partition: int, offset: int) -> None:
        self.event("committed", process, time, invoke=invoke, offsets=((partition, offset),))

    def fetched(self, invoke: float, time: float, partition: int, offset: int) -> None:
        self.event("fetched", "offsets", time, invoke=invoke, offsets=((partition, offset),))

    def killed(self, process: str, time: float) -> None:
        self.history.faults.append(Fault("member-kill", process, time, time + 1.0))


def hand_over() -> Group:
    """m1.1 reads 0-5 of partition 0, commits 4, is killed; m2.1 takes over from 4 (5 processed twice)."""
    g = Group()
    g.acked(0, 10)
    g.assigned("m1.1", 1.0, [0])
    g.processed("m1.1", 1.5, 0, 0, 4)
    g.committed("m1.1", 1.6, 1.7, 0, 4)
    g.processed("m1.1", 1.8, 0, 4, 6)
    g.fetched(1.9, 2.0, 0, 4)
    g.killed("m1.1", 2.1)
    g.assigned("m2.1", 5.0, [0], starts=[(0, 4)], generation=2)
    g.processed("m2.1", 5.5, 0, 4, 10)
    g.committed("m2.1", 5.6, 5.7, 0, 10)
    g.fetched(6.0, 6.1, 0, 10)
    g.revoked("m2.1", 7.0, [0], generation=2)
    return g


def found(g: Group) -> dict[str, int]:
    return {k: len(v) for k, v in check_group(g.history).anomalies.items()}


def test_a_hand_over_after_a_kill_is_valid_and_its_uncommitted_window_is_counted():
    result = check_group(hand_over().history)
    assert result.valid
    assert {k: len(v) for k, v in result.anomalies.items()} == {GROUP_DUPLICATE: 1}
    assert result.stats["group_processed"] == 12 and result.stats["group_distinct"] == 10
    assert result.stats["group_duplicates"] == 2  # offsets 4 and 5: handed out after the last commit
    assert result.stats["group_members"] == 2 and result.stats["group_generations"] == 2
    assert result.stats["group_commits"] == 2 and result.stats["group_fetches"] == 2


def test_the_whole_checker_includes_the_group_kinds_and_the_history_round_trips():
    g = hand_over()
    history = loads(dumps(g.history))
    assert history.group == g.history.group
    result = check(history)
    assert result.group and result.valid
    assert tuple(result.counts)[-len(GROUP_KINDS):] == GROUP_KINDS
    assert result.counts[GROUP_DUPLICATE] == 1 and result.stats["group_duplicates"] == 2


def test_offsets_no_member_processed_are_a_skip():
    g = hand_over()
    g.history.group = [e for e in g.history.group if not (e.kind == "processed" and e.process == "m2.1")]
    g.processed("m2.1", 5.5, 0, 4, 6)
    g.processed("m2.1", 5.6, 0, 8, 10)  # 6 and 7 never processed
    assert found(g) == {GROUP_SKIP: 1, GROUP_DUPLICATE: 1}
    detail = check_group(g.history).anomalies[GROUP_SKIP][0]
    assert detail.partition == 0 and detail.offset == 6 and "offsets 6-7 (2 of them acknowledged)" in detail.detail


def test_a_fetched_offset_lower_than_an_acknowledged_commit_goes_backwards():
    g = hand_over()
    g.fetched(1.8, 1.85, 0, 2)  # asked after m1.1's commit of 4 was answered
    assert found(g) == {COMMIT_BACKWARDS: 1, GROUP_DUPLICATE: 1}


def test_an_acknowledged_commit_below_an_earlier_one_goes_backwards_but_not_one_overlapping_it():
    g = hand_over()
    g.committed("m2.1", 6.5, 6.6, 0, 7)  # after 10 was acknowledged and read
    assert found(g) == {COMMIT_BACKWARDS: 1, GROUP_DUPLICATE: 1}  # one lower observation: one anomaly
    g = hand_over()
    g.committed("m1.1", 1.65, 1.75, 0, 3)  # sent before the commit of 4 was answered: either order is fine
    assert COMMIT_BACKWARDS not in found(g)


def test_a_reset_allows_the_committed_offset_to_go_back():
    g = hand_over()
    g.event("reset", "admin", 6.2, offsets=((0, 0),))
    g.fetched(6.3, 6.4, 0, 0)
    assert COMMIT_BACKWARDS not in found(g)


def test_two_members_owning_a_partition_at_once_are_found():
    g = hand_over()
    g.assigned("m3.1", 1.2, [0], starts=[(0, 0)], generation=1)  # while m1.1 owned it (until its kill at 2.1)
    g.revoked("m3.1", 1.4, [0])
    assert found(g)[DOUBLE_OWNER] == 1
    anomaly = check_group(g.history).anomalies[DOUBLE_OWNER][0]
    assert anomaly.processes == ("m1.1", "m3.1")


def test_a_lost_member_owns_nothing_past_its_last_renewed_session():
    g = Group()
    g.acked(0, 4)
    g.assigned("m1.1", 1.0, [0])
    g.processed("m1.1", 1.5, 0, 0, 2)
    g.lost("m1.1", 9.0, [0], until=4.0)  # stopped at 2, resumed at 9: its session ended at 4
    g.assigned("m2.1", 5.0, [0], starts=[(0, 0)], generation=2)
    g.processed("m2.1", 5.5, 0, 0, 4)
    assert found(g) == {GROUP_DUPLICATE: 1}
    # Without the session's end it would have owned the partition until 9: both at once.
    g.history.group = [e for e in g.history.group if e.kind != "lost"]
    g.lost("m1.1", 9.0, [0])
    assert DOUBLE_OWNER in found(g)


def test_processing_after_the_session_ended_is_unowned():
    g = Group()
    g.acked(0, 4)
    g.assigned("m1.1", 1.0, [0])
    g.processed("m1.1", 1.5, 0, 0, 2)
    g.processed("m1.1", 8.9, 0, 2, 4)  # a zombie: resumed, handed out before noticing
    g.lost("m1.1", 9.0, [0], until=4.0)
    assert found(g) == {PROCESSED_UNOWNED: 1}


def test_a_new_owner_starting_below_the_committed_offset_is_found():
    g = hand_over()
    g.history.group = [e for e in g.history.group if e.process != "m2.1"]
    g.assigned("m2.1", 5.0, [0], starts=[(0, 1)], generation=2)  # committed was 4 (acknowledged at 1.7)
    g.processed("m2.1", 5.5, 0, 1, 10)
    g.revoked("m2.1", 7.0, [0], generation=2)
    assert found(g) == {DUPLICATE_COMMITTED: 1, GROUP_DUPLICATE: 1}


@pytest.mark.parametrize("kind", [GROUP_SKIP, COMMIT_BACKWARDS, DOUBLE_OWNER, PROCESSED_UNOWNED, DUPLICATE_COMMITTED])
def test_each_safety_kind_makes_the_whole_result_invalid(kind):
    g = hand_over()
    if kind == GROUP_SKIP:
        g.acked(1, 3)  # a partition nobody read
    elif kind == COMMIT_BACKWARDS:
        g.fetched(8.0, 8.1, 0, 5)
    elif kind == DOUBLE_OWNER:
        g.assigned("m3.1", 6.0, [0], starts=[(0, 10)], generation=3)
        g.revoked("m3.1", 6.5, [0], generation=3)
    elif kind == PROCESSED_UNOWNED:
        g.processed("m2.1", 8.0, 0, 9, 10)
    else:
        g.assigned("m3.1", 8.0, [0], starts=[(0, 9)], generation=3)
        g.revoked("m3.1", 8.5, [0], generation=3)
    result = check(g.history)
    assert not result.valid and result.count(kind) >= 1

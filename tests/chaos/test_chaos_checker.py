"""The checker on hand-made histories: each anomaly is found with its evidence, and
histories that only look suspicious (maybe outcomes, retries of non-idempotent producers,
retention) are valid."""

from __future__ import annotations

import pytest
from chaos_builders import Builder

from streamlog.chaos.checker import (
    ABORTED_READ,
    DUPLICATE,
    INCONSISTENT_OFFSET,
    KINDS,
    LOST,
    NON_MONOTONIC_POLL,
    NON_MONOTONIC_SEND,
    POLL_SKIP,
    RETRY_DUPLICATE,
    SAFETY,
    UNEXPECTED,
    UNSEEN,
    Result,
    check,
)
from streamlog.chaos.history import HistoryError


def found(result: Result) -> dict[str, int]:
    return {k: n for k, n in result.counts.items() if n}


# -- each anomaly, found ----------------------------------------------------------------


def test_acked_send_past_the_drained_end_is_lost():
    b = Builder()
    b.ok("p", "a", 0, 0)
    lost = b.ok("p", "b", 0, 1)
    reader = b.poll("c", 0, 0, [(0, "a")])
    b.drain(0, 1)
    r = check(b.history)
    assert not r.valid
    assert found(r) == {LOST: 1}
    (a,) = r.anomalies[LOST]
    assert (a.value, a.partition, a.offset, a.ops) == ("b", 0, 1, (lost,))
    assert "log ends at 1" in a.detail
    assert reader not in a.ops


def test_acked_send_overwritten_at_its_offset_is_lost_and_inconsistent():
    """A leader acknowledged 'a' at 0, then a new leader wrote 'c' there: readers went past
    offset 0 and never saw 'a'."""
    b = Builder()
    acked = b.ok("p1", "a", 0, 0)
    b.info("p2", "c")
    reader = b.poll("c", 0, 0, [(0, "c")])
    r = check(b.history)
    assert found(r) == {LOST: 1, INCONSISTENT_OFFSET: 1}
    (lost,) = r.anomalies[LOST]
    assert lost.ops == (acked, reader)
    assert "poll 3 read past it" in lost.detail
    (bad,) = r.anomalies[INCONSISTENT_OFFSET]
    assert bad.ops == (acked, reader)
    assert (bad.offset, bad.value) == (0, "a")
    assert "'c' by poll(s) 3" in bad.detail


def test_acked_send_no_read_covered_is_unseen_not_lost():
    b = Builder()
    b.ok("p", "a", 0, 0)
    unseen = b.ok("p", "b", 0, 1)
    b.poll("c", 0, 0, [(0, "a")])
    r = check(b.history)
    assert r.valid
    assert found(r) == {UNSEEN: 1}
    assert r.anomalies[UNSEEN][0].ops == (unseen,)


def test_two_readers_disagreeing_on_an_offset_is_inconsistent():
    b = Builder()
    b.info("p", "a")
    b.info("q", "b")
    one = b.poll("c1", 0, 0, [(0, "a")])
    two = b.poll("c2", 0, 0, [(0, "b")])
    r = check(b.history)
    assert not r.valid
    assert found(r) == {INCONSISTENT_OFFSET: 1}
    (a,) = r.anomalies[INCONSISTENT_OFFSET]
    assert set(a.ops) == {one, two}
    assert a.offset == 0


def test_a_definitely_failed_send_read_is_an_aborted_read():
    b = Builder()
    failed = b.fail("p", "x", "KEY_TOO_LARGE")
    reader = b.poll("c", 0, 0, [(0, "x")])
    r = check(b.history)
    assert found(r) == {ABORTED_READ: 1}
    (a,) = r.anomalies[ABORTED_READ]
    assert a.ops == (failed, reader)
    assert "KEY_TOO_LARGE" in a.detail


def test_idempotent_value_at_two_offsets_is_a_duplicate():
    b = Builder()
    send = b.ok("p", "a", 0, 0, idempotent=True)
    first = b.poll("c", 0, 0, [(0, "a"), (1, "a")])
    r = check(b.history)
    assert not r.valid
    assert found(r) == {DUPLICATE: 1}
    (a,) = r.anomalies[DUPLICATE]
    assert a.ops == (send, first, first)
    assert "stored 2 times: t/0@0, t/0@1" in a.detail


def test_value_stored_in_two_partitions_is_a_duplicate():
    b = Builder()
    b.info("p", "a", idempotent=True)
    b.poll("c", 0, 0, [(0, "a")])
    b.poll("c", 1, 0, [(0, "a")])
    r = check(b.history)
    assert found(r) == {DUPLICATE: 1}


def test_gap_between_polls_is_a_skip():
    b = Builder()
    for i, v in enumerate("abcd"):
        b.ok("p", v, 0, i)
    before = b.poll("c", 0, 0, [(0, "a"), (1, "b")])
    jumped = b.poll("c", 0, 3, [(3, "d")])
    b.poll("other", 0, 0, [(0, "a"), (1, "b"), (2, "c"), (3, "d")])
    r = check(b.history)
    assert found(r) == {POLL_SKIP: 1}
    (a,) = r.anomalies[POLL_SKIP]
    assert a.ops == (before, jumped)
    assert a.offset == 2
    assert "offset 2 skipped" in a.detail


def test_gap_inside_one_answer_is_a_skip():
    b = Builder()
    for i, v in enumerate("abc"):
        b.ok("p", v, 0, i)
    bad = b.poll("c", 0, 0, [(0, "a"), (2, "c")])
    b.poll("other", 0, 1, [(1, "b")])
    r = check(b.history)
    assert found(r) == {POLL_SKIP: 1}
    assert r.anomalies[POLL_SKIP][0].ops == (bad,)


def test_answer_starting_after_the_offset_asked_is_a_skip():
    b = Builder()
    b.info("p", "a")
    b.info("p", "b")
    bad = b.poll("c", 0, 0, [(1, "b")])
    r = check(b.history)
    assert found(r) == {POLL_SKIP: 1}
    assert r.anomalies[POLL_SKIP][0].ops == (bad,)


def test_next_offset_past_what_was_returned_is_a_skip():
    b = Builder()
    b.ok("p", "a", 0, 0)
    b.ok("p", "b", 0, 1)
    bad = b.poll("c", 0, 0, [(0, "a")], next_offset=2)
    b.poll("c", 0, 2, [])
    b.poll("other", 0, 0, [(0, "a"), (1, "b")])
    r = check(b.history)
    assert found(r) == {POLL_SKIP: 1}
    assert r.anomalies[POLL_SKIP][0].ops == (bad,)


def test_consumer_reading_again_is_non_monotonic():
    b = Builder()
    b.ok("p", "a", 0, 0)
    b.ok("p", "b", 0, 1)
    first = b.poll("c", 0, 0, [(0, "a"), (1, "b")])
    again = b.poll("c", 0, 1, [(1, "b")])
    r = check(b.history)
    assert found(r) == {NON_MONOTONIC_POLL: 1}
    assert r.anomalies[NON_MONOTONIC_POLL][0].ops == (first, again)


def test_offsets_going_back_inside_an_answer_is_non_monotonic():
    b = Builder()
    b.ok("p", "a", 0, 0)
    b.ok("p", "b", 0, 1)
    bad = b.poll("c", 0, 0, [(1, "b"), (0, "a")], next_offset=2)
    r = check(b.history)
    # @1 first is also a skip over @0 (the answer did not start where asked)
    assert found(r) == {NON_MONOTONIC_POLL: 1, POLL_SKIP: 1}
    assert r.anomalies[NON_MONOTONIC_POLL][0].ops == (bad,)


def test_idempotent_producer_stored_out_of_send_order_is_non_monotonic():
    b = Builder()
    earlier = b.ok("p", "a", 0, 1, idempotent=True)
    later = b.ok("p", "b", 0, 0, idempotent=True)
    b.poll("c", 0, 0, [(0, "b"), (1, "a")])
    r = check(b.history)
    assert not r.valid
    assert found(r) == {NON_MONOTONIC_SEND: 1}
    (a,) = r.anomalies[NON_MONOTONIC_SEND]
    assert a.ops == (earlier, later)
    assert a.value == "b"


def test_idempotent_info_send_read_before_an_earlier_send_is_non_monotonic():
    b = Builder()
    earlier = b.info("p", "a", idempotent=True)
    later = b.ok("p", "b", 0, 0, idempotent=True)
    b.poll("c", 0, 0, [(0, "b"), (1, "a")])
    r = check(b.history)
    assert found(r) == {NON_MONOTONIC_SEND: 1}
    assert r.anomalies[NON_MONOTONIC_SEND][0].ops == (earlier, later)


def test_value_nobody_sent_is_unexpected():
    b = Builder()
    reader = b.poll("c", 0, 0, [(0, "ghost")])
    r = check(b.history)
    assert found(r) == {UNEXPECTED: 1}
    assert r.anomalies[UNEXPECTED][0].ops == (reader,)


# -- suspicious, but valid ----------------------------------------------------------------


def test_info_sends_read_or_not_are_fine():
    b = Builder()
    b.info("p", "a", "TIMEOUT")
    b.info("p", "b", "CONNECTION_LOST")
    b.info("p", "c", "NOT_LEADER")
    b.poll("c", 0, 0, [(0, "a"), (1, "c")])
    b.drain(0, 2)
    r = check(b.history)
    assert r.valid
    assert found(r) == {}
    assert r.stats["recovered"] == 2
    assert r.stats["sends_info"] == 3


def test_failed_send_never_read_is_fine():
    b = Builder()
    b.fail("p", "x")
    b.ok("p", "a", 0, 0)
    b.poll("c", 0, 0, [(0, "a")])
    b.drain(0, 1)
    assert found(check(b.history)) == {}


def test_non_idempotent_retry_stored_twice_is_counted_not_invalid():
    b = Builder()
    send = b.ok("p", "a", 0, 1)  # the first attempt landed at 0, its answer was lost; the retry at 1
    b.info("p", "b")
    b.poll("c", 0, 0, [(0, "a"), (1, "a"), (2, "b")])
    r = check(b.history)
    assert r.valid
    assert found(r) == {RETRY_DUPLICATE: 1}
    assert r.anomalies[RETRY_DUPLICATE][0].ops[0] == send


def test_non_idempotent_producer_out_of_order_is_not_an_anomaly():
    """The plain Producer's documented reordering case: only idempotence promises order."""
    b = Builder()
    b.ok("p", "a", 0, 1)
    b.ok("p", "b", 0, 0)
    b.poll("c", 0, 0, [(0, "b"), (1, "a")])
    assert found(check(b.history)) == {}


def test_reads_past_retention_are_not_skips_and_removed_values_are_unseen():
    b = Builder()
    for i, v in enumerate("abcdefg"):
        b.ok("p", v, 0, i)
    b.poll("c", 0, 0, [(0, "a"), (1, "b")])
    # retention removed 0..4 meanwhile: the consumer is told so, and jumps to 5
    b.poll_failed("c", 0, 2, "OFFSET_OUT_OF_RANGE", log_start_offset=5)
    b.poll("c", 0, 5, [(5, "f")], log_start_offset=5)
    # another consumer's answer starts at the log start, past the offset it asked
    b.poll("d", 0, 3, [(6, "g")], log_start_offset=6)
    b.drain(0, 7)
    r = check(b.history)
    assert r.valid
    assert found(r) == {UNSEEN: 3}
    assert sorted(a.value for a in r.anomalies[UNSEEN]) == ["c", "d", "e"]


def test_jump_past_the_log_start_told_is_still_a_skip():
    b = Builder()
    for i, v in enumerate("abcdefg"):
        b.ok("p", v, 0, i)
    b.poll("c", 0, 0, [(0, "a")])
    b.poll_failed("c", 0, 1, log_start_offset=3)
    bad = b.poll("c", 0, 5, [(5, "f")], log_start_offset=3)
    r = check(b.history)
    skips = r.anomalies[POLL_SKIP]
    assert [(a.offset, a.ops[-1]) for a in skips] == [(3, bad)]
    assert "offsets 3..4 skipped" in skips[0].detail


def test_consumers_and_partitions_are_judged_apart():
    b = Builder()
    b.ok("p", "a0", 0, 0)
    b.ok("p", "a1", 1, 0)
    b.ok("p", "b0", 0, 1)
    b.poll("c", 0, 0, [(0, "a0")])
    b.poll("c", 1, 0, [(0, "a1")])
    b.poll("d", 0, 0, [(0, "a0"), (1, "b0")])
    b.poll("c", 0, 1, [(1, "b0")])
    b.poll("c", 1, 1, [])
    b.drain(0, 2)
    b.drain(1, 1)
    r = check(b.history)
    assert r.valid and found(r) == {}


def test_failed_polls_change_nothing():
    b = Builder()
    b.ok("p", "a", 0, 0)
    b.poll_failed("c", 0, 0, "NOT_LEADER")
    b.poll_failed("c", 0, 0, "TIMEOUT")
    b.poll("c", 0, 0, [(0, "a")])
    assert found(check(b.history)) == {}


# -- the result and its inputs -------------------------------------------------------------


def test_final_reads_argument_overrides_the_drain_records():
    b = Builder()
    b.ok("p", "a", 0, 0)
    assert found(check(b.history)) == {UNSEEN: 1}
    assert found(check(b.history, final_reads={("t", 0): 0})) == {LOST: 1}


def test_a_value_sent_twice_is_refused():
    b = Builder()
    b.ok("p", "a", 0, 0)
    b.info("q", "a")
    with pytest.raises(HistoryError, match=r"value 'a' was sent twice \(ops 1 and 2\)"):
        check(b.history)


def test_integer_and_string_values_are_different_values():
    b = Builder()
    b.ok("p", 1, 0, 0)
    b.ok("p", "1", 0, 1)
    b.poll("c", 0, 0, [(0, 1), (1, "1")])
    b.drain(0, 2)
    assert found(check(b.history)) == {}


@pytest.mark.parametrize("kind", sorted(SAFETY))
def test_every_safety_kind_is_listed(kind):
    assert kind in KINDS


def test_unseen_and_retry_duplicates_are_not_safety():
    assert UNSEEN not in SAFETY and RETRY_DUPLICATE not in SAFETY
    assert set(KINDS) == SAFETY | {UNSEEN, RETRY_DUPLICATE}


def test_maybe_send_is_ordered_where_it_was_sent_not_where_a_duplicate_landed():
    b = Builder()
    maybe = b.info("p", "a", partition=1, idempotent=True)
    b.ok("p", "b", 0, 0, idempotent=True)
    b.poll("c", 0, 0, [(0, "b"), (1, "a")])  # 'a' also landed in partition 0, after 'b'
    b.poll("c", 1, 0, [(0, "a")])
    r = check(b.history)
    assert found(r) == {DUPLICATE: 1}
    assert r.anomalies[DUPLICATE][0].ops[0] == maybe


def test_offsets_an_answer_jumped_over_are_a_skip_not_lost_writes():
    """A poll that says to continue past what it returned did not read those offsets: the
    acknowledged value there is unseen (and the answer a skip), not shown lost."""
    b = Builder()
    b.ok("p", "a", 0, 0)
    b.ok("p", "b", 0, 1)
    b.poll("c", 0, 0, [(0, "a")], next_offset=2)
    r = check(b.history)
    assert found(r) == {POLL_SKIP: 1, UNSEEN: 1}

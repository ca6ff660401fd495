"""The reference sequencer, answer by answer (tests/idempotence/producer_sequencer.py)."""

from __future__ import annotations

import pytest
from producer_sequencer import (
    DUPLICATE,
    LOST,
    OK,
    PRODUCER_FENCED,
    PRODUCER_STATE_LOST,
    Acked,
    Failed,
    Sequencer,
    Status,
)

from streamlog.idempotence.rules import MAX_SEQUENCE

P = ("t", 0)


def numbered(seq: Sequencer, counts, partition=P):
    return [seq.add(partition, f"b{i}", c) for i, c in enumerate(counts)]


def test_batches_are_numbered_by_records_per_partition():
    seq = Sequencer(7, 0)
    a, b = numbered(seq, [3, 2])
    c = seq.add(("t", 1), "c", 4)
    assert (a.base_sequence, b.base_sequence, c.base_sequence) == (0, 3, 0)
    assert seq.to_send(P) == [a, b]
    assert seq.to_send(P) == []  # already sent


def test_sequence_wraps():
    seq = Sequencer(7, 0)
    seq._part(P).next_sequence = MAX_SEQUENCE - 1
    a, b = numbered(seq, [3, 1])
    assert (a.base_sequence, b.base_sequence) == (MAX_SEQUENCE - 1, 1)


def test_at_most_eight_unacknowledged_counted_from_the_oldest():
    seq = Sequencer(7, 0)
    batches = numbered(seq, [1] * 8)
    assert not seq.room(P)
    with pytest.raises(RuntimeError):
        seq.add(P, "x", 1)
    seq.to_send(P)
    # a later batch acknowledged does not free a slot while an older one is open:
    # the partition must still remember the older one when it is retried
    assert seq.answer(P, batches[7], OK, 7, 7) == [Acked("b7", 7, 7)]
    assert not seq.room(P)
    seq.answer(P, batches[0], OK, 0, 0)
    assert seq.room(P)
    with pytest.raises(ValueError):
        Sequencer(7, 0, max_in_flight=9)


def test_duplicate_is_success_with_the_original_offsets():
    seq = Sequencer(7, 0)
    (a,) = numbered(seq, [2])
    seq.to_send(P)
    assert seq.answer(P, a, DUPLICATE, 10, 11) == [Acked("b0", 10, 11, duplicate=True)]
    assert seq.unacked(P) == []


def test_lost_request_is_resent_with_the_same_numbers_in_order():
    seq = Sequencer(7, 0)
    a, b, c = numbered(seq, [1, 1, 1])
    seq.to_send(P)
    seq.answer(P, a, LOST)
    seq.answer(P, b, LOST)
    assert seq.to_send(P) == [a, b]
    assert (a.base_sequence, b.base_sequence) == (0, 1)
    # a late answer to the lost first attempt still counts; the resend's answer is then ignored
    assert seq.answer(P, a, OK, 0, 0) == [Acked("b0", 0, 0)]
    assert seq.answer(P, a, DUPLICATE, 0, 0) == []


def test_out_of_order_after_an_earlier_failure_waits_and_is_resent_after_it():
    seq = Sequencer(7, 0)
    a, b, c = numbered(seq, [1, 1, 1])
    seq.to_send(P)
    seq.answer(P, a, LOST)                      # the first went to a leader that died
    seq.answer(P, b, "OUT_OF_ORDER_SEQUENCE")   # the new leader never saw it
    assert b.status is Status.WAIT
    assert seq.to_send(P) == [a, b]             # in order: the missing one first
    seq.answer(P, c, "OUT_OF_ORDER_SEQUENCE")
    assert seq.to_send(P) == []                 # a and b are outstanding: c waits for them
    seq.answer(P, a, OK, 0, 0)
    assert seq.to_send(P) == []
    seq.answer(P, b, OK, 1, 1)
    assert seq.to_send(P) == [c]
    assert seq.answer(P, c, OK, 2, 2) == [Acked("b2", 2, 2)]
    assert seq.fatal is None and not seq.needs_epoch_bump


def test_out_of_order_of_the_oldest_batch_means_the_partition_lost_our_state():
    seq = Sequencer(7, 0)
    a, b = numbered(seq, [1, 1])
    seq.add(("t", 1), "other", 1)
    seq.to_send(P)
    effects = seq.answer(P, a, "OUT_OF_ORDER_SEQUENCE")
    assert seq.fatal == PRODUCER_STATE_LOST
    assert set(effects) == {Failed("b0", PRODUCER_STATE_LOST, True), Failed("b1", PRODUCER_STATE_LOST, True),
                            Failed("other", PRODUCER_STATE_LOST, False)}
    assert not seq.room(P) and seq.to_send(P) == []


def test_fenced_is_fatal():
    seq = Sequencer(7, 0)
    a, b = numbered(seq, [1, 1])
    seq.to_send(P)
    effects = seq.answer(P, b, PRODUCER_FENCED)
    assert seq.fatal == PRODUCER_FENCED
    assert {e.token for e in effects} == {"b0", "b1"} and all(isinstance(e, Failed) for e in effects)


def test_unknown_producer_holds_the_batches_and_renumbers_them_in_a_new_epoch():
    seq = Sequencer(7, 3)
    a, b = numbered(seq, [2, 2])
    other = seq.add(("t", 1), "o", 1)
    seq.to_send(P)
    seq.to_send(("t", 1))
    assert seq.answer(P, a, "UNKNOWN_PRODUCER_ID") == []
    assert seq.needs_epoch_bump and (a.status, b.status) == (Status.HELD, Status.SENT)
    assert not seq.room(P) and not seq.room(("t", 1))
    assert not seq.epoch_bump_ready()       # b and "o" are in flight: learn their outcome first, in the old epoch
    assert seq.answer(P, b, "OUT_OF_ORDER_SEQUENCE") == [] and b.status is Status.HELD
    assert seq.to_send(P) == []
    seq.answer(("t", 1), other, LOST)
    assert seq.to_send(("t", 1)) == [other]
    seq.answer(("t", 1), other, OK, 5, 5)
    assert seq.epoch_bump_ready()
    with pytest.raises(ValueError):
        seq.bump_epoch(3)
    seq.bump_epoch(4)
    assert (a.epoch, a.base_sequence, b.base_sequence) == (4, 0, 2)
    assert seq.to_send(P) == [a, b]
    assert seq.add(("t", 1), "o2", 1).base_sequence == 0


def test_unknown_producer_after_a_lost_attempt_fails_the_batch_maybe_stored_never_renumbers_it():
    """A lost attempt may have been stored by an earlier leader, uncommitted, on a replica that can
    still win an election and commit it: the new leader's "unknown" says nothing about that copy.
    Renumbering such a batch would store it twice (the model test's counterexample)."""
    seq = Sequencer(7, 0)
    a, b, c = numbered(seq, [1, 1, 1])
    seq.to_send(P)
    seq.answer(P, a, LOST)          # sent to the old leader, answer never came
    seq.answer(P, b, LOST)
    assert seq.to_send(P) == [a, b]  # resent to the new leader...
    effects = seq.answer(P, a, "UNKNOWN_PRODUCER_ID")  # ...which never saw the producer's last batches
    assert effects == [Failed("b0", "UNKNOWN_PRODUCER_ID", maybe_stored=True)]
    assert seq.answer(P, b, "OUT_OF_ORDER_SEQUENCE") == [Failed("b1", "OUT_OF_ORDER_SEQUENCE", maybe_stored=True)]
    assert seq.answer(P, c, "OUT_OF_ORDER_SEQUENCE") == []  # refused at its only attempt: certainly not stored
    assert c.status is Status.HELD and seq.epoch_bump_ready()
    seq.bump_epoch(1)
    assert seq.to_send(P) == [c] and (c.epoch, c.base_sequence) == (1, 0)


def test_unknown_producer_for_a_later_batch_waits_for_the_earlier_one():
    seq = Sequencer(7, 0)
    a, b = numbered(seq, [1, 1])
    seq.to_send(P)
    seq.answer(P, a, LOST)
    seq.answer(P, b, "UNKNOWN_PRODUCER_ID")
    assert b.status is Status.WAIT and not seq.needs_epoch_bump


def test_too_many_producers_is_retried():
    seq = Sequencer(7, 0)
    (a,) = numbered(seq, [1])
    seq.to_send(P)
    assert seq.answer(P, a, "TOO_MANY_PRODUCERS") == []
    assert seq.to_send(P) == [a]


def test_a_final_error_fails_the_batch_and_renumbers_the_later_ones():
    seq = Sequencer(7, 0)
    a, b, c = numbered(seq, [1, 1, 1])
    seq.to_send(P)
    assert seq.answer(P, a, "MESSAGE_TOO_LARGE") == [Failed("b0", "MESSAGE_TOO_LARGE", False)]
    assert seq.needs_epoch_bump and (b.status, c.status) == (Status.SENT, Status.SENT)
    assert not seq.epoch_bump_ready()  # b and c are in flight
    assert seq.answer(P, b, "OUT_OF_ORDER_SEQUENCE") == []
    assert seq.answer(P, c, "OUT_OF_ORDER_SEQUENCE") == []
    assert (b.status, c.status) == (Status.HELD, Status.HELD)
    assert seq.answer(P, b, "OUT_OF_ORDER_SEQUENCE") == []  # answers to held batches change nothing
    seq.bump_epoch(1)
    assert [(x.epoch, x.base_sequence) for x in seq.to_send(P)] == [(1, 0), (1, 1)]


def test_abandoned_batch_fails_maybe_stored_with_the_later_sent_ones():
    seq = Sequencer(7, 0)
    a, b = numbered(seq, [1, 1])
    seq.to_send(P)
    c = seq.add(P, "b2", 1)
    effects = seq.abandon(P, a)
    assert effects == [Failed("b0", "DELIVERY_TIMEOUT", True), Failed("b1", "DELIVERY_TIMEOUT", True)]
    assert seq.unacked(P) == [c] and c.status is Status.HELD
    assert seq.epoch_bump_ready()
    seq.bump_epoch(1)
    assert seq.to_send(P) == [c] and c.base_sequence == 0


def test_answers_of_an_old_epoch_are_ignored():
    seq = Sequencer(7, 0)
    a, b = numbered(seq, [1, 1])
    seq.to_send(P)
    seq.answer(P, a, "UNKNOWN_PRODUCER_ID")
    seq.answer(P, b, "OUT_OF_ORDER_SEQUENCE")
    seq.bump_epoch(1)
    assert seq.answer(P, a, OK, 0, 0) == []  # not sent in the new epoch yet


def test_a_stale_copy_from_before_an_epoch_bump_is_fenced_not_stored_again():
    """Why UNKNOWN_PRODUCER_ID leads to a new epoch and not to renumbering in the same one.

    The partition forgot the producer; its batches B, C, D (sequences 2, 3,
    4) are refused, renumbered 0, 1, 2 and stored.  A copy of the old C
    (sequence 3) still in the network then arrives: in the same epoch it
    would be exactly the next sequence, and C would be stored twice.
    """
    from streamlog.idempotence.rules import Outcome
    from streamlog.idempotence.table import ProducerStateTable

    table = ProducerStateTable()
    index = 0

    def deliver(epoch: int, base: int, count: int) -> Outcome:
        nonlocal index
        decision = table.check(7, epoch, base, count, 0)
        if decision.outcome is Outcome.NEW:
            index += 1
            table.apply(7, epoch, base, count, index, index, 0)
        return decision.outcome

    seq = Sequencer(7, 0)
    seq._part(P).next_sequence = 2  # A (sequences 0, 1) was stored and acknowledged long ago, then forgotten
    b, c, d = numbered(seq, [1, 1, 1])
    seq.to_send(P)
    stale_c = (c.epoch, c.base_sequence, c.count)
    assert [deliver(x.epoch, x.base_sequence, x.count) for x in (b, c, d)] == [Outcome.UNKNOWN_PRODUCER_ID] * 3
    seq.answer(P, b, "UNKNOWN_PRODUCER_ID", epoch=0)
    seq.answer(P, c, "UNKNOWN_PRODUCER_ID", epoch=0)
    seq.answer(P, d, "UNKNOWN_PRODUCER_ID", epoch=0)
    seq.bump_epoch(1)
    resent = seq.to_send(P)
    assert [(x.epoch, x.base_sequence) for x in resent] == [(1, 0), (1, 1), (1, 2)]
    assert [deliver(x.epoch, x.base_sequence, x.count) for x in resent] == [Outcome.NEW] * 3
    # the old copy of C: sequence 3 is what the partition expects next, but its epoch is fenced
    assert stale_c == (0, 3, 1)
    assert deliver(*stale_c) is Outcome.PRODUCER_FENCED
    # had the sequencer renumbered in epoch 0, the same copy would have been stored
    same_epoch = ProducerStateTable()
    for k in range(3):
        same_epoch.apply(7, 0, k, 1, k, k + 1, 0)
    assert same_epoch.check(7, *stale_c, 0).outcome is Outcome.NEW


def test_a_lost_answer_while_waiting_for_the_epoch_bump_does_not_stall_it():
    seq = Sequencer(7, 0)
    a, b, c = numbered(seq, [1, 1, 1])
    seq.to_send(P)
    seq.answer(P, a, "UNKNOWN_PRODUCER_ID")
    assert a.status is Status.HELD
    # b follows a batch never stored in this epoch: though its answer is lost, it cannot be stored
    assert seq.answer(P, b, LOST) == [] and b.status is Status.HELD
    assert not seq.epoch_bump_ready()
    seq.answer(P, c, LOST)
    assert c.status is Status.HELD and seq.epoch_bump_ready()
    seq.bump_epoch(1)
    assert [x.base_sequence for x in seq.to_send(P)] == [0, 1, 2]


def test_after_a_wrap_a_batch_at_sequence_zero_is_not_certain_even_behind_a_held_one():
    seq = Sequencer(7, 0)
    seq._part(P).next_sequence = MAX_SEQUENCE  # a covers MAX_SEQUENCE; b starts again at 0
    a, b = numbered(seq, [1, 1])
    assert b.base_sequence == 0
    seq.to_send(P)
    seq.answer(P, a, "UNKNOWN_PRODUCER_ID")
    # a leader without state for the producer would have taken b (sequence 0) as new
    assert seq.answer(P, b, LOST) == [Failed("b1", LOST, maybe_stored=True)]

"""The partition's producer-state table, rule by rule (streamlog.idempotence.table)."""

from __future__ import annotations

import struct

import pytest

from streamlog.idempotence.rules import MAX_IN_FLIGHT, MAX_SEQUENCE, MIN_WINDOW, Outcome, last_sequence, next_sequence
from streamlog.idempotence.table import (
    CorruptProducerState,
    Decision,
    ProducerStateConfig,
    ProducerStateTable,
    RememberedBatch,
)
from streamlog.storage.base import BatchType, RecordBatch

T0 = 1_700_000_000_000
PID = 42


class Log:
    """A tiny log next to the table: appends batches at consecutive indexes and offsets."""

    def __init__(self, table: ProducerStateTable, index: int = 1, offset: int = 0) -> None:
        self.table = table
        self.index = index
        self.offset = offset

    def write(self, pid: int, epoch: int, seq: int, count: int = 1, ts: int = T0) -> tuple[int, int, int]:
        """Check then apply, as a leader would; returns (raft index, base offset, last offset)."""
        decision = self.table.check(pid, epoch, seq, count, ts)
        assert decision.outcome is Outcome.NEW, decision
        where = (self.index, self.offset, self.offset + count - 1)
        self.table.apply(pid, epoch, seq, count, self.offset, self.index, ts)
        self.index += 1
        self.offset += count
        return where


def outcome(table: ProducerStateTable, pid: int, epoch: int, seq: int, count: int = 1, now: int = T0) -> Outcome:
    return table.check(pid, epoch, seq, count, now).outcome


# -- check ------------------------------------------------------------------------------------------


def test_first_batch_of_a_producer_must_have_sequence_zero():
    table = ProducerStateTable()
    assert outcome(table, PID, 0, 0) is Outcome.NEW
    assert outcome(table, PID, 0, 1) is Outcome.UNKNOWN_PRODUCER_ID
    assert outcome(table, PID, 3, 7) is Outcome.UNKNOWN_PRODUCER_ID
    assert table.check(PID, 0, 5, 1, T0).outcome.code == "UNKNOWN_PRODUCER_ID"


def test_next_sequence_is_new_and_counts_records_not_batches():
    table = ProducerStateTable()
    log = Log(table)
    log.write(PID, 0, 0, count=10)
    assert outcome(table, PID, 0, 10, count=3) is Outcome.NEW
    assert outcome(table, PID, 0, 1) is Outcome.OUT_OF_ORDER_SEQUENCE


def test_retry_of_a_remembered_batch_is_a_duplicate_with_its_original_offsets():
    table = ProducerStateTable()
    log = Log(table, index=7, offset=100)
    first = log.write(PID, 0, 0, count=4)
    log.write(PID, 0, 4, count=2)
    decision = table.check(PID, 0, 0, 4, T0)
    assert decision == Decision(Outcome.DUPLICATE, base_offset=100, last_offset=103, raft_index=7)
    assert (decision.raft_index, decision.base_offset, decision.last_offset) == first
    assert decision.outcome.code is None  # a success on the wire
    assert table.check(PID, 0, 4, 2, T0) == Decision(Outcome.DUPLICATE, 104, 105, 8)


def test_same_base_other_length_is_out_of_order_not_duplicate():
    table = ProducerStateTable()
    Log(table).write(PID, 0, 0, count=4)
    assert outcome(table, PID, 0, 0, count=3) is Outcome.OUT_OF_ORDER_SEQUENCE


def test_gap_is_out_of_order():
    table = ProducerStateTable()
    Log(table).write(PID, 0, 0, count=2)
    decision = table.check(PID, 0, 5, 1, T0)
    assert decision.outcome is Outcome.OUT_OF_ORDER_SEQUENCE
    assert decision.outcome.code == "OUT_OF_ORDER_SEQUENCE"
    assert "expected sequence 2, got 5" in decision.reason


def test_window_remembers_the_last_eight_batches_and_older_ones_are_out_of_order():
    table = ProducerStateTable()
    log = Log(table)
    for seq in range(10):
        log.write(PID, 0, seq)
    assert [b.base_sequence for b in table.batches_of(PID)] == [2, 3, 4, 5, 6, 7, 8, 9]
    for seq in range(2, 10):
        assert outcome(table, PID, 0, seq) is Outcome.DUPLICATE
    assert outcome(table, PID, 0, 1) is Outcome.OUT_OF_ORDER_SEQUENCE
    assert outcome(table, PID, 0, 0) is Outcome.OUT_OF_ORDER_SEQUENCE


def test_window_is_configurable_and_at_least_the_producers_in_flight_limit():
    table = ProducerStateTable(ProducerStateConfig(window=12))
    log = Log(table)
    for seq in range(14):
        log.write(PID, 0, seq)
    assert len(table.batches_of(PID)) == 12
    assert outcome(table, PID, 0, 2) is Outcome.DUPLICATE
    assert MIN_WINDOW == MAX_IN_FLIGHT == 8
    with pytest.raises(ValueError, match="below the 8 batches the streamlog Producer may have unacknowledged"):
        ProducerStateConfig(window=7)
    with pytest.raises(ValueError, match="window"):
        ProducerStateConfig(window=65)


def test_older_epoch_is_fenced_newer_epoch_starts_at_zero():
    table = ProducerStateTable()
    log = Log(table)
    log.write(PID, 3, 0)
    log.write(PID, 3, 1)
    assert outcome(table, PID, 2, 2) is Outcome.PRODUCER_FENCED
    assert outcome(table, PID, 2, 0) is Outcome.PRODUCER_FENCED
    assert outcome(table, PID, 4, 5) is Outcome.UNKNOWN_PRODUCER_ID
    assert outcome(table, PID, 4, 0) is Outcome.NEW
    log.write(PID, 4, 0)
    assert table.epoch_of(PID) == 4
    # the new epoch's window replaced the old one: a retry of the old epoch is fenced, not a duplicate
    assert [b.base_sequence for b in table.batches_of(PID)] == [0]
    assert outcome(table, PID, 3, 1) is Outcome.PRODUCER_FENCED


def test_sequence_wraps_after_max_sequence():
    assert last_sequence(MAX_SEQUENCE - 1, 4) == 1
    assert next_sequence(MAX_SEQUENCE) == 0
    table = ProducerStateTable()
    log = Log(table)
    log.write(PID, 0, 0, count=1)
    # the producer has sent up to just before the wrap: fake it by applying a continuing batch
    table.apply(PID, 0, 1, MAX_SEQUENCE - 2, 1, 2, T0)  # sequences 1 .. MAX_SEQUENCE - 2
    log.index, log.offset = 3, MAX_SEQUENCE - 1
    log.write(PID, 0, MAX_SEQUENCE - 1, count=4)  # straddles the wrap: MAX-1, MAX, 0, 1
    assert table.batches_of(PID)[-1].last_sequence == 1
    assert outcome(table, PID, 0, 2) is Outcome.NEW
    assert outcome(table, PID, 0, MAX_SEQUENCE - 1, count=4) is Outcome.DUPLICATE
    log.write(PID, 0, 2)
    assert outcome(table, PID, 0, 3) is Outcome.NEW


def test_batches_without_a_producer_are_always_new_and_leave_no_state():
    table = ProducerStateTable()
    assert table.check(-1, -1, -1, 10, T0).outcome is Outcome.NEW
    table.apply(-1, -1, -1, 10, 0, 1, T0)
    assert len(table) == 0 and table.applied_index == 1


@pytest.mark.parametrize("fields", [
    (-1, 0, -1), (-1, -1, 0), (-2, 0, 0), (PID, -1, 0), (PID, 0, -1), (PID, 2**31, 0), (PID, 0, 2**31), (2**63, 0, 0),
])
def test_inconsistent_or_out_of_range_fields_are_invalid(fields):
    pid, epoch, seq = fields
    decision = ProducerStateTable().check(pid, epoch, seq, 1, T0)
    assert decision.outcome is Outcome.INVALID
    assert decision.outcome.code == "INVALID_PARAMS" and decision.reason


@pytest.mark.parametrize("count", [0, -1, 2**24 + 1])
def test_batch_record_count_out_of_range_is_invalid(count):
    assert outcome(ProducerStateTable(), PID, 0, 0, count=count) is Outcome.INVALID


# -- apply ------------------------------------------------------------------------------------------


def test_apply_must_follow_index_order():
    table = ProducerStateTable()
    table.apply(PID, 0, 0, 1, 0, 5, T0)
    with pytest.raises(ValueError, match="index"):
        table.apply(PID, 0, 1, 1, 1, 5, T0)


def test_apply_records_what_a_previous_leader_stored_even_if_this_replica_would_have_refused_it():
    """A follower applies the leader's batches as they are: the log is the truth."""
    table = ProducerStateTable()
    log = Log(table)
    log.write(PID, 0, 0)
    log.write(PID, 0, 1)
    # the leader had forgotten the producer (say, expired on its clock) and accepted sequence 0 again
    table.apply(PID, 0, 0, 3, 2, 3, T0 + 10)
    assert table.batches_of(PID) == [RememberedBatch(0, 2, 2, 4, 3, T0 + 10)]
    assert outcome(table, PID, 0, 3) is Outcome.NEW


def test_apply_batch_reads_a_stored_record_batch_and_skips_bookkeeping():
    table = ProducerStateTable()
    noop = RecordBatch(0, 0, 1, -1, -1, b"", raft_index=1, type=BatchType.NOOP)
    records = RecordBatch(0, 2, 1, T0, T0 + 5, b"a\nb", producer_id=PID, producer_epoch=1, base_sequence=0, raft_index=2)
    table.apply_batch(noop)
    table.apply_batch(records)
    assert table.batches_of(PID) == [RememberedBatch(0, 1, 0, 1, 2, T0 + 5)]
    assert table.applied_index == 2


# -- expiry and the bound on producers ---------------------------------------------------------------


def test_idle_producer_counts_as_unknown_before_the_sweep_and_is_removed_by_it():
    config = ProducerStateConfig(expiry_ms=60_000, evict_min_idle_ms=1_000)
    table = ProducerStateTable(config)
    log = Log(table)
    log.write(PID, 0, 0, ts=T0)
    log.write(7, 0, 0, ts=T0 + 50_000)
    assert outcome(table, PID, 0, 1, now=T0 + 60_000) is Outcome.NEW
    assert outcome(table, PID, 0, 1, now=T0 + 60_001) is Outcome.UNKNOWN_PRODUCER_ID
    assert outcome(table, PID, 0, 0, now=T0 + 60_001) is Outcome.NEW  # it may start again at 0
    assert table.expire(T0 + 60_000) == []
    assert table.expire(T0 + 60_001) == [PID]
    assert table.producer_ids() == [7]
    assert table.expire(T0 + 60_001, idle_ms=5_000) == [7]
    assert len(table) == 0


def test_full_table_evicts_the_least_recently_active_producer_idle_long_enough():
    config = ProducerStateConfig(max_producers=3, evict_min_idle_ms=1_000, expiry_ms=100_000)
    table = ProducerStateTable(config)
    log = Log(table)
    for pid in (1, 2, 3):
        log.write(pid, 0, 0, ts=T0)
    log.write(1, 0, 1, ts=T0 + 500)  # 1 is now the most recently active
    assert table.producer_ids() == [2, 3, 1]
    # every producer was active within the last second: a fourth is refused, nobody is forgotten
    refused = table.check(4, 0, 0, 1, T0 + 900)
    assert refused.outcome is Outcome.TOO_MANY_PRODUCERS and refused.outcome.code == "TOO_MANY_PRODUCERS"
    assert outcome(table, 2, 0, 1, now=T0 + 900) is Outcome.NEW  # known producers carry on
    log.write(4, 0, 0, ts=T0 + 1_000)
    assert table.producer_ids() == [3, 1, 4]
    # the evicted producer's next batch, and any retry of its old one, is never stored as new
    assert outcome(table, 2, 0, 1, now=T0 + 1_000) is Outcome.UNKNOWN_PRODUCER_ID
    assert outcome(table, 2, 0, 0, now=T0 + 1_000) is not Outcome.DUPLICATE


def test_follower_apply_evicts_even_when_the_leader_would_have_refused():
    """Apply never refuses (the batch is in the log); it keeps the bound by evicting the oldest."""
    table = ProducerStateTable(ProducerStateConfig(max_producers=2))
    log = Log(table)
    log.write(1, 0, 0)
    log.write(2, 0, 0)
    table.apply(3, 0, 0, 1, 2, 3, T0)
    assert table.producer_ids() == [2, 3]


# -- truncation -------------------------------------------------------------------------------------


def replay(batches, config=None) -> ProducerStateTable:
    table = ProducerStateTable(config)
    for args in batches:
        table.apply(*args)
    return table


def state(table: ProducerStateTable):
    return [(pid, table.epoch_of(pid), table.batches_of(pid)) for pid in table.producer_ids()]


def test_truncate_after_restores_exactly_what_the_removed_batches_displaced():
    config = ProducerStateConfig(max_producers=3)
    batches = []
    offset = 0
    plan = [(1, 0, 0), (2, 0, 0), (1, 0, 1), (1, 0, 2), (1, 0, 3), (1, 0, 4), (3, 0, 0),  # 1..7
            (1, 0, 5), (1, 0, 6), (4, 0, 0), (1, 1, 0), (2, 0, 1), (5, 0, 0)]             # 8..13
    for index, (pid, epoch, seq) in enumerate(plan, start=1):
        batches.append((pid, epoch, seq, 2, offset, index, T0 + index))
        offset += 2
    for cut in range(0, len(plan) + 1):
        table = replay(batches, config)
        assert table.truncate_after(cut) is True
        assert state(table) == state(replay(batches[:cut], config)), cut
        assert table.applied_index == cut
        # and it goes on as the shorter log would
        table.apply(9, 0, 0, 1, 0, cut + 1, T0 + 99)
        again = replay(batches[:cut], config)
        again.apply(9, 0, 0, 1, 0, cut + 1, T0 + 99)
        assert state(table) == state(again)


def test_truncate_after_below_the_journal_removes_and_says_it_is_not_exact():
    config = ProducerStateConfig(undo_limit=2)
    batches = [(PID, 0, seq, 1, seq, seq + 1, T0) for seq in range(12)]
    table = replay(batches, config)
    assert table.truncate_after(10) is True   # the journal holds the records of indexes 11 and 12
    assert [b.base_sequence for b in table.batches_of(PID)] == [2, 3, 4, 5, 6, 7, 8, 9]
    table = replay(batches, config)
    assert table.truncate_after(8) is False
    # nothing above index 8 is remembered; the journal restored the window as of index 10 (3..10), the
    # batches it displaced before that (indexes 1 and 2) are not
    assert [b.raft_index for b in table.batches_of(PID)] == [3, 4, 5, 6, 7, 8]
    assert outcome(table, PID, 0, 8) is Outcome.NEW
    assert outcome(table, PID, 0, 0) is Outcome.OUT_OF_ORDER_SEQUENCE


def test_mark_committed_drops_undo_records_and_truncation_below_it_is_not_exact():
    batches = [(PID, 0, seq, 1, seq, seq + 1, T0) for seq in range(8)]
    table = replay(batches)
    table.mark_committed(6)
    assert table.truncate_after(6) is True
    table = replay(batches)
    table.mark_committed(6)
    assert table.truncate_after(5) is False
    assert max(b.raft_index for b in table.batches_of(PID)) == 5


def test_truncate_after_everything_forgets_every_producer():
    table = replay([(PID, 0, 0, 1, 0, 1, T0), (7, 0, 0, 1, 1, 2, T0)])
    assert table.truncate_after(0) is True
    assert len(table) == 0 and table.applied_index == 0


# -- snapshots and rebuild --------------------------------------------------------------------------


def test_snapshot_round_trip_keeps_everything_and_order():
    config = ProducerStateConfig(max_producers=100)
    batches = [((i * 7) % 5, 0, 0, 1, i, i + 1, T0 + i) for i in range(5)]
    batches += [((i * 7) % 5, 0, 1, 3, 5 + i, 6 + i, T0 + 10 + i) for i in range(5)]
    table = replay(batches, config)
    restored = ProducerStateTable.restore(table.snapshot(), config)
    assert state(restored) == state(table)
    assert restored.applied_index == table.applied_index
    assert restored.snapshot() == table.snapshot()


def test_snapshot_upto_is_the_table_as_of_that_index():
    batches = [(1 + i % 3, 0, i // 3, 1, i, i + 1, T0 + i) for i in range(30)]
    table = replay(batches)
    for upto in (0, 5, 17, 29, 30):
        assert state(ProducerStateTable.restore(table.snapshot(upto))) == state(replay(batches[:upto])), upto


def test_snapshot_is_compact():
    table = ProducerStateTable()
    log = Log(table)
    for seq in range(5):
        log.write(PID, 0, seq)
    assert len(table.snapshot()) == 17 + 13 + 5 * 40 + 4


def test_empty_bytes_restore_an_empty_table():
    assert len(ProducerStateTable.restore(b"")) == 0


def test_restore_refuses_damage_anywhere():
    table = ProducerStateTable()
    log = Log(table)
    log.write(PID, 0, 0)
    log.write(8, 2, 0)
    data = table.snapshot()
    for i in range(len(data)):
        for bit in (0, 7):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(CorruptProducerState):
                ProducerStateTable.restore(bytes(damaged))
    for cut in range(1, len(data)):
        with pytest.raises(CorruptProducerState):
            ProducerStateTable.restore(data[:cut])


def test_restore_refuses_other_versions_and_bad_contents_even_with_a_good_crc():
    import crc32c

    def sealed(body: bytes) -> bytes:
        return body + struct.pack(">I", crc32c.crc32c(body))

    head = struct.Struct(">4sBqI")
    with pytest.raises(CorruptProducerState, match="version 2"):
        ProducerStateTable.restore(sealed(head.pack(b"SLPS", 2, 0, 0)))
    with pytest.raises(CorruptProducerState, match="magic"):
        ProducerStateTable.restore(sealed(head.pack(b"XXXX", 1, 0, 0)))
    batch = struct.pack(">iiqqqq", 0, 0, 0, 0, 9, T0)
    with pytest.raises(CorruptProducerState, match="above"):  # a batch above the snapshot's own index
        ProducerStateTable.restore(sealed(head.pack(b"SLPS", 1, 5, 1) + struct.pack(">qiB", 1, 0, 1) + batch))
    with pytest.raises(CorruptProducerState):  # a producer with no batches
        ProducerStateTable.restore(sealed(head.pack(b"SLPS", 1, 5, 1) + struct.pack(">qiB", 1, 0, 0)))
    with pytest.raises(CorruptProducerState, match="after the last"):
        ProducerStateTable.restore(sealed(head.pack(b"SLPS", 1, 5, 0) + b"\0"))


def test_restore_with_smaller_bounds_keeps_the_newest():
    batches = [(pid, 0, seq, 1, 20 * pid + seq, 20 * pid + seq + 1, T0) for pid in range(4) for seq in range(12)]
    big = replay(batches, ProducerStateConfig(window=12))
    small = ProducerStateTable.restore(big.snapshot(), ProducerStateConfig(window=8, max_producers=2))
    assert small.producer_ids() == [2, 3]
    assert [b.base_sequence for b in small.batches_of(3)] == [4, 5, 6, 7, 8, 9, 10, 11]


def test_rebuild_from_the_log_equals_the_live_table():
    batches = []
    for i in range(40):
        pid = i % 4
        batches.append(RecordBatch(i * 2, 2, 1, T0 + i, T0 + i, b"x\ny", producer_id=pid, producer_epoch=0,
                                   base_sequence=(i // 4) * 2, raft_index=2 * i + 1))
        batches.append(RecordBatch((i + 1) * 2, 0, 1, -1, -1, b"", raft_index=2 * i + 2, type=BatchType.NOOP))
    live = ProducerStateTable()
    for b in batches:
        live.apply_batch(b)
    assert state(ProducerStateTable.rebuild(batches)) == state(live)
    # from a snapshot at some index plus the batches after it (or the whole log: those below are skipped)
    snap = live.snapshot(41)
    assert state(ProducerStateTable.rebuild(batches, snapshot=snap)) == state(live)
    assert state(ProducerStateTable.rebuild(batches[41:], snapshot=snap)) == state(live)

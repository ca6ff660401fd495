"""Producer-state snapshot files: written at a roll and a clean close, loaded at open, never trusted.

Real segmented logs in tmp_path behind the ProducerTrackingLog the Raft node
writes through; every table got from a snapshot is compared with the one a
full scan of the same log gives.
"""

from __future__ import annotations

import os

import attrs
import orjson
import pytest

from streamlog.broker.broker import BrokerConfig
from streamlog.cluster.producer_log import ProducerTrackingLog, rebuild_with_report
from streamlog.idempotence import snapshot_file
from streamlog.idempotence.table import CorruptProducerState, ProducerStateConfig, ProducerStateTable
from streamlog.raft.log import Entry
from streamlog.storage import producer_snapshots
from streamlog.storage.base import RecordBatch
from streamlog.storage.log import SegmentedLog
from streamlog.storage.segmented import SegmentedStorage
from streamlog.testing import BrokerHarness
from streamlog.topic_config import TopicConfig

SEGMENT_BYTES = 4096  # a roll every few dozen batches
T0 = 1_800_000_000_000


def batch(offset: int, pid: int, seq: int) -> RecordBatch:
    record = orjson.dumps({"offset": offset, "timestamp": T0, "key": None, "value": "v" * 20, "headers": {}})
    return RecordBatch(base_offset=offset, count=1, term=1, first_timestamp=T0, max_timestamp=T0, payload=record,
                       producer_id=pid, producer_epoch=0, base_sequence=seq)


def open_log(path) -> SegmentedLog:
    return SegmentedLog(str(path), TopicConfig(segment_bytes=SEGMENT_BYTES))


def tracked(path) -> ProducerTrackingLog:
    log = open_log(path)
    table, _ = rebuild_with_report(log)
    return ProducerTrackingLog(log, table)


def write(tracking: ProducerTrackingLog, n: int, producers: int = 3, term: int = 1, commit: bool = True) -> None:
    """n record batches, round robin over the producers, each continuing its own sequence; with
    C{commit}, each is made durable and committed after its append (as a group of one would)."""
    log = tracking.raw
    for _ in range(n):
        offset, index = log.end_offset, log.last_index + 1
        pid = offset % producers
        seq = sum(1 for b in tracking.table.batches_of(pid)) and tracking.table.batches_of(pid)[-1].last_sequence + 1
        tracking.append([Entry(index, term, batch(offset, pid, seq))])
        if commit:
            log.sync()
            tracking.mark_committed(index)


def state(table: ProducerStateTable) -> dict:
    return {pid: (table.epoch_of(pid), [attrs.astuple(b) for b in table.batches_of(pid)])
            for pid in table.producer_ids()}


def full_scan(path) -> ProducerStateTable:
    log = open_log(path)
    try:
        for _, p in producer_snapshots.listing(str(path)):
            os.rename(p, p + ".aside")  # hidden from rebuild
        table, report = rebuild_with_report(log)
        assert report.snapshot_index is None
        for name in os.listdir(str(path)):
            if name.endswith(".aside"):
                os.rename(os.path.join(str(path), name), os.path.join(str(path), name[:-6]))
        return table
    finally:
        log.close()


# -- the file's bytes -------------------------------------------------------------------------------


def test_a_snapshot_file_round_trips_and_any_damage_is_refused():
    table = ProducerStateTable()
    table.apply(7, 0, 0, 3, 0, 1, T0)
    data = snapshot_file.encode(5, 2, table.snapshot())
    assert snapshot_file.decode(data) == (5, 2, table.snapshot())
    for i in range(len(data)):
        with pytest.raises(CorruptProducerState):
            snapshot_file.decode(data[:i])  # torn at every byte
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            with pytest.raises(CorruptProducerState):
                snapshot_file.decode(bytes(flipped))


def test_a_snapshot_matches_a_log_only_if_the_log_holds_its_entry_with_its_term():
    terms = {3: 1, 4: 2, 5: 2}.get
    assert snapshot_file.matches_log(4, 2, 3, 5, terms)
    assert not snapshot_file.matches_log(4, 1, 3, 5, terms)  # another leader's entry 4
    assert not snapshot_file.matches_log(6, 2, 3, 5, terms)  # past the end (a cut tail)
    assert not snapshot_file.matches_log(2, 1, 3, 5, terms)  # before the start (retention)


# -- written and loaded -----------------------------------------------------------------------------


def test_a_roll_writes_a_snapshot_and_an_open_after_a_crash_replays_only_the_tail(tmp_path):
    tracking = tracked(tmp_path)
    write(tracking, 200)
    files = producer_snapshots.listing(str(tmp_path))
    assert 1 <= len(files) <= producer_snapshots.KEEP  # written at the rolls, older ones dropped
    newest = files[0][0]
    last = tracking.raw.last_index
    tracking.raw._release()  # a crash: no clean close, no snapshot at the end
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    assert report.snapshot_index == newest and report.entries_read == last - newest
    log.close()
    assert state(table) == state(full_scan(tmp_path)) and len(table.producer_ids()) == 3


def test_a_clean_close_writes_a_snapshot_of_the_end_and_the_next_open_reads_no_entry(tmp_path):
    h = BrokerHarness(storage=SegmentedStorage(str(tmp_path)), config=BrokerConfig(default_partitions=1))
    conn = h.connect()
    pid = conn.call("InitProducerId", {})["result"]["producer_id"]
    for seq in range(20):
        answer = conn.call("SendBatch", {"topic": "t", "producer_id": pid, "epoch": 0,
                                         "messages": [{"value": seq, "partition": 0}],
                                         "sequences": [{"partition": 0, "base_sequence": seq}]})
        assert "result" in answer, answer
    directory = h.broker.topics["t"].partitions[0].log.directory
    h.stop()
    h.broker.close()
    log = open_log(directory)
    table, report = rebuild_with_report(log)
    assert report.entries_read == 0 and report.snapshot_index == log.last_index
    log.close()
    assert state(table) == state(full_scan(directory)) and [b.base_sequence for b in table.batches_of(pid)][-1] == 19


@pytest.mark.parametrize("damage", ["torn", "flipped", "empty", "other index"])
def test_a_damaged_snapshot_is_ignored_and_the_log_is_read_instead(tmp_path, damage):
    tracking = tracked(tmp_path)
    write(tracking, 120)
    assert tracking.write_snapshot()
    tracking.raw.close()
    index, path = producer_snapshots.listing(str(tmp_path))[0]
    data = producer_snapshots.read(path)
    if damage == "torn":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data = data[:30] + bytes([data[30] ^ 0x10]) + data[31:]
    elif damage == "empty":
        data = b""
    else:  # a whole, valid file under another index's name
        data = snapshot_file.encode(index - 1, 1, ProducerStateTable().snapshot())
    with open(path, "wb") as f:
        f.write(data)
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    log.close()
    assert report.snapshot_index != index and report.ignored and path in report.ignored[0]
    assert state(table) == state(full_scan(tmp_path))


def test_a_snapshot_of_entries_a_new_leader_replaced_is_removed_and_never_used(tmp_path):
    tracking = tracked(tmp_path)
    write(tracking, 60)
    assert tracking.write_snapshot()
    at = tracking.raw.last_index
    tracking.truncate_suffix(at - 5)  # a new leader's log replaced the last entries
    assert all(i < at - 5 for i, _ in producer_snapshots.listing(str(tmp_path)))
    write(tracking, 10, term=2)
    tracking.raw.close()
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    log.close()
    assert report.snapshot_index is None or report.snapshot_index < at - 5
    assert state(table) == state(full_scan(tmp_path))


def test_a_file_left_for_a_replaced_entry_does_not_match_its_new_term(tmp_path):
    tracking = tracked(tmp_path)
    write(tracking, 40)
    at = tracking.raw.last_index
    stale = snapshot_file.encode(at, 1, ProducerStateTable().snapshot())  # an empty table "as of" entry at
    tracking.truncate_suffix(at - 3)
    write(tracking, 3, term=2)  # entry `at` is now of term 2
    producer_snapshots.write(str(tmp_path), at, stale)
    tracking.raw.close()
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    log.close()
    assert report.snapshot_index != at and any("term 1 is not in the log" in r for r in report.ignored)
    assert state(table) == state(full_scan(tmp_path)) and len(table.producer_ids()) == 3


def test_retention_past_the_snapshot_falls_back_to_the_log_start(tmp_path):
    tracking = tracked(tmp_path)
    write(tracking, 150)
    for _, path in producer_snapshots.listing(str(tmp_path)):
        producer_snapshots.remove(path)
    early = tracking.raw.last_index
    early_file = snapshot_file.encode(early, tracking.raw.last_term, tracking.table.snapshot())
    write(tracking, 150)
    tracking.raw.checkpoint()  # synced and marked: retention removes only what is behind that
    tracking.truncate_prefix(tracking.raw.last_index - 5)  # retention: the entry the file stands for is gone
    assert tracking.raw.start_index > early
    for _, path in producer_snapshots.listing(str(tmp_path)):
        producer_snapshots.remove(path)
    producer_snapshots.write(str(tmp_path), early, early_file)
    tracking.raw.close()
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    log.close()
    assert report.snapshot_index is None and report.ignored
    assert state(table) == state(full_scan(tmp_path))


def test_the_window_and_bounds_of_the_config_apply_to_a_loaded_snapshot(tmp_path):
    tracking = tracked(tmp_path)
    write(tracking, 90, producers=6)
    assert tracking.write_snapshot()
    tracking.raw.close()
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log, ProducerStateConfig(window=8, max_producers=2))
    log.close()
    assert report.entries_read == 0 and len(table.producer_ids()) == 2


# The 100th batch makes a file due, as of the entry committed before it (99): 21 are replayed.
@pytest.mark.parametrize("interval, newest, replayed", [(50, 99, 21), (0, None, 120)])
def test_between_rolls_a_snapshot_is_written_every_interval_of_batches(tmp_path, interval, newest, replayed):
    log = SegmentedLog(str(tmp_path))  # 128 MiB segments: no roll here
    tracking = ProducerTrackingLog(log, ProducerStateTable(ProducerStateConfig(snapshot_interval_batches=interval)))
    write(tracking, 120)
    log._release()  # a crash
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    log.close()
    assert report.snapshot_index == newest and report.entries_read == replayed
    assert state(table) == state(full_scan(tmp_path))


# -- only committed, durable entries get a file; refused files go (review of issue 10) -------------


def test_a_file_stands_for_a_committed_durable_entry_so_a_power_cut_tail_cannot_make_it_lie(tmp_path):
    tracking = tracked(tmp_path)
    write(tracking, 55)  # committed and fsynced
    write(tracking, 5, commit=False)  # appended, not fsynced yet ...
    at = tracking.raw.last_index
    tracking.mark_committed(at)  # ... though a follower may learn their commit first
    assert tracking.write_snapshot()
    assert producer_snapshots.listing(str(tmp_path))[0][0] == at - 5  # not `at`: it is not durable here
    tracking.raw.truncate_suffix(at - 4)  # a power failure: recovery cuts the unsynced tail, the file stays
    tracking.raw._release()
    log = open_log(tmp_path)
    table, _ = rebuild_with_report(log)
    tracking = ProducerTrackingLog(log, table)
    for k in range(5):  # a group of one may reuse the lost term: other batches at the same (index, term)
        offset, index = log.end_offset, log.last_index + 1
        tracking.append([Entry(index, 1, batch(offset, 7, k))])
    assert log.last_index == at
    log._release()  # a crash before any newer file
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    log.close()
    assert report.snapshot_index == at - 5 and report.entries_read == 5
    assert state(table) == state(full_scan(tmp_path)) and 7 in table.producer_ids()


def test_at_open_a_file_past_the_log_end_is_removed_so_a_reused_term_cannot_revive_it(tmp_path):
    tracking = tracked(tmp_path)
    write(tracking, 60)
    at = tracking.raw.last_index
    # What an older version wrote: a file as of the last entry, which a power cut then took away.
    producer_snapshots.write(str(tmp_path), at, snapshot_file.encode(at, 1, tracking.table.snapshot()))
    tracking.raw.truncate_suffix(at - 4)  # recovery's cut (not through the adapter)
    tracking.raw._release()
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    assert report.snapshot_index != at and any(f"entry {at} of term 1 is not in the log" in r for r in report.ignored)
    assert at not in [i for i, _ in producer_snapshots.listing(str(tmp_path))]  # removed, not only skipped
    tracking = ProducerTrackingLog(log, table)
    for k in range(5):  # the same indexes and term again, other batches
        offset, index = log.end_offset, log.last_index + 1
        tracking.append([Entry(index, 1, batch(offset, 7, k))])
    log._release()
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    log.close()
    assert state(table) == state(full_scan(tmp_path)) and 7 in table.producer_ids()


def test_an_undecodable_file_is_removed_at_open(tmp_path):
    tracking = tracked(tmp_path)
    write(tracking, 20)
    assert tracking.write_snapshot()
    tracking.raw.close()
    index, path = producer_snapshots.listing(str(tmp_path))[0]
    with open(path, "wb") as f:
        f.write(b"torn")
    log = open_log(tmp_path)
    _, report = rebuild_with_report(log)
    log.close()
    assert report.snapshot_index is None and not os.path.exists(path)


def test_an_uncommitted_tail_is_replayed_at_open_so_a_new_leader_replacing_it_is_undone_exactly(tmp_path):
    tracking = tracked(tmp_path)
    write(tracking, 30, producers=1)
    before = state(tracking.table)
    offset, index = tracking.raw.end_offset, tracking.raw.last_index + 1
    tracking.append([Entry(index, 1, attrs.evolve(batch(offset, 0, 0), producer_epoch=1))])  # not committed
    assert tracking.write_snapshot(sync=True)  # a clean close
    tracking.raw.close()
    log = open_log(tmp_path)
    table, report = rebuild_with_report(log)
    assert report.snapshot_index == index - 1 and report.entries_read == 1  # the uncommitted entry replayed
    tracking = ProducerTrackingLog(log, table)
    assert tracking.table.epoch_of(0) == 1
    tracking.truncate_suffix(index)  # a new leader replaces the uncommitted entry
    log.close()
    assert state(tracking.table) == before and tracking.table.epoch_of(0) == 0

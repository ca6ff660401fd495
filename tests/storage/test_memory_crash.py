"""The memory log's crash model: what was not synced can be lost, deterministically given a seed.

A whole-cluster simulator runs nodes on MemoryLog; a node that crashes must
come back with what its disk would hold: everything synced, and at most a
prefix of what was written after (as the segmented log's recovery keeps the
longest whole prefix of an unsynced tail), while truncations, retention and
resets stay done (the segmented log makes them durable before returning).
"""

from __future__ import annotations

import random

from storage_helpers import append_batch, append_noop, entry_summary, fill, make_batch, read_all

from streamlog.storage.memory import MemoryLog


def test_a_crash_without_a_generator_drops_everything_unsynced():
    log = MemoryLog()
    fill(log, 3)
    assert log.sync() == 3
    fill(log, 2, noops=1)
    log.crash()
    assert (log.last_index, log.end_offset, log.durable_index) == (3, 15, 3)
    assert read_all(log) == list(range(15))


def test_a_crash_keeps_a_prefix_of_the_unsynced_tail_and_the_same_seed_the_same_one():
    kept = []
    for seed in range(40):
        outcomes = []
        for _ in range(2):
            log = MemoryLog()
            fill(log, 2)
            log.sync()
            fill(log, 6, noops=2)
            before = entry_summary(log)
            log.crash(random.Random(seed))
            got = entry_summary(log)
            assert got == before[: len(got)] and log.last_index >= 2
            assert log.durable_index == log.last_index  # what survived is on the disk
            outcomes.append(got)
        assert outcomes[0] == outcomes[1]  # deterministic given the seed
        kept.append(len(outcomes[0]))
    assert len(set(kept)) > 3  # and the seeds do differ: all, none and parts of the tail


def test_truncation_retention_and_reset_stay_done_after_a_crash():
    log = MemoryLog()
    fill(log, 4)
    log.sync()
    log.truncate_suffix(3)
    log.crash(random.Random(1))
    assert log.last_index == 2  # the truncated entries never come back
    append_batch(log, make_batch(10, 2))
    log.sync()
    log.truncate_prefix(2)
    append_noop(log)
    log.crash()
    assert (log.start_index, log.last_index, log.prefix_term) == (3, 3, 0)
    log.reset(10, 4, ("1.a",), next_offset=50)
    log.crash(random.Random(2))
    assert (log.start_index, log.last_index, log.end_offset, log.config_at(10)) == (11, 10, 50, (10, ("1.a",)))


def test_unsynced_entries_cannot_be_compacted():
    log = MemoryLog()
    fill(log, 4)
    log.truncate_prefix(3)
    assert log.start_index == 1  # nothing synced: nothing removed
    log.sync()
    log.truncate_prefix(3)
    assert log.start_index == 4 and log.prefix_term == log.term_at(3)

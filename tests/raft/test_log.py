"""MemoryRaftLog: the reference behaviour every RaftLog implementation must match."""

import pytest

from streamlog.raft.log import Entry, MemoryRaftLog


def make(n: int, term: int = 1) -> MemoryRaftLog:
    log = MemoryRaftLog()
    log.append([Entry(i, term, b"x%d" % i) for i in range(1, n + 1)])
    return log


def test_empty_log_starts_at_one_with_term_zero():
    log = MemoryRaftLog()
    assert (log.start_index, log.last_index, log.last_term, log.prefix_term) == (1, 0, 0, 0)
    assert log.term_at(0) == 0
    assert log.term_at(1) is None


def test_append_must_be_contiguous():
    log = make(3)
    with pytest.raises(ValueError):
        log.append([Entry(5, 1, b"")])
    log.append([Entry(4, 2, b"")])
    assert (log.last_index, log.last_term) == (4, 2)


def test_entries_respects_max_bytes_but_returns_at_least_one():
    log = make(5)
    assert [e.index for e in log.entries(2, 6, 5)] == [2, 3]
    assert [e.index for e in log.entries(2, 6, 0)] == [2]
    assert [e.index for e in log.entries(4, 100, 1 << 20)] == [4, 5]
    assert log.entries(6, 10, 100) == []


def test_truncate_suffix_removes_from_index():
    log = make(5)
    log.truncate_suffix(3)
    assert log.last_index == 2
    assert log.term_at(3) is None


def test_truncate_prefix_remembers_boundary_term():
    log = MemoryRaftLog()
    log.append([Entry(1, 1), Entry(2, 2), Entry(3, 3)])
    log.truncate_prefix(2)
    assert (log.start_index, log.prefix_term) == (3, 2)
    assert log.term_at(2) == 2
    assert log.term_at(1) is None
    assert [e.index for e in log.entries(1, 4, 100)] == [3]
    log.truncate_prefix(3)
    assert (log.start_index, log.last_index, log.last_term) == (4, 3, 3)


def test_reset_empties_the_log_after_a_snapshot_point():
    log = make(3)
    log.reset(10, 4)
    assert (log.start_index, log.last_index, log.last_term) == (11, 10, 4)
    log.append([Entry(11, 5)])
    assert log.term_at(10) == 4 and log.term_at(11) == 5


def test_constructor_rejects_out_of_sequence_entries():
    with pytest.raises(ValueError):
        MemoryRaftLog([Entry(2, 1)], start_index=1)


def test_config_at_tracks_configuration_entries_through_truncation():
    log = MemoryRaftLog()
    log.append([Entry(1, 1), Entry(2, 1, b"", ("a", "b")), Entry(3, 1), Entry(4, 2, b"", ("a", "b", "c"))])
    assert log.config_at(1) is None
    assert log.config_at(3) == (2, ("a", "b"))
    assert log.config_at(4) == (4, ("a", "b", "c"))
    log.truncate_suffix(4)
    assert log.config_at(10) == (2, ("a", "b"))
    log.truncate_prefix(3)
    assert log.config_at(3) == (3, ("a", "b"))  # remembered at start_index - 1
    assert log.config_at(log.last_index)[1] == ("a", "b")
    log.reset(20, 3, ("x", "y", "z"))
    assert log.config_at(20) == (20, ("x", "y", "z"))

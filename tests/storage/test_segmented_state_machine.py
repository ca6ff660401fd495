"""A hypothesis state machine: the segmented log against the memory log as its model.

Rules: append record batches, no-ops and configurations (terms rising),
read by offset, read entries by index, look up timestamps, terms,
configurations and the offset/index mapping, roll, sync, retention,
compaction, truncation at any entry, reset, clean restart and crash restart
(a copy of the files while the log is open: what the OS holds after the
process dies, which recovery keeps whole).  Every answer must agree with the
model's.  Where the segmented log may keep more than asked (it removes whole
segments), the model follows it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from storage_helpers import entry_summary

from streamlog.raft.log import Entry
from streamlog.storage.base import RecordBatch, TopicConfig
from streamlog.storage.log import SegmentedLog
from streamlog.storage.memory import MemoryLog

CONFIG = TopicConfig(segment_bytes=900, retention_bytes=2_000)
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class SegmentedLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="streamlog-sm-", dir=SCRATCH)
        self.generation = 0
        self.path = os.path.join(self.root, "g0")
        self.log = self._open(self.path)
        self.model = MemoryLog()

    def _open(self, path: str) -> SegmentedLog:
        return SegmentedLog(path, CONFIG, index_interval_bytes=200, cache_bytes=300)

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _both(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self.model.append(entries)

    @rule(count=st.integers(1, 6), ts=st.integers(0, 5_000), size=st.integers(0, 60), new_term=st.booleans())
    def append_records(self, count, ts, size, new_term):
        base = self.model.end_offset
        records = [
            orjson.dumps({"offset": base + i, "timestamp": ts + i, "key": None, "value": "x" * size, "headers": {}})
            for i in range(count)
        ]
        batch = RecordBatch(base, count, 0, ts, ts + count - 1, b"\n".join(records))
        self._both([Entry(self.model.last_index + 1, self.model.last_term + new_term, batch)])

    @rule(n=st.integers(1, 3))
    def append_noops(self, n):
        first = self.model.last_index + 1
        term = self.model.last_term + 1
        self._both([Entry(first + i, term, b"") for i in range(n)])

    @rule(members=st.lists(st.sampled_from(["1.a", "2.b", "3.c"]), min_size=1, max_size=3, unique=True))
    def append_config(self, members):
        self._both([Entry(self.model.last_index + 1, self.model.last_term, b"", tuple(members))])

    @rule(data=st.data(), max_records=st.integers(1, 20), max_bytes=st.integers(1, 3_000))
    def read(self, data, max_records, max_bytes):
        offset = data.draw(st.integers(self.model.start_offset, self.model.end_offset))
        got = self.log.read(offset, max_records, max_bytes)
        want = self.model.read(offset, max_records, max_bytes)
        assert (got.fragments, got.count, got.next_offset, got.size) == (want.fragments, want.count, want.next_offset, want.size)

    @rule(data=st.data(), max_bytes=st.integers(1, 3_000))
    def entries(self, data, max_bytes):
        lo = data.draw(st.integers(self.model.start_index - 1, self.model.last_index + 1))
        hi = data.draw(st.integers(lo, self.model.last_index + 2))
        assert self.log.entries(lo, hi, max_bytes) == self.model.entries(lo, hi, max_bytes)

    @rule(data=st.data())
    def lookups(self, data):
        index = data.draw(st.integers(self.model.start_index - 2, self.model.last_index + 1))
        assert self.log.term_at(index) == self.model.term_at(index)
        assert self.log.config_at(index) == self.model.config_at(index)
        if self.model.start_index - 1 <= index <= self.model.last_index:
            assert self.log.next_offset_after(index) == self.model.next_offset_after(index)
        offset = data.draw(st.integers(self.model.start_offset, self.model.end_offset))
        assert self.log.index_for_offset(offset) == self.model.index_for_offset(offset)
        ts = data.draw(st.integers(0, 5_100))
        assert self.log.offset_for_timestamp(ts) == self.model.offset_for_timestamp(ts)

    @rule()
    def roll(self):
        self.log.roll()

    @rule()
    def sync(self):
        assert self.log.sync() == self.model.sync() == self.model.last_index

    @rule(now=st.integers(0, 10_000))
    def retention(self, now):
        self.log.apply_retention(now)
        self._follow_start()

    @precondition(lambda self: self.model.last_index >= self.model.start_index)
    @rule(data=st.data())
    def compact(self, data):
        upto = data.draw(st.integers(self.model.start_index, self.model.last_index))
        self.log.truncate_prefix(upto)
        assert self.log.start_index <= upto + 1
        self._follow_start()

    def _follow_start(self):
        start = self.log.start_index
        assert start >= self.model.start_index
        if start > self.model.start_index:
            self.model.sync()  # (the segmented log removes only synced entries; so the model may)
            self.model.truncate_prefix(start - 1)

    @precondition(lambda self: self.model.last_index >= self.model.start_index)
    @rule(data=st.data())
    def truncate(self, data):
        cut = data.draw(st.integers(self.model.start_index, self.model.last_index + 1))
        self.log.truncate_suffix(cut)
        self.model.truncate_suffix(cut)

    @rule(data=st.data(), term=st.integers(0, 2), offset=st.integers(0, 20))
    def reset(self, data, term, offset):
        index = data.draw(st.integers(max(0, self.model.start_index - 2), self.model.last_index + 2))
        args = (index, self.model.last_term + term, ("9.z",))
        self.log.reset(*args, next_offset=self.model.end_offset + offset)
        self.model.reset(*args, next_offset=self.model.end_offset + offset)

    @rule()
    def restart(self):
        self.log.close()
        self.log = self._open(self.path)

    @rule()
    def crash(self):
        self.generation += 1
        image = os.path.join(self.root, f"g{self.generation}")
        shutil.copytree(self.path, image)
        self.log.close()
        self.path = image
        self.log = self._open(image)

    @invariant()
    def bounds_agree(self):
        log, model = self.log, self.model
        assert log.failed is None
        assert (log.start_offset, log.end_offset) == (model.start_offset, model.end_offset)
        assert (log.start_index, log.last_index, log.last_term, log.prefix_term) == (
            model.start_index, model.last_index, model.last_term, model.prefix_term)
        assert entry_summary(log) == entry_summary(model)


SegmentedLogMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSegmentedLog = SegmentedLogMachine.TestCase

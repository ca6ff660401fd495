"""A hypothesis state machine: the segmented log against a plain list of records.

Rules: append, read, roll, sync, retention, truncate, clean restart and crash
restart (a copy of the files while the log is open: what the OS holds after
the process dies).  The model is the list of encoded records with their
timestamps and the log start; every read and every timestamp lookup must
agree with it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamlog.storage.base import RecordBatch, TopicConfig
from streamlog.storage.log import SegmentedLog

CONFIG = TopicConfig(segment_bytes=900, retention_bytes=2_000)
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class SegmentedLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="streamlog-sm-", dir=SCRATCH)
        self.generation = 0
        self.path = os.path.join(self.root, "g0")
        self.log = self._open(self.path)
        self.records: dict[int, tuple[int, bytes]] = {}  # offset -> (timestamp, encoded record)
        self.start = 0
        self.end = 0
        self.batch_bases: set[int] = {0}

    def _open(self, path: str) -> SegmentedLog:
        return SegmentedLog(path, CONFIG, index_interval_bytes=200, cache_bytes=300)

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(count=st.integers(1, 6), ts=st.integers(0, 5_000), size=st.integers(0, 60))
    def append(self, count, ts, size):
        base = self.end
        records = [
            orjson.dumps({"offset": base + i, "timestamp": ts + i, "key": None, "value": "x" * size, "headers": {}})
            for i in range(count)
        ]
        self.log.append(RecordBatch(base, count, 1, ts, ts + count - 1, b"\n".join(records)))
        for i, record in enumerate(records):
            self.records[base + i] = (ts + i, record)
        self.end += count
        self.batch_bases.add(self.end)

    @rule(data=st.data(), max_records=st.integers(1, 20), max_bytes=st.integers(1, 3_000))
    def read(self, data, max_records, max_bytes):
        offset = data.draw(st.integers(self.start, self.end))
        result = self.log.read(offset, max_records, max_bytes)
        expected = [self.records[o][1] for o in range(offset, min(offset + max_records, self.end))]
        got = b",".join(result.fragments)
        assert result.next_offset == offset + result.count
        assert got == b",".join(expected[: result.count])
        if offset < self.end:
            assert result.count >= 1

    @rule(data=st.data())
    def offset_for_timestamp(self, data):
        ts = data.draw(st.integers(0, 5_100))
        want = next((o for o in range(self.start, self.end) if self.records[o][0] >= ts), self.end)
        assert self.log.offset_for_timestamp(ts) == want

    @rule()
    def roll(self):
        self.log.roll()

    @rule()
    def sync(self):
        assert self.log.sync() == self.end

    @rule(now=st.integers(0, 10_000))
    def retention(self, now):
        new_start = self.log.apply_retention(now)
        assert self.start <= new_start <= self.end
        assert new_start in self.batch_bases
        for o in range(self.start, new_start):
            del self.records[o]
        self.start = new_start

    @precondition(lambda self: self.end > self.start)
    @rule(data=st.data())
    def truncate(self, data):
        offset = data.draw(st.integers(self.start, self.end))
        self.log.truncate_suffix(offset)
        for o in range(offset, self.end):
            del self.records[o]
        self.end = offset
        self.batch_bases = {b for b in self.batch_bases if b <= offset} | {offset}

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
        assert self.log.failed is None
        assert (self.log.start_offset, self.log.end_offset) == (self.start, self.end)


SegmentedLogMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSegmentedLog = SegmentedLogMachine.TestCase

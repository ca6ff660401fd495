"""The Raft core's own log contract (tests/raft/test_log_contract.py), run against the partition logs.

The Raft tests' state machine drives any RaftLog with appends (opaque data,
no-ops, configurations), truncations, compaction, resets and reads, and
holds it against a plain list.  Here it runs against the memory log and the
segmented log.  Two differences are the contract's own allowances for a
storage log: compaction removes only synced entries, and a segmented log
removes whole segments (so C{start_index <= upto + 1}); the model follows
what the log kept.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import precondition, rule

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "raft"))
from test_log_contract import LogMachine  # noqa: E402

from streamlog.storage.base import TopicConfig  # noqa: E402
from streamlog.storage.log import SegmentedLog  # noqa: E402
from streamlog.storage.memory import MemoryLog  # noqa: E402

SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class StorageLogMachine(LogMachine):
    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def truncate_prefix(self, data):
        upto = data.draw(st.integers(self.start, self.last))
        self.log.sync()
        self.log.truncate_prefix(upto)
        kept = self.log.start_index
        assert self.start <= kept <= upto + 1
        for e in self.model[: kept - self.start]:
            if e.config is not None:
                self.prefix_config = e.config
        if kept > self.start:
            self.prefix_term = self.model[kept - 1 - self.start].term
        del self.model[: kept - self.start]
        self.start = kept


class MemoryLogMachine(StorageLogMachine):
    make_log = staticmethod(MemoryLog)


class SegmentedLogMachine(StorageLogMachine):
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="streamlog-rlc-", dir=SCRATCH)
        super().__init__()

    def make_log(self):  # type: ignore[override]
        return SegmentedLog(os.path.join(self.root, "log"), TopicConfig(segment_bytes=300), index_interval_bytes=64, cache_bytes=100)

    def teardown(self):
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


MemoryLogMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
SegmentedLogMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestMemoryLogAsRaftLog = MemoryLogMachine.TestCase
TestSegmentedLogAsRaftLog = SegmentedLogMachine.TestCase

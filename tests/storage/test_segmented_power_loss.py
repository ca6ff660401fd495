"""Power loss: a simulated disk keeps only what was fsynced.

Every C{os.fsync} of a file records that file's bytes at that moment; every
fsync of a directory records which names point at which files.  A power loss
rebuilds the partition directory from those records alone (unsynced writes,
truncations, creations, renames and deletions are all lost), then the log is
recovered from it.  Whatever the log reported durable before the power loss
must come back, byte for byte, and the recovered log must be a prefix of what
was written.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from streamlog.storage.base import RecordBatch, TopicConfig
from streamlog.storage.log import SegmentedLog

CONFIG = TopicConfig(segment_bytes=800, retention_bytes=1_600)
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class FsyncRecorder:
    """Replaces C{os.fsync}; remembers what each fsync made durable."""

    def __init__(self) -> None:
        self.contents: dict[tuple[int, int], bytes] = {}
        self.listings: dict[str, dict[str, tuple[int, int]]] = {}
        self.real_fsync = os.fsync

    def fsync(self, fd: int) -> None:
        self.real_fsync(fd)
        st_ = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if stat.S_ISDIR(st_.st_mode):
            listing = {}
            for name in os.listdir(path):
                s = os.stat(os.path.join(path, name))
                listing[name] = (s.st_dev, s.st_ino)
            self.listings[path] = listing
        else:
            with open(f"/proc/self/fd/{fd}", "rb") as f:  # works for write-only and unlinked files too
                self.contents[(st_.st_dev, st_.st_ino)] = f.read()

    def image(self, directory: str, dest: str) -> None:
        """What the disk would hold for C{directory} after a power loss."""
        os.makedirs(dest)
        for name, key in self.listings.get(os.path.realpath(directory), {}).items():
            with open(os.path.join(dest, name), "wb") as f:
                f.write(self.contents.get(key, b""))
                f.flush()
                self.fsync(f.fileno())  # the image is what the disk holds: all of it durable
        fd = os.open(dest, os.O_RDONLY)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)


class PowerLossMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.recorder = FsyncRecorder()
        os.fsync = self.recorder.fsync
        self.root = os.path.realpath(tempfile.mkdtemp(prefix="streamlog-pl-", dir=SCRATCH))
        self.generation = 0
        self.path = os.path.join(self.root, "g0")
        self.log = self._open(self.path)
        # Every record as last written at its offset.  Retention does not remove
        # entries: a power loss can bring deleted segments back.
        self.history: dict[int, bytes] = {}
        self.start = 0
        self.end = 0
        self.durable = 0  # the highest durable offset the log has reported

    def _open(self, path: str) -> SegmentedLog:
        return SegmentedLog(path, CONFIG, index_interval_bytes=200, cache_bytes=0)

    def teardown(self) -> None:
        os.fsync = self.recorder.real_fsync
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(count=st.integers(1, 4), size=st.integers(0, 40), term=st.integers(1, 3))
    def append(self, count, size, term):
        base = self.end
        records = [
            orjson.dumps({"offset": base + i, "timestamp": 1_000 + base + i, "key": None, "value": "y" * size, "headers": {}})
            for i in range(count)
        ]
        self.log.append(RecordBatch(base, count, term, 1_000 + base, 1_000 + base + count - 1, b"\n".join(records)))
        for i, record in enumerate(records):
            self.history[base + i] = record
        self.end += count

    @rule()
    def sync(self):
        self.durable = self.log.sync()
        assert self.durable == self.end

    @rule()
    def checkpoint(self):
        self.durable = self.log.checkpoint()

    @rule()
    def roll(self):
        self.log.roll()

    @precondition(lambda self: self.end > self.start)
    @rule(data=st.data())
    def truncate_at_a_batch_boundary(self, data):
        bases = [b.base_offset for b in self.log.batches(self.start, 10**9)]
        offset = data.draw(st.sampled_from(bases))
        self.log.truncate_suffix(offset)
        for o in range(offset, self.end):
            del self.history[o]
        self.end = offset
        self.durable = min(self.durable, offset)
        assert self.log.durable_offset <= offset

    @precondition(lambda self: self.end > self.start)
    @rule(data=st.data())
    def truncate_anywhere(self, data):
        offset = data.draw(st.integers(self.start, self.end))
        self.log.truncate_suffix(offset)
        for o in range(offset, self.end):
            del self.history[o]
        self.end = offset
        self.durable = min(self.durable, offset)

    @rule()
    def retention(self):
        self.start = self.log.apply_retention(10**6)

    @rule()
    def power_loss(self):
        self.generation += 1
        image = os.path.join(self.root, f"g{self.generation}")
        self.recorder.image(self.path, image)
        self.log.close()  # (the image is a separate directory: closing changes nothing there)
        self.path = image
        self.log = self._open(image)
        assert self.log.failed is None, self.log.failed
        start, end = self.log.start_offset, self.log.end_offset
        assert self.durable <= end <= self.end, (self.durable, end, self.end)
        got: list[bytes] = []
        offset = start
        while offset < end:
            result = self.log.read(offset, 50, 10**9)
            got.extend(result.fragments)
            offset = result.next_offset
        assert b",".join(got) == b",".join(self.history[o] for o in range(start, end))
        for o in range(end, self.end):
            del self.history[o]
        self.start, self.end = start, end
        self.durable = self.log.durable_offset


PowerLossMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestPowerLoss = PowerLossMachine.TestCase

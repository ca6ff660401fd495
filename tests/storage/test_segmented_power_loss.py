"""Power loss: a simulated disk keeps only what was synced (format 2, as a Raft log).

Every C{os.fsync} / C{os.fdatasync} of a file records that file's bytes at
that moment; every fsync of a directory records which names point at which
files.  A power loss rebuilds the partition directory from those records
alone (unsynced writes, truncations, creations, renames and deletions are
all lost), then the log is recovered from it.  The machine appends record
batches, no-ops and configurations (terms rising), syncs, checkpoints,
rolls, truncates at any entry, compacts (retention), and resets (a snapshot
install).  After every power loss: whatever the log had reported durable is
back, entry for entry and byte for byte; what came back is a prefix of what
was written; the log start, its term and its configuration are as they were.
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
from storage_helpers import entry_summary

from streamlog.raft.log import Entry
from streamlog.storage.base import RecordBatch, TopicConfig
from streamlog.storage.log import SegmentedLog

CONFIG = TopicConfig(segment_bytes=800, retention_bytes=1_600)
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class FsyncRecorder:
    """Replaces C{os.fsync} and C{os.fdatasync}; remembers what each sync made durable."""

    def __init__(self) -> None:
        self.contents: dict[tuple[int, int], bytes] = {}
        self.listings: dict[str, dict[str, tuple[int, int]]] = {}
        self.real_fsync = os.fsync
        self.real_fdatasync = os.fdatasync

    def install(self) -> None:
        os.fsync = self.fsync
        os.fdatasync = self.fsync

    def uninstall(self) -> None:
        os.fsync = self.real_fsync
        os.fdatasync = self.real_fdatasync

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
        self.recorder.install()
        self.root = os.path.realpath(tempfile.mkdtemp(prefix="streamlog-pl-", dir=SCRATCH))
        self.generation = 0
        self.path = os.path.join(self.root, "g0")
        self.log = self._open(self.path)
        self.written = entry_summary(self.log)  # every entry as last written, by position from the start
        self.start = (1, 0, 0, None)  # (start index, prefix term, start offset, configuration before it)
        self.durable = 0  # the highest durable index the log has reported

    def _open(self, path: str) -> SegmentedLog:
        return SegmentedLog(path, CONFIG, index_interval_bytes=200, cache_bytes=0)

    def teardown(self) -> None:
        self.recorder.uninstall()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _start(self) -> tuple:
        log = self.log
        found = log.config_at(log.start_index - 1)
        return log.start_index, log.prefix_term, log.start_offset, found[1] if found and found[0] == log.start_index - 1 else None

    def _append(self, entry: Entry) -> None:
        self.log.append([entry])
        self.written = entry_summary(self.log)

    @rule(count=st.integers(1, 4), size=st.integers(0, 40), new_term=st.booleans())
    def append_records(self, count, size, new_term):
        log = self.log
        base = log.end_offset
        records = [
            orjson.dumps({"offset": base + i, "timestamp": 1_000 + base + i, "key": None, "value": "y" * size, "headers": {}})
            for i in range(count)
        ]
        batch = RecordBatch(base, count, 0, 1_000 + base, 1_000 + base + count - 1, b"\n".join(records))
        self._append(Entry(log.last_index + 1, log.last_term + new_term, batch))

    @rule()
    def append_noop(self):
        self._append(Entry(self.log.last_index + 1, self.log.last_term + 1, b""))

    @rule(members=st.lists(st.sampled_from(["1.a", "2.b", "3.c"]), min_size=1, max_size=3, unique=True))
    def append_config(self, members):
        self._append(Entry(self.log.last_index + 1, self.log.last_term, b"", tuple(members)))

    @rule()
    def sync(self):
        self.durable = self.log.sync()
        assert self.durable == self.log.last_index

    @rule()
    def checkpoint(self):
        self.log.checkpoint(sync=False)

    @rule()
    def roll(self):
        self.log.roll()

    @precondition(lambda self: self.log.last_index >= self.log.start_index)
    @rule(data=st.data())
    def truncate_at_an_entry(self, data):
        cut = data.draw(st.integers(self.log.start_index, self.log.last_index + 1))
        self.log.truncate_suffix(cut)
        self.written = entry_summary(self.log)
        self.durable = min(self.durable, cut - 1)
        assert self.log.durable_index <= cut - 1

    @rule()
    def retention(self):
        self.log.apply_retention(10**6)
        self.written = entry_summary(self.log)
        self.start = self._start()

    @precondition(lambda self: self.log.last_index >= self.log.start_index)
    @rule(data=st.data())
    def compact(self, data):
        upto = data.draw(st.integers(self.log.start_index, self.log.last_index))
        self.log.truncate_prefix(upto)
        assert self.log.start_index <= upto + 1
        self.written = entry_summary(self.log)
        self.start = self._start()

    @rule(data=st.data(), term=st.integers(0, 3))
    def reset(self, data, term):
        log = self.log
        index = data.draw(st.integers(max(0, log.start_index - 3), log.last_index + 3))
        log.reset(index, log.last_term + term, ("9.z",), next_offset=log.end_offset + 7)
        self.written = entry_summary(log)
        self.start = self._start()
        self.durable = index
        assert self.start == (index + 1, log.last_term, log.end_offset, ("9.z",))

    @rule()
    def power_loss(self):
        self.generation += 1
        image = os.path.join(self.root, f"g{self.generation}")
        self.recorder.image(self.path, image)
        self.log.close()  # (the image is a separate directory: closing changes nothing there)
        self.path = image
        self.log = self._open(image)
        log = self.log
        assert log.failed is None, log.failed
        assert self._start() == self.start
        got = entry_summary(log)
        assert log.last_index >= self.durable, (log.last_index, self.durable)
        assert got == self.written[: len(got)]  # a prefix of what was written, byte for byte
        assert log.term_at(log.last_index) == (got[-1][1] if got else self.start[1])
        offset, parts = log.start_offset, []
        while offset < log.end_offset:
            result = log.read(offset, 50, 10**9)
            parts.extend(result.fragments)
            offset = result.next_offset
        assert b",".join(parts) == b",".join(e[4].replace(b"\n", b",") for e in got if e[2] == "records")
        self.written = got
        self.durable = log.durable_index


PowerLossMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestPowerLoss = PowerLossMachine.TestCase

"""The in-memory partition log: the same interface as the segmented log, and a crash model.

L{MemoryLog} is a L{streamlog.storage.base.ReplicatedLog} held in a list of
stored batches (the same batches, headers and all, that the segmented log
would write), used with C{--storage memory}, as the model the durable log is
held against in the shared contract tests, and by simulations of whole
clusters.  Batches are kept whole, as appended, so a record costs no more
than its share of one C{bytes} buffer.

The crash model follows what the segmented log guarantees: an append is not
durable until L{MemoryLog.sync}; a truncation, a retention step or a reset
is durable when it returns (but does not make earlier unsynced appends
durable).  L{MemoryLog.crash} drops what was not synced, or, given a
C{random.Random}, keeps a random prefix of it (a disk persists some of an
unsynced tail; recovery keeps the longest whole prefix): deterministic given
the generator's seed.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterable, Sequence

from streamlog.raft.log import Entry, Members
from streamlog.storage.appends import stored_batch
from streamlog.storage.base import (
    RECORD_SEPARATOR,
    BatchType,
    ReadResult,
    RecordBatch,
    TopicConfig,
)
from streamlog.storage.chain import config_members, entry_of
from streamlog.storage.checkpoint import LogStart
from streamlog.storage.errors import StorageCorrupted, StorageFailed
from streamlog.storage.local import LocalLog
from streamlog.storage.snapshot_files import MemorySnapshots


def slice_batch(batch: RecordBatch, offset: int, max_records: int) -> tuple[bytes, int]:
    """The part of C{batch} from C{offset}, at most C{max_records}, comma-joined.

    Returns (fragment, count).  A whole batch costs one C{bytes.replace}.
    """
    skip = offset - batch.base_offset
    if skip == 0 and max_records >= batch.count:
        return batch.payload.replace(RECORD_SEPARATOR, b","), batch.count
    records = batch.payload.split(RECORD_SEPARATOR)[skip : skip + max_records]
    return b",".join(records), len(records)


def read_batches(batches: Iterable[RecordBatch], offset: int, max_records: int, max_bytes: int) -> ReadResult:
    """Collect records from C{batches} (which start at or before C{offset}).

    Shared by the memory and segmented logs so that both cut reads the same way:
    whole batches while they fit in C{max_bytes}, then record by record, but
    always at least one record so that a consumer can make progress.
    """
    fragments: list[bytes] = []
    count = 0
    size = 0
    position = offset
    for batch in batches:
        if batch.next_offset <= position:
            continue
        want = max_records - count
        if want <= 0:
            break
        if batch.base_offset > position:
            # A hole: never answer around it (an empty or repeated slice would follow).
            raise StorageCorrupted("partition log", position, f"offset {position} is missing: the next batch starts at {batch.base_offset}")
        fragment, n = slice_batch(batch, position, want)
        cost = len(fragment) + (1 if fragments else 0)
        if size + cost <= max_bytes or (not count and n == 1):
            fragments.append(fragment)
            size += cost
            count += n
            position += n
            if count >= max_records:
                break  # without pulling (maybe reading from disk) one more batch
            continue
        # Only part of this batch fits: take it record by record.
        for record in fragment_records(batch, position, want):
            cost = len(record) + (1 if fragments else 0)
            if count and size + cost > max_bytes:
                break
            fragments.append(record)
            size += cost
            count += 1
            position += 1
        break
    return ReadResult(fragments=fragments, count=count, next_offset=position, size=size)


def fragment_records(batch: RecordBatch, offset: int, max_records: int) -> list[bytes]:
    """The individual encoded records of C{batch} from C{offset}."""
    skip = offset - batch.base_offset
    return batch.payload.split(RECORD_SEPARATOR)[skip : skip + max_records]


class MemoryLog:
    """A L{streamlog.storage.base.ReplicatedLog} in memory, with a crash model (see the module docstring).

    @param always_durable: every write counts as synced at once (C{--storage
        memory}: no disk behind it, nobody syncs, and retention still applies).
    """

    def __init__(self, config: TopicConfig | None = None, start_offset: int = 0, always_durable: bool = False) -> None:
        self.config = config or TopicConfig()
        self._always_durable = always_durable
        self._start = LogStart(offset=start_offset)
        self._batches: list[RecordBatch] = []
        self._offsets: list[int] = []  # base offset of each batch
        self._configs: list[int] = []  # indexes of configuration batches
        self._end = start_offset
        self._durable = 0  # durable Raft index
        self._bytes = 0
        self.closed = False
        self.failed: Exception | None = None

    # -- state ---------------------------------------------------------------------

    @property
    def start_index(self) -> int:
        return self._start.index

    @property
    def prefix_term(self) -> int:
        return self._start.term

    @property
    def prefix_config(self) -> Members | None:
        return self._start.config

    @property
    def producer_state(self) -> bytes:
        return self._start.producer_state

    @property
    def last_index(self) -> int:
        return self._start.index + len(self._batches) - 1

    @property
    def last_term(self) -> int:
        return self._batches[-1].term if self._batches else self._start.term

    @property
    def start_offset(self) -> int:
        return self._start.offset

    @property
    def end_offset(self) -> int:
        return self._end

    @property
    def durable_index(self) -> int:
        return self._durable

    @property
    def durable_offset(self) -> int:
        return self.next_offset_after(self._durable)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def checkpoint_due(self) -> bool:
        return False

    def _at(self, index: int) -> RecordBatch:
        return self._batches[index - self._start.index]

    # -- the Raft log -------------------------------------------------------------------

    def term_at(self, index: int) -> int | None:
        if index == self._start.index - 1:
            return self._start.term
        if self._start.index <= index <= self.last_index:
            return self._at(index).term
        return None

    def config_at(self, index: int) -> tuple[int, Members] | None:
        pos = bisect.bisect_right(self._configs, index)
        if pos:
            at = self._configs[pos - 1]
            return at, _members(self._at(at))
        if self._start.config is not None and index >= self._start.index - 1:
            return self._start.index - 1, self._start.config
        return None

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        lo = max(lo, self._start.index)
        hi = min(hi, self.last_index + 1)
        out: list[Entry] = []
        if lo >= hi:
            return out
        size = 0
        for batch in self._batches[lo - self._start.index : hi - self._start.index]:
            entry = entry_of(batch)
            size += len(entry.data)
            if out and size > max_bytes:
                break
            out.append(entry)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        self._check()
        index, offset, term = self.last_index + 1, self._end, self.last_term
        prepared: list[RecordBatch] = []
        for entry in entries:
            if entry.index != index:
                raise ValueError(f"append at {entry.index}, expected {index}")
            if entry.term < term:
                raise ValueError(f"entry {entry.index} of term {entry.term} after term {term}: terms never go down")
            batch = stored_batch(entry, offset)
            prepared.append(batch)
            index, offset, term = index + 1, batch.next_offset, entry.term
        for batch in prepared:
            self._batches.append(batch)
            self._offsets.append(batch.base_offset)
            if batch.type == BatchType.CONFIG:
                self._configs.append(batch.raft_index)
            self._bytes += len(batch.payload)
        self._end = offset
        if self._always_durable:
            self._durable = self.last_index

    def truncate_suffix(self, from_index: int) -> None:
        self._check()
        if from_index > self.last_index:
            return
        if from_index < self._start.index:
            raise ValueError(f"truncate_suffix({from_index}) below the log start {self._start.index}")
        keep = from_index - self._start.index
        self._end = self._batches[keep].base_offset
        for batch in self._batches[keep:]:
            self._bytes -= len(batch.payload)
        del self._batches[keep:], self._offsets[keep:]
        del self._configs[bisect.bisect_left(self._configs, from_index) :]
        self._durable = min(self._durable, from_index - 1)

    def truncate_prefix(self, upto_index: int, producer_state: Callable[[int], bytes] | None = None) -> None:
        """Drop every entry <= C{upto_index} that is durable (the segmented log keeps whole segments).

        C{producer_state(i)}: the producer state as of entry C{i}, kept with the new start.
        """
        self._check()
        if upto_index < self._start.index:
            return
        if upto_index > self.last_index:
            raise ValueError(f"truncate_prefix({upto_index}) past the last index {self.last_index}")
        upto_index = min(upto_index, self._durable)
        if upto_index < self._start.index:
            return
        found = self.config_at(upto_index)
        drop = upto_index - self._start.index + 1
        next_offset = self._batches[drop].base_offset if drop < len(self._batches) else self._end
        state = producer_state(upto_index) if producer_state is not None else self._start.producer_state
        self._start = LogStart(upto_index + 1, self._at(upto_index).term, next_offset, found[1] if found else None,
                               state)
        for batch in self._batches[:drop]:
            self._bytes -= len(batch.payload)
        del self._batches[:drop], self._offsets[:drop]
        del self._configs[: bisect.bisect_right(self._configs, upto_index)]

    def reset(
        self, index: int, term: int, config: Members | None = None, *, next_offset: int | None = None, producer_state: bytes = b""
    ) -> None:
        self._check()
        if next_offset is None:
            next_offset = self.next_offset_after(index) if self._start.index - 1 <= index <= self.last_index else self._end
        self._start = LogStart(index + 1, term, next_offset, config, producer_state)
        self._batches, self._offsets, self._configs, self._bytes = [], [], [], 0
        self._end = next_offset
        self._durable = index

    # -- records ----------------------------------------------------------------------

    def next_offset_after(self, index: int) -> int:
        if index == self._start.index - 1:
            return self._start.offset
        if not self._start.index <= index <= self.last_index:
            raise ValueError(f"entry {index} is outside [{self._start.index - 1}, {self.last_index}]")
        return self._at(index).next_offset

    def index_for_offset(self, offset: int) -> int | None:
        if not self._start.offset <= offset < self._end:
            return None
        return self._batches[bisect.bisect_right(self._offsets, offset) - 1].raft_index

    def read(self, offset: int, max_records: int, max_bytes: int) -> ReadResult:
        self._check()
        if offset >= self._end or max_records <= 0:
            return ReadResult(fragments=[], count=0, next_offset=offset, size=0)
        return read_batches(self._iter_from(self._index_of(offset)), offset, max_records, max_bytes)

    def _index_of(self, offset: int) -> int:
        return max(bisect.bisect_right(self._offsets, offset) - 1, 0)

    def _iter_from(self, i: int) -> Iterable[RecordBatch]:
        batches = self._batches
        while i < len(batches):
            yield batches[i]
            i += 1

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        self._check()
        for batch in self._batches:
            if batch.type == BatchType.RECORDS and batch.max_timestamp >= timestamp_ms:
                for i, record in enumerate(fragment_records(batch, batch.base_offset, batch.count)):
                    if _record_timestamp(record) >= timestamp_ms:
                        return max(batch.base_offset + i, self._start.offset)
        return self._end

    # -- retention -------------------------------------------------------------------

    def retention_point(self, now_ms: int) -> int:
        """Whole batches older than retention_ms or beyond retention_bytes, durable ones only, never the newest."""
        retention_ms = self.config.retention_ms
        retention_bytes = self.config.retention_bytes
        point = self._start.index - 1
        total = self._bytes
        for batch in self._batches[:-1]:
            if batch.raft_index > self._durable:
                break
            too_old = retention_ms is not None and (batch.type != BatchType.RECORDS or batch.max_timestamp < now_ms - retention_ms)
            too_big = retention_bytes is not None and total > retention_bytes
            if not (too_old or too_big):
                break
            total -= len(batch.payload)
            point = batch.raft_index
        return point

    def apply_retention(self, now_ms: int) -> int:
        """Drop what retention allows now; return the new start offset."""
        self.truncate_prefix(self.retention_point(now_ms))
        return self._start.offset

    # -- durability and the crash model --------------------------------------------------

    def sync(self) -> int:
        self._check()
        self._durable = self.last_index
        return self._durable

    def checkpoint(self, sync: bool = True) -> bool:
        if sync:
            self.sync()
        return False

    def crash(self, rng: random.Random | None = None) -> None:
        """Lose what was not synced, as a power loss would: all of it, or (with C{rng}) a random part of its end."""
        unsynced = self.last_index - self._durable
        keep = rng.randint(0, unsynced) if rng is not None and unsynced > 0 else 0
        if keep < unsynced:
            self.truncate_suffix(self._durable + keep + 1)
        self._durable = self.last_index

    def _check(self) -> None:
        if self.closed:
            raise StorageFailed("the log is closed")

    def close(self, sync: bool = True) -> None:
        self.closed = True


def _members(batch: RecordBatch) -> Members:
    return config_members(batch.payload)


def _record_timestamp(record: bytes) -> int:
    """The C{timestamp} of one encoded record (slow path: parses it)."""
    import orjson

    return int(orjson.loads(record)["timestamp"])


class MemoryStorage:
    """L{streamlog.storage.base.Storage} that keeps every topic in memory.

    Partitions are L{streamlog.storage.local.LocalLog}s over L{MemoryLog}s.

    @param defaults: server-wide settings (retention) for what a topic leaves C{None}.
    """

    def __init__(self, defaults: TopicConfig | None = None) -> None:
        self.defaults = defaults
        self._topics: dict[str, tuple[TopicConfig, list[LocalLog]]] = {}
        self._snapshots: dict[str, MemorySnapshots] = {}

    def load(self) -> dict[str, tuple[TopicConfig, Sequence[LocalLog]]]:
        return dict(self._topics)

    def snapshot_store(self, name: str) -> MemorySnapshots:
        """The state-machine snapshot files of the log C{name} (kept as long as this storage)."""
        return self._snapshots.setdefault(name, MemorySnapshots())

    def create_topic(self, name: str, partitions: int, config: TopicConfig) -> list[LocalLog]:
        logs = [LocalLog(MemoryLog(config.with_defaults(self.defaults), always_durable=True)) for _ in range(partitions)]
        self._topics[name] = (config, logs)
        return logs

    def delete_topic(self, name: str) -> None:
        config_logs = self._topics.pop(name, None)
        self._snapshots.pop(name, None)
        if config_logs is not None:
            for log in config_logs[1]:
                log.close()

    def close(self, sync: bool = True) -> None:
        for _, logs in self._topics.values():
            for log in logs:
                log.close()

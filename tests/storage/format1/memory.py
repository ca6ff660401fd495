"""The in-memory reference log: no files, nothing survives a restart.

Used with C{--storage memory} and as the model that the durable log is held
against in the shared contract tests.  Batches are kept whole, as appended, so
a record costs no more than its share of one C{bytes} buffer.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from format1.base import (
    RECORD_SEPARATOR,
    ReadResult,
    RecordBatch,
    TopicConfig,
)
from format1.errors import StorageCorrupted


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


def take_batches(batches: Iterable[RecordBatch], max_bytes: int) -> list[RecordBatch]:
    """Whole batches while their payloads fit in C{max_bytes}, but at least one."""
    out: list[RecordBatch] = []
    size = 0
    for batch in batches:
        if out and size + len(batch.payload) > max_bytes:
            break
        out.append(batch)
        size += len(batch.payload)
    return out


def fragment_records(batch: RecordBatch, offset: int, max_records: int) -> list[bytes]:
    """The individual encoded records of C{batch} from C{offset}."""
    skip = offset - batch.base_offset
    return batch.payload.split(RECORD_SEPARATOR)[skip : skip + max_records]


class MemoryLog:
    """A L{streamlog.storage.base.PartitionLog} held in a list of batches."""

    def __init__(self, config: TopicConfig | None = None, start_offset: int = 0) -> None:
        self.config = config or TopicConfig()
        self._batches: list[RecordBatch] = []
        self._bases: list[int] = []
        self._start = start_offset
        self._end = start_offset
        self._bytes = 0

    @property
    def start_offset(self) -> int:
        return self._start

    @property
    def end_offset(self) -> int:
        return self._end

    @property
    def durable_offset(self) -> int:
        # Nothing here is ever more durable than the process; report what is held.
        return self._end

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, batch: RecordBatch) -> None:
        if batch.base_offset != self._end:
            raise ValueError(f"batch base offset {batch.base_offset} != log end {self._end}")
        self._batches.append(batch)
        self._bases.append(batch.base_offset)
        self._end = batch.next_offset
        self._bytes += len(batch.payload)

    def sync(self) -> int:
        return self._end

    def _index_of(self, offset: int) -> int:
        return max(bisect.bisect_right(self._bases, offset) - 1, 0)

    def read(self, offset: int, max_records: int, max_bytes: int) -> ReadResult:
        if offset >= self._end or max_records <= 0:
            return ReadResult(fragments=[], count=0, next_offset=offset, size=0)
        i = self._index_of(offset)
        return read_batches(self._iter_from(i), offset, max_records, max_bytes)

    def _iter_from(self, i: int) -> Iterable[RecordBatch]:
        batches = self._batches
        while i < len(batches):
            yield batches[i]
            i += 1

    def batches(self, offset: int, max_bytes: int) -> Iterable[RecordBatch]:
        if offset >= self._end:
            return []
        return take_batches(self._iter_from(self._index_of(offset)), max_bytes)

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        for batch in self._batches:
            if batch.max_timestamp >= timestamp_ms:
                for i, record in enumerate(fragment_records(batch, batch.base_offset, batch.count)):
                    if _record_timestamp(record) >= timestamp_ms:
                        return max(batch.base_offset + i, self._start)
        return self._end

    def truncate_suffix(self, offset: int) -> None:
        if offset >= self._end:
            return
        if offset < self._start:
            raise ValueError(f"cannot truncate to {offset}, before log start {self._start}")
        i = bisect.bisect_right(self._bases, offset) - 1
        keep = self._batches[:i] if i >= 0 else []
        if i >= 0:
            batch = self._batches[i]
            if batch.base_offset < offset:
                n = offset - batch.base_offset
                records = batch.records()[:n]
                keep.append(
                    RecordBatch(
                        base_offset=batch.base_offset,
                        count=n,
                        term=batch.term,
                        first_timestamp=batch.first_timestamp,
                        max_timestamp=max(_record_timestamp(r) for r in records),
                        payload=RECORD_SEPARATOR.join(records),
                        producer_id=batch.producer_id,
                        producer_epoch=batch.producer_epoch,
                        base_sequence=batch.base_sequence,
                    )
                )
        self._batches = keep
        self._bases = [b.base_offset for b in keep]
        self._end = offset
        self._bytes = sum(len(b.payload) for b in keep)

    def apply_retention(self, now_ms: int) -> int:
        """Drop whole batches older than retention_ms or beyond retention_bytes.

        The newest batch is never dropped, so the log end is always served.
        """
        retention_ms = self.config.retention_ms
        retention_bytes = self.config.retention_bytes
        drop = 0
        total = self._bytes
        while drop < len(self._batches) - 1:
            batch = self._batches[drop]
            too_old = retention_ms is not None and batch.max_timestamp < now_ms - retention_ms
            too_big = retention_bytes is not None and total > retention_bytes
            if not (too_old or too_big):
                break
            total -= len(batch.payload)
            drop += 1
        if drop:
            self._start = self._batches[drop].base_offset
            del self._batches[:drop]
            del self._bases[:drop]
            self._bytes = total
        return self._start

    def close(self) -> None:
        self._batches = []
        self._bases = []


def _record_timestamp(record: bytes) -> int:
    """The C{timestamp} of one encoded record (slow path: parses it)."""
    import orjson

    return int(orjson.loads(record)["timestamp"])


class MemoryStorage:
    """L{streamlog.storage.base.Storage} that keeps every topic in memory.

    @param defaults: server-wide settings (retention) for what a topic leaves C{None}.
    """

    def __init__(self, defaults: TopicConfig | None = None) -> None:
        self.defaults = defaults
        self._topics: dict[str, tuple[TopicConfig, list[MemoryLog]]] = {}

    def load(self) -> dict[str, tuple[TopicConfig, Sequence[MemoryLog]]]:
        return dict(self._topics)

    def create_topic(self, name: str, partitions: int, config: TopicConfig) -> list[MemoryLog]:
        logs = [MemoryLog(config.with_defaults(self.defaults)) for _ in range(partitions)]
        self._topics[name] = (config, logs)
        return logs

    def delete_topic(self, name: str) -> None:
        config_logs = self._topics.pop(name, None)
        if config_logs is not None:
            for log in config_logs[1]:
                log.close()

    def close(self) -> None:
        for _, logs in self._topics.values():
            for log in logs:
                log.close()

"""Helpers shared by the storage tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import orjson

from streamlog.raft.log import Entry
from streamlog.storage.base import RecordBatch
from streamlog.storage.local import LocalLog


def make_batch(base: int, count: int, ts: int = 1_000, term: int = 1, size: int = 20, step: int = 1) -> RecordBatch:
    """A batch of C{count} encoded records; record i has timestamp C{ts + i * step}."""
    records = [
        orjson.dumps(
            {"offset": base + i, "timestamp": ts + i * step, "key": None, "value": "v" * size, "headers": {}}
        )
        for i in range(count)
    ]
    return RecordBatch(
        base_offset=base,
        count=count,
        term=term,
        first_timestamp=ts,
        max_timestamp=ts + (count - 1) * step,
        payload=b"\n".join(records),
    )


def append_batch(log, batch: RecordBatch, term: int | None = None) -> int:
    """Append C{batch} as the next entry (of C{term}, else the log's last term); return its index."""
    if isinstance(log, LocalLog):
        log.append(batch)
        return log.log.last_index
    index = log.last_index + 1
    log.append([Entry(index, log.last_term if term is None else term, batch)])
    return index


def rolled_segments(log, rolls: int = 3) -> None:
    """Roll C{log} C{rolls} times, one batch in each new segment, and sync it (retention's set-up)."""
    for _ in range(rolls):
        log.roll()
        append_batch(log, make_batch(log.end_offset, 1))
    log.sync()


def append_noop(log, term: int | None = None) -> int:
    """Append a bookkeeping entry (a new leader's no-op); return its index."""
    raw = log.log if isinstance(log, LocalLog) else log
    index = raw.last_index + 1
    raw.append([Entry(index, raw.last_term if term is None else term, b"")])
    return index


def append_config(log, members: tuple[str, ...], term: int | None = None) -> int:
    """Append a configuration entry; return its index."""
    raw = log.log if isinstance(log, LocalLog) else log
    index = raw.last_index + 1
    raw.append([Entry(index, raw.last_term if term is None else term, b"", members)])
    return index


def offsets_of(result) -> list[int]:
    """The offsets of the records in a ReadResult (decodes; tests only)."""
    if not result.count:
        return []
    return [r["offset"] for r in orjson.loads(b"[" + b",".join(result.fragments) + b"]")]


def read_all(log, max_bytes: int = 1 << 30) -> list[int]:
    """Every offset from the log start to its end, read in small steps."""
    out: list[int] = []
    offset = log.start_offset
    while offset < log.end_offset:
        result = log.read(offset, 7, max_bytes)
        assert result.count > 0
        out.extend(offsets_of(result))
        offset = result.next_offset
    return out


def fill(log, batches: int, count: int = 5, ts: int = 1_000, size: int = 20, noops: int = 0) -> None:
    """Append C{batches} batches of C{count} records, timestamps rising by one per record.

    With C{noops}, a no-op entry follows every C{noops}-th batch (bookkeeping
    entries between record batches, as a Raft log has them).
    """
    for i in range(batches):
        base = log.end_offset
        append_batch(log, make_batch(base, count, ts=ts + base, size=size))
        if noops and i % noops == noops - 1:
            append_noop(log)


def entry_summary(log) -> list[tuple]:
    """(index, term, kind, first offset or members) of every entry: a log's shape, for comparing two logs."""
    raw = log.log if isinstance(log, LocalLog) else log
    out = []
    for e in raw.entries(raw.start_index, raw.last_index + 1, 1 << 40):
        if isinstance(e.data, RecordBatch):
            out.append((e.index, e.term, "records", e.data.base_offset, e.data.payload))
        elif e.config is not None:
            out.append((e.index, e.term, "config", e.config))
        else:
            out.append((e.index, e.term, "data" if e.data else "noop", e.data))
    return out

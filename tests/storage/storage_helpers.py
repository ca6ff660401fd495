"""Helpers shared by the storage tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import orjson

from streamlog.storage.base import RecordBatch


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


def fill(log, batches: int, count: int = 5, ts: int = 1_000, size: int = 20) -> None:
    """Append C{batches} batches of C{count} records, timestamps rising by one per record."""
    for _ in range(batches):
        base = log.end_offset
        log.append(make_batch(base, count, ts=ts + base, size=size))

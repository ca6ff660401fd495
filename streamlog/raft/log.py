"""The log interface the Raft core reads and writes, and an in-memory implementation.

The core never fsyncs: it writes through this interface (cheap, possibly buffered) and emits
a `SyncLog` effect; the driver makes the writes durable before releasing any later effect.
Keeping the interface this small is deliberate: streamlog's partition logs implement it
themselves (`streamlog.storage.log.SegmentedLog`, `streamlog.storage.memory.MemoryLog`: a
partition's Raft log is its storage log), each entry one stored batch that carries its Raft
index and term.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs

Members = tuple[str, ...]


@attrs.frozen
class Entry:
    """One Raft log entry. `data` is opaque to Raft; empty data is a no-op (bookkeeping).

    A configuration entry (membership change) has empty data and `config` set to the sorted
    voter ids; it takes effect as soon as it is in a log, committed or not (thesis §4.1).

    In a partition's log, a record entry's `data` is a `streamlog.storage.base.RecordBatch`
    rather than bytes (its stored frame: the core only takes its `len()`, the payload bytes,
    and passes it on); no-op and configuration entries keep `b""`.
    """

    index: int
    term: int
    data: bytes = b""
    config: Members | None = None


class RaftLog(Protocol):
    """What the core needs from a log.

    Indexes start at 1. Entries below `start_index` are gone (retention or a snapshot); the
    term of entry `start_index - 1` is remembered as `prefix_term` so the consistency check
    still works at the boundary. An empty fresh log has start_index 1, prefix_term 0.
    """

    @property
    def start_index(self) -> int: ...

    @property
    def prefix_term(self) -> int: ...

    @property
    def last_index(self) -> int: ...

    @property
    def last_term(self) -> int: ...

    def term_at(self, index: int) -> int | None:
        """Term of the entry at index, for start_index - 1 <= index <= last_index, else None."""

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries lo <= index < hi, stopping before max_bytes of data (always at least one)."""

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries; the first must have index last_index + 1."""

    def truncate_suffix(self, from_index: int) -> None:
        """Remove every entry with index >= from_index (a conflicting, uncommitted tail)."""

    def truncate_prefix(self, upto_index: int) -> None:
        """Drop entries with index <= upto_index (retention); only committed entries. A log
        may keep some (a segmented log removes whole segments, only synced ones): afterwards
        start_index <= upto_index + 1, and prefix_term / config_at describe its new start."""

    def reset(self, index: int, term: int, config: Members | None = None) -> None:
        """Drop everything; the log becomes empty after (index, term) (snapshot install), with
        `config` the membership in force at that point. Partition logs also take keyword
        arguments `next_offset` (the record offset after the snapshot) and `producer_state`."""

    def config_at(self, index: int) -> tuple[int, Members] | None:
        """The latest configuration at or below `index`: (entry index, voters). Below the log
        start this is the remembered prefix configuration (reported at start_index - 1).
        None if the log never held one. Configurations are rare: keep a small index of them."""


class MemoryRaftLog:
    """A list-backed `RaftLog`: the reference implementation, used by tests and the simulator."""

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        start_index: int = 1,
        prefix_term: int = 0,
        prefix_config: Members | None = None,
    ):
        self._entries: list[Entry] = list(entries)
        self._start = start_index
        self._prefix_term = prefix_term
        self._prefix_config = prefix_config
        self._configs: list[int] = []  # indexes of configuration entries present
        for offset, e in enumerate(self._entries):
            if e.index != start_index + offset:
                raise ValueError(f"entry {e.index} out of sequence")
            if e.config is not None:
                self._configs.append(e.index)

    @property
    def start_index(self) -> int:
        return self._start

    @property
    def prefix_term(self) -> int:
        return self._prefix_term

    @property
    def last_index(self) -> int:
        return self._start + len(self._entries) - 1

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._prefix_term

    def term_at(self, index: int) -> int | None:
        if index == self._start - 1:
            return self._prefix_term
        if self._start <= index <= self.last_index:
            return self._entries[index - self._start].term
        return None

    def entry_at(self, index: int) -> Entry | None:
        if self._start <= index <= self.last_index:
            return self._entries[index - self._start]
        return None

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        lo = max(lo, self._start)
        hi = min(hi, self.last_index + 1)
        out: list[Entry] = []
        size = 0
        for e in self._entries[lo - self._start : hi - self._start]:
            size += len(e.data)
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        expected = self.last_index + 1
        for e in entries:
            if e.index != expected:
                raise ValueError(f"append at {e.index}, expected {expected}")
            expected += 1
        self._entries.extend(entries)
        self._configs.extend(e.index for e in entries if e.config is not None)

    def truncate_suffix(self, from_index: int) -> None:
        if from_index < self._start:
            raise ValueError(f"truncate_suffix({from_index}) below start {self._start}")
        del self._entries[from_index - self._start :]
        del self._configs[bisect.bisect_left(self._configs, from_index) :]

    def truncate_prefix(self, upto_index: int) -> None:
        if upto_index < self._start:
            return
        if upto_index > self.last_index:
            raise ValueError(f"truncate_prefix({upto_index}) past last {self.last_index}")
        found = self.config_at(upto_index)
        if found is not None:
            self._prefix_config = found[1]
        self._prefix_term = self._entries[upto_index - self._start].term
        del self._entries[: upto_index - self._start + 1]
        del self._configs[: bisect.bisect_right(self._configs, upto_index)]
        self._start = upto_index + 1

    def reset(self, index: int, term: int, config: Members | None = None) -> None:
        self._entries = []
        self._configs = []
        self._start = index + 1
        self._prefix_term = term
        self._prefix_config = config

    def config_at(self, index: int) -> tuple[int, Members] | None:
        pos = bisect.bisect_right(self._configs, index)
        if pos:
            at = self._configs[pos - 1]
            config = self._entries[at - self._start].config
            assert config is not None
            return at, config
        if self._prefix_config is not None and index >= self._start - 1:
            return self._start - 1, self._prefix_config
        return None

    def snapshot(self) -> tuple[int, int, tuple[Entry, ...], Members | None]:
        """(start_index, prefix_term, entries, prefix_config): a cheap copy, to model a disk."""
        return self._start, self._prefix_term, tuple(self._entries), self._prefix_config

    def sync(self) -> None:
        """Nothing to flush in memory; present so a driver can treat every log alike."""

"""The log interface the Raft core reads and writes, and an in-memory implementation.

The core never fsyncs: it writes through this interface (cheap, possibly buffered) and emits
a `SyncLog` effect; the driver makes the writes durable before releasing any later effect.
Keeping the interface this small is deliberate: streamlog's segmented partition log implements
it, with each entry a stored record batch that carries its Raft term.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence

import attrs


@attrs.frozen
class Entry:
    """One Raft log entry. `data` is opaque to Raft; empty data is a no-op (bookkeeping)."""

    index: int
    term: int
    data: bytes = b""


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
        """Drop every entry with index <= upto_index (retention); only committed entries."""

    def reset(self, index: int, term: int) -> None:
        """Drop everything; the log becomes empty after (index, term) (snapshot install)."""


class MemoryRaftLog:
    """A list-backed `RaftLog`: the reference implementation, used by tests and the simulator."""

    def __init__(self, entries: Iterable[Entry] = (), start_index: int = 1, prefix_term: int = 0):
        self._entries: list[Entry] = list(entries)
        self._start = start_index
        self._prefix_term = prefix_term
        for offset, e in enumerate(self._entries):
            if e.index != start_index + offset:
                raise ValueError(f"entry {e.index} out of sequence")

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

    def truncate_suffix(self, from_index: int) -> None:
        if from_index < self._start:
            raise ValueError(f"truncate_suffix({from_index}) below start {self._start}")
        del self._entries[from_index - self._start :]

    def truncate_prefix(self, upto_index: int) -> None:
        if upto_index < self._start:
            return
        if upto_index > self.last_index:
            raise ValueError(f"truncate_prefix({upto_index}) past last {self.last_index}")
        self._prefix_term = self._entries[upto_index - self._start].term
        del self._entries[: upto_index - self._start + 1]
        self._start = upto_index + 1

    def reset(self, index: int, term: int) -> None:
        self._entries = []
        self._start = index + 1
        self._prefix_term = term

    def snapshot(self) -> tuple[int, int, tuple[Entry, ...]]:
        """(start_index, prefix_term, entries): a cheap copy, used to model a disk."""
        return self._start, self._prefix_term, tuple(self._entries)

    def sync(self) -> None:
        """Nothing to flush in memory; present so a driver can treat every log alike."""

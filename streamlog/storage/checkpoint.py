"""The recovery checkpoint, and the crash-safe file helpers it is written with.

A checkpoint records the end of a log's synced, validated prefix (see
L{streamlog.storage.log} and docs/storage.md); recovery reads only what lies
after it.  It is small JSON, replaced atomically: write a temporary file,
fsync it, rename it over the old one, fsync the directory.

The file helpers here (L{datasync}, L{datasync_path}, L{fsync_dir},
L{write_atomically}) are the storage's only way to sync: each reports a
failed sync to the fail-stop handler before it raises
(L{streamlog.storage.sync_failure}).

Version 3 (storage format 2) is everything a clean start needs to know
without reading data: where the synced prefix ends (segment, byte, next Raft
index, next record offset, last term); the chain of segments before it (first
index, first record offset, size: start-up compares it with the files, by
name and size, so a missing, emptied or shortened segment fails the
partition instead of being read through as a hole); the log start that
retention or a snapshot left (start index, the term and configuration of the
entry before it, the start offset, the producer state); and the Raft term
changes and configuration entries in the synced prefix (so C{term_at} and
C{config_at} answer from memory).  It ends with a CRC32C of the rest, and is
checked for consistency on reading, so damage that still parses is detected.

Versions 1 and 2 (storage format 1) are read by the upgrade only
(L{Format1Checkpoint}).
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import orjson

from streamlog.raft.log import Members
from streamlog.storage import sync_failure
from streamlog.storage.codec import crc32c

CHECKPOINT_FILE = "recovery-checkpoint"
CHECKPOINT_VERSION = 3


def datasync(fd: int, path: str | None = None) -> None:
    """Make a regular file's data (and the metadata needed to read it, e.g. its size) durable.

    C{fdatasync} skips what reading does not need (the modification time),
    which C{fsync} would also write; looked up at each call, so a test can
    replace it.  Where the platform lacks it, C{fsync}.  A failure is
    reported to the fail-stop handler first (L{sync_failure}: C{path}, or the
    descriptor's, names the file), then raised.
    """
    try:
        (getattr(os, "fdatasync", None) or os.fsync)(fd)
    except OSError as e:
        sync_failure.report(path or sync_failure.descriptor_path(fd), e)
        raise


def datasync_path(path: str) -> None:
    """L{datasync} a file by its path, with a descriptor of our own (never one another thread may close)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        datasync(fd, path)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the names in C{path} durable (creations, renames, deletions); a failure is reported
    to the fail-stop handler (L{sync_failure}), then raised."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        sync_failure.report(path, e)
        raise
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of C{data} to C{fd}, however many calls a short write (a nearly full disk) takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomically(path: str, data: bytes) -> None:
    """Replace C{path} with C{data} so that a crash leaves the old or the new file, whole.

    A failed write or rename raises without telling the fail-stop handler: C{path} is then
    as it was.  Whoever keeps a log's state in C{path} reports it (the recovery checkpoint:
    L{streamlog.storage.durability}); a failed sync is reported here, as always.
    """
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        datasync(fd, tmp)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


@attrs.frozen
class LogStart:
    """Where a log starts after retention or a snapshot: what it remembers of what went before.

    C{index} is the first Raft index held (or to be held); C{term} and
    C{config} are those of entry C{index - 1} (term 0 and no configuration
    for a log that never lost an entry); C{offset} is the first record offset
    held; C{producer_state} is the snapshot's producer state (opaque here).
    """

    index: int = 1
    term: int = 0
    offset: int = 0
    config: Members | None = None
    producer_state: bytes = b""

    @property
    def is_default(self) -> bool:
        return self == LogStart()


@attrs.frozen
class Checkpoint:
    """The end of the synced, validated prefix of a log, and what a clean start needs to know.

    Everything before byte C{position} of segment C{segment} (its first Raft
    index; its first record offset is C{segment_offset}), and every earlier
    segment, was fsynced and validated, and so were the index entries that
    point into them; the frame at C{position} would have Raft index
    C{next_index} and record offset C{next_offset}, after an entry of term
    C{last_term}.  C{segments} holds C{(first index, first offset, size)} of
    every earlier segment, oldest first.  C{terms} lists C{(first index, term)}
    of each run of one term among the entries before C{next_index}, and
    C{configs} the configuration entries among them.
    """

    segment: int
    segment_offset: int
    position: int
    next_index: int
    next_offset: int
    last_term: int
    max_timestamp: int | None
    start: LogStart = LogStart()
    segments: tuple[tuple[int, int, int], ...] = ()
    terms: tuple[tuple[int, int], ...] = ()
    configs: tuple[tuple[int, Members], ...] = ()

    def encode(self) -> bytes:
        body = {
            "version": CHECKPOINT_VERSION,
            "segment": self.segment,
            "segment_offset": self.segment_offset,
            "position": self.position,
            "next_index": self.next_index,
            "next_offset": self.next_offset,
            "last_term": self.last_term,
            "max_timestamp": self.max_timestamp,
            "start": {
                "index": self.start.index,
                "term": self.start.term,
                "offset": self.start.offset,
                "config": list(self.start.config) if self.start.config is not None else None,
                "producer_state": self.start.producer_state.hex(),
            },
            "segments": [list(s) for s in self.segments],
            "terms": [list(t) for t in self.terms],
            "configs": [[i, list(m)] for i, m in self.configs],
        }
        return orjson.dumps({**body, "crc": crc32c(orjson.dumps(body))})

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        """Parse and check a checkpoint; raise C{ValueError} (or C{KeyError}, C{TypeError}) if it is damaged."""
        d = orjson.loads(data)
        if not isinstance(d, dict):
            raise ValueError("a checkpoint is a JSON object")
        version = d.get("version")
        if version in (1, 2):
            raise ValueError(f"a checkpoint of storage format 1 (version {version}) in a format-2 log")
        if version != CHECKPOINT_VERSION:
            raise ValueError(f"unknown checkpoint version {version!r}")
        crc = d.pop("crc", None)
        if crc != crc32c(orjson.dumps(d)):
            raise ValueError("checksum mismatch")
        s = d["start"]
        start = LogStart(_int(s["index"], 1), _int(s["term"]), _int(s["offset"]), _members(s["config"]),
                         bytes.fromhex(_str(s["producer_state"])))
        timestamp = d["max_timestamp"]
        if timestamp is not None and type(timestamp) is not int:
            raise ValueError(f"max_timestamp must be an integer or null, found {timestamp!r}")
        checkpoint = cls(
            segment=_int(d["segment"], 1),
            segment_offset=_int(d["segment_offset"]),
            position=_int(d["position"]),
            next_index=_int(d["next_index"], 1),
            next_offset=_int(d["next_offset"]),
            last_term=_int(d["last_term"]),
            max_timestamp=timestamp,
            start=start,
            segments=tuple((_int(i, 1), _int(o), _int(n, 1)) for i, o, n in d["segments"]),
            terms=tuple((_int(i, 1), _int(t)) for i, t in d["terms"]),
            configs=tuple((_int(i, 1), _members(m) or ()) for i, m in d["configs"]),
        )
        checkpoint.check()
        return checkpoint

    def check(self) -> None:
        """Raise C{ValueError} unless the fields agree with each other."""
        firsts = [i for i, _, _ in self.segments] + [self.segment]
        offsets = [o for _, o, _ in self.segments] + [self.segment_offset]
        if any(a >= b for a, b in zip(firsts, firsts[1:])) or any(a > b for a, b in zip(offsets, offsets[1:])):
            raise ValueError("the segment list is not in order")
        if (firsts[0], offsets[0]) != (self.start.index, self.start.offset):
            raise ValueError("the log start is not the first segment's")
        if not self.segment <= self.next_index or not self.segment_offset <= self.next_offset:
            raise ValueError("the synced end lies before its segment")
        if (self.position == 0) != (self.next_index == self.segment):
            raise ValueError("the synced end and its segment disagree")
        runs = [i for i, _ in self.terms]
        terms = [t for _, t in self.terms]
        if any(a >= b for a, b in zip(runs, runs[1:])) or any(a >= b for a, b in zip(terms, terms[1:])):
            raise ValueError("the term list is not in order")
        if bool(runs) != (self.next_index > self.start.index) or (runs and runs[0] != self.start.index):
            raise ValueError("the term list does not start with the log")
        if runs and (runs[0] < self.start.index or runs[-1] >= self.next_index or terms[0] < self.start.term):
            raise ValueError("the term list lies outside the log")
        if self.last_term != (terms[-1] if terms else self.start.term):
            raise ValueError("the last term is not the term list's")
        configs = [i for i, _ in self.configs]
        if any(a >= b for a, b in zip(configs, configs[1:])) or any(not self.start.index <= i < self.next_index for i in configs):
            raise ValueError("the configuration list is not in order or lies outside the log")

    def covers(self, segment: int, position: int) -> bool:
        """Whether this checkpoint reaches at least (C{segment}, C{position})."""
        return (self.segment, self.position) >= (segment, position)


@attrs.frozen
class Format1Checkpoint:
    """A checkpoint of storage format 1 (versions 1 and 2), as the upgrade reads it.

    Segments were named by base offset; C{segments} is C{(base offset, size)}
    of each earlier segment, or C{None} in version 1.
    """

    segment: int
    position: int
    next_offset: int
    segments: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def decode(cls, data: bytes) -> Format1Checkpoint:
        d = orjson.loads(data)
        if not isinstance(d, dict):
            raise ValueError("a checkpoint is a JSON object")
        version = d.get("version")
        if version == 1:
            return cls(_int(d["segment"]), _int(d["position"]), _int(d["next_offset"]))
        if version != 2:
            raise ValueError(f"not a format-1 checkpoint (version {version!r})")
        crc = d.pop("crc", None)
        if crc != crc32c(orjson.dumps(d)):
            raise ValueError("checksum mismatch")
        chain = tuple((_int(b), _int(s, 1)) for b, s in d["segments"])
        bases = [b for b, _ in chain] + [_int(d["segment"])]
        if any(a >= b for a, b in zip(bases, bases[1:])):
            raise ValueError("the segment list is not increasing")
        return cls(_int(d["segment"]), _int(d["position"]), _int(d["next_offset"]), chain)


def _int(value: object, least: int = 0) -> int:
    if type(value) is not int or value < least:
        raise ValueError(f"expected an integer >= {least}, found {value!r}")
    return value


def _str(value: object) -> str:
    if type(value) is not str:
        raise ValueError(f"expected a string, found {value!r}")
    return value


def _members(value: Any) -> Members | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(type(m) is str for m in value):
        raise ValueError(f"a configuration is a list of member ids, found {value!r}")
    return tuple(value)

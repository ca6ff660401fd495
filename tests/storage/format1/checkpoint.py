"""The recovery checkpoint and the crash-safe file helpers it is written with.

A checkpoint records the end of a log's synced, validated prefix (see
L{streamlog.storage.log} and docs/storage.md); recovery reads only what lies
after it.  It is small JSON, replaced atomically: write a temporary file,
fsync it, rename it over the old one, fsync the directory.

Version 2 also lists the segments before the checkpoint's one, each with its
base offset and size: the chain of segments the checkpoint vouches for.
Start-up compares that list with the files it finds (names and sizes, no
data read), so a missing, emptied or shortened closed segment makes the
partition fail loudly instead of being read through as a silent hole.  It
ends with a CRC32C of the rest, so damage that still parses is detected too.
Version 1 (no list, no CRC) is still read; the next checkpoint replaces it.
"""

from __future__ import annotations

import os

import attrs
import orjson

from format1.codec import crc32c

CHECKPOINT_FILE = "recovery-checkpoint"
CHECKPOINT_VERSION = 2


@attrs.frozen
class Checkpoint:
    """The end of the synced, validated prefix of a log.

    Everything before byte C{position} of segment C{segment} (whose base offset
    it is), and every earlier segment, was fsynced and validated;
    C{next_offset} is the offset of the frame at C{position}.  C{max_timestamp}
    is informational (recovery recomputes it).  C{segments} holds
    C{(base offset, size)} of every segment before C{segment}, oldest first, or
    C{None} for a version-1 checkpoint (which did not record them).
    """

    segment: int
    position: int
    next_offset: int
    max_timestamp: int | None
    segments: tuple[tuple[int, int], ...] | None = None

    def encode(self) -> bytes:
        body = {
            "version": CHECKPOINT_VERSION,
            "segment": self.segment,
            "position": self.position,
            "next_offset": self.next_offset,
            "max_timestamp": self.max_timestamp,
            "segments": [list(s) for s in self.segments or ()],
        }
        return orjson.dumps({**body, "crc": crc32c(orjson.dumps(body))})

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        """Parse a checkpoint; raise C{ValueError} (or C{KeyError}, C{TypeError}) if it is damaged."""
        d = orjson.loads(data)
        if not isinstance(d, dict):
            raise ValueError("a checkpoint is a JSON object")
        version = d.get("version")
        if version == 1:
            return cls(int(d["segment"]), int(d["position"]), int(d["next_offset"]), d["max_timestamp"])
        if version != CHECKPOINT_VERSION:
            raise ValueError(f"unknown checkpoint version {version!r}")
        crc = d.pop("crc", None)
        if crc != crc32c(orjson.dumps(d)):
            raise ValueError("checksum mismatch")
        segment = _int(d["segment"])
        chain = tuple((_int(b), _int(s)) for b, s in d["segments"])
        bases = [b for b, _ in chain] + [segment]
        if any(a >= b for a, b in zip(bases, bases[1:])) or any(s <= 0 for _, s in chain):
            raise ValueError("the segment list is not increasing or holds an empty segment")
        timestamp = d["max_timestamp"]
        if timestamp is not None and type(timestamp) is not int:
            raise ValueError(f"max_timestamp must be an integer or null, found {timestamp!r}")
        return cls(segment, _int(d["position"]), _int(d["next_offset"]), timestamp, chain)

    def covers(self, segment: int, position: int) -> bool:
        """Whether this checkpoint reaches at least (C{segment}, C{position})."""
        return (self.segment, self.position) >= (segment, position)


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected a non-negative integer, found {value!r}")
    return value


def fsync_dir(path: str) -> None:
    """Make the names in C{path} durable (creations, renames, deletions)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    """Replace C{path} with C{data} so that a crash leaves the old or the new file, whole."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")

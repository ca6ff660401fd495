"""The recovery checkpoint and the crash-safe file helpers it is written with.

A checkpoint records the end of a log's synced, validated prefix (see
L{streamlog.storage.log} and docs/storage.md); recovery reads only what lies
after it.  It is small JSON, replaced atomically: write a temporary file,
fsync it, rename it over the old one, fsync the directory.
"""

from __future__ import annotations

import os

import attrs
import orjson

CHECKPOINT_FILE = "recovery-checkpoint"
CHECKPOINT_VERSION = 1


@attrs.frozen
class Checkpoint:
    """The end of the synced, validated prefix of a log.

    Everything before byte C{position} of segment C{segment} (whose base offset
    it is), and every earlier segment, was fsynced and validated;
    C{next_offset} is the offset of the frame at C{position}.  C{max_timestamp}
    is informational (recovery recomputes it).
    """

    segment: int
    position: int
    next_offset: int
    max_timestamp: int | None

    def encode(self) -> bytes:
        return orjson.dumps({"version": CHECKPOINT_VERSION, **attrs.asdict(self)})

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        d = orjson.loads(data)
        if not isinstance(d, dict):
            raise ValueError("a checkpoint is a JSON object")
        if d.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"unknown checkpoint version {d.get('version')!r}")
        return cls(int(d["segment"]), int(d["position"]), int(d["next_offset"]), d["max_timestamp"])

    def covers(self, segment: int, position: int) -> bool:
        """Whether this checkpoint reaches at least (C{segment}, C{position})."""
        return (self.segment, self.position) >= (segment, position)


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

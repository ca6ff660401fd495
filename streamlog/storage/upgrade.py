"""Upgrading a topic of storage format 1 (the release before Raft indexes) to format 2, in place.

Format 1 named segments by record offset and framed batches without a Raft
index or a type; format 2 keys everything by Raft index (docs/storage.md).
A topic whose C{topic.json} says version 1 is upgraded at the first start of
this release, one partition at a time, each step crash-safe:

  1. The partition's format-1 data is read and validated as format-1 recovery
     would (the checkpoint's chain, CRCs, dense offsets; a torn tail after
     the checkpoint is cut) and written, batch by batch, as a new format-2
     log in C{<topic>/.v2-<p>}: the first batch becomes Raft index 1, records
     keep their offsets and bytes, terms are kept (raised where they went
     down: Raft terms never do).  The new log is synced and checkpointed.
  2. C{<p>} is renamed to C{.v1-<p>}, then C{.v2-<p>} to C{<p>} (the topic
     directory synced after each).
  3. Once every partition is done, C{topic.json} is rewritten with version 2
     (the marker, written last), then the C{.v1-*} directories are removed.

A crash anywhere is finished at the next start: a C{.v2-<p>} without a
C{.v1-<p>} is an unfinished step 1 (removed, redone); a C{.v1-<p>} with a
C{.v2-<p>} and no C{<p>} is step 2 half done (the second rename is made);
a C{.v1-<p>} next to C{<p>} is done.  With C{topic.json} at version 2, any
C{.v1-*} or C{.v2-*} left is removed.

A partition whose format-1 data is damaged where it was synced (a segment the
checkpoint lists missing or short, a bad frame before the checkpoint) is
left exactly as it is, and fails when it is opened (C{PARTITION_UNAVAILABLE}):
the upgrade neither drops nor invents records.  The upgrade needs free space
for one more copy of the largest partition (each old copy is removed only at
the end, once the topic is marked upgraded): see docs/storage.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

from twisted.logger import Logger

from streamlog.raft.log import Entry
from streamlog.storage import codec
from streamlog.storage.base import RecordBatch, TopicConfig
from streamlog.storage.checkpoint import CHECKPOINT_FILE, Format1Checkpoint, fsync_dir
from streamlog.storage.errors import StorageError

OLD_PREFIX = ".v1-"
NEW_PREFIX = ".v2-"
_CHUNK = 8 * 1024 * 1024

_log = Logger()


class Format1Damaged(StorageError):
    """Format-1 data damaged where it was synced: the partition is not converted."""


def leftovers(topic_dir: str) -> list[str]:
    """The upgrade's own directories in a topic directory (C{.v1-<p>}, C{.v2-<p>})."""
    return sorted(n for n in os.listdir(topic_dir) if n.startswith((OLD_PREFIX, NEW_PREFIX)))


def finish(topic_dir: str) -> None:
    """Remove what an upgrade left behind once C{topic.json} says version 2."""
    names = leftovers(topic_dir)
    for name in names:
        _log.info("removing {path}, left by the upgrade to storage format 2", path=os.path.join(topic_dir, name))
        shutil.rmtree(os.path.join(topic_dir, name))
    if names:
        fsync_dir(topic_dir)


def upgrade_partitions(topic_dir: str, partitions: int, make_log: Any) -> None:
    """Steps 1 and 2 for every partition of a format-1 topic (see the module docstring).

    C{make_log(directory, start_offset)} opens a new format-2 log.  The
    caller writes C{topic.json} at version 2 and calls L{finish} after.
    """
    for p in range(partitions):
        part = os.path.join(topic_dir, str(p))
        old = os.path.join(topic_dir, f"{OLD_PREFIX}{p}")
        new = os.path.join(topic_dir, f"{NEW_PREFIX}{p}")
        if os.path.exists(old):
            if os.path.exists(part):
                continue  # done
            if os.path.exists(new):
                os.rename(new, part)  # step 2, second half
                fsync_dir(topic_dir)
                continue
            os.rename(old, part)  # cannot happen through the steps; undo and redo
            fsync_dir(topic_dir)
        if os.path.exists(new):
            _log.info("removing {path}: an unfinished upgrade to storage format 2, redone now", path=new)
            shutil.rmtree(new)
            fsync_dir(topic_dir)
        if not os.path.isdir(part):
            continue  # missing: opening it fails the partition, as in format 1
        try:
            count = convert(part, new, make_log)
        except Format1Damaged as e:
            _log.error(
                "cannot upgrade {path} to storage format 2: {error}; it is left as it is, and the partition is unavailable",
                path=part, error=e,
            )
            if os.path.exists(new):
                shutil.rmtree(new)
            continue
        os.rename(part, old)
        fsync_dir(topic_dir)
        os.rename(new, part)
        fsync_dir(topic_dir)
        _log.info("upgraded {path} to storage format 2 ({count} batches)", path=part, count=count)


def convert(source: str, dest: str, make_log: Any) -> int:
    """Write the format-1 log in C{source} as a new format-2 log in C{dest}; return the batches copied."""
    start, batches = read_format1(source)
    log = make_log(dest, start)
    count = 0
    try:
        term = 0
        for batch in batches:
            term = max(term, batch.term)
            # A batch of no records (format 1 could hold one, never written by the broker) is a no-op.
            log.append([Entry(log.last_index + 1, term, batch if batch.count else b"")])
            count += 1
        if not count and start:
            # Retention had removed every record: only the checkpoint would know where the
            # log starts, and recovery without it starts an empty log at offset 0 (reusing
            # offsets consumers have read).  A no-op at the start offset records it in a frame.
            log.append([Entry(1, 0, b"")])
        log.close()  # syncs and checkpoints
    except ValueError as e:  # format-1 data the format-2 log cannot take as it is
        log._release()
        raise Format1Damaged(f"{source}: {e}") from None
    except BaseException:
        log._release()
        raise
    fsync_dir(os.path.dirname(dest))
    return count


def read_format1(directory: str) -> tuple[int, Iterator[RecordBatch]]:
    """(start offset, batches) of a format-1 partition directory, validated as format-1 recovery did.

    The batches are read lazily; damage where data was synced raises
    L{Format1Damaged} when reached.
    """
    names = os.listdir(directory)
    bases = sorted(int(n[:-4]) for n in names if n.endswith(".log") and len(n) == 24 and n[:-4].isdigit())
    path = os.path.join(directory, CHECKPOINT_FILE)
    checkpoint: Format1Checkpoint | None = None
    try:
        with open(path, "rb") as f:
            checkpoint = Format1Checkpoint.decode(f.read())
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as e:
        raise Format1Damaged(f"{path}: unreadable checkpoint ({e})") from None
    if not bases:
        raise Format1Damaged(f"{directory}: no segment file")
    sizes: dict[int, int] = {}
    if checkpoint is not None:
        if checkpoint.segment not in bases:
            raise Format1Damaged(f"{directory}: segment {checkpoint.segment} missing: the checkpoint is in it")
        if checkpoint.segments is not None:
            found = set(bases)
            for base, size in checkpoint.segments:
                if base not in found:
                    raise Format1Damaged(f"{directory}: segment {base} missing: the checkpoint lists it")
                sizes[base] = size
            vouched = [b for b, _ in checkpoint.segments] + [checkpoint.segment]
            bases = [b for b in bases if b in set(vouched) or b > checkpoint.segment]
    return bases[0], _batches(directory, bases, sizes, checkpoint)


def _batches(directory: str, bases: list[int], sizes: dict[int, int], checkpoint: Format1Checkpoint | None) -> Iterator[RecordBatch]:
    expected = bases[0]
    for base in bases:
        log_path = os.path.join(directory, f"{base:020d}.log")
        if base != expected:
            _log.warn("upgrade: {path} does not continue at offset {expected}: it and what follows are an unsynced tail, cut",
                      path=log_path, expected=expected)
            return
        file_size = os.path.getsize(log_path)
        limit = sizes.get(base, file_size)
        if file_size < limit:
            raise Format1Damaged(f"{log_path}: {file_size} bytes, {limit} were synced")
        synced = limit if base in sizes else 0
        if checkpoint is not None and base == checkpoint.segment:
            synced = checkpoint.position
            if file_size < synced:
                raise Format1Damaged(f"{log_path}: {file_size} bytes, {synced} were synced")
        elif checkpoint is not None and base < checkpoint.segment:
            synced = limit
        with open(log_path, "rb") as f:
            position = 0
            buffer = b""
            while position < limit:
                chunk = f.read(min(_CHUNK, limit - position - len(buffer)))
                buffer += chunk
                result = codec.scan(buffer, 0, expected, allow_v1=True)
                for frame in result.frames:
                    h = frame.header
                    if h.version != codec.FORMAT_V1:
                        raise Format1Damaged(f"{log_path} at byte {position + frame.position}: not a format-1 frame")
                    start = frame.position + h.header_size
                    yield codec.batch_from(h, buffer[start : start + h.payload_length])
                    expected = h.next_offset
                position += result.valid_end
                buffer = buffer[result.valid_end :]
                at_end = not chunk or position + len(buffer) >= limit
                if result.stop is codec.Stop.END or (result.stop is codec.Stop.TORN and not at_end):
                    continue
                if position < synced:
                    raise Format1Damaged(f"{log_path} at byte {position}: {result.stop.value} ({result.reason}) in synced data")
                _log.warn("upgrade: cut the unsynced tail of {path} at byte {position} ({stop}: {reason})",
                          path=log_path, position=position, stop=result.stop.value, reason=result.reason)
                return
        if position < synced:
            raise Format1Damaged(f"{log_path}: the data ends at byte {position}, {synced} were synced")


def make_log_factory(config: TopicConfig, defaults: TopicConfig | None, options: dict[str, Any]) -> Any:
    """What L{upgrade_partitions} opens new logs with: the storage's own settings."""
    from streamlog.storage.log import SegmentedLog

    def make(directory: str, start_offset: int) -> SegmentedLog:
        return SegmentedLog(directory, config, defaults, start_offset=start_offset, **options)

    return make

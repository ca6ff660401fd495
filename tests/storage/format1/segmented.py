"""L{SegmentedStorage}: every topic's partition logs under one data directory.

Layout::

    <data_dir>/<topic>/topic.json          {"version": 1, "partitions": N, "config": {...}}
    <data_dir>/<topic>/<partition>/        one SegmentedLog each (see streamlog.storage.log)

C{topic.json} is written last when a topic is created (tmp, fsync, rename,
fsync dir), so a topic directory without it is a creation that crashed
half-way and is removed at load.  Deleting renames the topic directory to a
hidden C{.deleted-<32 hex>} name first (one atomic, fsynced step), then removes
it; a crash in between leaves only the hidden directory, which load removes, so
a half-deleted topic never comes back.  That name does not contain the topic's
(a 249-character name plus a prefix and a suffix would pass the file system's
255-byte limit on one name).

File names: the topic's directory is the only name made from user input; every
other name the storage makes is at most L{LONGEST_FIXED_NAME} bytes
(C{.deleted-<32 hex>}; C{00000000000000000000.timeindex.tmp} is 34).  The
storage reads the file system's limits on a name and on a path at start and
refuses (L{InvalidTopicName}) a topic name whose files would pass either, so a
name can never produce a file name the file system refuses.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Sequence

import orjson
from twisted.logger import Logger

from format1.base import TopicConfig
from format1.checkpoint import fsync_dir, write_atomically
from format1.codec import crc32c
from format1.descriptors import DEFAULT_READ_FILES, ReadFiles
from format1.errors import CannotLoad, InvalidTopicName, OutOfDescriptors, StorageError, StorageFailed
from format1.log import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CHECKPOINT_INTERVAL_BYTES,
    DEFAULT_INDEX_INTERVAL_BYTES,
    SegmentedLog,
)

TOPIC_FILE = "topic.json"
TOPIC_FILE_VERSION = 1
_DELETED_PREFIX = ".deleted-"
_SEGMENT_FILE = re.compile(r"[0-9]{20}\.(log|index|timeindex)")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,248}")
MAX_TOPIC_NAME = 249
#: The longest file name the storage makes that is not a topic's directory (C{.deleted-<32 hex>}).
LONGEST_FIXED_NAME = len(_DELETED_PREFIX) + 32
#: The longest path below a topic's directory: C{/<partition>/00000000000000000000.timeindex.tmp},
#: with room for a ten-digit partition number.
_LONGEST_BELOW_TOPIC = len("/") + 10 + len("/") + len("00000000000000000000.timeindex.tmp")


def check_topic_name(name: str, max_length: int = MAX_TOPIC_NAME) -> None:
    """Refuse names that are not safe as one directory name (no path tricks, no hidden names)."""
    if not _TOPIC_NAME.fullmatch(name):
        raise InvalidTopicName(f"invalid topic name {name!r}: use 1-249 of A-Z a-z 0-9 . _ -, not starting with '.'")
    if len(name) > max_length:
        raise InvalidTopicName(
            f"invalid topic name {name[:40]!r}...: {len(name)} characters, but the file system of this "
            f"data directory allows at most {max_length}"
        )


def longest_topic_name(data_dir: str) -> int:
    """The longest topic name whose every file fits the limits of C{data_dir}'s file system.

    Raises L{CannotLoad} if not even a one-character name fits (a data
    directory path too long for the system, or a file system with tiny names).
    """
    name_max = _pathconf(data_dir, "PC_NAME_MAX", 255)
    path_max = _pathconf(data_dir, "PC_PATH_MAX", 4096)
    # A path must be shorter than PATH_MAX, its terminating NUL included.
    room = path_max - 1 - len(os.fsencode(data_dir)) - len("/") - _LONGEST_BELOW_TOPIC
    longest = min(MAX_TOPIC_NAME, name_max, room)
    if longest < 1 or name_max < LONGEST_FIXED_NAME:
        raise CannotLoad(
            f"{data_dir}: the file system allows names of {name_max} bytes and paths of {path_max}: "
            "too little for the storage's files; use a shorter data directory path or another file system"
        )
    return longest


def _pathconf(path: str, name: str, default: int) -> int:
    try:
        value = os.pathconf(path, name)
    except (OSError, ValueError):
        return default
    return default if value is None or value < 0 else value


class SegmentedStorage:
    """A durable L{streamlog.storage.base.Storage}.

    @param data_dir: the directory holding every topic (created if missing).
    @param defaults: server-wide settings; a topic's C{None} fields fall back to them.
    @param index_interval_bytes, cache_bytes, checkpoint_interval_bytes: passed
        to every L{SegmentedLog}.
    @param read_files: how many segment files all the logs together keep open
        for reading (L{ReadFiles}; C{--read-file-cache}).
    """

    _log = Logger()

    def __init__(
        self,
        data_dir: str,
        defaults: TopicConfig | None = None,
        index_interval_bytes: int = DEFAULT_INDEX_INTERVAL_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        checkpoint_interval_bytes: int = DEFAULT_CHECKPOINT_INTERVAL_BYTES,
        read_files: int = DEFAULT_READ_FILES,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.defaults = defaults or TopicConfig()
        self.read_files = ReadFiles(read_files)
        self._log_options = dict(
            index_interval_bytes=index_interval_bytes,
            cache_bytes=cache_bytes,
            checkpoint_interval_bytes=checkpoint_interval_bytes,
            read_files=self.read_files,
        )
        self._topics: dict[str, tuple[TopicConfig, list[SegmentedLog]]] = {}
        os.makedirs(self.data_dir, exist_ok=True)
        #: The longest topic name this data directory can hold (249 on usual file systems).
        self.max_topic_name = longest_topic_name(self.data_dir)

    def _open_log(self, topic: str, partition: int, config: TopicConfig, existing: bool = False) -> SegmentedLog:
        path = os.path.join(self.data_dir, topic, str(partition))
        return SegmentedLog(path, config, self.defaults, existing=existing, **self._log_options)  # type: ignore[arg-type]

    def load(self) -> dict[str, tuple[TopicConfig, Sequence[SegmentedLog]]]:
        """Open and recover every topic.

        A log that found damaged synced data is returned failed
        (L{SegmentedLog.failed}) rather than stopping the others.  Damage that
        would make the storage lose or invent a whole topic (its C{topic.json}
        unreadable, or missing while its partitions hold data) raises
        L{CannotLoad}: the server refuses to start, with one line saying what
        to do.  What is not a topic is left alone.
        """
        for name in sorted(os.listdir(self.data_dir)):
            path = os.path.join(self.data_dir, name)
            if not os.path.isdir(path):
                continue
            if name.startswith(_DELETED_PREFIX):
                self._log.info("finishing the interrupted deletion of {path}", path=path)
                shutil.rmtree(path)
                fsync_dir(self.data_dir)
                continue
            if name.startswith(".") or name in self._topics:
                continue
            if not _TOPIC_NAME.fullmatch(name):
                self._log.warn("ignoring {path}: not a topic (not a valid topic name)", path=path)
                continue
            topic_file = os.path.join(path, TOPIC_FILE)
            if not os.path.exists(topic_file):
                if not _unfinished_creation(path):
                    raise CannotLoad(
                        f"{topic_file} is missing, but {path} holds data: restore the file "
                        f'({{"version": 1, "partitions": N, "config": {{}}}}) or move the directory out of the data directory'
                    )
                self._log.warn("removing {path}: its creation did not finish (no {file})", path=path, file=TOPIC_FILE)
                shutil.rmtree(path)
                fsync_dir(self.data_dir)
                continue
            partitions, config = _read_topic_file(topic_file)
            for entry in sorted(os.listdir(path)):
                if entry == TOPIC_FILE + ".tmp":
                    os.unlink(os.path.join(path, entry))  # an interrupted rewrite
                elif entry != TOPIC_FILE and not (entry.isdigit() and int(entry) < partitions and entry == str(int(entry))):
                    self._log.warn(
                        "ignoring {path}: not one of the {partitions} partitions of topic {topic}",
                        path=os.path.join(path, entry), partitions=partitions, topic=name,
                    )
            try:
                logs: list[SegmentedLog] = []
                for p in range(partitions):
                    logs.append(self._open_log(name, p, config, existing=True))
            except OSError as e:
                for log in logs:
                    log.close(sync=False)
                raise CannotLoad(f"cannot open topic {name!r} in {path}: {e}{_descriptor_hint(e)}") from e
            self._topics[name] = (config, logs)
        return {name: (config, list(logs)) for name, (config, logs) in self._topics.items()}

    def create_topic(self, name: str, partitions: int, config: TopicConfig) -> list[SegmentedLog]:
        """Create a topic's logs and its C{topic.json}, or nothing.

        Raises L{InvalidTopicName} (before touching anything) for a name the
        data directory cannot hold.  If a file operation fails, every log it
        opened is closed again first; then running out of descriptors raises
        L{OutOfDescriptors} (the half-made directory is removed: nothing
        changed), and any other error L{StorageFailed} (a disk fault: the
        caller stops the node).
        """
        check_topic_name(name, self.max_topic_name)
        if partitions < 1:
            raise ValueError(f"a topic needs at least one partition, not {partitions}")
        if name in self._topics:
            raise ValueError(f"topic {name!r} exists")
        path = os.path.join(self.data_dir, name)
        if os.path.exists(os.path.join(path, TOPIC_FILE)):
            raise ValueError(f"topic {name!r} exists on disk (call load() first)")
        logs: list[SegmentedLog] = []
        try:
            if os.path.exists(path):
                shutil.rmtree(path)  # an unfinished creation (no topic.json)
            os.makedirs(path)
            for p in range(partitions):
                logs.append(self._open_log(name, p, config))
            fsync_dir(path)
            write_atomically(os.path.join(path, TOPIC_FILE), encode_topic_file(partitions, config))
            fsync_dir(self.data_dir)
        except OSError as e:
            for log in logs:
                log.close(sync=False)
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self._remove_unfinished(path)
                raise OutOfDescriptors(f"creating topic {name!r} with {partitions} partitions ran out of file descriptors: {e}") from e
            raise StorageFailed(f"creating topic {name!r} failed: {e}") from e
        except BaseException:
            for log in logs:
                log.close(sync=False)
            raise
        self._topics[name] = (config, logs)
        return list(logs)

    def _remove_unfinished(self, path: str) -> None:
        """Remove what a creation that gave up had made (no C{topic.json}: load would remove it too)."""
        try:
            if os.path.exists(path):
                shutil.rmtree(path)
            fsync_dir(self.data_dir)
        except OSError as e:
            self._log.warn("could not remove the unfinished topic directory {path} ({error}); the next start removes it",
                           path=path, error=e)

    def delete_topic(self, name: str) -> None:
        entry = self._topics.pop(name, None)
        if entry is None:
            return
        for log in entry[1]:
            log.close(sync=False)  # its data is about to go: fsyncing it would only cost time
        path = os.path.join(self.data_dir, name)
        doomed = os.path.join(self.data_dir, f"{_DELETED_PREFIX}{uuid.uuid4().hex}")
        self._log.info("deleting topic {topic} (its directory is renamed to {doomed}, then removed)", topic=name, doomed=doomed)
        os.rename(path, doomed)
        fsync_dir(self.data_dir)
        shutil.rmtree(doomed)
        fsync_dir(self.data_dir)

    def logs(self) -> list[SegmentedLog]:
        return [log for _, logs in self._topics.values() for log in logs]

    def checkpoint(self) -> None:
        """Sync and checkpoint every healthy log (blocking: call it from a worker thread).

        Call it every minute or so whatever the fsync policy: it bounds how much
        recovery reads after a crash and lets retention delete (retention only
        deletes segments behind a checkpoint).
        """
        for log in self.logs():
            if log.failed is None and not log.closed:
                try:
                    log.checkpoint()
                except StorageError:
                    if not log.closed:  # closed meanwhile by delete_topic: nothing to do
                        raise

    def close(self) -> None:
        for log in self.logs():
            log.close()
        self._topics = {}


def encode_topic_file(partitions: int, config: TopicConfig) -> bytes:
    """C{topic.json}: the partition count and settings, with a CRC32C of them (damage that parses is caught)."""
    body = {"version": TOPIC_FILE_VERSION, "partitions": partitions, "config": config.to_dict()}
    return orjson.dumps({**body, "crc": crc32c(orjson.dumps(body))})


def _read_topic_file(path: str) -> tuple[int, TopicConfig]:
    """Parse C{topic.json}; raise L{CannotLoad} with what to do if it is damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        meta = orjson.loads(data)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        if meta.get("version") != TOPIC_FILE_VERSION:
            raise ValueError(f"unknown version {meta.get('version')!r}")
        if "crc" in meta:  # files written before the CRC was added have none
            crc = meta.pop("crc")
            if crc != crc32c(orjson.dumps(meta)):
                raise ValueError("checksum mismatch")
        partitions = meta["partitions"]
        if type(partitions) is not int or partitions < 1:
            raise ValueError(f"partitions must be a positive integer, not {partitions!r}")
        settings = meta["config"]
        if not isinstance(settings, dict) or not all(v is None or type(v) is int for v in settings.values()):
            raise ValueError("config must be an object of integers or nulls")
        config = TopicConfig(**settings)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CannotLoad(
            f"{path} is unreadable ({e}): restore it "
            f'({{"version": 1, "partitions": N, "config": {{}}}}) or move its topic out of the data directory'
        ) from None
    return partitions, config


def _unfinished_creation(path: str) -> bool:
    """Whether a topic directory without C{topic.json} holds only what a crashed creation leaves.

    A creation writes C{topic.json} last, and nothing is appended before it
    exists: so only empty segment files, temporaries and partition
    directories.  Anything else is data whose topic file was lost; it is
    never removed.
    """
    for entry in os.scandir(path):
        if entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
            continue
        if not (entry.name.isdigit() and entry.is_dir(follow_symlinks=False)):
            return False
        for inner in os.scandir(entry.path):
            if inner.name.endswith(".tmp"):
                continue
            if not (_SEGMENT_FILE.fullmatch(inner.name) and inner.is_file(follow_symlinks=False) and inner.stat().st_size == 0):
                return False
    return True


def _descriptor_hint(error: OSError) -> str:
    if error.errno in (errno.EMFILE, errno.ENFILE):
        return "; raise the open-file limit (ulimit -n, LimitNOFILE=) to open every partition"
    return ""

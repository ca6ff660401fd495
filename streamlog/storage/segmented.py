"""L{SegmentedStorage}: every topic's partition logs under one data directory.

Layout::

    <data_dir>/hardstate                   every Raft group's term and vote (streamlog.storage.hardstate)
    <data_dir>/<topic>/topic.json          {"version": 2, "partitions": N, "config": {...}, "crc": C}
    <data_dir>/<topic>/<partition>/        one SegmentedLog each (see streamlog.storage.log)

A topic whose C{topic.json} says version 1 holds storage format 1 (the
release before Raft indexes); L{SegmentedStorage.load} upgrades it in place
first (L{streamlog.storage.upgrade}), crash-safely, C{topic.json} at version
2 being the marker written last.

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
(C{.deleted-<32 hex>}; C{00000000000000000000.timeindex.tmp} is 34, the
upgrade's C{.v1-<partition>} at most 14).  The
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
from concurrent.futures import ThreadPoolExecutor

import orjson
from twisted.logger import Logger

from streamlog.storage import producer_snapshots, sync_failure, upgrade
from streamlog.storage.base import TopicConfig
from streamlog.storage.checkpoint import fsync_dir, write_atomically
from streamlog.storage.codec import crc32c
from streamlog.storage.descriptors import DEFAULT_READ_FILES, RETIRED_SEGMENTS, ReadFiles, RetiredFiles
from streamlog.storage.errors import (
    CannotLoad,
    InvalidTopicName,
    NameTaken,
    OutOfDescriptors,
    StorageError,
    StorageFailed,
)
from streamlog.storage.hardstate import HARD_STATE_FILE, HardStateStore
from streamlog.storage.local import LocalLog
from streamlog.storage.log import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CHECKPOINT_INTERVAL_BYTES,
    DEFAULT_INDEX_INTERVAL_BYTES,
    SegmentedLog,
)
from streamlog.storage.snapshot_files import DirectorySnapshots

TOPIC_FILE = "topic.json"
TOPIC_FILE_VERSION = 2
#: Versions of topic.json this release reads (1: storage format 1, upgraded at load).
TOPIC_FILE_VERSIONS = (1, 2)
_DELETED_PREFIX = ".deleted-"
#: Threads that sync recovered logs at start-up by default (the node passes C{--sync-workers}).
DEFAULT_RECOVERY_WORKERS = 4
_SEGMENT_FILE = re.compile(r"[0-9]{20}\.(log|index|timeindex)")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,248}")
MAX_TOPIC_NAME = 249
#: Names in the data directory the storage keeps for its own files: no topic can have them.
RESERVED_NAMES = frozenset({HARD_STATE_FILE, HARD_STATE_FILE + ".tmp"})
#: The longest file name the storage makes that is not a topic's directory (C{.deleted-<32 hex>}).
LONGEST_FIXED_NAME = len(_DELETED_PREFIX) + 32
#: The longest path below a topic's directory, with room for a ten-digit partition number: the
#: longer of C{/.v1-<partition>/00000000000000000000.timeindex.tmp} (a directory of the format
#: upgrade) and C{/<partition>/00000000000000000000.producer-state.tmp} (a producer-state snapshot
#: being written; its failure is only logged, so a path too long would go unnoticed).
_LONGEST_BELOW_TOPIC = max(
    len("/") + len(upgrade.OLD_PREFIX) + 10 + len("/") + len("00000000000000000000.timeindex.tmp"),
    len("/") + 10 + len("/") + len(producer_snapshots.file_name(0) + ".tmp"),
)


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
    """A durable L{streamlog.storage.base.Storage}, and the node's hard-state store.

    @param data_dir: the directory holding every topic (created if missing).
    @param defaults: server-wide settings; a topic's C{None} fields fall back to them.
    @param index_interval_bytes, cache_bytes, checkpoint_interval_bytes: passed
        to every L{SegmentedLog}.
    @param read_files: how many segment files all the logs together keep open
        for reading (L{ReadFiles}; C{--read-file-cache}).
    @param retired_segments: how many rolled segments, all the logs together,
        may keep their write descriptors open until their log's next sync
        (L{RetiredFiles}).
    @param hard_state_required: the data directory was used before (the node
        knows it, e.g. from its identity file): a missing hard-state file is
        damage even without any topic.
    @param recovery_workers: how many threads L{load} uses to sync and
        checkpoint the logs whose recovery read back data past their last
        checkpoint (after a crash: a few fsyncs each; C{--sync-workers}).

    L{load} and L{create_topic} return each partition as a L{LocalLog} (what
    today's single-node broker appends to); its C{.log} is the
    L{SegmentedLog}, the partition's Raft log.
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
        retired_segments: int = RETIRED_SEGMENTS,
        hard_state_required: bool = False,
        recovery_workers: int = DEFAULT_RECOVERY_WORKERS,
    ) -> None:
        if recovery_workers < 1:
            raise ValueError(f"recovery_workers must be at least 1, not {recovery_workers}")
        self.recovery_workers = recovery_workers
        self.data_dir = os.path.abspath(data_dir)
        self.defaults = defaults or TopicConfig()
        self.read_files = ReadFiles(read_files)
        self.retired_files = RetiredFiles(retired_segments)
        self._log_options = dict(
            index_interval_bytes=index_interval_bytes,
            cache_bytes=cache_bytes,
            checkpoint_interval_bytes=checkpoint_interval_bytes,
            read_files=self.read_files,
            retired_files=self.retired_files,
        )
        self._hard_state_required = hard_state_required
        self._topics: dict[str, tuple[TopicConfig, list[LocalLog]]] = {}
        #: Every Raft group's term and vote on this node (opened by L{load}).
        self.hard_state: HardStateStore | None = None
        os.makedirs(self.data_dir, exist_ok=True)
        #: The longest topic name this data directory can hold (249 on usual file systems).
        self.max_topic_name = longest_topic_name(self.data_dir)

    def _open_log(self, topic: str, partition: int, config: TopicConfig, existing: bool = False) -> LocalLog:
        path = os.path.join(self.data_dir, topic, str(partition))
        return LocalLog(SegmentedLog(path, config, self.defaults, existing=existing,  # type: ignore[arg-type]
                                     defer_recovery_sync=existing, **self._log_options))

    def load(self) -> dict[str, tuple[TopicConfig, Sequence[LocalLog]]]:
        """Open (upgrading format-1 topics first) and recover every topic, and the hard-state store.

        A log that found damaged synced data is returned failed
        (L{SegmentedLog.failed}) rather than stopping the others.  Damage that
        would make the storage lose or invent a whole topic (its C{topic.json}
        unreadable, or missing while its partitions hold data), or forget a
        Raft vote (the hard-state file damaged or missing) raises
        L{CannotLoad}: the server refuses to start, with one line saying what
        to do.  What is not a topic is left alone.
        """
        try:
            return self._load()
        except BaseException:
            for log in self.logs():
                log.close(sync=False)
            self._topics = {}
            if self.hard_state is not None:
                self.hard_state.close()
                self.hard_state = None
            raise

    def _load(self) -> dict[str, tuple[TopicConfig, Sequence[LocalLog]]]:
        found: list[tuple[str, int, int, TopicConfig]] = []
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
            if name in RESERVED_NAMES:
                raise CannotLoad(
                    f"{path} is a directory, but this name is the node's hard-state file's (every Raft group's term "
                    "and vote): if it is a topic of the release before storage format 2, rename its directory (the "
                    "topic takes the new name), else move it out of the data directory"
                )
            topic_file = os.path.join(path, TOPIC_FILE)
            if not os.path.exists(topic_file):
                if not _unfinished_creation(path):
                    raise CannotLoad(
                        f"{topic_file} is missing, but {path} holds data: restore the file "
                        f'({{"version": 2, "partitions": N, "config": {{}}}}) or move the directory out of the data directory'
                    )
                self._log.warn("removing {path}: its creation did not finish (no {file})", path=path, file=TOPIC_FILE)
                shutil.rmtree(path)
                fsync_dir(self.data_dir)
                continue
            version, partitions, config = _read_topic_file(topic_file)
            found.append((name, version, partitions, config))
        self._open_hard_state(any(version == TOPIC_FILE_VERSION for _, version, _, _ in found))
        for name, version, partitions, config in found:
            path = os.path.join(self.data_dir, name)
            if version == 1:
                self._upgrade(name, partitions, config)
            else:
                upgrade.finish(path)
            for entry in sorted(os.listdir(path)):
                if entry == TOPIC_FILE + ".tmp":
                    os.unlink(os.path.join(path, entry))  # an interrupted rewrite
                elif entry != TOPIC_FILE and not (entry.isdigit() and int(entry) < partitions and entry == str(int(entry))):
                    self._log.warn(
                        "ignoring {path}: not one of the {partitions} partitions of topic {topic}",
                        path=os.path.join(path, entry), partitions=partitions, topic=name,
                    )
            try:
                logs: list[LocalLog] = []
                for p in range(partitions):
                    logs.append(self._open_log(name, p, config, existing=True))
            except OSError as e:
                for log in logs:
                    log.close(sync=False)
                raise CannotLoad(f"cannot open topic {name!r} in {path}: {e}{_descriptor_hint(e)}") from e
            self._topics[name] = (config, logs)
        self._finish_recovery([log.log for _, logs in self._topics.values() for log in logs])
        return {name: (config, list(logs)) for name, (config, logs) in self._topics.items()}

    def _finish_recovery(self, logs: list[SegmentedLog]) -> None:
        """Run the recovery syncs the logs left owed, C{recovery_workers} at a time; raise the first error.

        One log after another, a thousand crashed partitions cost a few
        thousand fsyncs in a row (17.9 s of start-up on a busy disk); at once,
        the file system commits many of them together.
        """
        owed = [log for log in logs if log.recovery_owed is not None]
        if not owed:
            return
        if self.recovery_workers == 1 or len(owed) == 1:
            for log in owed:
                log.finish_recovery()
            return
        with ThreadPoolExecutor(max_workers=min(self.recovery_workers, len(owed)),
                                thread_name_prefix="streamlog-recovery") as pool:
            futures = [pool.submit(log.finish_recovery) for log in owed]
            errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def _open_hard_state(self, used: bool) -> None:
        """Open C{<data-dir>/hardstate}: it must exist once the data directory holds format-2 data."""
        if self.hard_state is not None:
            return
        path = os.path.join(self.data_dir, HARD_STATE_FILE)
        try:
            self.hard_state = HardStateStore(path, must_exist=used or self._hard_state_required)
        except StorageError as e:
            raise CannotLoad(
                f"{e}: this node's Raft terms and votes cannot be trusted; restore the file, or wipe this node's data "
                "directory so that it rejoins as a new member (docs/storage.md, \"Damage\")"
            ) from None

    def _upgrade(self, name: str, partitions: int, config: TopicConfig) -> None:
        """Upgrade a topic of storage format 1 in place (L{streamlog.storage.upgrade})."""
        path = os.path.join(self.data_dir, name)
        self._log.info("upgrading topic {topic} to storage format 2", topic=name)
        try:
            upgrade.upgrade_partitions(path, partitions, upgrade.make_log_factory(config, self.defaults, self._log_options))
            write_atomically(os.path.join(path, TOPIC_FILE), encode_topic_file(partitions, config))
            upgrade.finish(path)
        except OSError as e:
            raise CannotLoad(f"upgrading topic {name!r} in {path} to storage format 2 failed: {e}{_descriptor_hint(e)}") from e

    def create_topic(self, name: str, partitions: int, config: TopicConfig) -> list[LocalLog]:
        """Create a topic's logs and its C{topic.json}, or nothing.

        Raises L{InvalidTopicName} (before touching anything) for a name the
        data directory cannot hold, and L{NameTaken} for a name already used
        there by something that is not an unfinished creation (a file, data).
        If a file operation fails, every log it opened is closed again first;
        then running out of descriptors raises
        L{OutOfDescriptors} (the half-made directory is removed: nothing
        changed), and any other error L{StorageFailed} (a disk fault: the
        caller stops the node).
        """
        check_topic_name(name, self.max_topic_name)
        if name in RESERVED_NAMES:
            raise NameTaken(f"topic name {name!r} is taken by the node's hard-state file in the data directory; use another name")
        if partitions < 1:
            raise ValueError(f"a topic needs at least one partition, not {partitions}")
        if name in self._topics:
            raise ValueError(f"topic {name!r} exists")
        path = os.path.join(self.data_dir, name)
        leftover = self._check_name_free(name, path)
        logs: list[LocalLog] = []
        try:
            self._open_hard_state(False)  # a data directory's first topic: the file comes first
            if leftover:
                shutil.rmtree(path)  # an unfinished creation (no topic.json, nothing but empty files)
            os.makedirs(path)
            for p in range(partitions):
                logs.append(self._open_log(name, p, config))
            fsync_dir(path)
            write_atomically(os.path.join(path, TOPIC_FILE), encode_topic_file(partitions, config))
            fsync_dir(self.data_dir)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                # Not a write failure: the half-made directory is removed, nothing changed.
                for log in logs:
                    log.close(sync=False)
                self._remove_unfinished(path)
                raise OutOfDescriptors(f"creating topic {name!r} with {partitions} partitions ran out of file descriptors: {e}") from e
            # A disk fault (ENOSPC as EIO): fail-stop, as for any log write (sync_failure), not a
            # creation for the planner to try again on the same disk; told before the logs are
            # closed, so a close that raises too cannot skip it.
            sync_failure.report_write(e.filename or path, e, "creation of")
            for log in logs:
                log.close(sync=False)
            raise StorageFailed(f"creating topic {name!r} failed: {e}") from e
        except BaseException:
            for log in logs:
                log.close(sync=False)
            raise
        self._topics[name] = (config, logs)
        return list(logs)

    def _check_name_free(self, name: str, path: str) -> bool:
        """Refuse (L{NameTaken}) a name whose path holds anything but a creation that never finished.

        Returns whether such a leftover is there (to be removed).  Whatever
        else is at C{path}, a file (C{notes.txt}, C{twistd.pid}), a symbolic
        link, a directory holding data, or a topic this node did not load, was
        put there by someone else and is left alone.
        """
        if not os.path.lexists(path):
            return False
        if os.path.islink(path) or not os.path.isdir(path):
            what = "a file"
        elif os.path.lexists(os.path.join(path, TOPIC_FILE)):
            what = "a topic that exists on disk but was not loaded by this node (it appeared after start-up)"
        else:
            try:
                if _unfinished_creation(path):
                    return True
            except OSError as e:
                raise NameTaken(f"topic name {name!r} is taken in the data directory: cannot read {path}: {e}") from None
            what = "a directory that is not a topic"
        raise NameTaken(
            f"topic name {name!r} is taken by {what} in the data directory ({path}); "
            "use another name, or move it out of the data directory"
        )

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
        try:
            os.rename(path, doomed)
        except OSError as e:
            # Fail-stop (sync_failure): the topic is gone from memory, its logs closed, while its
            # directory is still there under its name for the next start to load again.
            sync_failure.report_write(path, e, "deletion (rename) of")
            raise
        fsync_dir(self.data_dir)
        # Not fail-stop: once renamed (and that made durable) the topic is gone whatever is
        # left of the .deleted-* directory, which the next start removes.
        shutil.rmtree(doomed)
        fsync_dir(self.data_dir)

    def snapshot_store(self, name: str) -> DirectorySnapshots:
        """Where the state-machine snapshot files of the one-partition log C{name} live: its
        partition's directory, beside its segments (the metadata group's; docs/storage.md)."""
        return DirectorySnapshots(os.path.join(self.data_dir, name, "0"))

    def logs(self) -> list[SegmentedLog]:
        """Every open partition's log (the L{SegmentedLog}s themselves)."""
        return [log.log for _, logs in self._topics.values() for log in logs]

    def checkpoint(self) -> None:
        """Sync and checkpoint every healthy log (blocking: call it from a worker thread).

        Call it every minute or so whatever the fsync policy: it bounds how much
        recovery reads after a crash.
        """
        for log in self.logs():
            if log.failed is None and not log.closed:
                try:
                    log.checkpoint()
                except StorageError:
                    if not log.closed:  # closed meanwhile by delete_topic: nothing to do
                        raise

    def close(self, sync: bool = True) -> None:
        """Close every log, each with its clean-shutdown sync and checkpoint unless not C{sync}
        (a node that will not start after a failed sync: nothing more is written on that disk)."""
        for log in self.logs():
            log.close(sync=sync)
        self._topics = {}
        if self.hard_state is not None:
            self.hard_state.close()


def encode_topic_file(partitions: int, config: TopicConfig) -> bytes:
    """C{topic.json}: the partition count and settings, with a CRC32C of them (damage that parses is caught)."""
    body = {"version": TOPIC_FILE_VERSION, "partitions": partitions, "config": config.to_dict()}
    return orjson.dumps({**body, "crc": crc32c(orjson.dumps(body))})


def _read_topic_file(path: str) -> tuple[int, int, TopicConfig]:
    """Parse C{topic.json}; raise L{CannotLoad} with what to do if it is damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        meta = orjson.loads(data)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        version = meta.get("version")
        if version not in TOPIC_FILE_VERSIONS:
            raise ValueError(f"unknown version {version!r}")
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
            f'({{"version": 2, "partitions": N, "config": {{}}}}) or move its topic out of the data directory'
        ) from None
    return version, partitions, config


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

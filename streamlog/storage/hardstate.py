"""The hard-state store: every Raft group's term and vote on this node, in one file.

Raft requires a node's term and vote to be durable before it acts on them
(before a vote or a message of that term leaves).  One small file per group
would cost a create and two fsyncs per group per election: 1,000 partitions
electing after a restart, 2,000 fsyncs.  Here every group shares one
append-only file, C{<data-dir>/hardstate}, and saves are made durable in
I{rounds}: every save made during one reactor turn (and every one made while
a round is being written) goes into the next round, one write and one
C{fdatasync} for all of them.  L{HardStateStore.save} returns a Deferred that
fires once the round holding it is durable.

File: a sequence of frames, one per round, each written twice in a row (a
copy, so that damage to one does not lose a vote that was acknowledged)::

    magic "SH" | version u8 = 1 | flags u8 = 0 | length u32 | round u64 | CRC32C u32 | body
    body: JSON array of [group, term, voted_for or null]; [group, null, null] forgets a group

The CRC covers the 16 header bytes before it and the body.  Rounds number
up by one from frame to frame.  The file is I{compacted} when it grows past
C{compact_bytes} (and twice its live content): the whole state is written to
C{hardstate.tmp} as one round, synced, renamed over the file, and the
directory synced.  The first frame of the file is therefore always whole
(written before a rename), and only the end can be torn by a crash.

Reading it back (at start): frames in order; one copy of a round damaged,
the other good: repaired (warned).  Damage at the very end with no
whole frame after it: a round whose write a crash interrupted; it was never
acknowledged (a save fires only after the sync), so it is cut.  Anything
else (a round missing or out of order, both copies of the first frame
damaged, an empty file) is durable state gone bad:
L{HardStateCorrupted}, and the node refuses to start (forgetting a vote
could make it vote twice in one term).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog.raft.core import HardState
from streamlog.storage import sync_failure
from streamlog.storage.checkpoint import datasync, fsync_dir, write_all
from streamlog.storage.codec import crc32c
from streamlog.storage.errors import StorageCorrupted, StorageFailed, WriteFailed
from streamlog.storage.in_flight import HARD_STATE, SyncsInFlight

HARD_STATE_FILE = "hardstate"
MAGIC = b"SH"
VERSION = 1
_HEAD = struct.Struct(">2sBBIQ")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _CRC.size  # 20
MAX_BODY = 64 * 1024 * 1024
#: Compact once the file passes this size (and twice its live content).
DEFAULT_COMPACT_BYTES = 1024 * 1024


class HardStateCorrupted(StorageCorrupted):
    """The hard-state file is damaged in a way that could lose an acknowledged term or vote."""


def encode_frame(round_: int, states: dict[str, HardState | None]) -> bytes:
    """One round's frame (not yet doubled)."""
    body = orjson.dumps([[g, s.term, s.voted_for] if s is not None else [g, None, None] for g, s in states.items()])
    head = _HEAD.pack(MAGIC, VERSION, 0, len(body), round_)
    return head + _CRC.pack(crc32c(body, crc32c(head))) + body


def decode_frame(data: bytes, position: int) -> tuple[int, dict[str, HardState | None], int]:
    """(round, states, end position) of the frame at C{position}; C{ValueError} if there is none whole and valid."""
    if len(data) - position < HEADER_SIZE:
        raise ValueError("torn: less than a header")
    magic, version, _flags, length, round_ = _HEAD.unpack_from(data, position)
    if magic != MAGIC or version != VERSION or length > MAX_BODY:
        raise ValueError(f"bad header (magic {magic!r}, version {version}, length {length})")
    end = position + HEADER_SIZE + length
    if end > len(data):
        raise ValueError(f"torn: a frame of {length} bytes, {len(data) - position - HEADER_SIZE} present")
    (crc,) = _CRC.unpack_from(data, position + _HEAD.size)
    body = data[position + HEADER_SIZE : end]
    if crc != crc32c(body, crc32c(data[position : position + _HEAD.size])):
        raise ValueError("CRC mismatch")
    states: dict[str, HardState | None] = {}
    items = orjson.loads(body)
    if not isinstance(items, list):
        raise ValueError("the body is not a list")
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and type(item[0]) is str):
            raise ValueError(f"bad entry {item!r}")
        group, term, voted_for = item
        if term is None:
            states[group] = None
        elif type(term) is int and term >= 0 and (voted_for is None or type(voted_for) is str):
            states[group] = HardState(term, voted_for)
        else:
            raise ValueError(f"bad entry {item!r}")
    return round_, states, end


def read_states(path: str, data: bytes) -> tuple[dict[str, HardState], int, int, list[str]]:
    """Replay a hard-state file: (states, last round, length of the valid prefix, warnings).

    Raises L{HardStateCorrupted} for damage that is not a torn end (see the module docstring).
    """
    if not data:
        raise HardStateCorrupted(path, 0, "the file is empty (it always holds at least one round)")
    states: dict[str, HardState] = {}
    warnings: list[str] = []
    position = 0
    last: int | None = None
    while position < len(data):
        try:
            round_, frame, end = decode_frame(data, position)
        except ValueError as e:
            found = _next_frame(data, position + 1)
            if position == 0:
                # The first frame is never torn (written before a rename): this is damage.
                # Its copy starts exactly where a frame of its own size would end.
                if found is None or found != decode_frame(data, found)[2] - found:
                    raise HardStateCorrupted(path, 0, f"the first round is damaged ({e}), and so is its copy") from None
                warnings.append(f"a damaged first frame ({e}); its whole copy at byte {found} is used")
                position = found
                continue
            if found is None:
                return states, last or 0, position, warnings + [f"cut a torn end at byte {position} ({e})"]
            # The copy after a damaged frame carries the same round (or, if the damage
            # was a second copy, the next round): nothing is lost.  A round missing
            # altogether is checked below.
            warnings.append(f"a damaged frame at byte {position} ({e}); the whole copy at byte {found} is used")
            position = found
            continue
        if last is not None and round_ not in (last, last + 1):
            raise HardStateCorrupted(path, position, f"round {round_} after round {last}: a round is missing or out of place")
        if round_ != last:
            for group, state in frame.items():
                if state is None:
                    states.pop(group, None)
                else:
                    states[group] = state
            last = round_
        position = end
    return states, last or 0, position, warnings


def _next_frame(data: bytes, start: int) -> int | None:
    """Where the first whole, valid frame at or after C{start} begins (found by its magic), or None."""
    at = data.find(MAGIC, start)
    while at != -1:
        try:
            decode_frame(data, at)
            return at
        except ValueError:
            at = data.find(MAGIC, at + 1)
    return None


class HardStateStore:
    """Term and vote of every Raft group on this node (see the module docstring).

    @param path: the file (C{<data-dir>/hardstate}).
    @param must_exist: a missing file is damage (the data directory was used
        before); otherwise a missing file is created, empty.
    @param clock: schedules rounds on the next turn (the reactor if None).
    @param run_in_thread: C{f(callable, *args) -> Deferred} running the writes
        (C{deferToThread} if None; tests pass a fake).
    @param fsync: syncs a file's descriptor (L{datasync} if None, which reports a failure to
        the fail-stop handler; tests count calls).
        The data directory, after a rename, is always synced with C{os.fsync}.
    @param compact_bytes: compact once the file passes this size and twice its live content.
    @param on_fatal: called with the failure of a failed write or sync, after the fail-stop
        handler of L{streamlog.storage.sync_failure} (which every failure reaches, with or
        without C{on_fatal}).
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        *,
        must_exist: bool = False,
        clock: Any = None,
        run_in_thread: Callable[..., Deferred] | None = None,
        fsync: Callable[[int], None] | None = None,
        compact_bytes: int = DEFAULT_COMPACT_BYTES,
        on_fatal: Callable[[Failure], object] | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._run = run_in_thread
        self._fsync = fsync or datasync  # a failure is reported to the fail-stop handler (sync_failure)
        self.compact_bytes = compact_bytes
        self._on_fatal = on_fatal
        self._states: dict[str, HardState] = {}
        self._pending: dict[str, HardState | None] = {}
        self._waiters: list[Deferred] = []
        self._scheduled: Any = None
        self._running = False
        self._failure: Failure | None = None
        self._fd: int | None = None
        self._size = 0
        self.rounds = 0  # rounds written (for tests and metrics)
        self.fsyncs = 0
        #: Where a round in a worker is tracked (L{bind}): a hung save stalls its groups' elections.
        self.in_flight: SyncsInFlight | None = None
        self._open(must_exist)

    def bind(self, clock: Any, run_in_thread: Callable[..., Deferred] | None = None,
             in_flight: SyncsInFlight | None = None) -> None:
        """Schedule rounds on C{clock} (the node's, where the store was opened without one)
        and, if given, run them with C{run_in_thread}: a node on a test's Clock saves there.
        With C{in_flight} (the node's, shared with its group committer) each round is counted
        there while it is in a worker, so /ready sees a hung save."""
        if self._clock is None:
            self._clock = clock
        if run_in_thread is not None:
            self._run = run_in_thread
        if in_flight is not None:
            self.in_flight = in_flight

    # -- opening ---------------------------------------------------------------------

    def _open(self, must_exist: bool) -> None:
        tmp = self.path + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)  # an interrupted compaction: the file itself is whole
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if must_exist:
                raise HardStateCorrupted(self.path, 0, "the hard-state file is missing (the data directory was used before)") from None
            self._round = 0
            self._rewrite()  # an empty round 0: the file always holds a whole first frame
            return
        self._states, self._round, valid, warnings = read_states(self.path, data)
        for warning in warnings:
            self._log.warn("{path}: {warning}", path=self.path, warning=warning)
        if valid < len(data):
            os.truncate(self.path, valid)
            self._sync_path(self.path)
        self._size = valid
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))

    def _sync_path(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._fsync(fd)
            self.fsyncs += 1
        finally:
            os.close(fd)

    def _rewrite(self) -> None:
        """Write the whole state as one round to a new file and rename it into place (blocking)."""
        frame = encode_frame(self._round, dict(self._states))
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, frame + frame)
            self._fsync(fd)
            self.fsyncs += 1
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        # The rename is durable once the directory is: fsync it, as every directory of the
        # storage is (fdatasync of a directory is not what POSIX promises to sync names).
        fsync_dir(os.path.dirname(self.path) or ".")
        self.fsyncs += 1
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        self._size = 2 * len(frame)

    # -- reading ---------------------------------------------------------------------

    def load_all(self) -> dict[str, HardState]:
        """Every group's saved term and vote (a group never saved has none: C{HardState()}).

        At start this is what the file holds; later, the latest saves, durable
        once their Deferreds fired.
        """
        return dict(self._states)

    def get(self, group: str) -> HardState:
        """The latest state saved for C{group} (durable once that save's Deferred fired)."""
        return self._states.get(group, HardState())

    # -- saving ----------------------------------------------------------------------

    def save(self, group: str, state: HardState) -> Deferred:
        """Fires (with None) once C{state} is durable, in a round shared with every save made meanwhile."""
        return self._enqueue(group, state)

    def remove(self, group: str) -> Deferred:
        """Forget C{group} (its replica was deleted from this node); durable like a save."""
        return self._enqueue(group, None)

    def _enqueue(self, group: str, state: HardState | None) -> Deferred:
        if self._failure is not None:
            return fail(self._failure)
        self._pending[group] = state
        d: Deferred = Deferred()
        self._waiters.append(d)
        if not self._running and self._scheduled is None:
            clock = self._clock
            if clock is None:
                from twisted.internet import reactor as clock
            self._scheduled = clock.callLater(0, self._start_round)
        return d

    def _start_round(self) -> None:
        self._scheduled = None
        if self._running or not self._waiters or self._failure is not None:
            return
        pending, self._pending = self._pending, {}
        waiters, self._waiters = self._waiters, []
        for group, state in pending.items():
            if state is None:
                self._states.pop(group, None)
            else:
                self._states[group] = state
        self._round += 1
        frame = encode_frame(self._round, pending)
        compact = False
        if self._size + 2 * len(frame) > self.compact_bytes:
            live = 2 * len(encode_frame(self._round, dict(self._states)))
            compact = self._size + 2 * len(frame) > 2 * live
        self._running = True
        self.rounds += 1
        run = self._run
        if run is None:
            from twisted.internet.threads import deferToThread as run
        # A hand-off that raises at once fails the round as a failed write does (fail-stop), and
        # the round is counted in flight only once it was handed off (as GroupCommitter._tracked):
        # counted first, a raise left it in flight for ever, /ready failing and the gauge climbing.
        d = maybeDeferred(run, self._write_round, frame, compact)
        tracker = self.in_flight
        token = tracker.begin(HARD_STATE) if tracker is not None else None

        def done(result: object) -> None:
            self._running = False
            if tracker is not None and token is not None:
                tracker.end(token)
            if isinstance(result, Failure):
                self._fatal(result, waiters)
                return
            for w in waiters:
                w.callback(None)
            if self._waiters and self._scheduled is None:
                self._start_round()

        d.addBoth(done)

    def _write_round(self, frame: bytes, compact: bool) -> None:
        """Runs in a worker thread: append the round (twice) and sync it, or compact."""
        if compact:
            self._rewrite()
            return
        assert self._fd is not None
        write_all(self._fd, frame + frame)
        self._fsync(self._fd)
        self.fsyncs += 1
        self._size += 2 * len(frame)

    def _fatal(self, failure: Failure, waiters: list[Deferred]) -> None:
        if self._failure is None:
            # The fail-stop handler first, however the store was built (the storage opens it
            # with no on_fatal) and whoever waits on the round (a group of one does not): a
            # failed write or rename of a round may leave part of it in the file, and this
            # store's memory already holds the round.  A failed sync was told already.
            error = failure.value
            if isinstance(error, OSError):
                sync_failure.report_write(error.filename or self.path, error, "hard-state save to")
            else:  # the hand-off to a worker raised: the round was never written
                sync_failure.tell(WriteFailed(f"hard-state save to {self.path} failed: {error!r}", path=self.path))
            self._failure = Failure(StorageFailed(f"{self.path}: saving Raft hard state failed: {failure.value}"))
            self._log.failure("saving Raft hard state failed: stopping (fail-stop)", failure)
            if self._on_fatal is not None:
                self._on_fatal(self._failure)
        for w in waiters + self._waiters:
            w.errback(self._failure)
        self._waiters = []

    def close(self) -> None:
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

"""A partition's idempotent-producer state: which batches it holds for each producer (issue 10).

Every replica of a partition keeps one L{ProducerStateTable} and feeds it
every record batch it stores, in Raft index order, whoever wrote it: the
table is a function of the log's batch headers (C{producer_id},
C{producer_epoch}, C{base_sequence}, C{count}, C{base_offset}, Raft index,
C{max_timestamp}), so a follower that becomes leader already knows every
batch the old leader stored, and a restarted node rebuilds the same table
from its log.

How the replica uses it (the wiring, after the cluster work):

  - leader, on Send: C{decision = table.check(pid, epoch, base_seq, count,
    now_ms)}.  C{NEW}: append the batch (C{propose}) and, in the same reactor
    turn, before checking another batch, C{table.apply(...)} it (a check
    that does not see the batch before it would admit it twice).
    C{DUPLICATE}: store nothing; answer the original offsets
    (C{decision.base_offset}, C{decision.last_offset}) once the commit index
    reaches C{decision.raft_index} (the original may still be uncommitted).
    Anything else: answer C{decision.outcome.code}.
  - every replica, for every record batch it appends (its own as leader,
    or received as follower): C{table.apply_batch(batch)} (or L{apply} with
    the fields), C{now} being the batch's C{max_timestamp}: the leader's
    clock when it stamped the batch, carried in the header, so that every
    replica records the same times.
  - on C{Commit(upto)}: C{table.mark_committed(upto)}: the undo journal
    below it can be dropped (Raft never truncates committed entries).
  - before C{log.truncate_suffix(i)} (a new leader's log replaced the suffix):
    C{table.truncate_after(i - 1)}.  It undoes the batches above C{i - 1}
    exactly, from the journal, and restores what they displaced; if the
    journal no longer reaches that far (L{ProducerStateConfig.undo_limit})
    it removes them (safe: only knowledge of displaced batches is lost) and
    returns False, and the replica may L{rebuild} from the log instead.
  - on C{SnapshotInstalled(index, ...)}: C{table = ProducerStateTable.restore(
    data, config)}: the bytes the leader produced with C{snapshot(index)}
    (C{GroupCallbacks.snapshot_data}), which are also what C{log.reset(...,
    producer_state=data)} keeps.
  - at start-up: C{ProducerStateTable.rebuild(log batches after the start,
    config, log.producer_state)}.
  - periodically (say once a minute): C{table.expire(now_ms)}.

Retention (C{truncate_prefix}) does not touch the table: a producer is
remembered after its batches are gone from the log, until it expires.  Only
a restart forgets those (the table is rebuilt from the batches still held,
and C{truncate_prefix} does not yet store C{snapshot(start_index - 1)} the
way C{reset} stores the snapshot's state); the producer then sees
C{UNKNOWN_PRODUCER_ID} on its next batch, never a duplicate (see
docs/storage.md, "Idempotent producers").

The rules of L{check}, the bounds and the encoding are in docs/storage.md;
the sequence arithmetic in L{streamlog.idempotence.rules}.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Protocol

import attrs
import crc32c as _crc32c

from streamlog.idempotence.rules import (
    MAX_BATCH_RECORDS,
    MAX_EPOCH,
    MAX_PRODUCER_ID,
    MAX_SEQUENCE,
    MAX_WINDOW,
    MIN_WINDOW,
    SEQUENCE_MODULUS,
    Outcome,
)

#: Defaults of L{ProducerStateConfig} (the proposed server options are in docs/storage.md).
DEFAULT_WINDOW = MIN_WINDOW
DEFAULT_MAX_PRODUCERS = 10_000
DEFAULT_EXPIRY_MS = 24 * 3600 * 1000
DEFAULT_EVICT_MIN_IDLE_MS = 5 * 60 * 1000
DEFAULT_UNDO_LIMIT = 10_000
DEFAULT_SNAPSHOT_INTERVAL_BATCHES = 100_000
#: The longest delivery timeout a node assumes its idempotent producers use, by default (ms): the
#: streamlog Producer's and Kafka's delivery.timeout.ms.  A producer is forgotten (expired or
#: evicted) only once idle for longer, so none is forgotten while it may still retry a batch.
DEFAULT_CLIENT_DELIVERY_TIMEOUT_MS = 120_000

# One remembered batch: (base_sequence, last_sequence, base_offset, last_offset, raft_index, timestamp).
# A plain tuple: apply builds one per batch, and a tuple is several times cheaper to make than a class.
_Meta = tuple[int, int, int, int, int, int]
_BASE_SEQ, _LAST_SEQ, _BASE_OFF, _LAST_OFF, _INDEX, _TS = range(6)


@attrs.frozen
class ProducerStateConfig:
    """The bounds of a partition's table.

    @ivar window: batches remembered per producer (>= L{MIN_WINDOW}, 8: the
        Producer numbers at most 8 unacknowledged per partition, and each must
        be recognisable when it is retried).
    @ivar max_producers: producers remembered per partition; a new one past
        it evicts the least recently active, if that one was idle at least
        C{evict_min_idle_ms}, or is refused (C{TOO_MANY_PRODUCERS}).
    @ivar expiry_ms: a producer idle longer than this (by the timestamps of
        its batches) is forgotten.
    @ivar evict_min_idle_ms: a producer active more recently than this is
        never evicted to make room: it may still be retrying a batch, and
        forgetting it could store that batch twice.  Must exceed the clients'
        delivery timeout (120 s by default).
    @ivar snapshot_interval_batches: record batches a partition appends between two
        producer-state snapshot files besides those at segment rolls and clean
        closes (L{streamlog.idempotence.snapshot_file}): what an open after a
        crash replays at most, short of a roll; 0 writes them at rolls and
        closes only.
    @ivar undo_limit: undo records kept for batches above the commit index,
        so that L{ProducerStateTable.truncate_after} is exact; 0 turns the
        journal off (truncation then only removes).
    """

    window: int = DEFAULT_WINDOW
    max_producers: int = DEFAULT_MAX_PRODUCERS
    expiry_ms: int = DEFAULT_EXPIRY_MS
    evict_min_idle_ms: int = DEFAULT_EVICT_MIN_IDLE_MS
    undo_limit: int = DEFAULT_UNDO_LIMIT
    snapshot_interval_batches: int = DEFAULT_SNAPSHOT_INTERVAL_BATCHES

    def __attrs_post_init__(self) -> None:
        if self.window < MIN_WINDOW:
            raise ValueError(
                f"window {self.window} is below the {MIN_WINDOW} batches the streamlog Producer may have "
                f"unacknowledged per partition: a retry of an older one would be refused OUT_OF_ORDER_SEQUENCE "
                f"instead of answered as a duplicate (the window must be in [{MIN_WINDOW}, {MAX_WINDOW}])")
        if self.window > MAX_WINDOW:
            raise ValueError(f"window must be in [{MIN_WINDOW}, {MAX_WINDOW}], not {self.window}")
        if self.max_producers < 1:
            raise ValueError(f"max_producers must be at least 1, not {self.max_producers}")
        if self.expiry_ms < 1 or self.evict_min_idle_ms < 0:
            raise ValueError("expiry_ms must be positive and evict_min_idle_ms not negative")
        if self.evict_min_idle_ms > self.expiry_ms:
            raise ValueError(f"evict_min_idle_ms ({self.evict_min_idle_ms}) cannot exceed expiry_ms ({self.expiry_ms})")
        if self.undo_limit < 0:
            raise ValueError(f"undo_limit cannot be negative, not {self.undo_limit}")
        if self.snapshot_interval_batches < 0:
            raise ValueError(f"snapshot_interval_batches cannot be negative, not {self.snapshot_interval_batches}")


@attrs.frozen
class RememberedBatch:
    """One batch a partition remembers for a producer (the public view of the table's tuples)."""

    base_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int
    raft_index: int
    timestamp: int


@attrs.frozen
class Decision:
    """What L{ProducerStateTable.check} says about a batch.

    For C{DUPLICATE}: the original batch's offsets and Raft index (answer
    once that index is committed).  C{reason}: a sentence for the error
    message.
    """

    outcome: Outcome
    base_offset: int = -1
    last_offset: int = -1
    raft_index: int = -1
    reason: str = ""


#: The answer to almost every batch, made once.
NEW = Decision(Outcome.NEW)


class BatchHeader(Protocol):
    """The header fields of a stored batch that the table reads (L{streamlog.storage.base.RecordBatch} has them)."""

    @property
    def producer_id(self) -> int: ...
    @property
    def producer_epoch(self) -> int: ...
    @property
    def base_sequence(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def base_offset(self) -> int: ...
    @property
    def raft_index(self) -> int: ...
    @property
    def max_timestamp(self) -> int: ...
    @property
    def has_records(self) -> bool: ...


class CorruptProducerState(ValueError):
    """Bytes given to L{ProducerStateTable.restore} are not a snapshot this code wrote (or are damaged)."""


# A producer's state: (epoch, the last batches of that epoch, oldest first: never empty).  A tuple,
# never changed once made (apply replaces it, so the undo journal keeps the replaced one as it
# was), and a tuple because apply makes one per batch: a class with __init__ costs several times more.
_Producer = tuple[int, tuple[_Meta, ...]]


# An undo record: (raft index of the batch, producer id, its state before (None: absent),
# the producer evicted to make room for it (None: none)).
_Undo = tuple[int, int, _Producer | None, tuple[int, _Producer] | None]


class ProducerStateTable:
    """One partition's producers: per producer id, the epoch and the last C{window} batches.

    Pure: no I/O, no clock.  See the module docstring for how a replica
    drives it, docs/storage.md ("Idempotent producers") for the rules.
    """

    def __init__(self, config: ProducerStateConfig | None = None) -> None:
        self.config = config or ProducerStateConfig()
        # the bounds apply reads for every batch, as plain attributes
        self._window = self.config.window
        self._max_producers = self.config.max_producers
        self._undo_limit = self.config.undo_limit
        self._expiry_ms = self.config.expiry_ms
        # Ordered by the Raft index of each producer's last batch, oldest first: apply order, so
        # the first is the least recently active (eviction) and moving to the end is O(1).
        self._producers: OrderedDict[int, _Producer] = OrderedDict()
        self._journal: deque[_Undo] = deque()
        # Truncation to an index below this cannot be undone from the journal (records dropped).
        self._undo_floor = 0
        self._applied = 0
        # The highest index known committed (L{mark_committed}; a restored table: its snapshot's).
        self._committed = 0

    # -- reading ---------------------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        """The Raft index of the last batch applied (0: none)."""
        return self._applied

    @property
    def committed_index(self) -> int:
        """The highest Raft index L{mark_committed} was told of (a restored table: its snapshot's index).

        Entries up to it can never be replaced, so a snapshot file as of it
        stays true of the log (docs/storage.md, "Producer-state snapshot files").
        """
        return self._committed

    def exact_at(self, index: int) -> bool:
        """Whether L{snapshot}C{(index)} is exactly the table as of C{index} (the undo journal reaches it)."""
        return index >= self._applied or index >= self._undo_floor

    def __len__(self) -> int:
        """Producers remembered."""
        return len(self._producers)

    def producer_ids(self) -> list[int]:
        """The producers remembered, least recently active first."""
        return list(self._producers)

    def epoch_of(self, producer_id: int) -> int | None:
        entry = self._producers.get(producer_id)
        return None if entry is None else entry[0]

    def batches_of(self, producer_id: int) -> list[RememberedBatch]:
        """The batches remembered for a producer, oldest first (empty if none)."""
        entry = self._producers.get(producer_id)
        return [] if entry is None else [RememberedBatch(*m) for m in entry[1]]

    def check(self, producer_id: int, epoch: int, base_sequence: int, count: int, now: int) -> Decision:
        """What to do with a batch a producer sent (the leader, before appending it).

        C{now} is the leader's clock (ms): a producer idle longer than
        C{expiry_ms} counts as unknown whether or not L{expire} has run yet,
        so the answer does not depend on when the sweep ran.
        """
        entry = self._producers.get(producer_id)
        if entry is not None and entry[0] == epoch and 0 < count <= MAX_BATCH_RECORDS:
            # The common case first: the next batch of a known producer (its id, epoch and
            # sequence are then valid because the remembered ones were).
            newest = entry[1][-1]
            if (base_sequence == (0 if newest[_LAST_SEQ] == MAX_SEQUENCE else newest[_LAST_SEQ] + 1)
                    and now - newest[_TS] <= self._expiry_ms):
                return NEW
        if producer_id == -1:
            if epoch == -1 and base_sequence == -1:
                return NEW
            return Decision(Outcome.INVALID, reason="a batch without a producer id carries no epoch or sequence (-1)")
        if not (0 <= producer_id <= MAX_PRODUCER_ID and 0 <= epoch <= MAX_EPOCH and 0 <= base_sequence <= MAX_SEQUENCE):
            return Decision(Outcome.INVALID, reason="producer id, epoch or base sequence out of range")
        if not 1 <= count <= MAX_BATCH_RECORDS:
            return Decision(Outcome.INVALID, reason=f"an idempotent batch holds 1 to {MAX_BATCH_RECORDS} records")
        if entry is not None and now - entry[1][-1][_TS] > self.config.expiry_ms:
            entry = None  # expired, not yet swept
        if entry is None:
            if base_sequence != 0:
                return Decision(Outcome.UNKNOWN_PRODUCER_ID,
                                reason="no state for this producer: the first batch of a producer or epoch has sequence 0")
            if producer_id not in self._producers and len(self._producers) >= self.config.max_producers:
                oldest = next(iter(self._producers.values()))
                if now - oldest[1][-1][_TS] < self.config.evict_min_idle_ms:
                    return Decision(Outcome.TOO_MANY_PRODUCERS,
                                    reason=f"the partition remembers {len(self._producers)} producers, all active "
                                           f"within {self.config.evict_min_idle_ms} ms")
            return NEW
        if epoch != entry[0]:
            if epoch < entry[0]:
                return Decision(Outcome.PRODUCER_FENCED, reason=f"epoch {epoch} is older than the partition's {entry[0]}")
            if base_sequence != 0:
                return Decision(Outcome.UNKNOWN_PRODUCER_ID,
                                reason=f"epoch {epoch} is new here: its first batch has sequence 0")
            return NEW
        batches = entry[1]
        last = batches[-1][_LAST_SEQ]
        if base_sequence == (0 if last == MAX_SEQUENCE else last + 1):
            return NEW
        last_sequence = (base_sequence + count - 1) % SEQUENCE_MODULUS
        for meta in batches:
            if meta[_BASE_SEQ] == base_sequence and meta[_LAST_SEQ] == last_sequence:
                return Decision(Outcome.DUPLICATE, meta[_BASE_OFF], meta[_LAST_OFF], meta[_INDEX])
        return Decision(Outcome.OUT_OF_ORDER_SEQUENCE,
                        reason=f"expected sequence {(last + 1) % SEQUENCE_MODULUS}, got {base_sequence} "
                               f"(and it is none of the last {len(batches)} batches)")

    # -- recording -------------------------------------------------------------------------------

    def apply(self, producer_id: int, epoch: int, base_sequence: int, count: int, base_offset: int,
              raft_index: int, now: int) -> None:
        """Record a stored batch (every replica, every record batch, in Raft index order).

        The log is the truth: a batch that continues its producer's sequence
        in the same epoch joins its window (the oldest falls out past
        C{window}); any other (a new producer, a new epoch, sequence 0 after
        an expiry, anything the leader accepted) starts the window afresh.
        C{now} is the batch's timestamp (its C{max_timestamp}), not the
        local clock.  A batch without a producer (-1) only moves
        L{applied_index}.
        """
        if raft_index <= self._applied:
            raise ValueError(f"batch at index {raft_index} applied after index {self._applied}")
        self._applied = raft_index
        if producer_id < 0:
            return
        producers = self._producers
        last_sequence = base_sequence + count - 1
        if last_sequence > MAX_SEQUENCE:
            last_sequence -= SEQUENCE_MODULUS
        meta = (base_sequence, last_sequence, base_offset, base_offset + count - 1, raft_index, now)
        old = producers.get(producer_id)
        evicted: tuple[int, _Producer] | None = None
        if old is None:
            if len(producers) >= self._max_producers:
                evicted = producers.popitem(last=False)
            producers[producer_id] = (epoch, (meta,))
        else:
            batches = old[1]
            last = batches[-1][_LAST_SEQ]
            if epoch == old[0] and base_sequence == (0 if last == MAX_SEQUENCE else last + 1):
                if len(batches) < self._window:
                    producers[producer_id] = (epoch, batches + (meta,))
                else:
                    producers[producer_id] = (epoch, batches[len(batches) - self._window + 1:] + (meta,))
            else:
                producers[producer_id] = (epoch, (meta,))
            producers.move_to_end(producer_id)
        if self._undo_limit:
            journal = self._journal
            journal.append((raft_index, producer_id, old, evicted))
            if len(journal) > self._undo_limit:
                self._undo_floor = journal.popleft()[0]
        else:
            self._undo_floor = raft_index

    def apply_batch(self, batch: BatchHeader) -> None:
        """L{apply} a stored record batch from its header fields (bookkeeping batches are skipped)."""
        if batch.has_records:
            self.apply(batch.producer_id, batch.producer_epoch, batch.base_sequence, batch.count,
                       batch.base_offset, batch.raft_index, batch.max_timestamp)

    def mark_committed(self, index: int) -> None:
        """Entries up to C{index} are committed: Raft will never truncate them, so their undo records go."""
        if index > self._committed:
            self._committed = index
        journal = self._journal
        while journal and journal[0][0] <= index:
            self._undo_floor = journal.popleft()[0]

    # -- changing the past -----------------------------------------------------------------------

    def truncate_after(self, index: int) -> bool:
        """Forget every batch above Raft index C{index} (the log's suffix after it was replaced).

        Returns True if the table is now exactly what applying the batches up
        to C{index} gave (the journal reached back far enough to restore
        what the removed batches displaced), False if some displaced batches
        could not be restored (the table is then a subset: safe, and the
        replica may L{rebuild} from the log for the rest).  Either way no
        batch above C{index} is remembered afterwards.
        """
        if index >= self._applied:
            return True
        producers, exact = self._state_at(index, self._journal, consume=True)
        self._producers = producers
        self._applied = index
        return exact

    def expire(self, now: int, idle_ms: int | None = None) -> list[int]:
        """Forget producers whose last batch is older than C{now - idle_ms} (default C{expiry_ms}); return their ids."""
        limit = now - (self.config.expiry_ms if idle_ms is None else idle_ms)
        gone = [pid for pid, entry in self._producers.items() if entry[1][-1][_TS] < limit]
        for pid in gone:
            del self._producers[pid]
        return gone

    def _state_at(self, index: int, journal: deque[_Undo], consume: bool) -> tuple[OrderedDict[int, _Producer], bool]:
        """The producers as of Raft index C{index}: undo the journal above it, then drop any batch still above it."""
        producers = self._producers if consume else OrderedDict(self._producers)
        records = journal if consume else deque(journal)
        undone = False
        while records and records[-1][0] > index:
            _, pid, old, evicted = records.pop()
            undone = True
            if old is None:
                producers.pop(pid, None)
            else:
                producers[pid] = old
            if evicted is not None:
                producers[evicted[0]] = evicted[1]
        exact = index >= self._undo_floor
        # Whatever the journal could not undo (or, if it is exact, nothing): remove batches above index.
        changed = False
        for pid, entry in list(producers.items()):
            if entry[1][-1][_INDEX] > index:
                kept = tuple(m for m in entry[1] if m[_INDEX] <= index)
                changed = True
                if kept:
                    producers[pid] = (entry[0], kept)
                else:
                    del producers[pid]
        if undone or changed:
            producers = OrderedDict(sorted(producers.items(), key=lambda item: item[1][1][-1][_INDEX]))
        return producers, exact

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(self, upto: int | None = None) -> bytes:
        """The table as of Raft index C{upto} (default: everything applied), encoded (see L{restore}).

        Below L{applied_index} the journal is undone on a copy; below its
        reach the batches above C{upto} are left out, which is what a
        snapshot needs: its receiver applies the entries after C{upto} next,
        and they displace again what this left out.
        """
        if upto is None or upto >= self._applied:
            producers, applied = self._producers, self._applied
        else:
            producers, _ = self._state_at(upto, self._journal, consume=False)
            applied = upto
        parts = [_HEAD.pack(_MAGIC, _VERSION, applied, len(producers))]
        for pid, entry in producers.items():
            parts.append(_PRODUCER.pack(pid, entry[0], len(entry[1])))
            parts.extend(_BATCH.pack(*m) for m in entry[1])
        body = b"".join(parts)
        return body + _CRC.pack(_crc32c.crc32c(body))

    @classmethod
    def restore(cls, data: bytes, config: ProducerStateConfig | None = None) -> ProducerStateTable:
        """A table from L{snapshot} bytes; C{b""} (a log that never had a snapshot) gives an empty table.

        Raises L{CorruptProducerState} for anything else that is not a whole,
        undamaged snapshot of a version this code reads.  A snapshot made
        with a bigger window or more producers than C{config} allows keeps
        the newest of each.
        """
        table = cls(config)
        if not data:
            return table
        if len(data) < _HEAD.size + _CRC.size:
            raise CorruptProducerState(f"{len(data)} bytes is shorter than any producer-state snapshot")
        magic, version, applied, count = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            raise CorruptProducerState(f"not a producer-state snapshot (magic {magic!r})")
        if version != _VERSION:
            raise CorruptProducerState(f"producer-state snapshot version {version}; this code reads {_VERSION}")
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if _crc32c.crc32c(data[:-_CRC.size]) != crc:
            raise CorruptProducerState("producer-state snapshot fails its CRC")
        pos, end = _HEAD.size, len(data) - _CRC.size
        window = table.config.window
        entries: list[tuple[int, _Producer]] = []
        seen: set[int] = set()
        try:
            for _ in range(count):
                pid, epoch, n = _PRODUCER.unpack_from(data, pos)
                pos += _PRODUCER.size
                if n < 1 or pid < 0 or epoch < 0 or pid in seen:
                    raise CorruptProducerState(f"producer {pid}: {n} batches, epoch {epoch}")
                seen.add(pid)
                metas = [_BATCH.unpack_from(data, pos + k * _BATCH.size) for k in range(n)]
                pos += n * _BATCH.size
                for a, b in zip(metas, metas[1:]):
                    if not a[_INDEX] < b[_INDEX]:
                        raise CorruptProducerState(f"producer {pid}: batches out of index order")
                if metas[-1][_INDEX] > applied:
                    raise CorruptProducerState(f"producer {pid}: a batch above the snapshot's index {applied}")
                entries.append((pid, (epoch, tuple(metas[-window:]))))
        except struct.error as e:
            raise CorruptProducerState(f"producer-state snapshot is cut short: {e}") from None
        if pos != end:
            raise CorruptProducerState(f"{end - pos} bytes after the last producer")
        entries.sort(key=lambda item: item[1][1][-1][_INDEX])
        table._producers = OrderedDict(entries[-table.config.max_producers:])
        table._applied = applied
        table._undo_floor = applied  # nothing at or below the snapshot can be undone
        table._committed = applied  # snapshots are taken at committed indexes only
        return table

    @classmethod
    def rebuild(cls, batches: Iterable[BatchHeader], config: ProducerStateConfig | None = None,
                snapshot: bytes = b"") -> ProducerStateTable:
        """The table of a log: C{snapshot} (the log's C{producer_state}), then its record batches applied in order.

        Batches at or below the snapshot's index are skipped, so the caller
        may pass the whole log.
        """
        table = cls.restore(snapshot, config)
        for batch in batches:
            if batch.has_records and batch.raft_index > table._applied:
                table.apply_batch(batch)
        return table


# Snapshot encoding, version 1 (big-endian): magic, version, applied index, producer count;
# per producer: id, epoch, batch count, then per batch the six fields of _Meta; a CRC32C of all before it.
_MAGIC = b"SLPS"
_VERSION = 1
_HEAD = struct.Struct(">4sBqI")
_PRODUCER = struct.Struct(">qiB")
_BATCH = struct.Struct(">iiqqqq")
_CRC = struct.Struct(">I")

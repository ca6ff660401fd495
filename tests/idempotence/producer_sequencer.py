"""A reference model of an idempotent producer's numbering: sequence numbers per partition and what
each answer means (test code: the model test, tests/idempotence/test_producer_state_model.py, runs
three of these against the partition's real ProducerStateTable).

The shipped client (L{streamlog.client.producer.Producer}) keeps the same rules inline, on its own
batch queues; this model states them alone, small enough to check answer by answer
(test_producer_sequencer.py) and to drive through hypothesis with faults.  It lived in
C{streamlog/idempotence/} until nothing shipped used it.

Pure (no I/O, no clock), so that the client wiring stays thin: the
producer asks L{Sequencer.add} to number a closed batch, sends what
L{Sequencer.to_send} returns (in that order, on the connection to the
partition's leader), and hands every answer to L{Sequencer.answer}, which
returns what to tell the application (L{Acked}, L{Failed}).  Batches the
answer says to retry come back from the next L{to_send}.

How a client would wire it:

  - C{InitProducerId} gives C{(producer_id, epoch)}: C{Sequencer(pid, epoch)}.
  - a batch closes for partition C{p}: if C{seq.room(p)}, C{seq.add(p, token,
    count)}; otherwise it waits (at most L{MAX_IN_FLIGHT} unacknowledged
    batches per partition, counted from the oldest unacknowledged one, so
    every batch the producer may still retry is one the partition
    remembers).
  - whenever something changed: send C{seq.to_send(p)} in order, each with
    C{producer_id}, C{epoch} and C{base_sequence} from the L{SequencedBatch}.
  - an answer, or a lost request (timeout, connection lost, C{NOT_LEADER}
    and the other retriable errors): C{seq.answer(p, batch, code, ...)} with
    C{"OK"}, C{"DUPLICATE"}, C{"LOST"} or the error code.
  - C{seq.fatal} set: the producer is finished (C{PRODUCER_FENCED}: a newer
    instance exists; C{PRODUCER_STATE_LOST}: the partition's state disagrees
    with ours); the application must make a new producer.
  - C{seq.epoch_bump_ready()}: call C{InitProducerId} again for the same
    producer (it bumps the epoch), then C{seq.bump_epoch(new_epoch)}:
    every partition restarts at sequence 0 and the held batches are sent
    again, renumbered.  Needed after C{UNKNOWN_PRODUCER_ID} (the partition
    forgot the producer: expired, evicted or lost at a restart) and after a
    batch failed for good while later ones were numbered (a gap the
    partition would never fill).  Only batches refused at every attempt are
    renumbered: one with a lost attempt may be stored by an earlier leader
    (uncommitted on a replica that can still win an election), so it fails
    with C{maybe_stored} instead of being stored a second time under a new
    number.
  - a batch past its delivery timeout: C{seq.abandon(p, batch)}.

Why a new epoch rather than renumbering in the same one: a copy of an old
request may still arrive (a slow connection, an old leader), and under a
renumbering in the same epoch its sequence number could be the next one
expected, storing it twice.  A new epoch fences every old copy
(C{PRODUCER_FENCED}) once its first batch is stored.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from streamlog.idempotence.rules import MAX_BATCH_RECORDS, MAX_IN_FLIGHT, SEQUENCE_MODULUS

#: Answers that mean "the request's outcome is unknown; send the same batch again".
LOST = "LOST"
OK = "OK"
DUPLICATE = "DUPLICATE"
#: The fatal reasons.
PRODUCER_FENCED = "PRODUCER_FENCED"
PRODUCER_STATE_LOST = "PRODUCER_STATE_LOST"


class Status(enum.Enum):
    QUEUED = "queued"  # numbered, never sent: certainly not stored
    SENT = "sent"  # a request carrying it may be outstanding: outcome unknown until answered
    RESEND = "resend"  # outcome unknown, to be sent again as it is (same numbers)
    WAIT = "wait"  # refused because an earlier batch is missing: resend once the earlier ones are answered
    HELD = "held"  # certainly not stored; waits for the epoch bump to be renumbered


@attrs.define(eq=False)
class SequencedBatch:
    """A batch the sequencer numbered: what to put in its request."""

    token: Any
    count: int
    epoch: int
    base_sequence: int
    status: Status = Status.QUEUED
    #: A later batch was acknowledged, so this one is stored (its own answer brings its offsets).
    stored: bool = False
    #: Sent at least once (so it may be stored, unless an answer said otherwise).
    ever_sent: bool = False
    #: How many batches the partition numbered before this one (for the in-flight window).
    ordinal: int = 0
    #: An attempt's outcome was never learnt (lost): that attempt may be stored, perhaps only on a
    #: replica that is not leader now.  Such a batch is never renumbered.
    uncertain: bool = False


@attrs.frozen
class Acked:
    """Tell the application: stored at these offsets (C{duplicate}: by an earlier attempt)."""

    token: Any
    base_offset: int
    last_offset: int
    duplicate: bool = False


@attrs.frozen
class Failed:
    """Tell the application: this batch failed with C{code}; C{maybe_stored}: it may nevertheless be in the log."""

    token: Any
    code: str
    maybe_stored: bool


Effect = Acked | Failed


class _Partition:
    __slots__ = ("next_sequence", "unacked", "numbered", "resetting")

    def __init__(self) -> None:
        self.next_sequence = 0
        self.resetting = False  # waiting for an epoch bump: refusals settle the batch (held or failed)
        self.unacked: list[SequencedBatch] = []
        self.numbered = 0  # batches numbered so far

    def window_used(self) -> int:
        """Batches numbered since the oldest unacknowledged one, itself included (acknowledged ones too)."""
        return self.numbered - self.unacked[0].ordinal if self.unacked else 0


class Sequencer:
    """One idempotent producer's numbering, over all the partitions it writes to."""

    def __init__(self, producer_id: int, epoch: int, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"max_in_flight must be in [1, {MAX_IN_FLIGHT}], not {max_in_flight}")
        self.producer_id = producer_id
        self.epoch = epoch
        self.max_in_flight = max_in_flight
        self.fatal: str | None = None
        self.needs_epoch_bump = False
        self._partitions: dict[Any, _Partition] = {}

    def _part(self, partition: Any) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition()
        return part

    def unacked(self, partition: Any) -> list[SequencedBatch]:
        """The partition's numbered batches not acknowledged yet, in sequence order."""
        return list(self._part(partition).unacked)

    def room(self, partition: Any) -> bool:
        """May a new batch be numbered for C{partition} now?"""
        return (self.fatal is None and not self.needs_epoch_bump
                and self._part(partition).window_used() < self.max_in_flight)

    def add(self, partition: Any, token: Any, count: int) -> SequencedBatch:
        """Number a new batch of C{count} records (check L{room} first)."""
        if not 1 <= count <= MAX_BATCH_RECORDS:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_RECORDS} records, not {count}")
        if not self.room(partition):
            raise RuntimeError("no room: fatal, waiting for an epoch bump, or max_in_flight batches unacknowledged")
        part = self._part(partition)
        batch = SequencedBatch(token, count, self.epoch, part.next_sequence, ordinal=part.numbered)
        part.numbered += 1
        part.next_sequence = (part.next_sequence + count) % SEQUENCE_MODULUS
        part.unacked.append(batch)
        return batch

    def to_send(self, partition: Any) -> list[SequencedBatch]:
        """The batches to send now, in order (marked sent).

        In sequence order, stopping at the first that must wait: a batch
        refused for a missing predecessor goes again only once no earlier
        batch is outstanding, and nothing later overtakes it.  During an
        epoch bump only batches of unknown outcome are sent (to learn it).
        """
        if self.fatal is not None:
            return []
        out: list[SequencedBatch] = []
        outstanding = False  # an earlier batch is sent and not answered
        for batch in self._part(partition).unacked:
            status = batch.status
            if status is Status.SENT:
                outstanding = True
                continue
            if status is Status.HELD:
                break
            if status is Status.WAIT and outstanding:
                break
            if status is Status.QUEUED and self.needs_epoch_bump:
                break
            batch.status = Status.SENT
            batch.ever_sent = True
            out.append(batch)
        return out

    def answer(self, partition: Any, batch: SequencedBatch, code: str, base_offset: int = -1,
               last_offset: int = -1, *, epoch: int | None = None) -> list[Effect]:
        """The partition answered C{batch} with C{code} (or the request was C{LOST}); what to tell the application.

        C{epoch}: the epoch the answered request carried (pass it: an answer
        to a copy sent before an epoch bump renumbered the batch is ignored).
        """
        part = self._part(partition)
        if (batch not in part.unacked or batch.status is not Status.SENT or batch.epoch != self.epoch
                or (epoch is not None and epoch != batch.epoch)):
            return []  # a late answer to an attempt already settled, or to a copy of an older epoch
        position = part.unacked.index(batch)
        earlier_open = any(not b.stored for b in part.unacked[:position])
        if code in (OK, DUPLICATE):
            del part.unacked[position]
            for b in part.unacked[:position]:
                b.stored = True
            return [Acked(batch.token, base_offset, last_offset, duplicate=code == DUPLICATE)]
        if code == LOST:
            batch.uncertain = True
            if part.resetting:
                return self._settle(part, batch, code)
            batch.status = Status.RESEND
            return []
        if code == "TOO_MANY_PRODUCERS":
            batch.status = Status.RESEND
            return []
        if code == PRODUCER_FENCED:
            return self._fail_all(PRODUCER_FENCED)
        refused = code in ("OUT_OF_ORDER_SEQUENCE", "UNKNOWN_PRODUCER_ID")
        if refused and part.resetting:
            return self._settle(part, batch, code)
        if refused and earlier_open:
            batch.status = Status.WAIT  # the earlier one's answer decides
            return []
        if code == "UNKNOWN_PRODUCER_ID" and not batch.stored:
            # Nothing earlier is missing and the leader has no state for us.  This attempt was not
            # stored, but an earlier attempt that was lost may have been, by an earlier leader, and
            # may still be committed (an uncommitted entry on a replica that wins an election):
            # such batches fail, maybe stored.  The others were refused at every attempt: they
            # are renumbered in a new epoch (the model test found the first case).
            return self._settle(part, batch, code) + self._start_reset(part, position, code)
        if refused:
            # The oldest open batch refused although nothing before it is missing: the
            # partition's state disagrees with ours; it may even hold this batch.
            return self._fail_all(PRODUCER_STATE_LOST)
        # Any other error is final for this batch (validation errors are the same for every copy
        # of it): it was not stored.  The later batches now follow a gap the partition will never
        # see filled, and the next number would be one: renumber them in a new epoch.
        del part.unacked[position]
        return [Failed(batch.token, code, maybe_stored=False)] + self._start_reset(part, position, code)

    def _start_reset(self, part: _Partition, position: int, code: str) -> list[Effect]:
        """From C{position} on, nothing of this partition will be stored in this epoch: settle what is not in flight."""
        part.resetting = True
        self.needs_epoch_bump = True
        effects: list[Effect] = []
        for b in list(part.unacked[position:]):
            if b.status is not Status.SENT:  # one in flight settles when its answer comes
                effects += self._settle(part, b, code)
        return effects

    def _settle(self, part: _Partition, batch: SequencedBatch, code: str) -> list[Effect]:
        """A batch refused, lost or not yet sent while its partition waits for the epoch bump.

        Held (to be renumbered) if certainly not stored: every attempt was
        refused, or it follows a held batch (never stored in this epoch, so
        no replica can have stored this one after it; unless this one starts
        at sequence 0 after a wrap, which a replica without state would take).
        Otherwise it fails, maybe stored.
        """
        position = part.unacked.index(batch)
        after_held = batch.base_sequence != 0 and any(b.status is Status.HELD for b in part.unacked[:position])
        if batch.uncertain and not after_held:
            part.unacked.remove(batch)
            return [Failed(batch.token, code, maybe_stored=True)]
        batch.status = Status.HELD
        return []

    def abandon(self, partition: Any, batch: SequencedBatch) -> list[Effect]:
        """Give up on C{batch} (its delivery timeout passed): it and every later batch already sent fail, maybe stored."""
        part = self._part(partition)
        if batch not in part.unacked:
            return []
        position = part.unacked.index(batch)
        effects: list[Effect] = []
        kept: list[SequencedBatch] = part.unacked[:position]
        for b in part.unacked[position:]:
            if b is batch or b.ever_sent:
                effects.append(Failed(b.token, "DELIVERY_TIMEOUT", maybe_stored=b.ever_sent or b.stored))
            else:
                b.status = Status.HELD
                kept.append(b)
        part.unacked = kept
        part.resetting = True
        self.needs_epoch_bump = True
        return effects

    def _fail_all(self, reason: str) -> list[Effect]:
        """The producer is finished: every unacknowledged batch fails (maybe stored if it was ever sent)."""
        self.fatal = reason
        effects: list[Effect] = []
        for part in self._partitions.values():
            for b in part.unacked:
                effects.append(Failed(b.token, reason, maybe_stored=b.ever_sent or b.stored))
            part.unacked = []
        return effects

    def epoch_bump_ready(self) -> bool:
        """An epoch bump is due and no batch of unknown outcome remains (all are settled or held)."""
        if not self.needs_epoch_bump or self.fatal is not None:
            return False
        return all(b.status in (Status.HELD, Status.QUEUED) for part in self._partitions.values() for b in part.unacked)

    def bump_epoch(self, new_epoch: int) -> None:
        """Continue in C{new_epoch}: every partition restarts at sequence 0, its waiting batches renumbered."""
        if not self.epoch_bump_ready():
            raise RuntimeError("no epoch bump is due, or batches of unknown outcome remain")
        if new_epoch <= self.epoch:
            raise ValueError(f"the new epoch {new_epoch} must be above {self.epoch}")
        self.epoch = new_epoch
        self.needs_epoch_bump = False
        for part in self._partitions.values():
            part.next_sequence = 0
            part.resetting = False
            for b in part.unacked:
                b.epoch = new_epoch
                b.base_sequence = part.next_sequence
                b.status = Status.QUEUED
                b.stored = False
                b.ever_sent = False
                b.uncertain = False
                part.next_sequence = (part.next_sequence + b.count) % SEQUENCE_MODULUS

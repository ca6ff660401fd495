"""What the producer and the partition agree on: sequence numbers and the answers to a batch.

A batch of an idempotent producer carries C{producer_id} (>= 0), C{epoch}
(>= 0) and C{base_sequence}: the sequence number of its first record.  A
producer numbers the records it sends to one partition 0, 1, 2, ... within an
epoch (records, not batches, as Kafka does: the header has room for the first
number only, and the record count gives the last).

Sequence numbers wrap: after C{MAX_SEQUENCE} (2**31 - 1, the largest value of
the header's signed 32-bit field) comes 0 again, and a batch may straddle the
wrap.  We wrap (as Kafka does) rather than demand a new epoch because 2**31
records is only about 36 minutes of one producer at a million records a
second: a long-lived producer must not be forced through an epoch bump (a
round trip to the metadata, and a drain of everything in flight) every half
hour.  Wrapping is unambiguous because the partition only ever compares a
sequence number with the few batches it remembers for that producer (at most
L{MAX_WINDOW}, each of at most L{MAX_BATCH_RECORDS} records, which together
span fewer than 2**31 numbers): "is it the next one" and "is it exactly one
of these", never "is it bigger".

Outcomes of L{streamlog.idempotence.table.ProducerStateTable.check}, and the
wire error code each would be answered with (docs/storage.md, "Idempotent
producers", has the table of what a client does with each).
"""

from __future__ import annotations

import enum

#: Sequence numbers are in [0, MAX_SEQUENCE] and wrap to 0 after it.
MAX_SEQUENCE = 2**31 - 1
SEQUENCE_MODULUS = 2**31
#: Largest epoch (the header field is a signed 32-bit integer); past it the metadata allocates a new producer id.
MAX_EPOCH = 2**31 - 1
#: Largest producer id (the header field is a signed 64-bit integer).
MAX_PRODUCER_ID = 2**63 - 1
#: Records per idempotent batch at most (far above the broker's batch limits; keeps wrapping unambiguous).
MAX_BATCH_RECORDS = 2**24
#: Batches an idempotent producer (L{streamlog.client.Producer}) numbers per partition from its oldest
#: unacknowledged one on, at most: the Producer's default C{max_in_flight} (8), so idempotence costs no
#: pipelining (Kafka allows 5; we keep what our client pipelines).
MAX_IN_FLIGHT = 8
#: Batches a partition may remember per producer, at least and at most.  Never below MAX_IN_FLIGHT, so
#: every batch a producer may still retry is one the partition remembers (a smaller window would answer
#: a retry of a stored batch OUT_OF_ORDER_SEQUENCE instead of with its offsets).
MIN_WINDOW = MAX_IN_FLIGHT
MAX_WINDOW = 64

assert MAX_WINDOW * MAX_BATCH_RECORDS < SEQUENCE_MODULUS


def last_sequence(base_sequence: int, count: int) -> int:
    """The sequence number of the last record of a batch of C{count} records (wrapping)."""
    return (base_sequence + count - 1) % SEQUENCE_MODULUS


def next_sequence(last: int) -> int:
    """The sequence number that follows C{last} (wrapping)."""
    return 0 if last == MAX_SEQUENCE else last + 1


class Outcome(enum.Enum):
    """What the partition does with a batch; L{code} is the wire error code it is answered with."""

    #: Append it: the first batch of its producer (or epoch) with sequence 0, or the next in sequence;
    #: also every batch of a producer that is not idempotent (producer id -1).
    NEW = "NEW"
    #: Already stored: answer with the original offsets (once they are committed), store nothing.
    DUPLICATE = "DUPLICATE"
    #: Not the next sequence and not a remembered batch: a gap, or older than what is remembered.
    OUT_OF_ORDER_SEQUENCE = "OUT_OF_ORDER_SEQUENCE"
    #: The epoch is older than the one the partition knows: a newer instance of the producer exists.
    PRODUCER_FENCED = "PRODUCER_FENCED"
    #: No state for this producer id and epoch (never seen, expired, evicted), and the sequence is not 0.
    UNKNOWN_PRODUCER_ID = "UNKNOWN_PRODUCER_ID"
    #: A new producer, but the partition's table is full of producers active too recently to evict.
    TOO_MANY_PRODUCERS = "TOO_MANY_PRODUCERS"
    #: The producer fields are out of range or inconsistent.
    INVALID = "INVALID"

    @property
    def code(self) -> str | None:
        """The wire error code (None for NEW and DUPLICATE, which are answered as successes)."""
        if self in (Outcome.NEW, Outcome.DUPLICATE):
            return None
        if self is Outcome.INVALID:
            return "INVALID_PARAMS"
        return str(self.value)

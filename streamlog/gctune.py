"""Garbage-collector settings for processes that move many messages.

CPython runs a young-generation collection every 700 container allocations.
A broker parsing SendBatch requests, or a consumer parsing Poll answers,
allocates a dict per message, so collections run every few hundred
messages and each promotes the batch in flight to older generations, whose
collections then walk every long-lived object of the process.  Measured on
the development machine: a consumer reading 100-byte messages went from 1.04M
to 1.28M msgs/s with the young threshold raised (the same as with the
collector off).

Raising the threshold only delays the collection of reference cycles, which
the message path does not create; memory stays bounded by the threshold.
"""

from __future__ import annotations

import gc

#: Young-generation threshold for streamlog processes (CPython's default is 700).
THROUGHPUT_THRESHOLD = 50_000


def tune_for_throughput(threshold: int = THROUGHPUT_THRESHOLD) -> tuple[int, int, int]:
    """Collect young garbage less often, and freeze what start-up allocated.

    Returns the previous thresholds.  C{threshold=0} leaves everything as it is.
    Call it once, after start-up (imports, configuration), in a process of
    your own: it changes the whole interpreter.
    """
    previous = gc.get_threshold()
    if threshold:
        gc.collect()
        gc.freeze()  # start-up objects leave the generations every collection walks
        gc.set_threshold(threshold, previous[1], previous[2])
    return previous

"""Measure what a producer-state snapshot saves at open: CPU of rebuilding a partition's table.

    python tests/idempotence/measure_snapshot_open.py [BATCHES] [DIR]

Writes BATCHES (default 1,000,000) one-record idempotent batches of 100
producers to one segmented partition log (default segment size, 128 MiB),
through the ProducerTrackingLog a replica writes through, each step of 1,000
fsynced and then committed as a group of one does (so snapshots are written at
its rolls and every interval, as of the commit index), then times, in CPU seconds (time.process_time), opening
it three ways, interleaved over three rounds:

- full scan: no snapshot file (they are moved aside): every batch header read;
- after a crash: the files the rolls wrote, the tail after the newest replayed;
- after a clean close: the file the close wrote (at the log's end).

Each open builds the table and checks it equals the full scan's.  Not a test
(it takes minutes); the figures are in docs/storage.md.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

from streamlog.cluster.producer_log import ProducerTrackingLog, rebuild_with_report
from streamlog.idempotence.table import ProducerStateTable
from streamlog.raft.log import Entry
from streamlog.storage import producer_snapshots
from streamlog.storage.base import RecordBatch
from streamlog.storage.log import SegmentedLog

PRODUCERS = 100
T0 = 1_800_000_000_000


def build(directory: str, batches: int) -> None:
    log = SegmentedLog(directory)
    tracking = ProducerTrackingLog(log, ProducerStateTable())
    value = b'"' + b"v" * 100 + b'"'
    step = 1000
    for start in range(0, batches, step):
        entries = []
        for i in range(start, min(start + step, batches)):
            record = b'{"offset":%d,"timestamp":%d,"key":null,"value":%b,"headers":{}}' % (i, T0, value)
            entries.append(Entry(i + 1, 1, RecordBatch(
                base_offset=i, count=1, term=1, first_timestamp=T0, max_timestamp=T0, payload=record,
                producer_id=i % PRODUCERS, producer_epoch=0, base_sequence=i // PRODUCERS)))
        tracking.append(entries)
        log.sync()  # as a group of one: each step fsynced, then committed
        tracking.mark_committed(log.last_index)
    log.checkpoint()
    crash = os.path.join(directory, "crash")
    os.makedirs(crash)
    for _, path in producer_snapshots.listing(directory):  # what the rolls wrote (a crash writes nothing more)
        shutil.copy(path, crash)
    assert tracking.write_snapshot(sync=True)  # the clean close's
    log.close()


def timed_open(directory: str, files: list[str]) -> tuple[float, object, ProducerStateTable]:
    for _, path in producer_snapshots.listing(directory):
        os.unlink(path)
    for path in files:
        shutil.copy(path, directory)
    log = SegmentedLog(directory)
    t0 = time.process_time()
    table, report = rebuild_with_report(log)
    cpu = time.process_time() - t0
    log.close()
    return cpu, report, table


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    directory = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="producer-snapshots-")
    t0 = time.process_time()
    build(directory, batches)
    print(f"built {batches:,} batches in {time.process_time() - t0:.1f} s CPU ({directory}); "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    crash = os.path.join(directory, "crash")
    clean = [p for _, p in producer_snapshots.listing(directory)]
    aside = os.path.join(directory, "clean")
    os.makedirs(aside)
    for path in clean:
        shutil.move(path, aside)
    cases = {"full scan": [], "after a crash": [os.path.join(crash, n) for n in sorted(os.listdir(crash))],
             "after a clean close": [os.path.join(aside, n) for n in sorted(os.listdir(aside))]}
    reference = None
    for round_ in range(3):
        for name, files in cases.items():
            cpu, report, table = timed_open(directory, files)
            shape = {p: [(b.base_sequence, b.raft_index) for b in table.batches_of(p)] for p in table.producer_ids()}
            if reference is None:
                reference = shape
            assert shape == reference, f"{name}: a different table"
            print(f"round {round_ + 1}: {name}: {cpu:.3f} s CPU, {report}, load {os.getloadavg()[0]:.1f}",
                  flush=True)


if __name__ == "__main__":
    main()

"""What the idempotent producer's dedupe state costs per batch, against what a Send costs the broker.

Not a test: run it by hand (the figures are in docs/storage.md, "Idempotent producers").

    PYTHONPATH=. .venv/bin/python benchmarks/producer_state_bench.py

Prints, per case, the best of several runs, in nanoseconds of CPU per batch
(C{time.process_time}: the machine is shared, and CPU time is what other
processes disturb least; the loop's own bookkeeping is included):

* C{check} + C{apply} of a batch that continues its producer's sequence
  (the leader's path for every new batch), with 1, 100 and 10,000
  producers writing in turn to one partition (the table's bound);
* C{check} of a retry (a DUPLICATE, found in the window);
* the broker's own time for one C{SendBatch} of 1 and of 100 records of
  100 bytes (C{BrokerProtocol.dataReceived} of the request line on the
  in-memory harness, C{acks=none}: no network, no fsync, so the smallest
  per-batch cost a Send has, which makes the ratio the worst case).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from streamlog import wire  # noqa: E402
from streamlog.idempotence.table import ProducerStateTable  # noqa: E402
from streamlog.testing import BrokerHarness  # noqa: E402

BATCHES = 100_000
RUNS = 5


def check_apply(producers: int) -> float:
    """ns per batch of check + apply, C{producers} writing in turn, batches of 10 records."""
    table = ProducerStateTable()
    seqs = [0] * producers
    index = offset = 0
    now = 1_700_000_000_000
    check, apply = table.check, table.apply
    # warm up: every producer known, windows full
    for _ in range(6):
        for pid in range(producers):
            index += 1
            apply(pid, 0, seqs[pid], 10, offset, index, now)
            seqs[pid] += 10
            offset += 10
    start = time.process_time()
    for i in range(BATCHES):
        pid = i % producers
        seq = seqs[pid]
        decision = check(pid, 0, seq, 10, now)
        index += 1
        apply(pid, 0, seq, 10, offset, index, now)
        seqs[pid] = seq + 10
        offset += 10
        if i % 1000 == 0:
            table.mark_committed(index - 100)  # what Commit effects do; keeps the undo journal short
    elapsed = time.process_time() - start
    assert decision.outcome.name == "NEW"
    return elapsed / BATCHES * 1e9


def duplicate_check() -> float:
    table = ProducerStateTable()
    for k in range(5):
        table.apply(1, 0, 10 * k, 10, 10 * k, k + 1, 0)
    start = time.process_time()
    for _ in range(BATCHES):
        decision = table.check(1, 0, 20, 10, 0)
    elapsed = time.process_time() - start
    assert decision.outcome.name == "DUPLICATE"
    return elapsed / BATCHES * 1e9


def send_batch(records: int) -> float:
    """ns the broker spends on one SendBatch of C{records} records of 100 bytes (acks=none)."""
    harness = BrokerHarness()
    conn = harness.connect()
    line = wire.encode_request(1, "SendBatch", {"topic": "bench", "acks": "none",
                                                "messages": [{"value": "v" * 100}] * records})
    receive = conn.protocol.dataReceived
    receive(line)  # creates the topic
    n = 2000
    start = time.process_time()
    for _ in range(n):
        receive(line)
    elapsed = time.process_time() - start
    harness.stop()
    return elapsed / n * 1e9


def main() -> None:
    # The cases run interleaved, RUNS rounds, so that a busy moment of the machine hits all of them.
    cases = [(f"check + apply, {p} producer(s) in turn", check_apply, (p,)) for p in (1, 100, 10_000)]
    cases.append(("check of a retry (DUPLICATE)", duplicate_check, ()))
    cases += [(f"broker: SendBatch of {r} x 100 B, acks=none", send_batch, (r,)) for r in (1, 100)]
    rounds = [[f(*args) for _, f, args in cases] for _ in range(RUNS)]
    for k, (name, _, _) in enumerate(cases):
        print(f"{name:<48} {min(r[k] for r in rounds):>12,.0f} ns/batch (CPU; best of {RUNS})")
    for k in (4, 5):
        ratios = sorted(max(r[:3]) / r[k] for r in rounds)
        print(f"worst check + apply / {cases[k][0].split(': ')[1]:<30} median {100 * ratios[len(ratios) // 2]:5.2f} %, "
              f"range {100 * ratios[0]:.2f}-{100 * ratios[-1]:.2f} % (per round)")


if __name__ == "__main__":
    main()

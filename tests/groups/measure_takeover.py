"""How long a coordinator taking over an offsets partition replays it, before and after snapshots.

Not a test (pytest does not collect it): run it by hand,

    PYTHONPATH=. /work/main/.venv/bin/python tests/groups/measure_takeover.py 1000000

It fills one offsets partition (memory storage, one node) with N commit records of
100 groups x 10 partitions (written in batches of 1,000 through Broker.send, as the
coordinator writes them), then measures the CPU time (time.process_time) of the
replay a new coordinator does:

  - "full": the whole partition (what every take-over cost before snapshots, and
    still does with --offsets-snapshot-records 0);
  - "snapshot": after a snapshot of the groups was appended and compaction removed
    the records before it, as every node does at a retention check.

Both replays go through GroupService._load, in slices of --offsets-replay-slice-records
(the clock is advanced until it is done).
"""

from __future__ import annotations

import sys
import time

from twisted.internet.task import Clock

from streamlog import wire
from streamlog.broker.broker import BrokerConfig
from streamlog.groups.config import OFFSETS_TOPIC, GroupConfig
from streamlog.testing import BrokerHarness


def fill(harness: BrokerHarness, count: int) -> None:
    groups = harness.broker.groups
    topic = groups._offsets_topic()
    for start in range(0, count, 1000):
        messages = []
        for n in range(start, min(count, start + 1000)):
            group = f"g{n % 100}"
            value = {"type": "commit", "group": group, "offsets": [
                {"topic": "orders", "partition": n % 10, "offset": n, "metadata": None}]}
            messages.append({"value": value, "key": group, "partition": 0})
        harness.broker.send(wire.SendParams(topic=OFFSETS_TOPIC, acks="leader", messages=messages))
    assert topic.partitions[0].high_watermark == count


def replay(harness: BrokerHarness) -> tuple[float, int]:
    service = harness.broker.groups
    replica = service.broker.topics[OFFSETS_TOPIC].partitions[0]
    service.shards.clear()
    began = time.process_time()
    shard = service._load(replica)
    while shard.replay_at is not None:
        harness.clock.advance(0)
    return time.process_time() - began, replica.high_watermark - replica.start_offset


def main(count: int) -> None:
    harness = BrokerHarness(clock=Clock(), config=BrokerConfig(groups=GroupConfig(offsets_partitions=1)))
    began = time.process_time()
    fill(harness, count)
    print(f"filled {count:,} commit records in {time.process_time() - began:.1f} s CPU")
    seconds, records = replay(harness)
    print(f"full replay: {records:,} records, {seconds:.2f} s CPU ({seconds / records * 1e6:.2f} us/record)")
    shard = harness.broker.groups.shards[0]
    harness.broker.groups._write(shard, "", shard.snapshot(), snapshot=True)
    harness.settle()
    began = time.process_time()
    harness.broker.apply_retention()  # finds the marker (a byte search of every record once), compacts
    scan = time.process_time() - began
    seconds, records = replay(harness)
    print(f"compaction scan of {count:,} records: {scan:.2f} s CPU (once per record, at retention checks)")
    print(f"replay from the snapshot: {records:,} records, {seconds * 1000:.1f} ms CPU")
    offsets = harness.broker.groups.shards[0].offsets
    assert len(offsets.groups) == 100 and offsets.groups["g99"][("orders", 9)].offset == count - 1
    harness.broker.groups.stop()
    harness.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)

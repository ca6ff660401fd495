#!/usr/bin/env python
"""By-hand probe: CPU a follower's peer connection spends receiving one AppendEntries.

    PYTHONPATH=. .venv/bin/python benchmarks/peer_receive_probe.py --reads 65536 1048576

One `PeerTransport` encodes an AppendEntries holding one record batch of `--batch-bytes`
(500 KiB: the 500 x 1 KiB batches of the cluster benchmarks); the wire bytes are cut into
reads of each given size and fed to another transport's `dataReceived` `--messages` times,
up to the host's `deliver` (header parsing, body extraction, frame decoding and CRC check;
no log, no reactor). It prints CPU time (`time.process_time`) per message, which the load of
a shared machine changes far less than wall-clock time. It uses only the transport's public
surface, so the same file measures older code (run it with PYTHONPATH at that checkout).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from streamlog.raft.log import Entry
from streamlog.raft.messages import AppendEntries
from streamlog.raft.transport import PeerTransport
from streamlog.storage.base import RecordBatch


class _Host:
    """Counts deliveries; everything else a transport tells its host is ignored."""

    def __init__(self) -> None:
        self.delivered = 0

    def deliver(self, *args: Any) -> None:
        self.delivered += 1

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kw: None


def wire_bytes(batch_bytes: int) -> bytes:
    """The bytes node "a" writes for one AppendEntries of one batch towards node "b"."""
    clock = Clock()
    sender = PeerTransport("a", ["a", "b"], _Host(), clock, cluster_id="c")
    conn = sender.factory(expect="b").buildProtocol(None)
    out = StringTransport()
    conn.makeConnection(out)
    conn.dataReceived(orjson.dumps({"t": "hello", "v": 1, "cluster": "c", "node": "b", "inc": None}) + b"\n")
    out.clear()
    batch = RecordBatch(base_offset=0, count=500, term=1, first_timestamp=0, max_timestamp=0,
                        payload=b"x" * batch_bytes)
    sender.send("g", "b", "a", AppendEntries(1, "a", 0, 0, (Entry(1, 1, batch),), 0))
    clock.advance(0)
    return out.value()


def measure(wire: bytes, read: int, messages: int) -> float:
    """CPU seconds per message, fed in reads of `read` bytes."""
    host = _Host()
    receiver = PeerTransport("b", ["a", "b"], host, Clock(), cluster_id="c")
    conn = receiver.factory().buildProtocol(None)
    conn.makeConnection(StringTransport())
    conn.dataReceived(orjson.dumps({"t": "hello", "v": 1, "cluster": "c", "node": "a", "inc": None}) + b"\n")
    pieces = [wire[i : i + read] for i in range(0, len(wire), read)]
    began = time.process_time()
    for _ in range(messages):
        for piece in pieces:
            conn.dataReceived(piece)
    spent = time.process_time() - began
    assert host.delivered == messages, (host.delivered, messages)
    return spent / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--batch-bytes", type=int, default=512_000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--reads", type=int, nargs="+", default=[65536, 1048576], help="read sizes (bytes)")
    args = parser.parse_args()
    wire = wire_bytes(args.batch_bytes)
    for read in args.reads:
        per = measure(wire, read, args.messages)
        print(f"{len(wire):,} bytes in reads of {read:,}: {per * 1e6:.0f} us CPU per AppendEntries")


if __name__ == "__main__":
    main()

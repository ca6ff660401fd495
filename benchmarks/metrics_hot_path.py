#!/usr/bin/env python
"""CPU time per request on the broker's hot path, in one process, with no sockets: what the
metrics' counters cost, measured against the same code without them (a base checkout).

    .venv/bin/python benchmarks/metrics_hot_path.py [ROUNDS]               # this checkout
    (cd BASE && PYTHONPATH=BASE .venv/bin/python /path/to/metrics_hot_path.py)  # the base

A broker on a Clock (streamlog.testing.BrokerHarness, memory storage) gets request lines
through its protocol's dataReceived, as the reactor would hand them over, and answers into a
StringTransport: Send (one message, acks=leader: answered at once), SendBatch (100 messages)
and Poll (100 messages). time.process_time() around each loop: CPU seconds of this process
only, which another process on a busy machine shifts much less than it shifts wall time.
Prints one JSON line per round: microseconds of CPU per request, per kind.
"""

from __future__ import annotations

import gc
import json
import sys
import time

from streamlog import wire
from streamlog.testing import BrokerHarness

COUNTS = {"send": 20000, "send_batch": 2000, "poll": 20000}


def measure() -> dict[str, float | bool]:
    h = BrokerHarness()
    metrics = hasattr(h.broker, "requests")  # the counters' code is there
    conn = h.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 1})
    lines = {
        "send": wire.encode_request(1, "Send", {"topic": "t", "value": "x" * 100, "acks": "leader"}),
        "send_batch": wire.encode_request(2, "SendBatch", {"topic": "t", "acks": "leader",
                                                           "messages": [{"value": "x" * 100}] * 100}),
        "poll": wire.encode_request(3, "Poll", {"topic": "t", "partition": 0, "offset": 0, "max_messages": 100}),
    }
    out: dict[str, float | bool] = {}
    for kind in ("send", "send_batch", "poll"):
        line = lines[kind]
        gc.collect()
        began = time.process_time()
        for i in range(COUNTS[kind]):
            conn.protocol.dataReceived(line)
            if i % 256 == 0:
                conn.transport.clear()
        out[kind] = (time.process_time() - began) / COUNTS[kind] * 1e6
        conn.transport.clear()
    h.stop()
    out["metrics"] = metrics
    return out


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    import streamlog

    for _ in range(rounds):
        result = measure()
        print(json.dumps({"code": streamlog.__file__, **{k: round(v, 3) if isinstance(v, float) else v
                                                         for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
    main()

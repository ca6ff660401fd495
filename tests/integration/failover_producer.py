"""A child process for test_idempotent_failover: an idempotent Producer sending N numbered messages.

    python failover_producer.py BOOTSTRAP TOPIC COUNT

Sends ``0 .. COUNT-1`` to partition 0 with several batches in flight, prints
``acked <n>`` as acknowledgements arrive (the test kills the leader meanwhile),
then one JSON line ``{"offsets": [...], "retries": r, "requests": q}`` and exits 0
once every message is acknowledged (1 if any failed).
"""

from __future__ import annotations

import sys

import orjson
from twisted.internet import defer, reactor, task

from streamlog.client import ClusterClient, Producer


@defer.inlineCallbacks
def main(bootstrap: str, topic: str, count: int):  # type: ignore[no-untyped-def]
    client = ClusterClient(bootstrap, reactor=reactor, request_timeout=2.0)
    producer = Producer(client, linger_ms=2, batch_size=20, max_in_flight=5, delivery_timeout=60.0)
    acked = [0]
    offsets: list[int | None] = [None] * count

    def done(result, i):  # type: ignore[no-untyped-def]
        offsets[i] = result[1]
        acked[0] += 1
        if acked[0] % 100 == 0:
            print(f"acked {acked[0]}", flush=True)

    ds = []
    for i in range(count):
        d = producer.send(topic, i, partition=0)
        d.addCallback(done, i)
        ds.append(d)
        if i % 20 == 19:
            yield task.deferLater(reactor, 0.005, lambda: None)  # a steady stream, batches in flight
    results = yield defer.DeferredList(ds, consumeErrors=True)
    failed = [r for ok, r in results if not ok]
    print(orjson.dumps({"offsets": offsets, "retries": producer.retries, "requests": producer.requests_sent,
                        "failed": [str(f.value) for f in failed[:3]]}).decode(), flush=True)
    yield client.close()
    return 1 if failed else 0


def run() -> None:
    status = []

    def finish(code: int) -> None:
        status.append(code)
        reactor.stop()

    def crashed(f):  # type: ignore[no-untyped-def]
        print(f"crashed: {f.getTraceback()}", flush=True)
        finish(2)

    reactor.callWhenRunning(lambda: main(sys.argv[1], sys.argv[2], int(sys.argv[3])).addCallbacks(finish, crashed))
    reactor.run()
    sys.exit(status[0] if status else 3)


if __name__ == "__main__":
    run()

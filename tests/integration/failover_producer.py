"""A child process for test_idempotent_failover: an idempotent Producer sending N numbered messages.

    python failover_producer.py BOOTSTRAP TOPIC COUNT [HISTORY]

Sends ``0 .. COUNT-1`` to partition 0 with several batches in flight, prints
``acked <n>`` as acknowledgements arrive (the test kills the leader meanwhile),
then one JSON line ``{"offsets": [...], "retries": r, "requests": q}`` and exits 0
once every message is acknowledged (1 if any failed).  With HISTORY, every send
is also recorded there as the chaos runner records its producers
(L{streamlog.chaos.history.Recorder}: invoke, then ok at its offset or failed),
for the chaos checker to judge.
"""

from __future__ import annotations

import sys

import orjson
from twisted.internet import defer, reactor, task

from streamlog.chaos.history import Recorder
from streamlog.client import ClusterClient, Producer


@defer.inlineCallbacks
def main(bootstrap: str, topic: str, count: int, history: str | None):  # type: ignore[no-untyped-def]
    client = ClusterClient(bootstrap, reactor=reactor, request_timeout=2.0)
    producer = Producer(client, linger_ms=2, batch_size=20, max_in_flight=8, delivery_timeout=60.0)
    acked = [0]
    offsets: list[int | None] = [None] * count
    out = open(history, "wb") if history else None
    recorder = Recorder(out, meta={"what": "failover_producer"}) if out is not None else None

    def done(result, i, op):  # type: ignore[no-untyped-def]
        offsets[i] = result[1]
        if recorder is not None:
            recorder.send_ok(op, result[0], result[1])
        acked[0] += 1
        if acked[0] % 100 == 0:
            print(f"acked {acked[0]}", flush=True)
        return result

    def failed(f, op):  # type: ignore[no-untyped-def]
        if recorder is not None:
            recorder.send_failed(op, f.value)
        return f

    ds = []
    for i in range(count):
        op = recorder.invoke_send("p1", topic, i, partition=0, idempotent=True) if recorder is not None else None
        d = producer.send(topic, i, partition=0)
        d.addCallbacks(done, failed, callbackArgs=(i, op), errbackArgs=(op,))
        ds.append(d)
        if i % 20 == 19:
            yield task.deferLater(reactor, 0.005, lambda: None)  # a steady stream, batches in flight
    results = yield defer.DeferredList(ds, consumeErrors=True)
    failed = [r for ok, r in results if not ok]
    print(orjson.dumps({"offsets": offsets, "retries": producer.retries, "requests": producer.requests_sent,
                        "failed": [str(f.value) for f in failed[:3]]}).decode(), flush=True)
    if recorder is not None:
        recorder.close()
        out.close()
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

    history = sys.argv[4] if len(sys.argv) > 4 else None
    reactor.callWhenRunning(lambda: main(sys.argv[1], sys.argv[2], int(sys.argv[3]), history).addCallbacks(
        finish, crashed))
    reactor.run()
    sys.exit(status[0] if status else 3)


if __name__ == "__main__":
    run()

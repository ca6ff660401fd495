"""The load processes of C{streamlog bench}: each runs its own Twisted reactor.

They are started by L{streamlog.bench.run} with the multiprocessing "spawn"
method, so each one is a fresh interpreter (its own core, its own reactor).
Every loop is bounded twice: by a message count and by a deadline.

Timestamps are C{CLOCK_MONOTONIC}, system-wide on Linux, so a send time taken
in a producer process can be compared with a receive time in a consumer process.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

_MONO = time.CLOCK_MONOTONIC


def now() -> float:
    return time.clock_gettime(_MONO)


def now_ns() -> int:
    return time.clock_gettime_ns(_MONO)


def _sleep(reactor: Any, seconds: float) -> Deferred:
    d: Deferred = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _run(body: Any, cfg: dict[str, Any], *extra: Any) -> dict[str, Any]:
    """Run C{body(reactor, cfg, out, *extra)} (a coroutine function) in a fresh reactor."""
    from twisted.internet import reactor

    from streamlog.gctune import tune_for_throughput

    tune_for_throughput(cfg.get("gc_threshold", 0))

    out: dict[str, Any] = {}

    def go() -> None:
        d = ensureDeferred(body(reactor, cfg, out, *extra))

        def failed(f: Any) -> None:
            out["error"] = f.getTraceback()

        d.addErrback(failed)
        d.addBoth(lambda _: reactor.stop())

    def hard_stop() -> None:
        out.setdefault("error", "hard deadline reached: the worker was stopped")
        reactor.stop()

    reactor.callWhenRunning(go)
    reactor.callLater(cfg["max_seconds"] + cfg.get("grace_seconds", 30.0), hard_stop)
    reactor.run(installSignalHandlers=False)
    return out


def _client(reactor: Any, cfg: dict[str, Any]) -> Any:
    from streamlog.client import ClusterClient

    # cfg["endpoint"]: one endpoint string, or a cluster's bootstrap list of them (comma-separated).
    return ClusterClient(cfg["endpoint"], reactor=reactor, request_timeout=cfg["request_timeout"])


async def _connect(reactor: Any, cfg: dict[str, Any]) -> Any:
    client = _client(reactor, cfg)
    await client.when_connected(fail_after_failures=20)
    await client.ping()
    return client


def _entry(body: Any, cfg: dict[str, Any], idx: int, counters: Any, ready_q: Any, result_q: Any,
           start_evt: Any) -> None:
    try:
        out = _run(body, cfg, idx, counters, ready_q, start_evt)
    except BaseException:  # pragma: no cover - reported to the parent
        out = {"error": traceback.format_exc()}
    out["idx"] = idx
    result_q.put(out)


# --- produce ---------------------------------------------------------------------

async def _produce(reactor: Any, cfg: dict[str, Any], out: dict[str, Any], idx: int, counters: Any,
                   ready_q: Any, start_evt: Any) -> None:
    from streamlog.client import Producer

    client = await _connect(reactor, cfg)
    topic, acks, mode = cfg["topic"], cfg["acks"], cfg["client"]
    n, batch, window = cfg["messages"], cfg["batch"], cfg["in_flight"]
    value = "x" * cfg["size"]
    keys = [f"key-{k}" for k in range(cfg.get("keys") or 0)]
    if keys:  # each batch cycles on through the keys
        templates = [[{"value": value, "key": keys[(b * batch + i) % len(keys)]} for i in range(batch)]
                     for b in range(max(1, min(len(keys), 64)))]
    else:
        templates = [[{"value": value} for _ in range(batch)]]
    template = templates[0]
    # Warm-up on a topic of its own: learns the durability the server answers with.
    # (acks=none gets no answer: its probe asks with acks=all.)
    probe = await client.send_batch(cfg["topic"] + "-warmup", template[:10],
                                    acks=acks if acks != "none" else "all")
    out["durability"] = (probe.get("durability") if probe else None, acks if acks != "none" else "all")
    producer = Producer(client, linger_ms=cfg["linger_ms"], batch_size=batch, max_in_flight=window, acks=acks,
                        idempotent=cfg.get("idempotent", acks != "none")) if mode == "producer" else None

    ready_q.put(idx)
    start_evt.wait(60)

    st = {"sent": 0, "acked": 0, "inflight": 0, "filling": False, "again": False}
    lat: list[float] = []
    done: Deferred = Deferred()
    t_start = now()
    cpu0 = time.process_time()
    deadline = t_start + cfg["max_seconds"]

    def failed(f: Any) -> None:
        st["inflight"] -= 1
        out.setdefault("error", f.getTraceback())
        if not done.called:
            done.callback(None)

    def acked(result: Any, t0: float, k: int) -> None:
        lat.append((now() - t0) * 1000.0)
        st["inflight"] -= 1
        st["acked"] += k
        counters[idx] = st["acked"]
        fill()

    def fill() -> None:
        if st["filling"]:  # an answer that fired synchronously (acks=none)
            st["again"] = True
            return
        st["filling"] = True
        try:
            while True:
                st["again"] = False
                while st["sent"] < n and st["inflight"] < window and "error" not in out:
                    if now() > deadline:
                        out["timed_out"] = True
                        break
                    k = min(batch, n - st["sent"])
                    t0 = now()
                    if producer is not None and keys:
                        first = st["sent"]
                        for i in range(k):
                            d = producer.send(topic, value, key=keys[(first + i) % len(keys)])
                    elif producer is not None:
                        for _ in range(k):
                            d = producer.send(topic, value)
                    else:
                        chosen = templates[(st["sent"] // batch) % len(templates)]
                        d = client.send_batch(topic, chosen if k == batch else chosen[:k], acks=acks)
                    st["inflight"] += 1
                    st["sent"] += k
                    d.addCallbacks(acked, failed, callbackArgs=(t0, k))
                if not st["again"]:
                    break
        finally:
            st["filling"] = False
        if st["inflight"] == 0 and not done.called:
            done.callback(None)

    fill()
    await done
    if producer is not None:
        await producer.flush()  # keyed messages of a "batch" may sit in other partitions' requests
    if acks == "none":
        await client.ping()  # answered after every earlier request on this connection was handled
    t_end = now()
    out.update(cpu_s=time.process_time() - cpu0, sent=st["sent"], acked=st["acked"], t_start=t_start, t_end=t_end, lat_ms=lat,
               what="per-batch ack latency: first send of a batch to its acknowledgement",
               requests=producer.requests_sent if producer is not None else -(-st["sent"] // batch))
    await client.close()


def produce_main(cfg: dict[str, Any], idx: int, counters: Any, ready_q: Any, result_q: Any,
                 start_evt: Any) -> None:
    _entry(_produce, cfg, idx, counters, ready_q, result_q, start_evt)


# --- consume ---------------------------------------------------------------------

async def _consume(reactor: Any, cfg: dict[str, Any], out: dict[str, Any], idx: int, counters: Any,
                   ready_q: Any, start_evt: Any) -> None:
    from streamlog.client import Consumer

    client = await _connect(reactor, cfg)
    topic = cfg["topic"]
    expected: dict[int, int] = {int(p): c for p, c in cfg["expected"].items()}
    ready_q.put(idx)
    start_evt.wait(60)
    t_start = now()
    cpu0 = time.process_time()
    deadline = t_start + cfg["max_seconds"]
    lat: list[float] = []
    got = {"n": 0, "bytes": 0}

    async def one(partition: int, want: int) -> None:
        c = Consumer(client, topic, partition, start=0, max_messages=cfg["batch"],
                     max_bytes=cfg["max_bytes"], max_wait_ms=100, prefetch=True)
        mine = 0
        try:
            while mine < want:
                if now() > deadline:
                    out["timed_out"] = True
                    return
                t0 = now()
                messages = await c.poll()
                lat.append((now() - t0) * 1000.0)
                mine += len(messages)
                got["n"] += len(messages)
                counters[idx] = got["n"]
        finally:
            c.close()

    from twisted.internet.defer import gatherResults

    await gatherResults([ensureDeferred(one(p, w)) for p, w in expected.items()], consumeErrors=True)
    t_end = now()
    out.update(cpu_s=time.process_time() - cpu0, received=got["n"], t_start=t_start, t_end=t_end, lat_ms=lat,
               what="per-poll wait: Consumer.poll() call to its result (prefetch on)")
    await client.close()


def consume_main(cfg: dict[str, Any], idx: int, counters: Any, ready_q: Any, result_q: Any,
                 start_evt: Any) -> None:
    _entry(_consume, cfg, idx, counters, ready_q, result_q, start_evt)


# --- end to end ------------------------------------------------------------------

async def _e2e_consumer(reactor: Any, cfg: dict[str, Any], out: dict[str, Any], idx: int, counters: Any,
                        ready_q: Any, start_evt: Any) -> None:
    from streamlog.client import Consumer

    client = await _connect(reactor, cfg)
    topic, total, warmup = cfg["topic"], cfg["messages"], cfg["warmup"]
    lat: list[float] = []
    got = {"n": 0}
    consumers = [Consumer(client, topic, p, start=0, max_messages=cfg["batch"], max_wait_ms=500, prefetch=True)
                 for p in cfg["assigned"]]
    done: Deferred = Deferred()
    deadline = now() + cfg["max_seconds"]
    cpu0, t_start = time.process_time(), now()

    async def one(c: Any) -> None:
        while got["n"] < total and now() < deadline and not done.called:
            messages = await c.poll()
            t = now_ns()
            for m in messages:
                v = m["value"]
                if v["i"] >= warmup:
                    lat.append((t - v["t"]) / 1e6)
            got["n"] += len(messages)
            counters[idx] = got["n"]
        if not done.called:
            done.callback(None)

    for c in consumers:
        ensureDeferred(one(c)).addErrback(lambda f: (out.setdefault("error", f.getTraceback()),
                                                     done.called or done.callback(None)))
    await _sleep(reactor, 0.2)  # the first long polls are waiting on the server
    ready_q.put(idx)
    await done
    for c in consumers:
        c.close()
    out.update(cpu_s=time.process_time() - cpu0, t_start=t_start, t_end=now(), received=got["n"], lat_ms=lat, timed_out=now() >= deadline,
               what="end to end: producer send() to consumer receipt, CLOCK_MONOTONIC across processes")
    await client.close()


def e2e_consumer_main(cfg: dict[str, Any], idx: int, counters: Any, ready_q: Any, result_q: Any,
                      start_evt: Any) -> None:
    _entry(_e2e_consumer, cfg, idx, counters, ready_q, result_q, start_evt)


async def _e2e_producer(reactor: Any, cfg: dict[str, Any], out: dict[str, Any], idx: int, counters: Any,
                        ready_q: Any, start_evt: Any) -> None:
    from streamlog.client import Producer

    client = await _connect(reactor, cfg)
    topic, n, rate, acks = cfg["topic"], cfg["messages"], cfg["rate"], cfg["acks"]
    probe = await client.send_batch(cfg["topic"] + "-warmup", [{"value": 0}], acks=acks if acks != "none" else "all")
    out["durability"] = (probe.get("durability") if probe else None, acks if acks != "none" else "all")
    first = cfg["first_index"]
    producer = Producer(client, linger_ms=0, batch_size=cfg["batch"], max_in_flight=cfg["in_flight"], acks=acks,
                        idempotent=cfg.get("idempotent", acks != "none"))
    pad = "x" * max(0, cfg["size"] - 40)
    ready_q.put(idx)
    start_evt.wait(60)
    lat: list[float] = []
    done: Deferred = Deferred()
    st = {"i": 0, "acked": 0}
    t_start = now()
    cpu0 = time.process_time()
    deadline = t_start + cfg["max_seconds"]
    interval = 1.0 / rate

    def acked(_: Any, t0: float) -> None:
        lat.append((now() - t0) * 1000.0)
        st["acked"] += 1
        if st["acked"] >= st["i"] and st["i"] >= n and not done.called:
            done.callback(None)

    def failed(f: Any) -> None:
        out.setdefault("error", f.getTraceback())
        if not done.called:
            done.callback(None)

    def tick() -> None:
        t = now()
        while st["i"] < n and t_start + st["i"] * interval <= t:
            if t > deadline:
                out["timed_out"] = True
                st["i"] = n
                break
            i = st["i"]
            t0 = now()
            d = producer.send(topic, {"i": first + i * cfg["stride"], "t": now_ns(), "p": pad})
            d.addCallbacks(acked, failed, callbackArgs=(t0,))
            st["i"] += 1
            t = now()
        counters[idx] = st["i"]
        if st["i"] < n:
            reactor.callLater(max(0.0, t_start + st["i"] * interval - now()), tick)
        elif st["acked"] >= st["i"] and not done.called:
            done.callback(None)

    tick()
    await done
    t_end = now()
    out.update(cpu_s=time.process_time() - cpu0, sent=st["i"], acked=st["acked"], t_start=t_start, t_end=t_end, ack_lat_ms=lat,
               what=f"producer send() to its acknowledgement (acks={acks})")
    await client.close()


def e2e_producer_main(cfg: dict[str, Any], idx: int, counters: Any, ready_q: Any, result_q: Any,
                      start_evt: Any) -> None:
    _entry(_e2e_producer, cfg, idx, counters, ready_q, result_q, start_evt)

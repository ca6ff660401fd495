"""Histories of a model log: valid by construction, and one anomaly injected on demand.

L{generate} runs producers and consumers against a correct in-memory partitioned log
(with retention, maybe outcomes, retries that store a non-idempotent send twice, consumers
that restart) and records what a client would have seen; the checker must find nothing
unsafe in it.  Each C{inject_*} changes such a history so that it shows exactly one kind of
anomaly.  Also the synthetic history of the speed measurement:
C{python tests/chaos/chaos_model.py --ops 1000000}.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streamlog.chaos.history import (  # noqa: E402
    FAIL,
    INFO,
    OK,
    Drain,
    Fault,
    History,
    Poll,
    Send,
    Value,
)

TOPIC = "chaos"
REFUSALS = ("MESSAGE_TOO_LARGE", "LEADER_NOT_AVAILABLE", "SHUTTING_DOWN", "UNKNOWN_PARTITION")
UNKNOWNS = ("TIMEOUT", "CONNECTION_LOST", "NOT_LEADER", "DELIVERY_TIMEOUT")


def generate(rng: random.Random, *, ops: int = 200, partitions: int = 2, producers: int = 3,
             consumers: int = 2, p_fail: float = 0.05, p_info: float = 0.1, p_twice: float = 0.1,
             retention: bool = True, max_poll: int = 8, send_share: float = 0.6) -> History:
    """A valid history of about C{ops} operations (plus the final drain's polls)."""
    logs: list[list[Value]] = [[] for _ in range(partitions)]
    lso = [0] * partitions
    h = History(meta={"model": True})
    names = [f"p{i}" for i in range(producers)]
    idem = {n: rng.random() < 0.5 for n in names}
    counter = dict.fromkeys(names, 0)
    generation = [0] * consumers
    position: list[list[int]] = [[0] * partitions for _ in range(consumers)]
    step = 0

    def next_id() -> tuple[int, float]:
        nonlocal step
        step += 1
        return 2 * step, float(step)  # even ids: room to insert an operation between two

    def poll(process: str, c: int | None, p: int) -> None:
        i, t = next_id()
        pos = position[c][p] if c is not None else drain_pos[p]
        if pos < lso[p] and rng.random() < 0.5:
            h.polls.append(Poll(i, process, t, t + 0.5, TOPIC, p, pos, FAIL, (), None, lso[p], "OFFSET_OUT_OF_RANGE"))
            start = lso[p]
            if c is not None:
                position[c][p] = start
            else:
                drain_pos[p] = start
            return
        if c is not None and rng.random() < 0.05:
            h.polls.append(Poll(i, process, t, t + 0.5, TOPIC, p, pos, INFO, (), None, None, "TIMEOUT"))
            return
        start = max(pos, lso[p])  # an answer from the log start when asked below it
        n = rng.randint(1, max_poll) if c is not None else max_poll * 4
        end = min(len(logs[p]), start + n)
        messages = tuple((o, logs[p][o]) for o in range(start, end))
        h.polls.append(Poll(i, process, t, t + 0.5, TOPIC, p, pos, OK, messages, end, lso[p]))
        if c is not None:
            position[c][p] = end
        else:
            drain_pos[p] = end

    drain_pos = [0] * partitions
    for _ in range(ops):
        r = rng.random()
        if r < send_share:
            name = rng.choice(names)
            counter[name] += 1
            # unique: names count up, and each operation takes a step of its own
            value: Value = f"{name}-{counter[name]}" if rng.random() < 0.8 else step * 1000 + rng.randrange(1000)
            p = rng.randrange(partitions)
            i, t = next_id()
            o = rng.random()
            twice = not idem[name] and rng.random() < p_twice
            if o < p_fail:
                h.sends.append(Send(i, name, t, t + 0.5, TOPIC, value, FAIL, p, None, None, idem[name], rng.choice(REFUSALS)))
            elif o < p_fail + p_info:
                stored = rng.random() < 0.5
                if stored:
                    logs[p].append(value)
                    if twice:
                        logs[p].append(value)
                h.sends.append(Send(i, name, t, t + 0.5, TOPIC, value, INFO, p, None, None, idem[name], rng.choice(UNKNOWNS)))
            else:
                if twice:  # the first attempt landed, its answer was lost; the retry landed too
                    logs[p].append(value)
                logs[p].append(value)
                h.sends.append(Send(i, name, t, t + 0.5, TOPIC, value, OK, p, len(logs[p]) - 1, None, idem[name]))
        elif r < 0.98 or not retention:
            c = rng.randrange(consumers)
            if rng.random() < 0.02:  # the consumer restarts from the log start: a new process
                generation[c] += 1
                position[c] = list(lso)
            poll(f"c{c}.{generation[c]}", c, rng.randrange(partitions))
        else:
            p = rng.randrange(partitions)
            lso[p] = rng.randint(lso[p], len(logs[p]))
            h.faults.append(Fault("retention", None, float(step), float(step)))
    for p in range(partitions):
        drain_pos[p] = lso[p] if rng.random() < 0.5 else 0
        while drain_pos[p] < len(logs[p]):
            poll("drain", None, p)
        poll("drain", None, p)
        h.drains.append(Drain(TOPIC, p, len(logs[p]), float(step)))
    h.meta["log_start"] = list(lso)
    return h


# -- one anomaly each ---------------------------------------------------------------------


def _copy(h: History) -> History:
    return History(list(h.sends), list(h.polls), list(h.faults), list(h.drains), dict(h.meta), h.truncated)


def _fresh_id(h: History) -> int:
    return max([s.id for s in h.sends] + [p.id for p in h.polls] + [0]) + 2


def _append_to_drain(h: History, rng: random.Random, value: Value) -> History | None:
    """Put C{value} one offset past the end of a drained partition, as the drain read it."""
    h = _copy(h)
    d = rng.choice(h.drains)
    last = max((i for i, p in enumerate(h.polls) if p.process == "drain" and p.partition == d.partition
                and p.outcome == OK and p.next_offset == d.end_offset), key=lambda i: h.polls[i].id, default=None)
    if last is None:
        return None
    p = h.polls[last]
    h.polls[last] = dataclasses.replace(p, messages=p.messages + ((d.end_offset, value),), next_offset=d.end_offset + 1)
    h.drains[h.drains.index(d)] = dataclasses.replace(d, end_offset=d.end_offset + 1)
    return h


def _read_values(h: History) -> dict[Value, list[tuple[int, int, int]]]:
    """value -> [(poll index, partition, offset)]"""
    out: dict[Value, list[tuple[int, int, int]]] = {}
    for i, p in enumerate(h.polls):
        if p.outcome == OK:
            for o, v in p.messages:
                out.setdefault(v, []).append((i, p.partition, o))
    return out


def inject_lost(h: History, rng: random.Random) -> History | None:
    """An acknowledged send at an offset the drain found the log does not reach."""
    h = _copy(h)
    d = rng.choice(h.drains)
    h.sends.append(Send(_fresh_id(h), "ghost", 0.0, 1.0, d.topic, "lost-value", OK, d.partition, d.end_offset + rng.randrange(3)))
    return h


def inject_unseen(h: History, rng: random.Random) -> History | None:
    """An acknowledged send to a partition nobody read (not a safety anomaly)."""
    h = _copy(h)
    h.sends.append(Send(_fresh_id(h), "ghost", 0.0, 1.0, "elsewhere", "unseen-value", OK, 0, rng.randrange(5)))
    return h


def _duplicate(h: History, rng: random.Random, idempotent: bool) -> History | None:
    read = _read_values(h)
    candidates = [s.value for s in h.sends if s.idempotent == idempotent and s.outcome != FAIL and s.value in read
                  and len({(p, o) for _, p, o in read[s.value]}) == 1]
    if not candidates:
        return None
    return _append_to_drain(h, rng, rng.choice(candidates))


def inject_duplicate(h: History, rng: random.Random) -> History | None:
    """An idempotent producer's value stored a second time."""
    return _duplicate(h, rng, True)


def inject_retry_duplicate(h: History, rng: random.Random) -> History | None:
    """A non-idempotent producer's value stored a second time (counted, still valid)."""
    return _duplicate(h, rng, False)


def inject_unexpected(h: History, rng: random.Random) -> History | None:
    """A value no send wrote, read by the drain."""
    return _append_to_drain(h, rng, "nobody-sent-this")


def inject_inconsistent(h: History, rng: random.Random) -> History | None:
    """One reader sees another value at an offset the others read (a maybe send's value)."""
    readers: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(h.polls):
        if p.outcome == OK and p.process != "drain":
            for o, _ in p.messages:
                readers.setdefault((p.partition, o), []).append(i)
    drained = {(p.partition, o) for p in h.polls if p.process == "drain" and p.outcome == OK for o, _ in p.messages}
    places = sorted(k for k in readers if k in drained)
    if not places:
        return None
    h = _copy(h)
    partition, offset = rng.choice(places)
    i = rng.choice(readers[(partition, offset)])
    p = h.polls[i]
    h.polls[i] = dataclasses.replace(p, messages=tuple((o, "other-value" if o == offset else v) for o, v in p.messages))
    h.sends.append(Send(_fresh_id(h), "ghost", 0.0, 1.0, TOPIC, "other-value", INFO, partition, None, None, False, "TIMEOUT"))
    return h


def inject_aborted_read(h: History, rng: random.Random) -> History | None:
    """A send that was read is recorded as definitely failed."""
    read = _read_values(h)
    candidates = [i for i, s in enumerate(h.sends) if s.outcome != FAIL and s.value in read]
    if not candidates:
        return None
    h = _copy(h)
    i = rng.choice(candidates)
    h.sends[i] = dataclasses.replace(h.sends[i], outcome=FAIL, offset=None, error="MESSAGE_TOO_LARGE")
    return h


def _consumer_polls(h: History) -> dict[tuple[str, int], list[int]]:
    by: dict[tuple[str, int], list[int]] = {}
    for i, p in enumerate(h.polls):
        if p.process != "drain":
            by.setdefault((p.process, p.partition), []).append(i)
    for idx in by.values():
        idx.sort(key=lambda i: h.polls[i].id)
    return by


def inject_poll_skip(h: History, rng: random.Random) -> History | None:
    """A consumer misses one answer's worth (the drain still read it all)."""
    starts = h.meta["log_start"]
    candidates = []
    for (_, partition), idx in _consumer_polls(h).items():
        ok = [i for i in idx if h.polls[i].outcome == OK]
        for _before, i, after in zip(ok, ok[1:], ok[2:]):
            p, nxt = h.polls[i], h.polls[after]
            if (p.messages and p.offset >= starts[partition] and nxt.offset == p.next_offset
                    and idx.index(after) == idx.index(i) + 1 and (nxt.log_start_offset or 0) < nxt.offset):
                candidates.append(i)
    if not candidates:
        return None
    h = _copy(h)
    del h.polls[rng.choice(candidates)]
    return h


def inject_non_monotonic_poll(h: History, rng: random.Random) -> History | None:
    """A consumer reads one answer's worth again."""
    candidates = [i for idx in _consumer_polls(h).values() for i in idx
                  if h.polls[i].outcome == OK and h.polls[i].messages]
    if not candidates:
        return None
    h = _copy(h)
    i = rng.choice(candidates)
    h.polls.append(dataclasses.replace(h.polls[i], id=h.polls[i].id + 1))
    return h


def inject_non_monotonic_send(h: History, rng: random.Random) -> History | None:
    """Two acknowledged sends of one idempotent producer swap places in the log."""
    by: dict[tuple[str, int], list[int]] = {}
    for i, s in enumerate(h.sends):
        if s.idempotent and s.outcome == OK and s.partition is not None:
            by.setdefault((s.process, s.partition), []).append(i)
    pairs = [(a, b) for idx in by.values() for a, b in zip(idx, idx[1:])]
    if not pairs:
        return None
    h = _copy(h)
    a, b = rng.choice(pairs)
    sa, sb = h.sends[a], h.sends[b]
    assert sa.offset is not None and sb.offset is not None
    h.sends[a] = dataclasses.replace(sa, offset=sb.offset)
    h.sends[b] = dataclasses.replace(sb, offset=sa.offset)
    swap = {sa.offset: sb.value, sb.offset: sa.value}
    for i, p in enumerate(h.polls):
        if p.partition == sa.partition and p.outcome == OK and any(o in swap for o, _ in p.messages):
            h.polls[i] = dataclasses.replace(p, messages=tuple((o, swap.get(o, v)) for o, v in p.messages))
    return h


INJECTIONS: dict[str, Callable[[History, random.Random], History | None]] = {
    "lost": inject_lost,
    "unseen": inject_unseen,
    "duplicate": inject_duplicate,
    "retry-duplicate": inject_retry_duplicate,
    "unexpected": inject_unexpected,
    "inconsistent-offset": inject_inconsistent,
    "aborted-read": inject_aborted_read,
    "poll-skip": inject_poll_skip,
    "non-monotonic-poll": inject_non_monotonic_poll,
    "non-monotonic-send": inject_non_monotonic_send,
}


# -- the speed measurement ----------------------------------------------------------------


def main() -> None:
    from streamlog.chaos.checker import check
    from streamlog.chaos.history import dump, load

    parser = argparse.ArgumentParser(description="time the checker on a synthetic model history")
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--file", help="also dump it there and time the load")
    args = parser.parse_args()
    t0 = time.perf_counter()
    h = generate(random.Random(args.seed), ops=args.ops, partitions=args.partitions, producers=8,
                 consumers=args.consumers, retention=False)
    t1 = time.perf_counter()
    print(f"generated {len(h):,} operations ({len(h.sends):,} sends, {len(h.polls):,} polls, "
          f"{sum(len(p.messages) for p in h.polls):,} messages read) in {t1 - t0:.1f}s")
    if args.file:
        dump(h, args.file)
        t2 = time.perf_counter()
        h = load(args.file)
        t3 = time.perf_counter()
        print(f"dumped in {t2 - t1:.1f}s, loaded in {t3 - t2:.1f}s ({Path(args.file).stat().st_size / 1e6:.0f} MB)")
    t4 = time.perf_counter()
    r = check(h)
    t5 = time.perf_counter()
    print(f"checked in {t5 - t4:.2f}s: valid={r.valid} {({k: n for k, n in r.counts.items() if n})}")


if __name__ == "__main__":
    main()

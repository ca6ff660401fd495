"""The history checker: the anomalies of Jepsen's queue workload, for a partitioned log.

Pure: L{check} takes a L{History} and returns a L{Result}; it does no I/O and keeps no
state.  What each anomaly means, and why it is or is not a violation, is written down in
docs/reliability.md; in short:

- safety (C{valid} is False if any is found): C{lost}, C{inconsistent-offset},
  C{aborted-read}, C{duplicate} (of an idempotent producer), C{poll-skip},
  C{non-monotonic-poll}, C{non-monotonic-send}, C{unexpected} (a value no send wrote);
- counted, not violations: C{unseen} (acknowledged, but no read covered it) and
  C{retry-duplicate} (a non-idempotent producer's retry stored twice);
- with a consumer group's events in the history, the group's kinds too
  (L{streamlog.chaos.group_checker}).

Operations with an C{info} outcome are "maybe": one read later was stored, one never
read was not, and neither is an anomaly.

Run on a file: C{python -m streamlog.chaos.checker history.jsonl} prints the summary and
exits 1 on a safety anomaly (2 if the history cannot be read).

Speed matters (a long run records millions of operations): the main pass touches each
read message once with a few dict operations, and evidence (which polls read what) is
gathered in a second pass only for the anomalies found.
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from streamlog.chaos.group_checker import GROUP_KINDS, GROUP_SAFETY, check_group
from streamlog.chaos.history import FAIL, OK, History, HistoryError, Poll, Send, Value, load, paused_gc

LOST: Final = "lost"
UNSEEN: Final = "unseen"
DUPLICATE: Final = "duplicate"
RETRY_DUPLICATE: Final = "retry-duplicate"
INCONSISTENT_OFFSET: Final = "inconsistent-offset"
ABORTED_READ: Final = "aborted-read"
POLL_SKIP: Final = "poll-skip"
NON_MONOTONIC_POLL: Final = "non-monotonic-poll"
NON_MONOTONIC_SEND: Final = "non-monotonic-send"
UNEXPECTED: Final = "unexpected"

#: Every anomaly kind, in the order the summary lists them.
KINDS: Final = (
    LOST, INCONSISTENT_OFFSET, ABORTED_READ, DUPLICATE, POLL_SKIP, NON_MONOTONIC_POLL,
    NON_MONOTONIC_SEND, UNEXPECTED, UNSEEN, RETRY_DUPLICATE,
)

#: The kinds that make a history invalid: each is something the log promised not to do.
SAFETY: Final = frozenset((
    LOST, INCONSISTENT_OFFSET, ABORTED_READ, DUPLICATE, POLL_SKIP, NON_MONOTONIC_POLL,
    NON_MONOTONIC_SEND, UNEXPECTED,
))

# A read location (partition key index, offset) packed into one int: the main pass stores
# one per message read, and an int is the cheapest hashable there is.
_SHIFT: Final = 24
_MASK: Final = (1 << _SHIFT) - 1

Key = tuple[str, int]

_GAP: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly and its evidence.

    C{ops} are the ids of the operations involved (sends and polls), C{detail} says in
    words what they show.  C{topic}, C{partition}, C{offset} and C{value} locate it where
    that makes sense (None where not).
    """

    kind: str
    detail: str
    ops: tuple[int, ...] = ()
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    value: Value | None = None


@dataclass(slots=True)
class Result:
    """What the checker found: C{valid} (no safety anomaly), the anomalies by kind (each
    with its evidence) and counts of the history's operations and outcomes."""

    valid: bool
    anomalies: dict[str, list[Anomaly]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    #: Whether the history held a consumer group's events (judged by L{check_group} too).
    group: bool = False

    def count(self, kind: str) -> int:
        return len(self.anomalies.get(kind, ()))

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds judged: L{KINDS}, and L{GROUP_KINDS} for a history with group events."""
        return KINDS + GROUP_KINDS if self.group else KINDS

    @property
    def counts(self) -> dict[str, int]:
        """Every kind's count (0 for those not found), in L{kinds} order."""
        return {k: self.count(k) for k in self.kinds}

    @property
    def safety(self) -> frozenset[str]:
        return SAFETY | GROUP_SAFETY if self.group else SAFETY


class _Keys:
    """Partition keys <-> small ints (for packed read locations)."""

    def __init__(self) -> None:
        self.index: dict[Key, int] = {}
        self.keys: list[Key] = []

    def place(self, loc: int) -> str:
        """A packed location as C{topic/partition@offset}."""
        t, p = self.keys[loc & _MASK]
        return f"{t}/{p}@{loc >> _SHIFT}"

    def of(self, key: Key) -> int:
        i = self.index.get(key)
        if i is None:
            i = len(self.keys)
            if i > _MASK:
                raise HistoryError(f"more than {_MASK} partitions in one history")
            self.index[key] = i
            self.keys.append(key)
        return i


def _merge(intervals: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Disjoint sorted [start, end) intervals covering the same offsets, as two lists."""
    intervals.sort()
    starts: list[int] = []
    ends: list[int] = []
    for s, e in intervals:
        if ends and s <= ends[-1]:
            if e > ends[-1]:
                ends[-1] = e
        else:
            starts.append(s)
            ends.append(e)
    return starts, ends


def _covered(merged: tuple[list[int], list[int]], offset: int) -> bool:
    starts, ends = merged
    i = bisect.bisect_right(starts, offset) - 1
    return i >= 0 and offset < ends[i]


def check(history: History, *, final_reads: Mapping[Key, int] | None = None) -> Result:
    """Judge C{history}.

    C{final_reads} maps C{(topic, partition)} to the end offset the final drain reached
    (the partition's high watermark once healed, all producers stopped): the log holds
    nothing at or past it, so a send acknowledged there is lost.  By default it is taken
    from the history's C{drain} records.  A partition without one is judged by what its
    reads covered only.

    Raises L{HistoryError} if two sends carry the same value (the checker could not tell
    them apart).
    """
    with paused_gc():
        return _check(history, final_reads)


def _check(history: History, final_reads: Mapping[Key, int] | None) -> Result:
    if final_reads is None:
        final_reads = {}
        for d in history.drains:
            drained = (d.topic, d.partition)
            final_reads[drained] = max(d.end_offset, final_reads.get(drained, d.end_offset))
    anomalies: dict[str, list[Anomaly]] = defaultdict(list)
    keys = _Keys()

    sends: dict[Value, Send] = {s.value: s for s in history.sends}
    if len(sends) != len(history.sends):
        firsts: dict[Value, Send] = {}
        for s in history.sends:
            other = firsts.setdefault(s.value, s)
            if other is not s:
                raise HistoryError(f"value {s.value!r} was sent twice (ops {other.id} and {s.id}): values must be unique")

    # -- pass 1: every message read, once ------------------------------------------------
    # at[k]: offset -> the value first read there; first[v]: where v was first read;
    # extra[v]: further distinct places v was read; conflicts: (k, offset) read two ways.
    at: list[dict[int, Value]] = []
    first: dict[Value, int] = {}
    extra: dict[Value, set[int]] = {}
    conflicts: dict[int, set[Value]] = {}
    intervals: list[list[tuple[int, int]]] = []
    by_consumer: dict[tuple[str, int], list[Poll]] = defaultdict(list)
    # Polls whose answer is not simply consecutive offsets from where they started up to
    # their next_offset: only those need a look at their messages in the consumer pass.
    irregular: set[int] = set()
    # known[k][o]: the message (offset, value) first read at offset o (None: not read yet),
    # for offsets up to _GAP past the highest one known.  A poll whose messages are exactly
    # those known from where it starts (most reads: every consumer and the drain read every
    # offset) adds nothing and is skipped with one C-level tuple comparison.
    known: list[list[tuple[int, Value] | None]] = []
    kindex = keys.index
    messages_read = 0
    polls_ok = 0
    for poll in history.polls:
        key = (poll.topic, poll.partition)
        k = kindex.get(key)
        if k is None:
            k = keys.of(key)
            at.append({})
            intervals.append([])
            known.append([])
        by_consumer[(poll.process, k)].append(poll)
        if poll.outcome != OK:
            continue
        polls_ok += 1
        start = poll.offset
        lso = poll.log_start_offset
        if lso is not None and lso > start:
            start = lso
        nxt = poll.next_offset
        assert nxt is not None
        messages = poll.messages
        if messages:
            # what the poll saw of the log: from where it started to its last message (an
            # answer that says to continue further did not read the offsets it jumped)
            hi = messages[-1][0] + 1
            if nxt < hi:
                hi = nxt
            if hi > start:
                intervals[k].append((start, hi))
        n = len(messages)
        messages_read += n
        end = start + n
        lst = known[k]
        if end <= len(lst) and messages == tuple(lst[start:end]):
            if nxt != end:
                irregular.add(id(poll))
            continue
        slots = at[k]
        due = start
        regular = True
        for m in messages:
            o, v = m
            if o != due:
                regular = False
            due = o + 1
            held = slots.setdefault(o, v)
            loc = (o << _SHIFT) | k
            if held != v:
                conflicts.setdefault(loc, {held}).add(v)
            elif o < len(lst):
                if lst[o] is None:
                    lst[o] = m
            elif o < len(lst) + _GAP:
                lst.extend([None] * (o - len(lst)))
                lst.append(m)
            where = first.setdefault(v, loc)
            if where != loc:
                extra.setdefault(v, set()).add(loc)
        if not regular or due != nxt:
            irregular.add(id(poll))

    merged: dict[int, tuple[list[int], list[int]]] = {}

    def covered(k: int, offset: int) -> bool:
        m = merged.get(k)
        if m is None:
            m = merged[k] = _merge(intervals[k])
        return _covered(m, offset)

    # -- sends against the reads ---------------------------------------------------------
    ack_mismatch: list[tuple[Send, int]] = []
    lost_wanted: dict[int, list[int]] = defaultdict(list)   # k -> offsets whose covering poll is evidence
    lost: list[tuple[Send, int]] = []
    idempotent: dict[tuple[str, int], list[tuple[int, int, Value]]] = defaultdict(list)
    sends_ok = sends_fail = recovered = sent_and_read = 0
    for s in history.sends:
        v = s.value
        read_at = first.get(v)
        outcome = s.outcome
        if outcome == OK:
            sends_ok += 1
            offset = s.offset
            assert s.partition is not None and offset is not None
            key = (s.topic, s.partition)
            k = kindex.get(key)
            if k is None:
                k = keys.of(key)
                at.append({})
                intervals.append([])
                known.append([])
            if at[k].get(offset, v) != v:
                ack_mismatch.append((s, k))
            if read_at is not None:
                sent_and_read += 1
            else:
                drained_to = final_reads.get(key)
                if drained_to is not None and offset >= drained_to:
                    lost.append((s, k))
                    anomalies[LOST].append(Anomaly(
                        LOST, f"acknowledged at {s.topic}/{s.partition}@{offset}, never read; "
                              f"the final drain found the log ends at {drained_to}",
                        (s.id,), s.topic, s.partition, offset, v))
                elif covered(k, offset):
                    lost.append((s, k))
                    lost_wanted[k].append(offset)
                else:
                    anomalies[UNSEEN].append(Anomaly(
                        UNSEEN, f"acknowledged at {s.topic}/{s.partition}@{offset}; no read covered that offset",
                        (s.id,), s.topic, s.partition, offset, v))
            if s.idempotent:
                idempotent[(s.producer_name, k)].append((s.id, offset, v))
        elif outcome == FAIL:
            sends_fail += 1
            if read_at is not None:
                sent_and_read += 1
                t, p = keys.keys[read_at & _MASK]
                anomalies[ABORTED_READ].append(Anomaly(
                    ABORTED_READ, f"the send failed for sure ({s.error}), yet its value was read at {t}/{p}@{read_at >> _SHIFT}",
                    (s.id,), s.topic, p, read_at >> _SHIFT, v))
        elif read_at is not None:
            recovered += 1
            sent_and_read += 1
            if s.idempotent:
                # its place in the producer's order: read_at it was read in the partition it
                # was sent to (the first of them if it was stored twice there)
                k = read_at & _MASK if s.partition is None else kindex.get((s.topic, s.partition), -1)
                more = extra.get(v)
                if more or read_at & _MASK != k:
                    in_k = [loc for loc in (read_at, *(more or ())) if loc & _MASK == k]
                    read_at = min(in_k) if in_k else -1
                if read_at >= 0:
                    idempotent[(s.producer_name, k)].append((s.id, read_at >> _SHIFT, v))
    stats = {"sends": len(history.sends), "sends_ok": sends_ok, "sends_fail": sends_fail,
             "sends_info": len(history.sends) - sends_ok - sends_fail,
             "polls": len(history.polls), "polls_ok": polls_ok, "messages_read": messages_read,
             "values_read": len(first), "recovered": recovered, "faults": len(history.faults)}

    # -- values read in more than one place; values nobody sent -------------------------
    dup_values: list[Value] = []
    for v in extra:
        s_of_v = sends.get(v)
        if s_of_v is None:
            continue  # unexpected, reported as such
        if s_of_v.idempotent:
            dup_values.append(v)
        else:  # expected of retries: counted, with where it was stored (no poll evidence needed)
            locs = sorted({first[v], *extra[v]}, key=lambda loc: (loc & _MASK, loc >> _SHIFT))
            anomalies[RETRY_DUPLICATE].append(Anomaly(
                RETRY_DUPLICATE, f"producer {s_of_v.producer_name}'s send {s_of_v.id} ({s_of_v.outcome}) stored "
                                 f"{len(locs)} times: {', '.join(keys.place(loc) for loc in locs)}",
                (s_of_v.id,), s_of_v.topic, s_of_v.partition, s_of_v.offset, v))
    unexpected: list[Value] = []
    if sent_and_read < len(first):  # some value read was never sent
        unexpected = sorted(first.keys() - sends.keys(), key=lambda v: (first[v], repr(v)))

    # -- each idempotent producer's sends, in send order, are stored in that order ------
    for (producer, k), stored in idempotent.items():
        stored.sort()
        topic, partition = keys.keys[k]
        for (id_a, off_a, _), (id_b, off_b, value_b) in zip(stored, stored[1:]):
            if off_b <= off_a:
                anomalies[NON_MONOTONIC_SEND].append(Anomaly(
                    NON_MONOTONIC_SEND, f"producer {producer}: send {id_b} stored at {topic}/{partition}@{off_b}, "
                                        f"not after its earlier send {id_a} at @{off_a}",
                    (id_a, id_b), topic, partition, off_b, value_b))

    # -- each consumer's polls of a partition continue where the last one ended ---------
    for (process, k), polls in by_consumer.items():
        _check_consumer(process, keys.keys[k], polls, irregular, anomalies)

    # -- evidence: which polls read the offsets and values involved (second pass) -------
    if conflicts or ack_mismatch or dup_values or lost_wanted or unexpected or anomalies[ABORTED_READ]:
        _gather_evidence(history, keys, sends, conflicts, ack_mismatch, dup_values, lost, lost_wanted,
                         unexpected, anomalies, first)

    result = Result(valid=not any(anomalies.get(kind) for kind in SAFETY),
                    anomalies={kind: anomalies[kind] for kind in KINDS if anomalies.get(kind)},
                    stats=stats)
    if history.group:
        judged = check_group(history)
        result.group = True
        result.valid = result.valid and judged.valid
        result.stats.update(judged.stats)
        for kind, found in judged.anomalies.items():
            result.anomalies[kind] = [Anomaly(a.kind, a.detail, (), None, a.partition, a.offset) for a in found]
    return result


def _check_consumer(process: str, key: Key, polls: list[Poll], irregular: set[int],
                    anomalies: dict[str, list[Anomaly]]) -> None:
    """One consumer's polls of one partition, in invoke order: each ok poll starts where
    the previous one said to continue (C{next_offset}), returns consecutive offsets from
    there, and says to continue just after its last message.  A jump forward is allowed
    only over offsets retention removed (at or below a C{log_start_offset} it was told)."""
    topic, partition = key
    polls.sort(key=lambda p: p.id)
    expected: int | None = None
    previous: Poll | None = None
    floor = 0
    where = f"consumer {process} of {topic}/{partition}"

    def skip(p: Poll, gap_from: int, gap_to: int, how: str, ops: tuple[int, ...]) -> None:
        gap = f"offset {gap_from}" if gap_to == gap_from + 1 else f"offsets {gap_from}..{gap_to - 1}"
        anomalies[POLL_SKIP].append(Anomaly(POLL_SKIP, f"{where}: {how}; {gap} skipped", ops, topic, partition, gap_from))

    def backwards(p: Poll, offset: int, how: str, ops: tuple[int, ...]) -> None:
        anomalies[NON_MONOTONIC_POLL].append(Anomaly(NON_MONOTONIC_POLL, f"{where}: {how}", ops, topic, partition, offset))

    for p in polls:
        lso = p.log_start_offset
        if lso is not None and lso > floor:
            floor = lso
        if p.outcome != OK:
            continue
        req = p.offset
        if expected is not None and previous is not None:
            if req < expected:
                backwards(p, req, f"poll {p.id} asked for @{req} after poll {previous.id} said to continue at @{expected}",
                          (previous.id, p.id))
            elif req > expected and req > floor:
                skip(p, max(expected, floor), req,
                     f"poll {p.id} asked for @{req} after poll {previous.id} said to continue at @{expected}",
                     (previous.id, p.id))
        if id(p) not in irregular:
            # consecutive offsets from max(req, its log start) up to next_offset: nothing
            # in it to report (a start past req is the log start, so not a skip)
            expected = p.next_offset
            previous = p
            continue
        nxt = req
        for o, _ in p.messages:
            if o < nxt:
                backwards(p, o, f"poll {p.id} (from @{req}) returned @{o} where @{nxt} or later was due", (p.id,))
            elif o > nxt and o > floor:
                skip(p, max(nxt, floor), o, f"poll {p.id} (from @{req}) returned @{o} where @{nxt} was due", (p.id,))
            if o >= nxt:
                nxt = o + 1
        assert p.next_offset is not None
        if p.next_offset < nxt:
            backwards(p, p.next_offset, f"poll {p.id} said to continue at @{p.next_offset}, before what it returned (@{nxt - 1})",
                      (p.id,))
        elif p.next_offset > nxt and p.next_offset > floor:
            skip(p, max(nxt, floor), p.next_offset,
                 f"poll {p.id} said to continue at @{p.next_offset}, past what it returned (up to @{nxt - 1})", (p.id,))
        expected = p.next_offset
        previous = p


def _gather_evidence(history: History, keys: _Keys, sends: dict[Value, Send], conflicts: dict[int, set[Value]],
                     ack_mismatch: list[tuple[Send, int]], dup_values: list[Value], lost: list[tuple[Send, int]],
                     lost_wanted: dict[int, list[int]], unexpected: list[Value],
                     anomalies: dict[str, list[Anomaly]], first: dict[Value, int]) -> None:
    """Second pass over the polls, for the anomalies found: who read what where."""
    wanted_locs: set[int] = set(conflicts)
    for s, k in ack_mismatch:
        assert s.offset is not None
        wanted_locs.add((s.offset << _SHIFT) | k)
    wanted_values: set[Value] = set(dup_values) | set(unexpected)
    for kind in (ABORTED_READ,):
        for a in anomalies.get(kind, ()):
            if a.value is not None:
                wanted_values.add(a.value)
    readers_at: dict[int, dict[Value, list[int]]] = defaultdict(lambda: defaultdict(list))
    readers_of: dict[Value, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    lost_sorted = {k: sorted(set(offs)) for k, offs in lost_wanted.items()}
    covering: dict[tuple[int, int], int] = {}
    for poll in history.polls:
        if poll.outcome != OK:
            continue
        k = keys.index[(poll.topic, poll.partition)]
        for o, v in poll.messages:
            loc = (o << _SHIFT) | k
            if loc in wanted_locs:
                readers_at[loc][v].append(poll.id)
            if v in wanted_values:
                readers_of[v][loc].append(poll.id)
        offs = lost_sorted.get(k)
        if offs and poll.next_offset is not None and poll.messages:
            start = max(poll.offset, poll.log_start_offset or 0)
            hi = min(poll.next_offset, poll.messages[-1][0] + 1)
            i = bisect.bisect_left(offs, start)
            while i < len(offs) and offs[i] < hi:
                covering.setdefault((k, offs[i]), poll.id)
                i += 1

    place = keys.place

    def first_polls(ids: list[int], n: int = 3) -> tuple[int, ...]:
        return tuple(ids[:n])

    for loc, values in sorted(conflicts.items(), key=lambda kv: kv[0]):
        t, p = keys.keys[loc & _MASK]
        seen = readers_at[loc]
        ops: list[int] = []
        parts = []
        for v in sorted(values, key=repr):  # a stable order, whatever the hash seed
            ops.extend(first_polls(seen.get(v, [])))
            parts.append(f"{v!r} by poll(s) {', '.join(map(str, first_polls(seen.get(v, []))))}")
        anomalies[INCONSISTENT_OFFSET].append(Anomaly(
            INCONSISTENT_OFFSET, f"{place(loc)} read as " + " and as ".join(parts), tuple(ops), t, p, loc >> _SHIFT))
    for s, k in ack_mismatch:
        assert s.offset is not None
        loc = (s.offset << _SHIFT) | k
        others = {v: ids for v, ids in readers_at[loc].items() if v != s.value}
        ops = [s.id]
        parts = []
        for v, ids in others.items():
            ops.extend(first_polls(ids))
            parts.append(f"{v!r} by poll(s) {', '.join(map(str, first_polls(ids)))}")
        anomalies[INCONSISTENT_OFFSET].append(Anomaly(
            INCONSISTENT_OFFSET, f"send {s.id} was acknowledged with {s.value!r} at {place(loc)}, which was read as "
                                 + " and as ".join(parts), tuple(ops), s.topic, s.partition, s.offset, s.value))
    for v in dup_values:
        s = sends[v]
        locs = readers_of[v]
        ops = [s.id]
        for ids in locs.values():
            ops.extend(first_polls(ids, 1))
        where = ", ".join(place(loc) for loc in sorted(locs, key=lambda loc: (loc & _MASK, loc >> _SHIFT)))
        anomalies[DUPLICATE].append(Anomaly(
            DUPLICATE, f"idempotent producer {s.producer_name}'s send {s.id} ({s.outcome}) stored {len(locs)} times: {where}",
            tuple(ops), s.topic, s.partition, s.offset, v))
    for v in unexpected:
        locs = readers_of[v]
        ops = []
        for ids in locs.values():
            ops.extend(first_polls(ids, 1))
        loc = first[v]
        t, p = keys.keys[loc & _MASK]
        anomalies[UNEXPECTED].append(Anomaly(
            UNEXPECTED, f"{v!r} read at {place(loc)}, but no send in the history wrote it", tuple(ops), t, p, loc >> _SHIFT, v))
    aborted = anomalies.get(ABORTED_READ, [])
    for i, a in enumerate(aborted):
        assert a.value is not None
        ids = [pid for poll_ids in readers_of[a.value].values() for pid in poll_ids[:1]]
        aborted[i] = Anomaly(a.kind, a.detail + f" (by poll {', '.join(map(str, ids[:3]))})", a.ops + tuple(ids[:3]),
                             a.topic, a.partition, a.offset, a.value)
    for s, k in lost:
        assert s.offset is not None
        poll_id = covering.get((k, s.offset))
        if poll_id is None:
            continue   # lost beyond the drain's end: reported already
        anomalies[LOST].append(Anomaly(
            LOST, f"acknowledged at {s.topic}/{s.partition}@{s.offset}, never read, though poll {poll_id} read past it",
            (s.id, poll_id), s.topic, s.partition, s.offset, s.value))


# -- the command line ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """C{python -m streamlog.chaos.checker history.jsonl}: summary, and 1 on a safety anomaly."""
    from streamlog.chaos.report import summary

    parser = argparse.ArgumentParser(
        prog="python -m streamlog.chaos.checker",
        description="Check a recorded streamlog chaos history (JSON lines) for the anomalies of the queue workload.")
    parser.add_argument("history", help="the history file (JSON lines, as the Recorder writes it)")
    parser.add_argument("--evidence", type=int, default=5, metavar="N",
                        help="show up to N anomalies of each kind with their evidence (default 5; 0: counts only)")
    args = parser.parse_args(argv)
    if args.evidence < 0:
        parser.error("--evidence must be 0 or more")
    try:
        history = load(args.history)
        result = check(history)
    except OSError as e:
        print(f"error: cannot read {args.history}: {e.strerror or e}", file=sys.stderr)
        return 2
    except HistoryError as e:
        print(f"error: {args.history}: {e}", file=sys.stderr)
        return 2
    try:
        print(summary(result, history, evidence=args.evidence), flush=True)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted; the verdict stands
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0 if result.valid else 1


if __name__ == "__main__":
    sys.exit(main())

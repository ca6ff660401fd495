"""The consumer-group half of the chaos checker: what the members of one group did, judged.

Pure, like L{streamlog.chaos.checker} (which calls L{check_group} when a history holds group
events): a history's L{GroupEvent}s (each member's assignments, revokes, losses, processed
ranges and acknowledged commits, and the runner's reads of the committed offsets), its
acknowledged sends, its drains and its member faults go in; anomalies and figures come out.
What each anomaly means (docs/reliability.md, "The group workload"):

- C{group-skip} (safety): offsets of a drained partition that no member processed: the
  group skipped messages (every acknowledged one must be processed by some member);
- C{commit-backwards} (safety): a committed offset seen lower than one acknowledged or read
  before (by real time: the lower one was asked after the higher one was answered), with no
  C{reset} in between;
- C{double-owner} (safety): two members owned one partition at once, from their own events:
  a member owns a partition from its C{assigned} event until its C{revoked} event, its
  C{lost} event's C{until} (the end of the last session it knows was renewed), or its
  process's death (a C{member-kill} fault);
- C{processed-unowned} (safety): a member processed a partition it did not own then (a
  zombie: e.g. one resumed after a stop past its session, before it noticed);
- C{duplicate-committed} (safety): a member started a partition below an offset already
  committed (acknowledged or read) before its assignment, processing committed messages again;
- C{group-duplicate} (counted): a message processed more than once, from the uncommitted
  window of a member that died, stopped or lost its partition (at-least-once delivery).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from streamlog.chaos.history import OK, GroupEvent, History

GROUP_SKIP: Final = "group-skip"
COMMIT_BACKWARDS: Final = "commit-backwards"
DOUBLE_OWNER: Final = "double-owner"
PROCESSED_UNOWNED: Final = "processed-unowned"
DUPLICATE_COMMITTED: Final = "duplicate-committed"
GROUP_DUPLICATE: Final = "group-duplicate"

#: The group anomaly kinds, in the order the summary lists them.
GROUP_KINDS: Final = (GROUP_SKIP, COMMIT_BACKWARDS, DOUBLE_OWNER, PROCESSED_UNOWNED, DUPLICATE_COMMITTED,
                      GROUP_DUPLICATE)
GROUP_SAFETY: Final = frozenset((GROUP_SKIP, COMMIT_BACKWARDS, DOUBLE_OWNER, PROCESSED_UNOWNED, DUPLICATE_COMMITTED))

#: The fault kind that ends a member process's ownership (its C{node} names the incarnation).
MEMBER_KILL: Final = "member-kill"


@dataclass(frozen=True, slots=True)
class GroupAnomaly:
    kind: str
    detail: str
    partition: int | None = None
    offset: int | None = None
    processes: tuple[str, ...] = ()


@dataclass(slots=True)
class GroupResult:
    anomalies: dict[str, list[GroupAnomaly]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not any(self.anomalies.get(k) for k in GROUP_SAFETY)


@dataclass(slots=True)
class _Owned:
    process: str
    partition: int
    start: float
    end: float
    generation: int | None


def _ownership(events: list[GroupEvent], deaths: dict[str, float]) -> list[_Owned]:
    """Every interval a member owned a partition, from its events in time order."""
    out: list[_Owned] = []
    open_: dict[tuple[str, int], tuple[float, int | None]] = {}
    for e in events:
        if e.kind == "assigned":
            for p in e.partitions:
                open_.setdefault((e.process, p), (e.time, e.generation))
        elif e.kind in ("revoked", "lost"):
            end = e.time if e.kind == "revoked" or e.until is None else min(e.time, e.until)
            for p in e.partitions:
                held = open_.pop((e.process, p), None)
                if held is not None:
                    out.append(_Owned(e.process, p, held[0], max(end, held[0]), held[1]))
    for (process, p), (start, generation) in open_.items():
        out.append(_Owned(process, p, start, max(deaths.get(process, float("inf")), start), generation))
    return out


def _union(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def check_group(history: History) -> GroupResult:
    """Judge the group events of C{history} (see the module docstring)."""
    anomalies: dict[str, list[GroupAnomaly]] = defaultdict(list)
    events = sorted(history.group, key=lambda e: e.time)
    topics = {e.topic for e in events}
    members = {e.process for e in events if e.kind != "fetched"}
    deaths = {f.node: f.start for f in history.faults if f.kind == MEMBER_KILL and f.node is not None}

    # -- ownership: one member at a time per partition, processing only what it owns ---------
    owned = _ownership([e for e in events if e.kind != "fetched"], deaths)
    by_partition: dict[int, list[_Owned]] = defaultdict(list)
    for o in owned:
        by_partition[o.partition].append(o)
    for p, intervals in sorted(by_partition.items()):
        intervals.sort(key=lambda o: o.start)
        for i, a in enumerate(intervals):
            for b in intervals[i + 1:]:
                if b.start >= a.end:
                    break
                if b.process != a.process:
                    anomalies[DOUBLE_OWNER].append(GroupAnomaly(
                        DOUBLE_OWNER, f"partition {p}: {a.process} owned it {a.start:.3f}-{a.end:.3f}s (generation "
                                      f"{a.generation}) and {b.process} from {b.start:.3f}s (generation "
                                      f"{b.generation})", p, None, (a.process, b.process)))
    mine: dict[tuple[str, int], list[_Owned]] = defaultdict(list)
    for o in owned:
        mine[(o.process, o.partition)].append(o)
    processed: dict[int, list[tuple[int, int]]] = defaultdict(list)
    handed = 0
    for e in events:
        if e.kind != "processed":
            continue
        p, first = e.offsets[0]
        assert e.end is not None
        processed[p].append((first, e.end))
        handed += e.end - first
        if not any(o.start <= e.time <= o.end for o in mine.get((e.process, p), ())):
            anomalies[PROCESSED_UNOWNED].append(GroupAnomaly(
                PROCESSED_UNOWNED, f"{e.process} processed partition {p} offsets {first}-{e.end - 1} at {e.time:.3f}s, "
                                   f"owning it then: no", p, first, (e.process,)))

    # -- nothing skipped: the members' processed ranges cover each drained partition ---------
    ends = {d.partition: d.end_offset for d in history.drains if d.topic in topics}
    acked: dict[int, list[int]] = defaultdict(list)
    for s in history.sends:
        if s.outcome == OK and s.topic in topics and s.partition is not None and s.offset is not None:
            acked[s.partition].append(s.offset)
    for offsets in acked.values():
        offsets.sort()
    distinct = 0
    for p in sorted(set(ends) | set(acked) | set(processed)):
        end = ends.get(p, (acked[p][-1] + 1) if acked.get(p) else 0)
        covered = _union(processed.get(p, ()))
        distinct += sum(hi - lo for lo, hi in covered)
        at = 0
        for lo, hi in [*covered, (end, end)]:
            if lo > at and at < end:
                gap_end = min(lo, end)
                i, j = bisect.bisect_left(acked.get(p, []), at), bisect.bisect_left(acked.get(p, []), gap_end)
                anomalies[GROUP_SKIP].append(GroupAnomaly(
                    GROUP_SKIP, f"partition {p}: offsets {at}-{gap_end - 1} ({j - i} of them acknowledged) were "
                                f"processed by no member (drained to {end})", p, at))
            at = max(at, hi)
    if handed > distinct:
        anomalies[GROUP_DUPLICATE].append(GroupAnomaly(
            GROUP_DUPLICATE, f"{handed - distinct} message(s) processed more than once (the uncommitted windows of "
                             f"members that died, stopped or lost partitions)"))

    # -- committed offsets: never lower than one seen before (but after a reset) --------------
    seen: dict[int, list[tuple[float, float, int, GroupEvent]]] = defaultdict(list)
    resets: dict[int, list[float]] = defaultdict(list)
    for e in events:
        if e.kind in ("committed", "fetched"):
            for p, value in e.offsets:
                seen[p].append((e.invoke if e.invoke is not None else e.time, e.time, value, e))
        elif e.kind == "reset":
            for p, _ in e.offsets:
                resets[p].append(e.time)
    for p, obs in sorted(seen.items()):
        by_complete = sorted(obs, key=lambda x: x[1])
        best: tuple[int, GroupEvent] | None = None
        k = 0
        for invoke, _, value, e in sorted(obs, key=lambda x: x[0]):
            while k < len(by_complete) and by_complete[k][1] < invoke:
                _, done, v, ev = by_complete[k]
                if any(done < r <= invoke for r in resets[p]):
                    pass  # a reset came after it: it is no floor any more
                elif best is None or v > best[0]:
                    best = (v, ev)
                k += 1
            if best is not None and value < best[0] and not any(best[1].time < r <= invoke for r in resets[p]):
                anomalies[COMMIT_BACKWARDS].append(GroupAnomaly(
                    COMMIT_BACKWARDS, f"partition {p}: {e.kind} {value} by {e.process} (asked at {invoke:.3f}s) after "
                                      f"{best[1].kind} {best[0]} by {best[1].process} (answered at {best[1].time:.3f}s)",
                    p, value, (best[1].process, e.process)))

    # -- a new owner starts at the committed offset, not below ---------------------------------
    floors = {p: sorted((t, v) for _, t, v, _ in obs) for p, obs in seen.items()}
    for e in events:
        if e.kind != "assigned":
            continue
        starts = dict(e.offsets)
        for p in e.partitions:
            before = [v for t, v in floors.get(p, ()) if t < e.time]
            if not before:
                continue
            floor = max(before)
            start = starts.get(p, 0)
            if start < floor:
                anomalies[DUPLICATE_COMMITTED].append(GroupAnomaly(
                    DUPLICATE_COMMITTED, f"{e.process} started partition {p} at {start} at {e.time:.3f}s, below "
                                         f"{floor} committed before", p, start, (e.process,)))

    generations = {e.generation for e in events if e.generation is not None}
    stats = {
        "group_members": len(members),
        "group_generations": len(generations),
        "group_assigned": sum(len(e.partitions) for e in events if e.kind == "assigned"),
        "group_revoked": sum(len(e.partitions) for e in events if e.kind == "revoked"),
        "group_lost": sum(len(e.partitions) for e in events if e.kind == "lost"),
        "group_processed": handed,
        "group_distinct": distinct,
        "group_duplicates": handed - distinct,
        "group_commits": sum(1 for e in events if e.kind == "committed"),
        "group_fetches": sum(1 for e in events if e.kind == "fetched"),
    }
    return GroupResult({k: anomalies[k] for k in GROUP_KINDS if anomalies.get(k)}, stats)

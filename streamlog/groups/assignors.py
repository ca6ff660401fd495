"""Who gets which partition: the range, round-robin and sticky assignors.

An assignor is a pure function of the group's members (each with the topics
it subscribes to), the partition count of every topic, and (for the sticky
one) what each member holds now.  Every assignor is deterministic: the same
inputs give the same assignment whatever the order of dicts and sets, so a
coordinator rebuilt after a failover computes the same targets again.

A member gets only partitions of topics it subscribes to.  The sticky
assignor (the default) keeps every partition where it is unless moving it is
needed for balance: members subscribing to the same topics end up within one
partition of each other, and no single move from a fuller member to an
emptier one that can take the partition is left undone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set

#: A partition of a topic.
TopicPartition = tuple[str, int]
#: member id -> the partitions assigned to it.
Assignment = dict[str, frozenset[TopicPartition]]
#: (subscriptions: member -> topics, partition counts: topic -> count, current: member -> owned) -> assignment.
Assignor = Callable[[Mapping[str, Set[str]], Mapping[str, int], Mapping[str, Set[TopicPartition]]], Assignment]


def _partitions(subscriptions: Mapping[str, Set[str]], counts: Mapping[str, int]) -> list[TopicPartition]:
    """Every partition of every subscribed topic, sorted."""
    topics = sorted({t for topics in subscriptions.values() for t in topics})
    return [(t, p) for t in topics for p in range(counts.get(t, 0))]


def range_assignor(subscriptions: Mapping[str, Set[str]], counts: Mapping[str, int],
                   current: Mapping[str, Set[TopicPartition]] | None = None) -> Assignment:
    """Per topic, its subscribers (sorted by id) get consecutive ranges; the first
    C{count % subscribers} of them one partition more (Kafka's RangeAssignor)."""
    result: dict[str, set[TopicPartition]] = {m: set() for m in subscriptions}
    for topic in sorted({t for topics in subscriptions.values() for t in topics}):
        members = sorted(m for m, topics in subscriptions.items() if topic in topics)
        count = counts.get(topic, 0)
        share, extra = divmod(count, len(members))
        start = 0
        for i, member in enumerate(members):
            size = share + (1 if i < extra else 0)
            result[member].update((topic, p) for p in range(start, start + size))
            start += size
    return {m: frozenset(tps) for m, tps in result.items()}


def round_robin_assignor(subscriptions: Mapping[str, Set[str]], counts: Mapping[str, int],
                         current: Mapping[str, Set[TopicPartition]] | None = None) -> Assignment:
    """All partitions, sorted, dealt in turn to the members (sorted by id), each
    partition to the next member in the cycle that subscribes to its topic."""
    members = sorted(subscriptions)
    result: dict[str, set[TopicPartition]] = {m: set() for m in members}
    turn = 0
    for tp in _partitions(subscriptions, counts):
        for step in range(len(members)):
            member = members[(turn + step) % len(members)]
            if tp[0] in subscriptions[member]:
                result[member].add(tp)
                turn = (turn + step + 1) % len(members)
                break
    return {m: frozenset(tps) for m, tps in result.items()}


def sticky_assignor(subscriptions: Mapping[str, Set[str]], counts: Mapping[str, int],
                    current: Mapping[str, Set[TopicPartition]] | None = None) -> Assignment:
    """Keep what each member holds (where still valid), hand out the rest to the
    least loaded members that can take it, then move partitions one at a time
    from the fullest member to an emptier one while that narrows the gap by more
    than one.  Each move lowers the sum of squared loads, so it ends."""
    current = current or {}
    valid = set(_partitions(subscriptions, counts))
    result: dict[str, set[TopicPartition]] = {m: set() for m in subscriptions}
    taken: set[TopicPartition] = set()
    for member in sorted(subscriptions):
        for tp in sorted(current.get(member, ())):
            if tp in valid and tp not in taken and tp[0] in subscriptions[member]:
                result[member].add(tp)
                taken.add(tp)
    for tp in sorted(valid - taken):
        eligible = [m for m in result if tp[0] in subscriptions[m]]
        target = min(eligible, key=lambda m: (len(result[m]), m))
        result[target].add(tp)
    while _move_one(subscriptions, result):
        pass
    return {m: frozenset(tps) for m, tps in result.items()}


def _move_one(subscriptions: Mapping[str, Set[str]], result: dict[str, set[TopicPartition]]) -> bool:
    """Move one partition from a member to one holding at least two fewer that can
    take it (the fullest giver first, the emptiest taker, the largest partition);
    False if there is no such move."""
    for giver in sorted(result, key=lambda m: (-len(result[m]), m)):
        for taker in sorted(result, key=lambda m: (len(result[m]), m)):
            if len(result[taker]) + 1 >= len(result[giver]):
                break
            movable = [tp for tp in result[giver] if tp[0] in subscriptions[taker]]
            if movable:
                tp = max(movable)
                result[giver].discard(tp)
                result[taker].add(tp)
                return True
    return False


#: The assignors by the name a JoinGroup asks for.
ASSIGNORS: dict[str, Assignor] = {
    "sticky": sticky_assignor,
    "range": range_assignor,
    "round_robin": round_robin_assignor,
}
DEFAULT_ASSIGNOR = "sticky"

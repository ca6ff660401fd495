"""What the fuzzer believes is stored, and what it expects of each request.

The model is never trusted on its own: after every step the oracle reads the
node's real state back (ListTopics, DescribeTopic, Poll) and compares, then
adopts what it read.  So the model only has to predict one step ahead.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from streamlog.partitioner import partition_for_key

#: Known bugs.  While a name is listed, the oracle tolerates (and counts)
#: exactly that bug's signature and the test that proves it is marked
#: xfail(strict=True); delete the entry once the fix is in and both become
#: ordinary checks.  Empty: every bug the fuzzer found is fixed (issue 8).
KNOWN_ISSUES: dict[str, str] = {}

#: Codes a fuzzed request must never get: the fuzzer neither corrupts disks nor stops the node.
NEVER_EXPECTED = frozenset({"INTERNAL", "STORAGE_ERROR", "PARTITION_UNAVAILABLE", "SHUTTING_DOWN"})

OUTCOMES = ("ok", "refused", "any")


@attrs.frozen
class Expect:
    """What docs/protocol.md says a request must get.

    C{outcome}: "ok" (a result; for acks=none, silence), "refused" (an
    error), "any".  C{codes}: when refused, the code must be one of these
    (None: any documented code).  C{stateless}: the verdict does not depend on
    what is stored (a syntax or type fault), so it holds in any state.
    C{known}: the KNOWN_ISSUES entry this request may trip.
    """

    outcome: str = "any"
    codes: frozenset[str] | None = None
    stateless: bool = False
    known: str | None = None
    why: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        assert self.outcome in OUTCOMES, self.outcome

    def because(self, why: str) -> Expect:
        return attrs.evolve(self, why=self.why + (why,))


OK = Expect("ok")
ANY = Expect("any")


def refused(*codes: str, stateless: bool = True, known: str | None = None) -> Expect:
    return Expect("refused", frozenset(codes) if codes else None, stateless, known)


def combine(base: Expect, fault: Expect) -> Expect:
    """The expectation of C{base} with one more C{fault} applied to it."""
    why = base.why + fault.why
    known = fault.known or base.known
    if fault.outcome == "ok":
        return attrs.evolve(base, why=why, known=known)
    if fault.outcome == "any":
        if base.outcome == "ok" or (base.outcome == "any" and base.codes is None):
            codes = fault.codes
        else:
            codes = None if fault.codes is None or base.codes is None else base.codes | fault.codes
        return Expect("any", codes, False, known, why)
    # fault refuses
    if base.outcome == "ok":
        return attrs.evolve(fault, why=why, known=known)
    if base.outcome == "refused" and base.codes is not None and fault.codes is not None:
        return Expect("refused", base.codes | fault.codes, base.stateless and fault.stateless, known, why)
    return Expect("refused", None, fault.stateless, known, why)


def downgrade(expect: Expect) -> Expect:
    """The expectation of a line that follows state-changing lines in the same chunk."""
    if expect.outcome == "refused" and expect.stateless:
        return attrs.evolve(expect, codes=None)
    return attrs.evolve(ANY, why=expect.why, known=expect.known)


# --- stored state ----------------------------------------------------------------


@attrs.define
class PartitionState:
    log_start: int = 0
    high_watermark: int = 0
    end: int = 0
    #: Parsed records from C{log_start} on: {offset, timestamp, key, value, headers}.
    records: list[dict[str, Any]] = attrs.field(factory=list)
    #: The Poll answers that read them (id stripped), to compare byte for byte.
    raw: bytes = b""

    def copy(self) -> PartitionState:
        return PartitionState(self.log_start, self.high_watermark, self.end, list(self.records), self.raw)


@attrs.define
class TopicState:
    partitions: list[PartitionState]
    config: dict[str, Any]
    #: Bumped whenever the topic is created or deleted, so a late answer is
    #: only compared with the incarnation it was read from.
    generation: int = 0

    def copy(self) -> TopicState:
        return TopicState([p.copy() for p in self.partitions], dict(self.config), self.generation)

    @property
    def count(self) -> int:
        return len(self.partitions)

    @property
    def size(self) -> int:
        return sum(len(p.records) for p in self.partitions)


@attrs.define
class Model:
    topics: dict[str, TopicState] = attrs.field(factory=dict)
    generations: int = 0

    def copy(self) -> Model:
        return Model({k: v.copy() for k, v in self.topics.items()}, self.generations)

    def next_generation(self) -> int:
        self.generations += 1
        return self.generations


def new_topic(model: Model, partitions: int, config: dict[str, Any]) -> TopicState:
    return TopicState([PartitionState() for _ in range(partitions)], dict(config), model.next_generation())


def empty_config() -> dict[str, Any]:
    return {"retention_ms": None, "retention_bytes": None, "segment_bytes": None, "segment_ms": None}


def record(offset: int, timestamp: int, message: dict[str, Any]) -> dict[str, Any]:
    """The record a message becomes, as Poll serves it (docs/protocol.md, Poll)."""
    return {
        "offset": offset, "timestamp": timestamp, "key": message.get("key"),
        "value": message["value"], "headers": message.get("headers") or {},
    }


def same_record(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal as JSON values, with types (1 is not 1.0, True is not 1, -0.0 is not 0.0)."""
    return orjson.dumps(a) == orjson.dumps(b)


def same_records(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return orjson.dumps(a) == orjson.dumps(b)


def placement(messages: list[dict[str, Any]], count: int, sticky: int) -> dict[int, list[int]]:
    """partition -> indices of C{messages}, as docs/protocol.md places them
    (explicit partition, else Kafka's murmur2 of the key, else one sticky partition)."""
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(messages):
        if m.get("partition") is not None:
            p = m["partition"]
        elif m.get("key") is not None:
            p = partition_for_key(m["key"], count)
        else:
            p = sticky
        groups.setdefault(p, []).append(i)
    return groups


def needs_sticky(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("partition") is None and m.get("key") is None for m in messages)

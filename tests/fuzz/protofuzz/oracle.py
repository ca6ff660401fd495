"""The oracle: what every answer, and the stored data after it, must be.

For each request line it checks, from docs/protocol.md:
  - exactly one answer line (none for an accepted acks=none write; the
    connection closes after LINE_TOO_LONG), valid JSON, with the request's
    id, or null when the id could not be read;
  - an error code from the Errors table, with the extra fields the table
    names, never INTERNAL; PARSE_ERROR exactly when the line is not JSON,
    INVALID_REQUEST exactly when the envelope is wrong, METHOD_NOT_FOUND
    exactly for unknown methods, LINE_TOO_LONG exactly for long lines;
  - the outcome the generator expected (accepted / refused with these codes);
  - results that agree with what is stored (offsets, records, topics);
and after each step it reads the node's state back: refused requests changed
nothing (topics, offsets, and the very bytes Poll returns), accepted writes
are stored exactly as sent, acks=none writes that got no answer are stored.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import orjson

from streamlog import wire
from streamlog.broker.broker import BrokerConfig

from .docs import ErrorCode
from .model import (
    NEVER_EXPECTED,
    Expect,
    Model,
    PartitionState,
    TopicState,
    empty_config,
    needs_sticky,
    new_topic,
    placement,
    record,
    same_record,
    same_records,
)

WRITES = ("Send", "SendBatch")
METHODS = frozenset(("Send", "SendBatch", "Poll", "CreateTopic", "DeleteTopic", "ListTopics", "DescribeTopic",
                     "ListOffsets", "Ping"))
DURABILITIES = frozenset(("fsync", "written", "memory"))


class FuzzFailure(AssertionError):
    """The node did something docs/protocol.md does not allow."""


# --- one line as the server must read it -----------------------------------------------------


@attrs.frozen
class LineView:
    data: bytes
    too_long: bool
    json_ok: bool
    rid: Any  # the id the answer must carry (None: null)
    envelope_ok: bool
    method: str | None
    params: dict[str, Any] | None
    silent: bool  # an acks=none write: no answer if accepted
    may_park: bool  # a Poll with max_wait_ms > 0 may be answered later
    topic: str | None
    messages: list[dict[str, Any]] | None


def id_key(rid: Any) -> tuple[str, Any]:
    """Ids compared with their type: 1, "1" and 1.0 are different ids."""
    return (type(rid).__name__, rid)


def analyze(data: bytes, limits: wire.Limits) -> LineView:
    """Read one line the way docs/protocol.md says the server reads it."""
    if len(data) > limits.max_line_bytes:
        return LineView(data, True, False, None, False, None, None, False, False, None, None)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return LineView(data, False, False, None, False, None, None, False, False, None, None)
    if not isinstance(obj, dict):
        return LineView(data, False, True, None, False, None, None, False, False, None, None)
    rid = obj.get("id")
    id_ok = (isinstance(rid, int) and not isinstance(rid, bool)) or (
        isinstance(rid, str) and len(rid) <= limits.max_id_length)
    if not id_ok:
        return LineView(data, False, True, None, False, None, None, False, False, None, None)
    method = obj.get("method")
    params = obj.get("params", {})
    if params is None:
        params = {}
    envelope_ok = isinstance(method, str) and isinstance(params, dict) and set(obj) <= {"id", "method", "params"}
    if not envelope_ok:
        return LineView(data, False, True, rid, False, None, None, False, False, None, None)
    topic = params.get("topic")
    if not isinstance(topic, str) or not wire._TOPIC_RE.fullmatch(topic):
        topic = None
    messages = None
    if method == "Send":
        messages = [{k: v for k, v in params.items() if k not in ("topic", "acks")}]
    elif method == "SendBatch" and isinstance(params.get("messages"), list):
        messages = [m for m in params["messages"] if isinstance(m, dict)]
    silent = method in WRITES and params.get("acks") == "none"
    wait = params.get("max_wait_ms")
    may_park = method == "Poll" and type(wait) is int and wait > 0
    return LineView(data, False, True, rid, True, method, params, silent, may_park, topic, messages)


# --- answers ------------------------------------------------------------------------------


def parse_answer(raw: bytes) -> dict[str, Any]:
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise FuzzFailure(f"answer is not JSON ({e}): {raw[:300]!r}") from None
    if not isinstance(answer, dict) or "id" not in answer or len(answer) != 2 or not (
            "result" in answer or "error" in answer):
        raise FuzzFailure(f"answer is not {{id, result}} or {{id, error}}: {raw[:300]!r}")
    if "error" in answer:
        error = answer["error"]
        if not isinstance(error, dict) or not isinstance(error.get("code"), str) or \
                not isinstance(error.get("message"), str):
            raise FuzzFailure(f"error is not {{code, message, ...}}: {raw[:300]!r}")
    elif not isinstance(answer["result"], dict):
        raise FuzzFailure(f"result is not an object: {raw[:300]!r}")
    return answer


@attrs.define
class Checker:
    """The checks of single answers (no state)."""

    errors: dict[str, ErrorCode]
    limits: wire.Limits
    known: dict[str, str]
    counts: Any  # a Counter

    def tolerate(self, issue: str, what: str) -> None:
        """A KNOWN_ISSUES signature was seen: count it while listed, fail once it is not."""
        if issue not in self.known:
            raise FuzzFailure(what)
        self.counts[f"known issue: {issue}"] += 1

    def error_code(self, view: LineView, expect: Expect, answer: dict[str, Any]) -> str:
        """Check an error answer to C{view}; return its code."""
        error = answer["error"]
        code = error["code"]
        doc = self.errors.get(code)
        if doc is None:
            raise FuzzFailure(f"undocumented error code {code!r} (not in docs/protocol.md's Errors table): {error}")
        if code in NEVER_EXPECTED:
            raise FuzzFailure(f"{code}: {error}")
        missing = doc.required - set(error)
        if missing:
            raise FuzzFailure(f"{code} lacks its documented field(s) {sorted(missing)}: {error}")
        self.check_id(view, answer)
        if (code == "LINE_TOO_LONG") != view.too_long:
            raise FuzzFailure(f"{code} for a line of {len(view.data)} bytes (limit {self.limits.max_line_bytes})")
        if view.too_long:
            return code
        if not view.json_ok:
            if code not in ("PARSE_ERROR", "NESTING_TOO_DEEP"):
                raise FuzzFailure(f"{code} for a line that is not JSON (must be PARSE_ERROR): {error}")
            return code
        if code == "PARSE_ERROR":
            raise FuzzFailure(f"PARSE_ERROR for a line that is valid JSON: {error}")
        if (code == "INVALID_REQUEST") != (not view.envelope_ok):
            raise FuzzFailure(f"{code} where the envelope is {'wrong' if not view.envelope_ok else 'right'}: {error}")
        if view.envelope_ok and (code == "METHOD_NOT_FOUND") != (view.method not in METHODS):
            raise FuzzFailure(f"{code} for method {view.method!r}: {error}")
        if expect.outcome == "ok":
            raise FuzzFailure(f"refused with {code} a request the doc accepts: {error}")
        if expect.codes is not None and code not in expect.codes:
            if expect.known == "partition-beyond-max" and code == "INVALID_PARAMS":
                self.tolerate("partition-beyond-max",
                              f"INVALID_PARAMS where {sorted(expect.codes)} is due: {error}")
                return code
            raise FuzzFailure(f"{code} where one of {sorted(expect.codes)} is due: {error}")
        return code

    def check_id(self, view: LineView, answer: dict[str, Any]) -> None:
        if id_key(answer["id"]) != id_key(view.rid):
            raise FuzzFailure(f"answer id {answer['id']!r} for a request whose id reads {view.rid!r}")


# --- reading results against the model --------------------------------------------------------


def check_poll(view: LineView, result: dict[str, Any], state: TopicState, *, late: bool) -> None:
    """A Poll result agrees with the partition it read (late: read some time before C{state})."""
    params = view.params or {}
    partition = params.get("partition") or 0
    p = state.partitions[partition]
    offset = params["offset"]
    limit = params.get("max_messages") or 10**9
    _keys(result, {"messages", "next_offset", "high_watermark", "log_start_offset"}, "Poll")
    messages = result["messages"]
    if len(messages) > limit:
        raise FuzzFailure(f"Poll returned {len(messages)} messages, max_messages was {limit}")
    for i, m in enumerate(messages):
        want_offset = offset + i
        index = want_offset - p.log_start
        if not 0 <= index < len(p.records):
            raise FuzzFailure(f"Poll returned offset {want_offset}, the partition has [{p.log_start}, {p.end})")
        if not same_record(m, p.records[index]):
            raise FuzzFailure(f"Poll returned {m} at offset {want_offset}, stored is {p.records[index]}")
    if result["next_offset"] != offset + len(messages):
        raise FuzzFailure(f"next_offset {result['next_offset']} after {len(messages)} messages from {offset}")
    if result["log_start_offset"] != p.log_start:
        raise FuzzFailure(f"log_start_offset {result['log_start_offset']}, expected {p.log_start}")
    if late:
        if result["high_watermark"] > p.high_watermark:
            raise FuzzFailure(f"high_watermark {result['high_watermark']} beyond {p.high_watermark}")
        return
    if result["high_watermark"] != p.high_watermark:
        raise FuzzFailure(f"high_watermark {result['high_watermark']}, expected {p.high_watermark}")
    if offset < p.high_watermark and not messages:
        raise FuzzFailure(f"Poll at {offset} < high watermark {p.high_watermark} returned no message")


def expected_list_offset(p: PartitionState, at: Any) -> int:
    if at == "earliest":
        return p.log_start
    if at is None or at == "latest":
        return p.high_watermark
    for r in p.records:
        if r["timestamp"] >= at:
            return max(min(r["offset"], p.high_watermark), p.log_start)
    return p.high_watermark


def describe(name: str, state: TopicState) -> dict[str, Any]:
    return {
        "topic": name,
        "partitions": [
            {"partition": i, "log_start_offset": p.log_start, "high_watermark": p.high_watermark,
             "log_end_offset": p.end}
            for i, p in enumerate(state.partitions)
        ],
        "config": state.config,
    }


def _keys(result: dict[str, Any], keys: set[str], what: str) -> None:
    if set(result) != keys:
        raise FuzzFailure(f"{what} result has fields {sorted(result)}, expected {sorted(keys)}")


def requested_config(params: dict[str, Any]) -> dict[str, Any]:
    config = params.get("config") or {}
    out = empty_config()
    for k in out:
        out[k] = config.get(k) if isinstance(config, dict) else None
    return out


def batch_groups(messages: list[dict[str, Any]], count: int, parts: list[dict[str, Any]]) -> dict[int, list[int]]:
    """Which message went to which partition, given a SendBatch result's C{partitions}
    (one entry per partition touched, in order of first use)."""
    candidates = range(count) if needs_sticky(messages) else [0]
    for sticky in candidates:
        groups = placement(messages, count, sticky)
        if [(p, len(ix)) for p, ix in groups.items()] == [(e["partition"], e["count"]) for e in parts]:
            return groups
    raise FuzzFailure(f"SendBatch placed its {len(messages)} messages as {parts}, which docs/protocol.md's "
                      f"placement rules (partition, key hash, one sticky partition) cannot give")


@attrs.define
class Uncertain:
    """A topic written by acks=none requests in this step: their placement is
    learnt from what is stored, and then checked against the placement rules."""

    pre: TopicState | None
    silent: list[LineView] = attrs.field(factory=list)
    placed: list[tuple[int, int, int, list[dict[str, Any]]]] = attrs.field(factory=list)  # (p, base, ts, msgs)
    unverifiable: bool = False


@attrs.define
class StepContext:
    """What the lines before this one in the step did."""

    config: BrokerConfig
    checker: Checker
    uncertain: dict[str, Uncertain] = attrs.field(factory=dict)
    refused_writes: set[str] = attrs.field(factory=set)
    deferred: list[LineView] = attrs.field(factory=list)

    def created_by_refused_write(self, w: Model, topic: str, what: str) -> TopicState | None:
        """The known bug: a refused Send auto-created its topic, and a later line of the step saw it."""
        if topic not in self.refused_writes or topic in w.topics:
            return None
        self.checker.tolerate("refused-send-creates-topic", what)
        state = w.topics[topic] = new_topic(w, self.config.default_partitions, empty_config())
        return state


def apply_result(w: Model, view: LineView, result: dict[str, Any], ctx: StepContext, known_hit: str | None) -> bool:
    """Check an accepted request's result against the working model C{w} and
    apply its effect there.  Returns whether it changed stored state."""
    config, uncertain, deferred = ctx.config, ctx.uncertain, ctx.deferred
    method = view.method
    params = view.params or {}
    topic = view.topic
    if topic is not None and topic in uncertain:
        u = uncertain[topic]
        if method in WRITES:
            u.placed.extend(_placements(view, result, u.pre.count if u.pre else config.default_partitions))
            return True
        if method in ("CreateTopic", "DeleteTopic"):
            u.unverifiable = True
            return True
        return False  # a read of a topic whose content is not known yet
    if method == "Ping":
        _keys(result, {"pong", "time", "version"}, "Ping")
        if result["pong"] is not True or type(result["time"]) is not int or not isinstance(result["version"], str):
            raise FuzzFailure(f"bad Ping result {result}")
        return False
    if method == "ListTopics":
        if uncertain:
            return False
        for t in result.get("topics", []):
            if isinstance(t, dict) and isinstance(t.get("topic"), str):
                ctx.created_by_refused_write(w, t["topic"], f"ListTopics lists {t['topic']!r}, whose writes were refused")
        want = {"topics": [{"topic": n, "partitions": t.count} for n, t in sorted(w.topics.items())]}
        if result != want:
            raise FuzzFailure(f"ListTopics gave {result}, expected {want}")
        return False
    if topic is None:
        raise FuzzFailure(f"{method} accepted without a valid topic: {params}")
    state = w.topics.get(topic)
    if state is None and method not in WRITES + ("CreateTopic",):  # a write auto-creates it anyway
        state = ctx.created_by_refused_write(w, topic, f"{method} found {topic!r}, whose writes were refused")
    if method in WRITES:
        if state is None:
            if not config.auto_create_topics:
                raise FuzzFailure(f"{method} to unknown topic {topic!r} accepted with auto-creation off")
            state = w.topics[topic] = new_topic(w, config.default_partitions, empty_config())
        if result.get("topic") != topic or result.get("durability") not in DURABILITIES or \
                type(result.get("timestamp")) is not int:
            raise FuzzFailure(f"{method} result {result}")
        for p, base, ts, msgs in _placements(view, result, state.count):
            part = state.partitions[p]
            if base != part.end:
                raise FuzzFailure(f"{method} put messages at offset {base} of partition {p}, its end is {part.end}")
            for i, m in enumerate(msgs):
                part.records.append(record(base + i, ts, m))
            part.end = part.high_watermark = base + len(msgs)
        return True
    if method == "CreateTopic":
        if state is not None:
            raise FuzzFailure(f"CreateTopic of existing topic {topic!r} accepted")
        count = params.get("partitions") or 1
        state = w.topics[topic] = new_topic(w, count, requested_config(params))
        if known_hit == "config-falsy":
            state.config = empty_config()
        if result != describe(topic, state):
            raise FuzzFailure(f"CreateTopic gave {result}, expected {describe(topic, state)}")
        return True
    if state is None:
        raise FuzzFailure(f"{method} of unknown topic {topic!r} accepted: {result}")
    if method == "DeleteTopic":
        if result != {"topic": topic, "deleted": True}:
            raise FuzzFailure(f"DeleteTopic gave {result}")
        del w.topics[topic]
        w.next_generation()
        return True
    if method == "DescribeTopic":
        if result != describe(topic, state):
            raise FuzzFailure(f"DescribeTopic gave {result}, expected {describe(topic, state)}")
        return False
    partition = params.get("partition") or 0
    if partition >= state.count:
        raise FuzzFailure(f"{method} of partition {partition} accepted, topic has {state.count}")
    p = state.partitions[partition]
    if method == "ListOffsets":
        want = {"topic": topic, "partition": partition, "offset": expected_list_offset(p, params.get("at"))}
        if result != want:
            raise FuzzFailure(f"ListOffsets gave {result}, expected {want}")
        return False
    if method == "Poll":
        if not p.log_start <= params["offset"] <= p.end:
            raise FuzzFailure(f"Poll at {params['offset']} accepted, partition has [{p.log_start}, {p.end}]")
        if view.may_park and params["offset"] >= p.high_watermark:
            deferred.append(view)  # a later line may have woken it: check it against the final state
        else:
            check_poll(view, result, state, late=False)
        return False
    raise FuzzFailure(f"result for unexpected method {method!r}")


def _placements(view: LineView, result: dict[str, Any], count: int) -> list[tuple[int, int, int, list[dict[str, Any]]]]:
    messages = view.messages or []
    ts = result.get("timestamp")
    if view.method == "Send":
        _keys(result, {"topic", "partition", "offset", "timestamp", "durability"}, "Send")
        m = messages[0]
        p = result["partition"]
        if m.get("partition") is not None and p != m["partition"]:
            raise FuzzFailure(f"Send with partition {m['partition']} went to {p}")
        if m.get("partition") is None and m.get("key") is not None:
            want = placement([m], count, 0)
            if p not in want:
                raise FuzzFailure(f"Send with key {m['key']!r} went to partition {p}, murmur2 says {list(want)}")
        if not 0 <= p < count:
            raise FuzzFailure(f"Send went to partition {p} of {count}")
        return [(p, result["offset"], ts, [m])]
    _keys(result, {"topic", "timestamp", "durability", "partitions"}, "SendBatch")
    groups = batch_groups(messages, count, result["partitions"])
    return [(e["partition"], e["base_offset"], ts, [messages[i] for i in groups[e["partition"]]])
            for e in result["partitions"]]


def explain_silent(name: str, u: Uncertain, actual: TopicState, config: BrokerConfig) -> None:
    """The records the step added to C{name} must be exactly those of its writes:
    the answered ones where their answers said, the acks=none ones where the
    placement rules allow, in request order."""
    pre = u.pre or TopicState([PartitionState() for _ in range(config.default_partitions)], empty_config())
    if actual.count != pre.count:
        raise FuzzFailure(f"topic {name!r} has {actual.count} partitions, expected {pre.count}")
    fresh: list[dict[int, dict[str, Any]]] = []
    for i, (before, now) in enumerate(zip(pre.partitions, actual.partitions)):
        if now.log_start != before.log_start or not same_records(before.records, now.records[:len(before.records)]):
            raise FuzzFailure(f"{name}/{i}: stored records changed under acks=none writes")
        fresh.append({r["offset"]: r for r in now.records[len(before.records):]})
    for p, base, ts, msgs in u.placed:
        for j, m in enumerate(msgs):
            got = fresh[p].pop(base + j, None)
            if got is None or not same_record(got, record(base + j, ts, m)):
                raise FuzzFailure(f"{name}/{p}@{base + j}: answered write not stored as sent: {got} vs {m}")
    queues = [deque(sorted(f.values(), key=lambda r: r["offset"])) for f in fresh]
    for view in u.silent:
        messages = view.messages or []
        for sticky in range(pre.count) if needs_sticky(messages) else [0]:
            groups = placement(messages, pre.count, sticky)
            if all(p < len(queues) and len(queues[p]) >= len(ix) and _group_matches(queues[p], messages, ix)
                   for p, ix in groups.items()):
                for p, ix in groups.items():
                    for _ in ix:
                        queues[p].popleft()
                break
        else:
            raise FuzzFailure(f"acks=none {view.method} got no answer but is not stored as sent in {name!r}: "
                              f"{view.data[:300]!r}")
    left = [r for q in queues for r in q]
    if left:
        raise FuzzFailure(f"records in {name!r} that no request of the step wrote: {left[:3]}")


def _group_matches(queue: deque[dict[str, Any]], messages: list[dict[str, Any]], indices: list[int]) -> bool:
    stamps = set()
    for r, i in zip(queue, indices):
        want = record(r["offset"], r["timestamp"], messages[i])
        if not same_record(r, want):
            return False
        stamps.add(r["timestamp"])
    return len(stamps) <= 1


def compare_topic(name: str, want: TopicState, got: TopicState, *, unchanged: bool) -> None:
    """C{got} (read from the node) must be C{want}; byte for byte where nothing was accepted."""
    if got.count != want.count:
        raise FuzzFailure(f"{name!r} has {got.count} partitions, expected {want.count}")
    if got.config != want.config:
        raise FuzzFailure(f"{name!r} config is {got.config}, expected {want.config}")
    for i, (a, b) in enumerate(zip(want.partitions, got.partitions)):
        if (a.log_start, a.high_watermark, a.end) != (b.log_start, b.high_watermark, b.end):
            raise FuzzFailure(f"{name}/{i}: offsets (start, hw, end) are {(b.log_start, b.high_watermark, b.end)}, "
                              f"expected {(a.log_start, a.high_watermark, a.end)}")
        if not same_records(a.records, b.records):
            diff = next((j for j, (x, y) in enumerate(zip(a.records, b.records)) if not same_record(x, y)), None)
            raise FuzzFailure(f"{name}/{i}: stored records differ at index {diff}: "
                              f"{b.records[diff] if diff is not None else len(b.records)} vs "
                              f"{a.records[diff] if diff is not None else len(a.records)}")
        if unchanged and a.raw and b.raw != a.raw:
            raise FuzzFailure(f"{name}/{i}: the bytes Poll returns changed though nothing was accepted")



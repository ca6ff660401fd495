"""Valid requests for every method, and the mutations that break them.

L{RequestGenerator} writes requests that are valid for what the model says
is stored, each with the L{Expect} that docs/protocol.md gives it; the
C{mutate_*} functions each break one thing (a field's type, a bound, the
nesting, the UTF-8, the JSON itself) and say how the expectation changes.
Everything random comes from one C{random.Random}, so a seed replays a run.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

import attrs

from streamlog import wire
from streamlog.broker.broker import BrokerConfig

from .jsonenc import Obj, Raw, Str, deep_copy, encode
from .model import ANY, OK, Expect, Model, combine, refused

MAX_INT64 = 2**63 - 1
MAX_UINT64 = 2**64 - 1

#: Topic names the generator uses: a few, so that topics get reused, filled
#: and deleted, at the edges of the naming rules (249 characters, one digit).
POOL = ["t0", "t1", "multi", "a.b-c_d", "Z" * 249, "0"]
KEYS = ["k", "customer-7", "", "ключ", "😀", "k\u0000z", "k" * 40]

METHODS = ["Send", "SendBatch", "Poll", "CreateTopic", "DeleteTopic", "ListTopics", "DescribeTopic",
           "ListOffsets", "Ping"]
_METHOD_WEIGHTS = [25, 14, 24, 6, 3, 4, 6, 10, 6]


@attrs.define
class Req:
    """One request as a tree the mutators may edit, with what it must get."""

    method: str
    envelope: Obj
    expect: Expect
    #: Paths the mutations edited ("params.topic", "id", ...): a second
    #: mutation may not undo the first by editing the same place.
    touched: list[str] = attrs.field(factory=list)

    def touch(self, path: str) -> None:
        self.touched.append(path)

    @property
    def params(self) -> Any:
        return self.envelope.get("params")

    def copy(self) -> Req:
        return Req(self.method, self.envelope.copy(), self.expect, list(self.touched))

    def line(self) -> bytes:
        return encode(self.envelope)


@attrs.frozen
class Field:
    name: str
    kind: str  # topic value key partition headers acks messages offset int config at
    required: bool = False
    lo: int = 0
    hi: int = MAX_INT64


def param_fields(method: str, limits: wire.Limits) -> list[Field]:
    topic = Field("topic", "topic", required=True)
    return {
        "Send": [topic, Field("value", "value", required=True), Field("key", "key"), Field("partition", "partition"),
                 Field("headers", "headers"), Field("acks", "acks")],
        "SendBatch": [topic, Field("messages", "messages", required=True), Field("acks", "acks")],
        "Poll": [topic, Field("partition", "partition"), Field("offset", "offset", required=True),
                 Field("max_messages", "int", lo=1, hi=limits.max_poll_messages),
                 Field("max_bytes", "int", lo=1, hi=limits.max_poll_bytes),
                 Field("max_wait_ms", "int", lo=0, hi=limits.max_wait_ms)],
        "CreateTopic": [topic, Field("partitions", "int", lo=1, hi=limits.max_partitions), Field("config", "config")],
        "DeleteTopic": [topic],
        "DescribeTopic": [topic],
        "ListOffsets": [topic, Field("partition", "partition"), Field("at", "at")],
        "ListTopics": [],
        "Ping": [],
    }[method]


MESSAGE_FIELDS = [Field("value", "value", required=True), Field("key", "key"), Field("partition", "partition"),
                  Field("headers", "headers")]
CONFIG_FIELDS = [Field("retention_ms", "int", lo=1), Field("retention_bytes", "int", lo=1),
                 Field("segment_bytes", "int", lo=1024), Field("segment_ms", "int", lo=1)]


# --- random JSON ------------------------------------------------------------------

_ALPHABETS = [
    string.ascii_letters + string.digits,
    string.punctuation + " ",
    "\"\\/\b\f\n\r\t",
    "".join(chr(c) for c in range(0x20)) + "\x7f",
    "éß中文Ωж\u00a0\u200b\u2028\u2029\ufeff\ufffd\uffff\ufffe",
    "😀𝄞\U0010ffff\U00010000",
]


def random_text(rng: random.Random, n: int | None = None) -> str:
    if n is None:
        n = rng.choice([0, 1, 2, 5, 10, 30])
    alphabet = rng.choice(_ALPHABETS)
    return "".join(rng.choice(alphabet) for _ in range(n))


_SCALARS = [None, True, False, 0, -1, 1, MAX_INT64, -MAX_INT64 - 1, MAX_UINT64, 2**53 + 1, 2**64, 10**30,
            0.5, -0.0, 1e308, 5e-324, 1.7976931348623157e308, -2.5e-10, 3.0]


def random_value(rng: random.Random, depth: int = 0, max_depth: int = 4) -> Any:
    r = rng.random()
    if depth >= max_depth or r < 0.45:
        if rng.random() < 0.5:
            return random_text(rng)
        return rng.choice(_SCALARS) if rng.random() < 0.6 else rng.randint(-10**6, 10**6)
    if r < 0.75:
        return [random_value(rng, depth + 1, max_depth) for _ in range(rng.randint(0, 4))]
    return {random_text(rng, rng.randint(0, 6)): random_value(rng, depth + 1, max_depth)
            for _ in range(rng.randint(0, 4))}


def nested(depth: int, rng: random.Random) -> Raw:
    """A value nested exactly C{depth} containers deep (lists and objects mixed)."""
    opens, closes = [], []
    for _ in range(depth):
        if rng.random() < 0.5:
            opens.append(b"[")
            closes.append(b"]")
        else:
            opens.append(b'{"a":')
            closes.append(b"}")
    inner = b"1" if opens and opens[-1] != b"[" else b""
    return Raw(b"".join(opens) + inner + b"".join(reversed(closes)))


# --- valid requests ----------------------------------------------------------------


class RequestGenerator:
    """Valid requests for the state the model describes, each with its expectation."""

    def __init__(self, rng: random.Random, limits: wire.Limits, config: BrokerConfig, model: Model) -> None:
        self.rng = rng
        self.limits = limits
        self.config = config
        self.model = model
        self._next_id = 0
        self.now_ms = 0  # a recent broker timestamp, for ListOffsets
        #: Valid retention settings of a few ms would delete data under a real server's retention check.
        self.allow_small_retention = True

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def unique(self) -> int:
        """A number no other request of this run uses (for weird but valid ids)."""
        return self.new_id()

    # topics

    def topic(self, existing: float = 0.8) -> str:
        names = list(self.model.topics)
        if names and self.rng.random() < existing:
            return self.rng.choice(names)
        return self.rng.choice(POOL)

    def partitions_of(self, topic: str) -> int | None:
        state = self.model.topics.get(topic)
        return state.count if state is not None else None

    def request(self, method: str | None = None) -> Req:
        if method is None:
            big = [name for name, t in self.model.topics.items() if t.size > 400]
            if big and self.rng.random() < 0.2:
                return self._envelope("DeleteTopic", Obj([("topic", self.rng.choice(big))]), OK)
            method = self.rng.choices(METHODS, _METHOD_WEIGHTS)[0]
        return getattr(self, "gen_" + method.lower())()

    def _envelope(self, method: str, params: Any, expect: Expect, omit_params: bool = False,
                  faults: list[str] | None = None) -> Req:
        """The request; C{faults}: paths of the fields the generator itself made
        wrong for the state, so that no mutation undoes them unseen."""
        pairs: list[tuple[Any, Any]] = [("id", self.new_id()), ("method", method)]
        if not omit_params:
            pairs.append(("params", params))
        if self.rng.random() < 0.2:
            self.rng.shuffle(pairs)  # members may come in any order
        return Req(method, Obj(pairs), expect.because(f"valid {method}"), list(faults or []))

    # messages

    def message(self, count: int | None) -> tuple[list[tuple[str, Any]], Expect]:
        """The fields of one message for a topic of C{count} partitions (None: it does not exist)."""
        rng = self.rng
        pairs: list[tuple[str, Any]] = [("value", random_value(rng))]
        r = rng.random()
        if r < 0.1:
            pairs.append(("key", None))
        elif r < 0.55:
            pairs.append(("key", rng.choice(KEYS)))
        expect = OK
        r = rng.random()
        known = count if count is not None else self.config.default_partitions
        if r < 0.03 and known < self.limits.max_partitions:
            pairs.append(("partition", known))  # one past the last: UNKNOWN_PARTITION, nothing stored
            expect = refused("UNKNOWN_PARTITION", stateless=False)
        elif r < 0.25:
            pairs.append(("partition", rng.randrange(known)))
        r = rng.random()
        if r < 0.1:
            pairs.append(("headers", {}))
        elif r < 0.3:
            pairs.append(("headers", {random_text(rng, rng.randint(0, 5)): random_text(rng)
                                      for _ in range(rng.randint(1, 3))}))
        rng.shuffle(pairs)
        return pairs, expect

    def _topic_expect(self, topic: str, writes: bool) -> Expect:
        if topic in self.model.topics:
            return OK
        if writes and self.config.auto_create_topics:
            return OK
        return refused("UNKNOWN_TOPIC", stateless=False)

    def gen_send(self) -> Req:
        topic = self.topic()
        pairs, expect = self.message(self.partitions_of(topic))
        params = Obj([("topic", topic)] + pairs)
        self._acks(params)
        faults = ["params.partition"] if expect.outcome != "ok" else []
        return self._envelope("Send", params, combine(self._topic_expect(topic, True), expect), faults=faults)

    def gen_sendbatch(self) -> Req:
        rng = self.rng
        topic = self.topic()
        count = self.partitions_of(topic)
        n = rng.choice([1, 1, 2, 3, 5, 8]) if rng.random() < 0.97 else self.limits.max_batch_messages
        messages = []
        expect = self._topic_expect(topic, True)
        faults = []
        for i in range(n):
            pairs, e = self.message(count)
            if n > 8:  # the largest batch: small values, so it stays under the line limit
                pairs = [(k, v if k != "value" else rng.randint(0, 9)) for k, v in pairs]
            messages.append(Obj(pairs))
            expect = combine(expect, e)
            if e.outcome != "ok":
                faults.append(f"params.messages[{i}].partition")
        params = Obj([("topic", topic), ("messages", messages)])
        self._acks(params)
        return self._envelope("SendBatch", params, expect, faults=faults)

    def _acks(self, params: Obj) -> None:
        r = self.rng.random()
        if r < 0.15:
            params.pairs.append(("acks", "all"))
        elif r < 0.3:
            params.pairs.append(("acks", "leader"))
        elif r < 0.42:
            params.pairs.append(("acks", "none"))

    def gen_poll(self) -> Req:
        rng = self.rng
        topic = self.topic(0.92)
        state = self.model.topics.get(topic)
        params = Obj([("topic", topic)])
        if state is None:
            params.pairs.append(("offset", rng.choice([0, 0, 5])))
            return self._envelope("Poll", params, refused("UNKNOWN_TOPIC", stateless=False))
        partition = rng.randrange(state.count)
        if partition or rng.random() < 0.3:
            params.pairs.append(("partition", partition))
        p = state.partitions[partition]
        r = rng.random()
        expect = OK
        faults = []
        if r < 0.04:
            offset = p.end + rng.choice([1, 2, 100])
            expect = refused("OFFSET_OUT_OF_RANGE", stateless=False)
            faults = ["params.offset", "params.partition"]
        elif r < 0.06 and state.count < self.limits.max_partitions:
            params.set("partition", state.count)
            offset = 0
            expect = refused("UNKNOWN_PARTITION", stateless=False)
            faults = ["params.partition"]
        elif r < 0.3:
            offset = p.log_start
        elif r < 0.7:
            offset = rng.randint(p.log_start, p.end)
        else:
            offset = p.end
        params.pairs.append(("offset", offset))
        if rng.random() < 0.4:
            params.pairs.append(("max_messages", rng.choice([1, 2, 10, self.limits.max_poll_messages])))
        if rng.random() < 0.3:
            params.pairs.append(("max_bytes", rng.choice([1, 50, 1000, self.limits.max_poll_bytes])))
        r = rng.random()
        if r < 0.15:
            params.pairs.append(("max_wait_ms", 0))
        elif r < 0.35:
            params.pairs.append(("max_wait_ms", rng.choice([1, 10, 100, self.limits.max_wait_ms])))
        rng.shuffle(params.pairs)
        return self._envelope("Poll", params, expect, faults=faults)

    def gen_createtopic(self) -> Req:
        rng = self.rng
        topic = self.topic(0.15)
        params = Obj([("topic", topic)])
        if rng.random() < 0.7:
            params.pairs.append(("partitions", rng.randint(1, min(4, self.limits.max_partitions))))
        r = rng.random()
        if r < 0.1:
            params.pairs.append(("config", {}))
        elif r < 0.15:
            params.pairs.append(("config", None))
        elif r < 0.5:
            config = Obj()
            for f in CONFIG_FIELDS:
                if rng.random() < 0.4:
                    config.pairs.append((f.name, rng.choice([None, f.lo, 10**12, MAX_INT64, 86_400_000])))
            params.pairs.append(("config", config))
        expect = OK if topic not in self.model.topics else refused("TOPIC_EXISTS", stateless=False)
        return self._envelope("CreateTopic", params, expect)

    def gen_deletetopic(self) -> Req:
        topic = self.topic(0.7)
        expect = OK if topic in self.model.topics else refused("UNKNOWN_TOPIC", stateless=False)
        return self._envelope("DeleteTopic", Obj([("topic", topic)]), expect)

    def gen_describetopic(self) -> Req:
        topic = self.topic(0.85)
        expect = OK if topic in self.model.topics else refused("UNKNOWN_TOPIC", stateless=False)
        return self._envelope("DescribeTopic", Obj([("topic", topic)]), expect)

    def gen_listoffsets(self) -> Req:
        rng = self.rng
        topic = self.topic(0.9)
        state = self.model.topics.get(topic)
        params = Obj([("topic", topic)])
        if state is not None and (state.count > 1 or rng.random() < 0.3):
            params.pairs.append(("partition", rng.randrange(state.count)))
        r = rng.random()
        if r < 0.2:
            params.pairs.append(("at", "earliest"))
        elif r < 0.4:
            params.pairs.append(("at", "latest"))
        elif r < 0.8:
            params.pairs.append(("at", rng.choice([0, 1, self.now_ms, self.now_ms + 1, max(0, self.now_ms - 50),
                                                   MAX_INT64])))
        expect = OK if state is not None else refused("UNKNOWN_TOPIC", stateless=False)
        return self._envelope("ListOffsets", params, expect)

    def gen_listtopics(self) -> Req:
        return self._no_params("ListTopics")

    def gen_ping(self) -> Req:
        return self._no_params("Ping")

    def _no_params(self, method: str) -> Req:
        r = self.rng.random()
        if r < 0.2:
            return self._envelope(method, None, OK, omit_params=True)
        return self._envelope(method, None if r < 0.35 else Obj(), OK)


# --- mutations ------------------------------------------------------------------------
#
# Each takes a copy of a request and the generator, edits the request and
# returns a short name of what it did, or None if it does not apply.


Mutation = Callable[[Req, RequestGenerator], "str | None"]


def _containers(req: Req, g: RequestGenerator) -> list[tuple[Obj, list[Field], str, int]]:
    """(object, its fields, where, nesting depth of its members) for every
    object of the request a field mutation may edit."""
    params = req.params
    out: list[tuple[Obj, list[Field], str, int]] = []
    if isinstance(params, Obj):
        out.append((params, param_fields(req.method, g.limits), "params", 2))
        messages = params.get("messages")
        if req.method == "SendBatch" and isinstance(messages, list):
            for i, m in enumerate(messages):
                if isinstance(m, Obj):
                    out.append((m, MESSAGE_FIELDS, f"params.messages[{i}]", 4))
        config = params.get("config")
        if req.method == "CreateTopic" and isinstance(config, Obj):
            out.append((config, CONFIG_FIELDS, "params.config", 3))
    return out


def _pick_field(req: Req, g: RequestGenerator, present: bool | None = None) -> tuple[Obj, Field, str, int] | None:
    choices = []
    for obj, fields, where, depth in _containers(req, g):
        for f in fields:
            if present is None or obj.has(f.name) == present:
                choices.append((obj, f, where, depth))
    return g.rng.choice(choices) if choices else None


_WRONG: dict[str, list[Any]] = {
    "topic": [5, 1.5, True, False, [], ["t0"], {}, {"topic": "t0"}, Raw(b"-0")],
    "int": [True, False, 1.0, 0.5, "1", "", [], [1], {}, 2**64, -(2**63) - 1, Raw(b"1e3"), Raw(b"1E2"), Raw(b"0.0"),
            Raw(b"-0.0"), Raw(b"1e-400")],
    "key": [5, True, False, [], ["k"], {}, 1.5, {"k": "v"}],
    "headers": [[], ["a"], "x", 5, True, {"a": 1}, {"a": None}, {"a": ["x"]}, {"a": {"b": "c"}}, 0, "", False,
                {"a": True}],
    "acks": ["ALL", "", "al", "none ", " all", 1, 0, True, [], ["all"], {}, "Leader"],
    "messages": [{}, "x", 5, True, [], [1], [None], [[]], ["x"], [True], {"value": 1}],
    "config": [["retention_ms"], "x", 5, True, 1.5, {"retention_ms": "1"}, {"segment_bytes": True}],
    "at": ["yesterday", "EARLIEST", "Latest", "", True, 1.5, [], {}, Raw(b"1e3"), ["latest"]],
}
_WRONG["partition"] = _WRONG["int"]
_WRONG["offset"] = _WRONG["int"]
_FALSY_CONFIG = [0, "", [], False]


def mutate_wrong_type(req: Req, g: RequestGenerator) -> str | None:
    """A field of another JSON type than the doc gives it: INVALID_PARAMS."""
    picked = _pick_field(req, g)
    if picked is None:
        return None
    obj, f, where, _ = picked
    req.touch(f"{where}.{f.name}")
    if f.kind == "value":
        return None  # any JSON is a value
    if f.kind == "config" and g.rng.random() < 0.3:
        bad: Any = g.rng.choice(_FALSY_CONFIG)
        obj.set(f.name, bad)
        req.expect = combine(req.expect, refused("INVALID_PARAMS", known="config-falsy"))
        return f"falsy {where}.{f.name}={bad!r}"
    bad = g.rng.choice(_WRONG[f.kind])
    obj.set(f.name, deep_copy(bad))
    req.expect = combine(req.expect, refused("INVALID_PARAMS"))
    return f"wrong type {where}.{f.name}={bad!r}"


def mutate_null(req: Req, g: RequestGenerator) -> str | None:
    """null for a field: required ones are refused, optional ones read as absent (or refused)."""
    picked = _pick_field(req, g)
    if picked is None:
        return None
    obj, f, where, _ = picked
    req.touch(f"{where}.{f.name}")
    obj.set(f.name, None)
    if f.kind == "value":
        return f"null {where}.value"  # null is a value
    if f.required:
        req.expect = combine(req.expect, refused("INVALID_PARAMS"))
    elif f.name == "partition" and req.method == "Poll":
        req.expect = combine(req.expect, ANY)  # read as absent, i.e. partition 0, whose offsets differ
    else:
        req.expect = combine(req.expect, Expect("any", frozenset({"INVALID_PARAMS"})))
    return f"null {where}.{f.name}"


def mutate_missing(req: Req, g: RequestGenerator) -> str | None:
    picked = _pick_field(req, g, present=True)
    if picked is None:
        return None
    obj, f, where, _ = picked
    req.touch(f"{where}.{f.name}")
    obj.remove(f.name)
    if f.required:
        req.expect = combine(req.expect, refused("INVALID_PARAMS"))
    elif f.name == "partition" and req.method == "Poll":
        req.expect = combine(req.expect, ANY)  # partition 0 now: the offset may be out of its range
    return f"missing {where}.{f.name}"


_EXTRA_NAMES = ["colour", "Topic", "topic ", "", "params", "id", "partitions", "valu", "\u0000", "😀", "x" * 300]


def mutate_extra_field(req: Req, g: RequestGenerator) -> str | None:
    """An unknown field: INVALID_PARAMS inside params/messages/config, INVALID_REQUEST at the top."""
    rng = g.rng
    containers = _containers(req, g)
    if rng.random() < 0.25 or not containers:
        name = rng.choice(["jsonrpc", "Method", "ID", "param", "extra", "", "idx"])
        req.envelope.pairs.insert(rng.randrange(len(req.envelope.pairs) + 1), (name, rng.choice([1, "2.0", None, {}])))
        req.touch(f"top.{name}")
        req.expect = combine(req.expect, refused("INVALID_REQUEST"))
        return f"extra top-level field {name!r}"
    obj, fields, where, _ = rng.choice(containers)
    names = {f.name for f in fields}
    name = rng.choice([n for n in _EXTRA_NAMES if n not in names])
    obj.pairs.insert(rng.randrange(len(obj.pairs) + 1), (name, rng.choice([1, "x", None, [], {}, True])))
    req.touch(f"{where}.{name}")
    req.expect = combine(req.expect, refused("INVALID_PARAMS"))
    return f"extra field {where}.{name!r}"


def _int_candidates(f: Field) -> list[int]:
    lo, hi = f.lo, f.hi
    return [lo - 1, lo, lo + 1, hi, hi + 1, -1, 0, MAX_INT64, MAX_INT64 + 1, MAX_UINT64, -(2**63), 2**31, 2**32]


def mutate_boundary_int(req: Req, g: RequestGenerator) -> str | None:
    """Integers at and past every bound: 2**63, 2**64-1, -1, the limits and one past them."""
    rng = g.rng
    picked = _pick_field(req, g)
    if picked is None:
        return None
    obj, f, where, _ = picked
    req.touch(f"{where}.{f.name}")
    params = req.params
    topic = params.get("topic") if isinstance(params, Obj) else None
    state = g.model.topics.get(topic) if isinstance(topic, str) else None
    if f.kind == "int":
        value = rng.choice(_int_candidates(f))
        ok = f.lo <= value <= min(f.hi, MAX_INT64)
        fault = OK if ok else refused("INVALID_PARAMS")
        if ok and where == "params.config" and value < 10**9 and f.name.startswith("retention") and not g.allow_small_retention:
            return None
    elif f.kind == "offset":
        if state is None:
            return None
        p = state.partitions[_int_or(params.get("partition"), 0)] if _int_or(params.get("partition"), 0) < state.count \
            else None
        if p is None:
            return None
        value = rng.choice([-1, 0, p.log_start, p.end, p.end + 1, p.end + 1000, MAX_INT64, MAX_INT64 + 1, MAX_UINT64])
        if not 0 <= value <= MAX_INT64:
            fault = refused("INVALID_PARAMS")
        elif p.log_start <= value <= p.end:
            fault = OK
        else:
            fault = refused("OFFSET_OUT_OF_RANGE", stateless=False)
    elif f.kind == "partition":
        count = state.count if state is not None else (
            g.config.default_partitions if req.method in ("Send", "SendBatch") else None)
        if count is None:
            return None
        mp = g.limits.max_partitions
        value = rng.choice([-1, 0, count - 1, count, count + 1, mp - 1, mp, 1024, 2**31, MAX_INT64, MAX_INT64 + 1,
                            MAX_UINT64])
        if value < 0 or value > MAX_UINT64:
            fault = refused("INVALID_PARAMS")  # negative, or read as a double
        elif value > MAX_INT64:
            # docs/protocol.md has said both: "partitions are 0 to 2^63-1" (INVALID_PARAMS)
            # and "any integer >= 0; one the topic lacks is UNKNOWN_PARTITION"
            fault = refused("INVALID_PARAMS", "UNKNOWN_PARTITION", stateless=False)
        elif value < count:
            moved = req.method == "Poll" and value != _int_or(params.get("partition"), 0)
            fault = Expect("any", frozenset({"OFFSET_OUT_OF_RANGE"})) if moved else OK  # another partition's offsets
        else:
            fault = refused("UNKNOWN_PARTITION", stateless=False,
                            known="partition-beyond-max" if value >= mp else None)
    elif f.kind == "at":
        value = rng.choice([-1, 0, 1, MAX_INT64, MAX_INT64 + 1, MAX_UINT64])
        fault = OK if 0 <= value <= MAX_INT64 else refused("INVALID_PARAMS")
    else:
        return None
    obj.set(f.name, value)
    req.expect = combine(req.expect, fault)
    return f"bound {where}.{f.name}={value}"


def _int_or(value: Any, default: int) -> int:
    return value if type(value) is int else default


_BAD_NUMBERS = [b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"1e999", b"-1e999", b"+1", b"01", b".5", b"1.",
                b"0x1F", b"1_0", b"--1", b"1e", b"-", b"1e+", b"Inf", b"NAN", b"1E400"]


def mutate_bad_number(req: Req, g: RequestGenerator) -> str | None:
    """NaN, Infinity, 1e999 and other numbers JSON does not have: PARSE_ERROR."""
    picked = _pick_field(req, g)
    if picked is None:
        return None
    obj, f, where, _ = picked
    req.touch(f"{where}.{f.name}")
    literal = g.rng.choice(_BAD_NUMBERS)
    obj.set(f.name, Raw(literal))
    req.expect = combine(req.expect, refused("PARSE_ERROR"))
    return f"number {where}.{f.name}={literal.decode()}"


def mutate_deep(req: Req, g: RequestGenerator) -> str | None:
    """Nesting at and past --max-depth in a value, past 1024 in the line, or anywhere else."""
    rng = g.rng
    picked = _pick_field(req, g)
    limit = g.limits.max_depth
    if picked is None or rng.random() < 0.15:
        depth = rng.choice([2, 50, 1023, 1024, 1500])
        req.envelope.set("id", nested(depth, rng))
        req.touch("id")
        req.expect = combine(req.expect, refused("INVALID_REQUEST", "NESTING_TOO_DEEP"))
        return f"id nested {depth}"
    obj, f, where, base = picked
    req.touch(f"{where}.{f.name}")
    if f.kind == "value":
        depth = rng.choice([limit - 1, limit, limit, limit + 1, limit + 1, limit + 10, 1024 - base, 1025 - base, 3000])
        fault = OK if depth <= limit else refused("NESTING_TOO_DEEP")
    else:
        depth = rng.choice([1, 5, limit + 1, 1024 - base, 1025 - base, 2000])
        fault = refused("NESTING_TOO_DEEP") if depth + base > 1024 else refused("INVALID_PARAMS")
        if f.kind == "headers" and depth + base + 1 <= 1024 and rng.random() < 0.5:
            obj.set(f.name, Obj([("h", nested(depth, rng))]))
            req.expect = combine(req.expect, fault)
            return f"nested {depth} in {where}.headers.h"
    obj.set(f.name, nested(depth, rng))
    req.expect = combine(req.expect, fault)
    return f"nested {depth} in {where}.{f.name}"


# Parts to splice into a string literal, and whether the line stays valid JSON.
_STRING_PARTS: list[tuple[bytes, bool]] = [
    (b"\\ud800", False), (b"\\udc00", False), (b"\\ud800\\ud800", False), (b"\\udfff\\ud800", False),
    (b"\\ud83d\\ude00", True), (b"\\udbff\\udfff", True), (b"\\u0000", True), (b"\\u001f", True), (b"\\u2028", True),
    (b"\\uffff", True), (b"\\ufeff", True), (b"\\/", True), (b"\\u00e9", True),
    (b"\x00", False), (b"\x01", False), (b"\x1f", False), (b"\t", False), (b"\r", False),  # raw controls
    (b"\xff", False), (b"\xc0\x80", False), (b"\xed\xa0\x80", False), (b"\xe2\x82", False), (b"\xf4\x90\x80\x80", False),
    (b"\x80", False), (b"\xf0\x9f\x98", False),
    ("é中😀\U0010ffff".encode(), True), ("\u202e\u0301".encode(), True),
    # bad escapes; none may form a valid one with the text after it
    (b"\\x41", False), (b"\\u12g", False), (b"\\uZZZZ", False), (b"\\q", False), (b"\\ ", False),
    (b"\\U0001F600", False), (b"\\\'", False),
]


def mutate_unicode(req: Req, g: RequestGenerator) -> str | None:
    """Lone surrogates, NUL, raw control characters, invalid UTF-8, astral and odd characters in a string."""
    rng = g.rng
    part, valid = rng.choice(_STRING_PARTS)
    target = rng.random()
    if target < 0.15:
        rid = req.envelope.get("id")
        req.envelope.set("id", Str((f"u{g.unique()}", Raw(part), str(rid))))
        req.touch("id")
        if not valid:
            req.expect = combine(req.expect, refused("PARSE_ERROR"))
        return f"unicode {part!r} in id"
    if target < 0.22:
        req.envelope.set("method", Str((req.method[:2], Raw(part), req.method[2:])))
        req.touch("method")
        req.expect = combine(req.expect, refused("METHOD_NOT_FOUND" if valid else "PARSE_ERROR"))
        return f"unicode {part!r} in method"
    strings = _string_fields(req, g)
    if not strings:
        return None
    obj, name, text, kind, path = rng.choice(strings)
    req.touch(path)
    cut = rng.randint(0, len(text))
    obj.set(name, Str((text[:cut], Raw(part), text[cut:])))
    if not valid:
        fault = refused("PARSE_ERROR")
    elif kind == "topic":
        fault = refused("INVALID_TOPIC")  # no escape in the list spells a character the names allow
    else:
        fault = OK
        if kind == "key" and len(text) > 100:
            fault = ANY
    req.expect = combine(req.expect, fault)
    return f"unicode {part!r} in {name}"


def _string_fields(req: Req, g: RequestGenerator) -> list[tuple[Any, str, str, str, str]]:
    """(object, member, its text, kind, path) for every string field of the request."""
    out: list[tuple[Any, str, str, str, str]] = []
    for obj, fields, where, _ in _containers(req, g):
        for f in fields:
            value = obj.get(f.name)
            if isinstance(value, str) and f.kind in ("topic", "key", "value"):
                out.append((obj, f.name, value, f.kind, f"{where}.{f.name}"))
            elif f.kind == "headers" and isinstance(value, dict) and value:
                out.append((_HeaderSlot(obj, f.name, value), next(iter(value)), "", "header", f"{where}.{f.name}"))
    return out


class _HeaderSlot:
    """Lets mutate_unicode edit the value of one header like a field."""

    def __init__(self, obj: Obj, name: str, headers: dict[str, str]) -> None:
        self.obj, self.name, self.headers = obj, name, headers

    def set(self, key: str, value: Any) -> None:
        self.obj.set(self.name, Obj([(k, value if k == key else v) for k, v in self.headers.items()]))


def mutate_escape(req: Req, g: RequestGenerator) -> str | None:
    """The same string with some characters written as \\uXXXX escapes: it must mean the same."""
    rng = g.rng
    strings = [s for s in _string_fields(req, g) if s[3] in ("topic", "key")]
    params = req.params
    if rng.random() < 0.3 and isinstance(params, Obj) and params.pairs:
        # escape a member name: "t\u006fpic" is "topic"
        i = rng.randrange(len(params.pairs))
        name, value = params.pairs[i]
        if isinstance(name, str) and name:
            params.pairs[i] = (_escaped(name, rng), value)
            req.touch(f"params.{name}")
            return f"escaped name {name!r}"
    if not strings:
        return None
    obj, name, text, _, path = rng.choice(strings)
    if not text:
        return None
    req.touch(path)
    obj.set(name, _escaped(text, rng))
    return f"escaped {name}"


def _escaped(text: str, rng: random.Random) -> Str:
    parts: list[Any] = []
    for ch in text:
        if rng.random() < 0.5:
            code = ord(ch)
            if code > 0xFFFF:
                code -= 0x10000
                parts.append(Raw(b"\\u%04x\\u%04X" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF))))
            else:
                parts.append(Raw((b"\\u%04x" if rng.random() < 0.5 else b"\\u%04X") % code))
        else:
            parts.append(ch)
    return Str(tuple(parts))


def mutate_long_string(req: Req, g: RequestGenerator) -> str | None:
    """Strings at and past their limits: 249/250-character topics, 256/257-character ids, huge keys and values."""
    rng = g.rng
    limits = g.limits
    r = rng.random()
    if r < 0.25:
        n = rng.choice([limits.max_id_length, limits.max_id_length + 1, 5000])
        fill = rng.choice(["x", "é", "😀"])
        tag = str(g.unique())
        rid = tag + fill * (n - len(tag))
        req.envelope.set("id", rid)
        req.touch("id")
        if n > limits.max_id_length:
            req.expect = combine(req.expect, refused("INVALID_REQUEST"))
        return f"id of {n} x {fill!r}"
    if r < 0.3:
        req.envelope.set("method", req.method + "x" * rng.choice([1, 300, 10000]))
        req.touch("method")
        req.expect = combine(req.expect, refused("METHOD_NOT_FOUND"))
        return "long method"
    picked = _pick_field(req, g)
    if picked is None:
        return None
    obj, f, where, _ = picked
    req.touch(f"{where}.{f.name}")
    mb = limits.max_message_bytes
    if f.kind == "topic":
        n = rng.choice([249, 250, 251, 2000])
        obj.set(f.name, "T" * n)
        if n > 249:
            fault = refused("INVALID_TOPIC")
        elif req.method in ("Send", "SendBatch", "CreateTopic"):
            fault = Expect("any", frozenset({"UNKNOWN_PARTITION", "TOPIC_EXISTS", "MESSAGE_TOO_LARGE", "INVALID_PARAMS"}))
        else:
            fault = Expect("any", frozenset({"UNKNOWN_TOPIC", "INVALID_PARAMS", "UNKNOWN_PARTITION",
                                             "OFFSET_OUT_OF_RANGE"}))
        req.expect = combine(req.expect, fault)
        return f"topic of {n}"
    if f.kind in ("value", "key"):
        n = rng.choice([mb // 2, mb - 150, mb - 60, mb, mb + 1, 2 * mb])
        obj.set(f.name, "v" * n)
        if n > mb:
            codes = {"MESSAGE_TOO_LARGE", "KEY_TOO_LARGE"} if f.kind == "key" else {"MESSAGE_TOO_LARGE"}
            fault = refused(*codes)
        else:
            codes = {"MESSAGE_TOO_LARGE", "KEY_TOO_LARGE"} if f.kind == "key" else {"MESSAGE_TOO_LARGE"}
            fault = Expect("any", frozenset(codes)) if n > mb // 2 or f.kind == "key" else OK
        req.expect = combine(req.expect, fault)
        return f"{where}.{f.name} of {n}"
    if f.kind == "headers":
        n = rng.choice([10, mb + 1])
        obj.set(f.name, {"h": "h" * n})
        req.expect = combine(req.expect, refused("MESSAGE_TOO_LARGE") if n > mb else OK)
        return f"{where}.headers of {n}"
    return None


def mutate_batch_size(req: Req, g: RequestGenerator) -> str | None:
    """A SendBatch at and past --max-batch-messages, or with one bad message among good ones."""
    if req.method != "SendBatch" or not isinstance(req.params, Obj):
        return None
    rng = g.rng
    params = req.params
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    limit = g.limits.max_batch_messages
    req.touch("params.messages")
    if rng.random() < 0.5:
        n = rng.choice([limit, limit + 1])
        params.set("messages", [Obj([("value", i)]) for i in range(n)])
        req.expect = combine(req.expect, OK if n <= limit else refused("BATCH_TOO_LARGE"))
        return f"batch of {n}"
    # all or nothing: one bad message spoils the whole batch
    topic = params.get("topic")
    state = g.model.topics.get(topic) if isinstance(topic, str) else None
    count = state.count if state is not None else g.config.default_partitions
    bad = rng.choice([
        (Obj([("value", 1), ("partition", count)]), refused("UNKNOWN_PARTITION", stateless=False)),
        (Obj([("value", "v" * (g.limits.max_message_bytes + 10))]), refused("MESSAGE_TOO_LARGE")),
        (Obj([("value", 1), ("key", 5)]), refused("INVALID_PARAMS")),
        (Obj([("key", "k")]), refused("INVALID_PARAMS")),
    ])
    if len(messages) >= limit:
        return None
    messages.insert(rng.randint(0, len(messages)), bad[0])
    req.expect = combine(req.expect, bad[1])
    return "one bad message in a batch"


def mutate_envelope(req: Req, g: RequestGenerator) -> str | None:
    """The envelope broken: id, method and params of the wrong kind, missing, unknown."""
    rng = g.rng
    env = req.envelope
    choice = rng.randrange(9)
    req.touch(["id", "id", "id", "method", "method", "method", "params", "params", "dup"][choice])
    if choice == 0:
        bad = rng.choice([True, False, 1.5, None, [1], {"id": 1}, 2**64 + g.unique(), -(2**63) - 1 - g.unique(),
                          Raw(b"1e2"), Raw(b"-0.0")])
        env.set("id", bad)
        req.expect = combine(req.expect, refused("INVALID_REQUEST"))
        return f"id={bad!r}"
    if choice == 1:
        n = g.unique()
        good = rng.choice([MAX_INT64 - n, MAX_UINT64 - n, -(2**63) + n, -n, f"s{n}", f"é{n}\u0000",
                           Str((f"e{n}", Raw(b"\\u00e9"))), Raw(b"-%d" % n)])
        env.set("id", good)
        return f"id={good!r}"
    if choice == 2:
        env.remove("id")
        req.expect = combine(req.expect, refused("INVALID_REQUEST"))
        return "no id"
    if choice == 3:
        bad = rng.choice([req.method.lower(), req.method.upper(), req.method + " ", " " + req.method, "", "send",
                          "Pong", "Send\u0000", "ping"])
        env.set("method", bad)
        req.expect = combine(req.expect, refused("METHOD_NOT_FOUND"))
        return f"method={bad!r}"
    if choice == 4:
        bad = rng.choice([5, None, True, ["Ping"], {"m": "Ping"}])
        env.set("method", bad)
        req.expect = combine(req.expect, refused("INVALID_REQUEST"))
        return f"method={bad!r}"
    if choice == 5:
        env.remove("method")
        req.expect = combine(req.expect, refused("INVALID_REQUEST"))
        return "no method"
    if choice == 6:
        bad = rng.choice([[], [1], "x", 5, True, 0, ""])
        env.set("params", bad)
        req.expect = combine(req.expect, refused("INVALID_REQUEST"))
        return f"params={bad!r}"
    if choice == 7:
        no_params = req.method in ("Ping", "ListTopics")
        if no_params and len(req.expect.why) > 1:
            return None  # an earlier mutation's verdict would be lost with the params
        if rng.random() < 0.5:
            env.remove("params")
            why = "no params"
        else:
            env.set("params", None)
            why = "params=null"
        req.expect = OK.because(why) if no_params else combine(req.expect, refused("INVALID_PARAMS"))
        return why
    # duplicate keys: the last one wins
    name = rng.choice(["id", "method", "params"])
    if not env.has(name):
        return None
    req.touch(name)
    junk = rng.choice([True, "Explode", [1], None, {"x": 1}])
    env.pairs.insert(0, (name, junk))
    return f"duplicate {name}, junk first"


def mutate_duplicate_key(req: Req, g: RequestGenerator) -> str | None:
    """A field twice: the last one wins (documented), so junk first changes nothing."""
    picked = _pick_field(req, g, present=True)
    if picked is None:
        return None
    obj, f, where, _ = picked
    req.touch(f"{where}.{f.name}")
    junk = g.rng.choice([None, 5, "junk", [], {"x": 1}, True])
    index = obj.keys().index(f.name)
    if g.rng.random() < 0.75:
        obj.pairs.insert(index, (f.name, junk))
        return f"duplicate {where}.{f.name}, junk first"
    value = obj.get(f.name)
    obj.pairs[index] = (f.name, junk)
    obj.pairs.append((f.name, value))
    return f"duplicate {where}.{f.name}, junk first (moved)"


MUTATIONS: list[tuple[Mutation, int]] = [
    (mutate_wrong_type, 14), (mutate_null, 5), (mutate_missing, 6), (mutate_extra_field, 7),
    (mutate_boundary_int, 14), (mutate_bad_number, 4), (mutate_deep, 6), (mutate_unicode, 8),
    (mutate_escape, 4), (mutate_long_string, 7), (mutate_batch_size, 6), (mutate_envelope, 12),
    (mutate_duplicate_key, 5),
]


def mutate(req: Req, g: RequestGenerator, count: int = 1) -> tuple[Req, list[str]]:
    """A copy of C{req} with C{count} mutations applied (fewer if some did not apply)."""
    out = req.copy()
    names = []
    functions, weights = zip(*MUTATIONS)
    for _ in range(count):
        for _attempt in range(5):
            f = g.rng.choices(functions, weights)[0]
            candidate = out.copy()
            before = len(candidate.touched)
            name = f(candidate, g)
            if name is None or _overlaps(candidate.touched[:before], candidate.touched[before:]):
                continue
            out = candidate
            names.append(name)
            out.expect = out.expect.because(name)
            break
    return out, names


def _overlaps(old: list[str], new: list[str]) -> bool:
    """Whether a new edit is at, inside or around an earlier one ("params" holds "params.topic")."""
    def inside(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or a.startswith(b + "[")

    return any(inside(a, b) or inside(b, a) or "dup" in (a, b) for a in old for b in new)


# --- byte-level and line-level mutations ------------------------------------------

_INTERESTING = b'"\\{}[],:0-e.\x00\xff\x80 \r\t\xc3\xa9nul'


def mutate_bytes(line: bytes, rng: random.Random) -> bytes:
    """A few random edits of the bytes: flips, inserts, deletes, duplicated slices."""
    data = bytearray(line)
    for _ in range(rng.choice([1, 1, 2, 3, 6])):
        if not data:
            data.append(rng.randrange(256))
            continue
        op = rng.randrange(6)
        i = rng.randrange(len(data))
        if op == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[i] = rng.choice(_INTERESTING)
        elif op == 2:
            del data[i]
        elif op == 3:
            data.insert(i, rng.choice(_INTERESTING))
        elif op == 4:
            j = min(len(data), i + rng.randint(1, 16))
            data[i:i] = data[i:j]
        else:
            data[i] = rng.randrange(256)
    return bytes(data)

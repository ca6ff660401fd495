"""A fuzzing run: build a step, send it, check every answer and the stored state.

A step is a chunk of one or more lines written on the fuzzed connection
(split across writes at random points), followed by a sentinel Ping so the
session knows when every synchronous answer is in.  Long polls that are
still parked are carried over and matched by id when they answer.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict, deque
from typing import Any

import attrs
import orjson

from streamlog import wire
from streamlog.broker.broker import BrokerConfig

from .docs import PROTOCOL_MD, documented_errors
from .gen import RequestGenerator, mutate, mutate_bytes
from .model import (
    ANY,
    KNOWN_ISSUES,
    OK,
    Expect,
    Model,
    PartitionState,
    TopicState,
    downgrade,
    refused,
)
from .oracle import (
    WRITES,
    Checker,
    FuzzFailure,
    LineView,
    StepContext,
    Uncertain,
    analyze,
    apply_result,
    check_poll,
    compare_topic,
    explain_silent,
    id_key,
    parse_answer,
)


@attrs.define
class Line:
    data: bytes
    expect: Expect


@attrs.define
class Pending:
    """A long poll still parked: answered later, matched by its id."""

    view: LineView
    generation: int | None
    step: int


def _generation(model: Model, topic: str | None) -> int | None:
    state = model.topics.get(topic) if topic is not None else None
    return state.generation if state is not None else None


class Session:
    """One seeded fuzzing run against one target."""

    def __init__(self, target: Any, seed: int, *, limits: wire.Limits, config: BrokerConfig,
                 known: dict[str, str] | None = None, fail_fast: bool = True, allow_small_retention: bool = True,
                 doc: Any = PROTOCOL_MD) -> None:
        self.target = target
        self.seed = seed
        self.limits = limits
        self.config = config
        self.rng = random.Random(seed)
        self.model = Model()
        self.gen = RequestGenerator(self.rng, limits, config, self.model)
        self.gen.allow_small_retention = allow_small_retention
        self.counts: Counter[str] = Counter()
        self.known = KNOWN_ISSUES if known is None else known
        self.checker = Checker(documented_errors(doc), limits, self.known, self.counts)
        self.fail_fast = fail_fast
        self.findings: list[str] = []
        self.outstanding: dict[tuple[str, Any], Pending] = {}
        self.requests = 0
        self.steps = 0
        self.stopped = False  # the node died (hand runs keep going after other findings)
        self._sentinel = 0

    # --- the run -----------------------------------------------------------------------

    def setup(self) -> None:
        for name, partitions in (("t0", 1), ("multi", 3)):
            _, answer = self.target.admin("CreateTopic", {"topic": name, "partitions": partitions})
            assert "result" in answer or answer["error"]["code"] == "TOPIC_EXISTS", answer
        self.resync()

    def run(self, requests: int, seconds: float | None = None) -> None:
        deadline = None if seconds is None else time.monotonic() + seconds
        while self.requests < requests and (deadline is None or time.monotonic() < deadline) and not self.stopped:
            self.step()
        if not self.stopped:
            self.finish()

    def step(self, kind: str | None = None, lines: list[Line] | None = None) -> None:
        self.steps += 1
        self.gen.model = self.model
        self.gen.now_ms = self.target.now_ms()
        half_close = False
        if lines is None:
            if self.steps % 150 == 0:
                kind, lines = "flood", []
            elif self.steps % 40 == 0 and self.target.supports_half_close and "half-close" not in self.known:
                reqs = [self.gen.request() for _ in range(3)]
                kind, lines = "half-close", [Line(r.line(), downgrade(r.expect) if i else r.expect)
                                             for i, r in enumerate(reqs)]
                half_close = True
            else:
                kind, lines = self.build()
                for _ in range(20):
                    if not any(self.kills_node(line.data) for line in lines):
                        break
                    kind, lines = self.build()
        try:
            if kind == "flood":
                self.flood()
            else:
                if half_close:
                    self.counts["half-close steps"] += 1
                self.exchange(lines, half_close=half_close)
            if self.steps % 25 == 0:
                self.check_alive()
            if self.steps % 100 == 0:
                self.full_check()
            if len(self.outstanding) > 6:
                self.flush()
        except FuzzFailure as e:
            self.fail(e, kind or "?", lines)
        except OSError as e:  # e.g. the connection refused: the node is gone
            self.fail(FuzzFailure(f"{type(e).__name__}: {e}"), kind or "?", lines)
        self.target.between_steps(self.rng)

    def finish(self) -> None:
        try:
            self.flush()
            self.check_alive()
            self.full_check()
        except FuzzFailure as e:
            self.fail(e, "finish", [])

    def fail(self, error: FuzzFailure, kind: str, lines: list[Line]) -> None:
        sent = "\n".join(f"    {line.data[:400]!r}{' ...' if len(line.data) > 400 else ''} expect "
                         f"{line.expect.outcome} {sorted(line.expect.codes or [])} {list(line.expect.why)}"
                         for line in lines)
        message = f"seed {self.seed}, step {self.steps} ({kind}): {error}\n  sent:\n{sent}"
        if self.fail_fast:
            raise FuzzFailure(message) from None
        self.findings.append(message)
        self.counts["findings"] += 1
        # The connections or the model may now be off: start again from what the node holds.
        try:
            if not self.target.alive():
                raise ConnectionError("the server process is gone")
            self.target.reset()
            self.outstanding.clear()
            self.resync()
        except (OSError, FuzzFailure) as e:
            self.findings.append(f"the node does not answer any more ({e}): the run stops here")
            self.stopped = True

    # --- building steps --------------------------------------------------------------------

    def build(self) -> tuple[str, list[Line]]:
        rng = self.rng
        g = self.gen
        r = rng.random()
        if r < 0.40:
            req = g.request()
            kind, lines = "valid", [self.framed(req.line(), req.expect)]
        elif r < 0.74:
            req, _ = mutate(g.request(), g, 1 if rng.random() < 0.8 else 2)
            kind, lines = "mutated", [self.framed(req.line(), req.expect)]
        elif r < 0.81:
            kind, lines = "bytes", [Line(mutate_bytes(g.request().line(), rng), ANY.because("byte edits"))]
        elif r < 0.885:
            kind, lines = "pipelined", self.pipelined()
        elif r < 0.91:
            kind, lines = "parked", self.parked()
        elif r < 0.985:
            kind, lines = "framing", self.framing()
        else:
            kind, lines = "long", self.long_line()
        return kind, lines

    def kills_node(self, data: bytes) -> bool:
        """A request that trips a listed bug which stops the node (so it is not sent)."""
        if "long-topic-delete" not in self.known or not getattr(self.target, "segmented", False):
            return False
        view = analyze(data, self.limits)
        return view.method == "DeleteTopic" and view.topic is not None and len(view.topic) > 213

    def framed(self, data: bytes, expect: Expect) -> Line:
        """The line as is, or with JSON whitespace (CR included) around it."""
        r = self.rng.random()
        if r < 0.08:
            return Line(data + b"\r", expect.because("CRLF"))
        if r < 0.11:
            return Line(b" \t" + data + b"\r\r", expect.because("whitespace around"))
        if r < 0.13 and b"," in data:
            return Line(data.replace(b",", b" ,\r\t", 1), expect.because("CR inside"))
        return Line(data, expect)

    def pipelined(self) -> list[Line]:
        """Several requests in one write; a line after a write sees changed state."""
        rng = self.rng
        lines: list[Line] = []
        changed = False
        for _ in range(rng.randint(2, 5)):
            r = rng.random()
            if r < 0.08:
                line = Line(rng.choice([b"", b" ", b"\r"]), refused("PARSE_ERROR").because("blank line"))
                method = None
            else:
                req = self.gen.request()
                if r < 0.5:
                    req, _ = mutate(req, self.gen)
                line = self.framed(req.line(), req.expect) if r < 0.9 else \
                    Line(mutate_bytes(req.line(), rng), ANY.because("byte edits"))
                method = req.method
            if changed:
                line = Line(line.data, downgrade(line.expect))
            lines.append(line)
            if method in WRITES + ("CreateTopic", "DeleteTopic"):
                changed = True
        return lines

    def parked(self) -> list[Line]:
        """Long polls at the end of a partition, more than --max-in-flight, then the
        write that wakes them: reading pauses until some are answered."""
        rng = self.rng
        names = [n for n, t in self.model.topics.items() if t.count]
        if not names:
            return [Line(self.gen.request("Ping").line(), OK)]
        topic = rng.choice(names)
        state = self.model.topics[topic]
        partition = rng.randrange(state.count)
        lines = []
        for _ in range(rng.randint(2, self.limits.max_in_flight + 3)):
            params = {"topic": topic, "partition": partition, "offset": state.partitions[partition].end,
                      "max_wait_ms": rng.randint(1, self.limits.max_wait_ms)}
            lines.append(Line(wire.encode_request(self.gen.new_id(), "Poll", params)[:-1], OK.because("parked")))
        messages = [{"value": rng.randint(0, 99), "partition": partition} for _ in range(rng.randint(1, 3))]
        send = {"topic": topic, "messages": messages, "acks": rng.choice(["all", "leader", "none"])}
        lines.append(Line(wire.encode_request(self.gen.new_id(), "SendBatch", send)[:-1], OK.because("wakes them")))
        return lines

    def framing(self) -> list[Line]:
        rng = self.rng
        a = self.gen.request().line()
        b = self.gen.request().line()
        choice = rng.randrange(9)
        if choice == 0:
            return [Line(a[:rng.randrange(len(a))], refused("PARSE_ERROR").because("truncated"))]
        if choice == 1:
            return [Line(a + rng.choice([b"", b" ", b"\r", b"\t"]) + b, refused("PARSE_ERROR").because("two requests"))]
        if choice == 2:
            return [Line(b"[" + a + b"," + b + b"]", refused("INVALID_REQUEST").because("JSON-RPC batch array"))]
        if choice == 3:
            return [Line(rng.choice([b"", b" ", b"\r", b"\t\t", b"\r\r\r"]), refused("PARSE_ERROR").because("blank"))]
        if choice == 4:
            literal = rng.choice([b"null", b"1", b'"Ping"', b"[]", b"true", b"{}", b"[{}]", b"-0", b'"\\u0000"'])
            return [Line(literal, refused("INVALID_REQUEST").because("not an object"))]
        if choice == 5:
            return [Line(b"\xef\xbb\xbf" + a, refused("PARSE_ERROR").because("UTF-8 BOM"))]
        if choice == 6:
            tail = rng.choice([b"\x00", b"\x0c", b"\x1a", b"x", b"}", b"\xff", b"\x85", "\u00a0".encode()])
            return [Line(a + tail, refused("PARSE_ERROR").because(f"trailing {tail!r}"))]
        if choice == 7:
            # a valid line split across two lines: two parse errors
            cut = rng.randrange(1, len(a))
            return [Line(a[:cut], refused("PARSE_ERROR").because("first half")),
                    Line(a[cut:], ANY.because("second half"))]
        # a valid line, then the same line again (an id reused by a careless client)
        req = self.gen.request("Ping")
        return [Line(req.line(), OK), Line(req.line(), OK.because("same line again"))]

    def long_line(self) -> list[Line]:
        """Lines at and past --max-line-bytes."""
        rng = self.rng
        limit = self.limits.max_line_bytes
        r = rng.random()
        ping = self.gen.request("Ping")
        if r < 0.4:
            # exactly at the limit, padded with JSON whitespace: an ordinary request
            data = ping.line()
            pad = b" " * (limit - len(data) - 1) + b"\r" if rng.random() < 0.5 else b" " * (limit - len(data))
            return [Line(data + pad, ping.expect.because("exactly max_line_bytes"))]
        over = rng.choice([1, 2, 1000, limit])
        head = b'{"id":%d,"method":"Send","params":{"topic":"t0","value":"' % self.gen.new_id()
        body = b"v" * (limit + over - len(head) - 3)
        long = Line(head + body + b'"}}', refused("LINE_TOO_LONG").because(f"max_line_bytes + {over}"))
        lines = [long]
        if rng.random() < 0.5:
            lines.insert(0, Line(self.gen.request("Ping").line(), OK.because("before a long line")))
        if rng.random() < 0.5:
            lines.append(Line(self.gen.request("Ping").line(), ANY.because("after a long line: never read")))
        return lines

    def split(self, data: bytes) -> list[bytes]:
        rng = self.rng
        r = rng.random()
        if len(data) < 2 or r < 0.65:
            return [data]
        if r < 0.68 and len(data) <= self.target.byte_split_max:
            return [data[i:i + 1] for i in range(len(data))]  # a byte at a time
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 5))))
        return [data[i:j] for i, j in zip([0] + cuts, cuts + [len(data)])]

    # --- one exchange ----------------------------------------------------------------------

    def exchange(self, lines: list[Line], half_close: bool = False) -> None:
        if any(b"\n" in line.data for line in lines):  # e.g. a byte edit: the server sees several lines
            lines = [Line(part, line.expect if b"\n" not in line.data else ANY.because("split by a newline"))
                     for line in lines for part in line.data.split(b"\n")]
        views = [analyze(line.data, self.limits) for line in lines]
        cut = next((i for i, v in enumerate(views) if v.too_long), None)
        processed = views if cut is None else views[:cut + 1]
        keys = [id_key(v.rid) for v in processed if v.rid is not None]
        if len(set(keys)) != len(keys) and len(lines) > 1:
            for line in lines:  # an id used twice: one line at a time keeps answers attributable
                self.exchange([line])
            return
        if set(keys) & self.outstanding.keys():
            self.flush()
        sentinel: bytes | None = None
        sentinel_key = None
        data = b"".join(line.data + b"\n" for line in lines)
        if cut is None:
            self._sentinel += 1
            sid = f"~sentinel-{self._sentinel}"
            sentinel_key = id_key(sid)
            sentinel = b'{"id":"%s",' % sid.encode()
            data += wire.encode_request(sid, "Ping", {})
        self.target.send(self.split(data), half_close=half_close)
        self.requests += len(lines)
        self.counts["requests"] += len(lines)
        expect_close = cut is not None or half_close

        def done(raws: list[bytes]) -> bool:
            return sentinel is not None and not half_close and any(raw.startswith(sentinel) for raw in raws)

        raws, closed = self.target.read(None if expect_close else done, 0.0)
        for _ in range(5):
            if expect_close or closed or done(raws):
                break
            # --max-in-flight requests (parked polls) are being worked on: the server
            # reads no more of this connection until one is answered (docs/protocol.md).
            self.counts["reads paused by --max-in-flight"] += 1
            more, closed = self.target.read(lambda new, got=raws: done(got + new), self.limits.max_wait_ms / 1000 + 0.05)
            raws += more
        if not expect_close and not done(raws):
            raise FuzzFailure(f"the sentinel Ping got no answer (closed: {closed}); answers: {raws[:5]}")
        if closed and not expect_close:
            raise FuzzFailure(f"the server closed the connection; answers: {raws[:5]}")
        if expect_close and not closed:
            raise FuzzFailure("the connection stayed open after LINE_TOO_LONG" if cut is not None
                              else "the connection did not close after the client's half-close")

        queues: dict[tuple[str, Any], deque[int]] = defaultdict(deque)
        for i, v in enumerate(processed):
            queues[id_key(v.rid)].append(i)
        answers: dict[int, dict[str, Any]] = {}
        late: list[tuple[Pending, dict[str, Any]]] = []
        sentinel_seen = False
        for raw in raws:
            answer = parse_answer(raw)
            key = id_key(answer["id"])
            if key == sentinel_key:
                if "result" not in answer or answer["result"].get("pong") is not True:
                    raise FuzzFailure(f"sentinel Ping answered {answer}")
                sentinel_seen = True
            elif queues.get(key):
                answers[queues[key].popleft()] = answer
            elif key in self.outstanding:
                late.append((self.outstanding.pop(key), answer))
            else:
                raise FuzzFailure(f"an answer that matches no request: {raw[:300]!r}")

        unanswered = [i for i, v in enumerate(processed) if i not in answers and not v.silent]
        lost_to_half_close = half_close and (not sentinel_seen or bool(unanswered))
        if lost_to_half_close:
            self.checker.tolerate("half-close", f"after shutdown(SHUT_WR) the server left {len(unanswered)} of "
                                                f"{len(processed)} requests unanswered (sentinel answered: "
                                                f"{sentinel_seen})")

        w = self.model.copy()
        ctx = StepContext(self.config, self.checker)
        uncertain = ctx.uncertain
        changed: set[str] = set()
        refused_writes = ctx.refused_writes
        deferred: list[tuple[LineView, dict[str, Any], int | None]] = []
        parked_gone: list[tuple[LineView, Expect, dict[str, Any], int | None]] = []
        for i, view in enumerate(processed):
            expect = lines[i].expect
            answer = answers.get(i)
            if answer is None:
                if view.too_long:
                    raise FuzzFailure(f"no LINE_TOO_LONG answer to a line of {len(view.data)} bytes")
                if view.silent or (lost_to_half_close and view.method in WRITES and view.topic is not None):
                    if view.topic is None:
                        raise FuzzFailure("an acks=none write with an invalid topic got no error answer")
                    if expect.outcome == "refused":
                        raise FuzzFailure("an acks=none write the doc refuses got no error answer")
                    u = uncertain.get(view.topic)
                    if u is None:
                        pre = w.topics.get(view.topic)
                        u = uncertain[view.topic] = Uncertain(pre.copy() if pre is not None else None)
                    u.silent.append(view)
                    changed.add(view.topic)
                    self.counts["ok (acks=none)"] += 1
                    continue
                if view.may_park and not closed:
                    self.outstanding[id_key(view.rid)] = Pending(view, _generation(w, view.topic), self.steps)
                    continue
                if closed and (view.may_park or lost_to_half_close):
                    continue
                raise FuzzFailure(f"no answer to line {i}: {view.data[:300]!r}")
            if "error" in answer:
                if view.may_park and answer["error"]["code"] == "UNKNOWN_TOPIC" and expect.outcome != "refused":
                    # parked, then its topic deleted by a later line? judged once the step is applied
                    parked_gone.append((view, expect, answer, _generation(w, view.topic)))
                    continue
                code = self.checker.error_code(view, expect, answer)
                self.counts[code] += 1
                if view.method in WRITES and view.topic is not None:
                    refused_writes.add(view.topic)
                continue
            self.checker.check_id(view, answer)
            known_hit = None
            if expect.outcome == "refused":
                if expect.known == "config-falsy" and view.method == "CreateTopic":
                    self.checker.tolerate("config-falsy", f"CreateTopic accepted {view.data[:200]!r}")
                    known_hit = "config-falsy"
                else:
                    raise FuzzFailure(f"accepted a request the doc refuses ({sorted(expect.codes or [])} due): "
                                      f"{str(answer)[:300]}")
            if view.silent:
                raise FuzzFailure(f"an acks=none write was answered with a result: {answer}")
            self.counts["ok"] += 1
            ctx.deferred = []
            if apply_result(w, view, answer["result"], ctx, known_hit):
                changed.add(view.topic or "")
            for v in ctx.deferred:
                deferred.append((v, answer["result"], _generation(w, v.topic)))

        for view, expect, answer, generation in parked_gone:
            deleted = generation is not None and _generation(w, view.topic) != generation
            self.checker.error_code(view, Expect("any", frozenset({"UNKNOWN_TOPIC"})) if deleted else expect, answer)
            self.counts["UNKNOWN_TOPIC (deleted while parked)" if deleted else "UNKNOWN_TOPIC"] += 1
        self.verify_state(w, processed, uncertain, changed, refused_writes)
        for view, result, generation in deferred:
            state = self.model.topics.get(view.topic or "")
            if state is not None and state.generation == generation:
                check_poll(view, result, state, late=True)
        self.check_late(late)
        if closed:
            self.target.reconnect()
            self.outstanding.clear()

    # --- state ------------------------------------------------------------------------------

    def verify_state(self, w: Model, processed: list[LineView], uncertain: dict[str, Uncertain],
                     changed: set[str], refused_writes: set[str]) -> None:
        """Read back what the step may have touched and compare it with the model."""
        touched = {v.topic for v in processed if v.topic is not None} | changed | set(uncertain)
        touched.discard("")
        listed, states = self.read_state(touched)
        for name in listed.keys() - w.topics.keys():
            if name in uncertain:
                continue
            if name in refused_writes:
                actual = self.read_topic(name)
                if actual is not None and actual.size == 0 and actual.count == self.config.default_partitions:
                    self.checker.tolerate("refused-send-creates-topic",
                                          f"topic {name!r} exists after every write to it was refused")
                    continue
            raise FuzzFailure(f"topic {name!r} appeared; no accepted request of the step created it")
        for name in w.topics.keys() - listed.keys():
            if name in uncertain and uncertain[name].unverifiable:
                continue
            raise FuzzFailure(f"topic {name!r} vanished; no accepted request of the step deleted it")
        for name, count in listed.items():
            state = w.topics.get(name)
            if state is not None and state.count != count and name not in uncertain:
                raise FuzzFailure(f"ListTopics says {name!r} has {count} partitions, expected {state.count}")
        for name in touched:
            if name not in listed:
                self.model.topics.pop(name, None)
                continue
            actual = states.get(name)
            if actual is None:
                raise FuzzFailure(f"topic {name!r} listed but not described")
            if name in uncertain:
                u = uncertain[name]
                if u.unverifiable:
                    self.counts["unverifiable steps"] += 1
                else:
                    explain_silent(name, u, actual, self.config)
            elif name in w.topics:
                compare_topic(name, w.topics[name], actual, unchanged=name not in changed)
            prior = w.topics.get(name)
            actual.generation = prior.generation if prior is not None else w.next_generation()
            self.model.topics[name] = actual
        for name in list(self.model.topics):
            if name not in listed:
                del self.model.topics[name]
        for name in listed.keys() - self.model.topics.keys():  # tolerated known issue: adopt it
            actual = self.read_topic(name)
            assert actual is not None
            actual.generation = w.next_generation()
            self.model.topics[name] = actual
        self.model.generations = max(self.model.generations, w.generations)

    def read_state(self, names: set[str]) -> tuple[dict[str, int], dict[str, TopicState]]:
        """ListTopics and every topic of C{names}, in one pipelined write: the
        Polls start where the model says each partition starts, and only a
        wrong guess costs further round trips."""
        limit = {"max_messages": self.limits.max_poll_messages, "max_bytes": self.limits.max_poll_bytes}
        calls: list[tuple[str, dict[str, Any]]] = [("ListTopics", {})]
        plan = []
        for name in sorted(names):
            guess = self.model.topics.get(name)
            starts = [p.log_start for p in guess.partitions] if guess else [0] * self.config.default_partitions
            plan.append((name, len(calls), starts))
            calls.append(("DescribeTopic", {"topic": name}))
            calls.extend(("Poll", {"topic": name, "partition": i, "offset": start, **limit})
                         for i, start in enumerate(starts))
        answers = self.target.admin_many(calls)
        listed = {t["topic"]: t["partitions"] for t in answers[0][1]["result"]["topics"]}
        states: dict[str, TopicState] = {}
        for name, at, starts in plan:
            described = answers[at][1]
            if "error" in described:
                if described["error"]["code"] != "UNKNOWN_TOPIC":
                    raise FuzzFailure(f"DescribeTopic {name!r}: {described['error']}")
                continue
            partitions = []
            for i, p in enumerate(described["result"]["partitions"]):
                first = answers[at + 1 + i] if i < len(starts) else None
                partitions.append(self._read_partition(name, i, p, first))
            states[name] = TopicState(partitions, described["result"]["config"])
        return listed, states

    def _read_partition(self, name: str, index: int, described: dict[str, Any],
                        first: tuple[bytes, dict[str, Any]] | None) -> PartitionState:
        records: list[dict[str, Any]] = []
        raws = []
        offset = described["log_start_offset"]
        hw = described["high_watermark"]
        result = first[1].get("result") if first is not None else None
        if result is not None and result["log_start_offset"] == offset and result["high_watermark"] == hw:
            messages = result["messages"]
            if (messages[0]["offset"] == offset) if messages else offset == hw:  # the guessed start was right
                records.extend(messages)
                raws.append(first[0][first[0].index(b',"result":'):])
                offset = result["next_offset"]
        while offset < hw:
            raw, poll = self.target.admin("Poll", {
                "topic": name, "partition": index, "offset": offset,
                "max_messages": self.limits.max_poll_messages, "max_bytes": self.limits.max_poll_bytes,
            })
            if "error" in poll or not poll["result"]["messages"]:
                raise FuzzFailure(f"Poll {name}/{index} at {offset} below the high watermark: {str(poll)[:300]}")
            records.extend(poll["result"]["messages"])
            raws.append(raw[raw.index(b',"result":'):])
            offset = poll["result"]["next_offset"]
        return PartitionState(described["log_start_offset"], hw, described["log_end_offset"], records, b"".join(raws))

    def read_topic(self, name: str) -> TopicState | None:
        """A topic as the node serves it, every record read back with Poll."""
        _, answer = self.target.admin("DescribeTopic", {"topic": name})
        if "error" in answer:
            if answer["error"]["code"] == "UNKNOWN_TOPIC":
                return None
            raise FuzzFailure(f"DescribeTopic {name!r}: {answer['error']}")
        result = answer["result"]
        partitions = []
        for i, p in enumerate(result["partitions"]):
            records: list[dict[str, Any]] = []
            raws = []
            offset = p["log_start_offset"]
            while offset < p["high_watermark"]:
                raw, poll = self.target.admin("Poll", {
                    "topic": name, "partition": i, "offset": offset,
                    "max_messages": self.limits.max_poll_messages, "max_bytes": self.limits.max_poll_bytes,
                })
                if "error" in poll or not poll["result"]["messages"]:
                    raise FuzzFailure(f"Poll {name}/{i} at {offset} below the high watermark: {str(poll)[:300]}")
                records.extend(poll["result"]["messages"])
                raws.append(raw[raw.index(b',"result":'):])
                offset = poll["result"]["next_offset"]
            partitions.append(PartitionState(p["log_start_offset"], p["high_watermark"], p["log_end_offset"],
                                             records, b"".join(raws)))
        return TopicState(partitions, result["config"])

    def resync(self) -> None:
        """Adopt the node's whole state as the model."""
        _, answer = self.target.admin("ListTopics", {})
        topics = {}
        for t in answer["result"]["topics"]:
            state = self.read_topic(t["topic"])
            if state is not None:
                state.generation = self.model.next_generation()
                topics[t["topic"]] = state
        self.model.topics = topics

    def full_check(self) -> None:
        """Every topic, byte for byte, as the model has it."""
        listed, states = self.read_state(set(self.model.topics))
        if set(listed) != set(self.model.topics):
            raise FuzzFailure(f"topics are {sorted(listed)}, expected {sorted(self.model.topics)}")
        for name, state in self.model.topics.items():
            actual = states.get(name)
            if actual is None:
                raise FuzzFailure(f"topic {name!r} vanished")
            compare_topic(name, state, actual, unchanged=True)
        self.counts["full checks"] += 1

    def check_alive(self) -> None:
        if not self.target.alive():
            raise FuzzFailure("the server process is gone")
        answer = self.target.fresh_ping()
        if "result" not in answer or answer["result"].get("pong") is not True:
            raise FuzzFailure(f"Ping on a fresh connection answered {answer}")
        self.counts["fresh pings"] += 1

    # --- long polls ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait for every parked poll to be answered (they all time out within max_wait_ms)."""
        if not self.outstanding:
            return
        keys = set(self.outstanding)

        def all_in(raws: list[bytes]) -> bool:
            got = set()
            for raw in raws:
                try:
                    got.add(id_key(orjson.loads(raw)["id"]))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return True  # let the checks below report it
            return keys <= got

        raws, closed = self.target.read(all_in, self.limits.max_wait_ms / 1000 + 0.05)
        late = []
        for raw in raws:
            answer = parse_answer(raw)
            key = id_key(answer["id"])
            if key not in self.outstanding:
                raise FuzzFailure(f"an answer that matches no request: {raw[:300]!r}")
            late.append((self.outstanding.pop(key), answer))
        self.check_late(late)
        if self.outstanding:
            raise FuzzFailure(f"{len(self.outstanding)} parked Poll(s) never answered within max_wait_ms: "
                              f"{[p.view.data[:200] for p in self.outstanding.values()]}")
        if closed:
            raise FuzzFailure("the server closed the connection while polls were parked")

    def check_late(self, late: list[tuple[Pending, dict[str, Any]]]) -> None:
        for pending, answer in late:
            view = pending.view
            state = self.model.topics.get(view.topic or "")
            current = state.generation if state is not None else None
            if "error" in answer:
                expect = Expect("any", frozenset({"UNKNOWN_TOPIC"}) if current != pending.generation else frozenset())
                self.checker.error_code(view, expect, answer)
                self.counts["late " + answer["error"]["code"]] += 1
                continue
            self.checker.check_id(view, answer)
            self.counts["late ok"] += 1
            if state is not None and current == pending.generation:
                check_poll(view, answer["result"], state, late=True)

    # --- connections ------------------------------------------------------------------------------

    def flood(self) -> None:
        accepted, refused_answers, closed = self.target.flood()
        limit = self.limits.max_connections
        if not refused_answers:
            raise FuzzFailure(f"{limit + 2} connections open and none refused (--max-connections {limit})")
        if not limit - 1 <= accepted <= limit:
            raise FuzzFailure(f"{accepted} connections accepted before the first refusal, limit {limit}")
        for raw, was_closed in zip(refused_answers, closed):
            answer = parse_answer(raw)
            if answer["id"] is not None or "error" not in answer:
                raise FuzzFailure(f"a refused connection got {answer}")
            code = answer["error"]["code"]
            if code != "TOO_MANY_CONNECTIONS" or code not in self.checker.errors:
                raise FuzzFailure(f"a connection past the limit got {answer}")
            if not was_closed:
                raise FuzzFailure("a connection refused with TOO_MANY_CONNECTIONS was not closed")
            self.counts["TOO_MANY_CONNECTIONS"] += 1
        self.check_alive()

    # --- reporting ----------------------------------------------------------------------------

    def summary(self) -> str:
        lines = [f"seed {self.seed}: {self.requests} requests in {self.steps} steps, "
                 f"{len(self.findings)} finding(s)"]
        for name, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:8d}  {name}")
        lines.extend(self.findings)
        return "\n".join(lines)

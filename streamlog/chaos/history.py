"""The history of a chaos run: what each client asked, when, and what it was answered.

A history is what the checker judges, so it holds only what clients can observe: every
operation with its process (a producer or consumer instance), its invoke and completion
times on one monotonic clock, and its outcome, plus the faults injected (for the report)
and the final drain's reach.  It is recorded as **JSON lines**, one record per line,
written when the operation completes (one append per operation): a run that crashes leaves
a readable prefix, and a half-written last line is dropped on load, not an error.

Outcomes follow Jepsen:

- C{ok}: the answer came; a send's C{partition} and C{offset} are what the ack said, a
  poll's C{messages} what it returned.
- C{fail}: the operation definitely did not happen: a send refused with a code that means
  nothing was appended (L{DEFINITE_REFUSALS}), or one never written (C{sent: false}).
- C{info}: unknown: a timeout, a lost connection after the request was written, a leader
  that lost leadership while the write waited for its commit (C{NOT_LEADER} is *not* a
  definite refusal, see L{outcome_of_error}), or anything unexpected.  The checker never
  counts an C{info} operation as failed or as succeeded.

The record classes are plain slotted dataclasses, not frozen ones, because a long run's
history holds millions of them and a frozen dataclass takes several times longer to build;
treat them as immutable (L{dataclasses.replace} makes a changed copy).

Values sent must be unique in a history (a producer makes them from its process id and a
counter); that is what lets the checker follow each one through the log.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

import orjson

#: The record format's version, written in the header line and checked on load.
FORMAT_VERSION: Final = 1

Value = str | int
Outcome = Literal["ok", "fail", "info"]
OK: Final = "ok"
FAIL: Final = "fail"
INFO: Final = "info"
OUTCOMES: Final = frozenset((OK, FAIL, INFO))

#: Error codes after which a Send or SendBatch definitely appended nothing (docs/protocol.md,
#: "Errors"): the request was refused before it reached the log.  Every other code, and
#: every code not listed here (unknown to this version), is an unknown outcome.
#:
#: C{NOT_LEADER} is deliberately absent: a node also answers it for a write it appended
#: but could not commit before losing leadership (the Raft driver fails those waiters with
#: "leadership lost; outcome unknown"), and the next leader may commit that entry.
#: C{STORAGE_ERROR} is absent too: the write may have reached the file before fsync failed.
#: C{INTERNAL} is a bug, so nothing is known.
DEFINITE_REFUSALS: Final = frozenset((
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "NESTING_TOO_DEEP",
    "LINE_TOO_LONG", "MESSAGE_TOO_LARGE", "BATCH_TOO_LARGE", "KEY_TOO_LARGE", "INVALID_TOPIC",
    "UNKNOWN_TOPIC", "UNKNOWN_PARTITION", "TOO_MANY_CONNECTIONS", "TOO_MANY_PARTITIONS",
    "TOO_MANY_OPEN_FILES", "PARTITION_UNAVAILABLE", "SHUTTING_DOWN", "LEADER_NOT_AVAILABLE",
    "NOT_CONTROLLER", "TOO_MANY_WAITING_POLLS", "OFFSET_OUT_OF_RANGE", "TOPIC_EXISTS",
))


class HistoryError(ValueError):
    """A history that cannot be read or judged: a bad record, a value sent twice, ..."""


def outcome_of_error(code: str, *, sent: bool = True) -> Outcome:
    """Whether a send that failed with C{code} is C{fail} (not stored, for sure) or C{info}.

    C{sent=False} (the client's C{details["sent"]}: the request was never written, so no
    attempt can have been appended) makes any code a definite failure.
    """
    if not sent or code in DEFINITE_REFUSALS:
        return FAIL
    return INFO


def describe_error(error: BaseException | str) -> tuple[str, bool]:
    """C{(code, sent)} of a client error (a L{streamlog.errors.StreamlogError}) or a bare code.

    Duck-typed (C{.code}, C{.details}) so that recording needs no import of the client.
    An exception without a code is C{INTERNAL}, an unknown outcome.
    """
    if isinstance(error, str):
        return error, True
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    sent = not (isinstance(details, Mapping) and details.get("sent", True) is False)
    return (code if isinstance(code, str) else "INTERNAL"), sent


@dataclass(slots=True)
class Send:
    """One message a producer sent (one C{producer.send()}, however many attempts it took).

    C{partition} is the partition asked for (or the one the ack named); C{offset} is set
    only on C{ok}.  C{producer} names the producer whose order and idempotence apply (by
    default the process); C{idempotent} says whether it promised no duplicates.
    """

    id: int
    process: str
    invoke: float
    complete: float
    topic: str
    value: Value
    outcome: Outcome
    partition: int | None = None
    offset: int | None = None
    producer: str | None = None
    idempotent: bool = False
    error: str | None = None

    @property
    def producer_name(self) -> str:
        return self.producer if self.producer is not None else self.process


@dataclass(slots=True)
class Poll:
    """One read of a partition from C{offset}: on C{ok}, the C{(offset, value)} pairs it
    returned, the C{next_offset} to continue at and the partition's C{log_start_offset}
    (where retention has cut the log).  A failed poll may carry C{log_start_offset} too
    (C{OFFSET_OUT_OF_RANGE}): it tells the checker that the consumer's jump to it is
    retention, not a skip.
    """

    id: int
    process: str
    invoke: float
    complete: float
    topic: str
    partition: int
    offset: int
    outcome: Outcome
    messages: tuple[tuple[int, Value], ...] = ()
    next_offset: int | None = None
    log_start_offset: int | None = None
    error: str | None = None


@dataclass(slots=True)
class Fault:
    """A fault the runner injected: C{kind} (kill, stop, partition, wipe, restart, ...) on
    C{node}, from C{start} to C{end} (None: never healed before the history ended)."""

    kind: str
    node: str | None
    start: float
    end: float | None = None
    detail: str | None = None


@dataclass(slots=True)
class Drain:
    """The final drain (after healing, with every producer stopped) read C{topic}/C{partition}
    from its log start up to C{end_offset}, the high watermark it found: the log holds
    nothing at or past that offset."""

    topic: str
    partition: int
    end_offset: int
    time: float = 0.0


#: The kinds of L{GroupEvent}: a member's own events, and the runner's reads of the offsets.
GROUP_EVENT_KINDS: Final = frozenset(("assigned", "revoked", "lost", "processed", "committed", "fetched", "reset"))


@dataclass(slots=True)
class GroupEvent:
    """What one consumer-group member did (or, C{fetched}, what the runner read of the group's
    committed offsets), for the group checker (L{streamlog.chaos.group_checker}).

    C{process} names the member's incarnation (C{m2.1}: member 2, first start; a restarted one
    is C{m2.2}).  C{time} is when it happened on the history's clock (a C{fetched} read's or a
    C{committed} commit's completion, C{invoke} when it was asked).  By kind:

    - C{assigned}: it starts reading C{partitions}; C{offsets} where (the committed offsets it
      fetched; a partition missing there starts at the log start);
    - C{revoked}: it gave C{partitions} up after committing; C{lost}: it dropped them without a
      commit, owning nothing past C{until} (the end of its last session it knows was renewed);
    - C{processed}: it handed out (wrote) offsets C{offsets[0][1]} to C{end} of C{partitions[0]};
    - C{committed}: the coordinator acknowledged C{offsets}; C{fetched}: FetchOffsets answered
      C{offsets}; C{reset}: an explicit reset set C{offsets} (the one way back).
    """

    kind: str
    process: str
    time: float
    topic: str
    generation: int | None = None
    partitions: tuple[int, ...] = ()
    offsets: tuple[tuple[int, int], ...] = ()
    end: int | None = None
    invoke: float | None = None
    until: float | None = None


@dataclass(slots=True)
class History:
    """A loaded history: operations by type, in the order their records were written.

    C{truncated} says a half-written last line was dropped (the recording process died
    while writing it).
    """

    sends: list[Send] = field(default_factory=list)
    polls: list[Poll] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False
    #: A consumer group's events (a run with group consumers), in the order written.
    group: list[GroupEvent] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sends) + len(self.polls)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Keep the cyclic garbage collector off while building or walking a big history.

    Loading a million records allocates millions of containers, and every few hundred
    allocations CPython's collector runs and walks the growing heap (measured: loading
    took 2.2 times the CPU time with it on).  Records and the checker's tables hold no
    reference cycles, so nothing is left for it to find; it is switched back on after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# -- the record format ---------------------------------------------------------------


def encode_record(record: Send | Poll | Fault | Drain | GroupEvent) -> bytes:
    """One record as its JSON line (with the newline); fields that are None are left out."""
    if isinstance(record, Send):
        d: dict[str, Any] = {
            "type": "send", "id": record.id, "process": record.process, "invoke": record.invoke,
            "complete": record.complete, "topic": record.topic, "value": record.value,
            "outcome": record.outcome,
        }
        if record.partition is not None:
            d["partition"] = record.partition
        if record.offset is not None:
            d["offset"] = record.offset
        if record.producer is not None:
            d["producer"] = record.producer
        if record.idempotent:
            d["idempotent"] = True
        if record.error is not None:
            d["error"] = record.error
    elif isinstance(record, Poll):
        d = {
            "type": "poll", "id": record.id, "process": record.process, "invoke": record.invoke,
            "complete": record.complete, "topic": record.topic, "partition": record.partition,
            "offset": record.offset, "outcome": record.outcome,
        }
        if record.outcome == OK:
            d["messages"] = record.messages
        if record.next_offset is not None:
            d["next_offset"] = record.next_offset
        if record.log_start_offset is not None:
            d["log_start_offset"] = record.log_start_offset
        if record.error is not None:
            d["error"] = record.error
    elif isinstance(record, Fault):
        d = {"type": "fault", "kind": record.kind, "node": record.node, "start": record.start, "end": record.end}
        if record.detail is not None:
            d["detail"] = record.detail
    elif isinstance(record, GroupEvent):
        d = {"type": "group", "kind": record.kind, "process": record.process, "time": record.time,
             "topic": record.topic}
        for name in ("generation", "end", "invoke", "until"):
            if getattr(record, name) is not None:
                d[name] = getattr(record, name)
        if record.partitions:
            d["partitions"] = record.partitions
        if record.offsets:
            d["offsets"] = record.offsets
    else:
        d = {"type": "drain", "topic": record.topic, "partition": record.partition,
             "end_offset": record.end_offset, "time": record.time}
    return orjson.dumps(d) + b"\n"


def header(meta: Mapping[str, Any] | None = None) -> bytes:
    """The first line of a history file: format and version, plus the run's metadata."""
    return orjson.dumps({**(meta or {}), "type": "history", "version": FORMAT_VERSION}) + b"\n"


def _value(v: Any, where: str) -> Value:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise HistoryError(f"{where}: a value must be a string or an integer, not {v!r}")
    return v


_VALUE_TYPES: Final = frozenset((str, int))
_INT_TYPE: Final = frozenset((int,))


def _messages(raw: Any, where: str) -> tuple[tuple[int, Value], ...]:
    """A poll's C{[[offset, value], ...]}, checked with C-level passes (no Python loop per
    message: a history holds millions of them)."""
    try:
        messages = tuple(map(tuple, raw))
    except TypeError:
        raise HistoryError(f"{where}: messages must be a list of [offset, value] pairs") from None
    if not messages:
        return messages
    if set(map(len, messages)) == {2}:
        offsets, values = zip(*messages)
        if set(map(type, offsets)) <= _INT_TYPE and set(map(type, values)) <= _VALUE_TYPES and min(offsets) >= 0:
            return messages
    bad = next(m for m in messages if len(m) != 2 or type(m[0]) is not int or type(m[1]) not in _VALUE_TYPES or m[0] < 0)
    raise HistoryError(f"{where}: a message must be [offset, value] with an offset >= 0 "
                       f"and a string or integer value, not {list(bad)!r}")


def _outcome(d: Mapping[str, Any], where: str) -> Outcome:
    o = d["outcome"]
    if o not in OUTCOMES:
        raise HistoryError(f"{where}: outcome must be ok, fail or info, not {o!r}")
    return o  # type: ignore[no-any-return]


_INT: Final = (int,)
_OPT_INT: Final = (int, type(None))
_STR: Final = (str,)
_OPT_STR: Final = (str, type(None))
_TIME: Final = (int, float)
_OPT_TIME: Final = (int, float, type(None))


def _typed(where: str, *checks: tuple[str, Any, tuple[type, ...]]) -> None:
    """Each C{(name, value, allowed types)}: exact types (a boolean is not an integer)."""
    for name, v, allowed in checks:
        if type(v) not in allowed:
            raise HistoryError(f"{where}: {name} must be {' or '.join(t.__name__ for t in allowed)}, not {v!r}")


def _decode(d: Mapping[str, Any], into: History, number: int) -> None:
    """Append the record C{d} (of line C{number}) to C{into}: the hot loop of loading."""
    where = f"line {number}"
    kind = d.get("type")
    get = d.get
    if kind == "send":
        outcome = d["outcome"]
        value = d["value"]
        if outcome not in OUTCOMES or type(value) not in _VALUE_TYPES:
            outcome = _outcome(d, where)
            value = _value(value, where)
        s = Send(
            d["id"], d["process"], d["invoke"], d["complete"], d["topic"], value,
            outcome, get("partition"), get("offset"), get("producer"), get("idempotent", False), get("error"),
        )
        if not (type(s.id) is int and type(s.process) is str and type(s.topic) is str
                and type(s.invoke) in _TIME and type(s.complete) in _TIME and type(s.partition) in _OPT_INT
                and type(s.offset) in _OPT_INT and type(s.idempotent) is bool
                and type(s.producer) in _OPT_STR and type(s.error) in _OPT_STR):
            _typed(where, ("id", s.id, _INT), ("process", s.process, _STR), ("invoke", s.invoke, _TIME),
                   ("complete", s.complete, _TIME), ("topic", s.topic, _STR), ("partition", s.partition, _OPT_INT),
                   ("offset", s.offset, _OPT_INT), ("producer", s.producer, _OPT_STR),
                   ("idempotent", s.idempotent, (bool,)), ("error", s.error, _OPT_STR))
        if outcome == OK and (s.offset is None or s.partition is None):
            raise HistoryError(f"{where}: an ok send needs its partition and offset")
        into.sends.append(s)
    elif kind == "poll":
        outcome = d["outcome"]
        if outcome not in OUTCOMES:
            outcome = _outcome(d, where)
        p = Poll(
            d["id"], d["process"], d["invoke"], d["complete"], d["topic"], d["partition"], d["offset"],
            outcome, _messages(get("messages") or (), where), get("next_offset"), get("log_start_offset"),
            get("error"),
        )
        if not (type(p.id) is int and type(p.process) is str and type(p.topic) is str
                and type(p.invoke) in _TIME and type(p.complete) in _TIME and type(p.partition) is int
                and type(p.offset) is int and type(p.next_offset) in _OPT_INT
                and type(p.log_start_offset) in _OPT_INT and type(p.error) in _OPT_STR):
            _typed(where, ("id", p.id, _INT), ("process", p.process, _STR), ("invoke", p.invoke, _TIME),
                   ("complete", p.complete, _TIME), ("topic", p.topic, _STR), ("partition", p.partition, _INT),
                   ("offset", p.offset, _INT), ("next_offset", p.next_offset, _OPT_INT),
                   ("log_start_offset", p.log_start_offset, _OPT_INT), ("error", p.error, _OPT_STR))
        if outcome == OK and p.next_offset is None:
            raise HistoryError(f"{where}: an ok poll needs its next_offset")
        into.polls.append(p)
    elif kind == "fault":
        f = Fault(d["kind"], d.get("node"), d["start"], d.get("end"), d.get("detail"))
        _typed(where, ("kind", f.kind, _STR), ("node", f.node, _OPT_STR), ("start", f.start, _TIME),
               ("end", f.end, _OPT_TIME), ("detail", f.detail, _OPT_STR))
        into.faults.append(f)
    elif kind == "drain":
        dr = Drain(d["topic"], d["partition"], d["end_offset"], d.get("time", 0.0))
        _typed(where, ("topic", dr.topic, _STR), ("partition", dr.partition, _INT),
               ("end_offset", dr.end_offset, _INT), ("time", dr.time, _TIME))
        into.drains.append(dr)
    elif kind == "group":
        into.group.append(_group_event(d, where))
    elif kind == "history":
        if d.get("version") != FORMAT_VERSION:
            raise HistoryError(f"{where}: history format version {d.get('version')!r}, this checker reads {FORMAT_VERSION}")
        into.meta = {k: v for k, v in d.items() if k not in ("type", "version")}
    else:
        raise HistoryError(f"{where}: unknown record type {kind!r}")


def _group_event(d: Mapping[str, Any], where: str) -> GroupEvent:
    get = d.get
    try:
        partitions = tuple(get("partitions") or ())
        offsets = tuple((p, o) for p, o in (get("offsets") or ()))
    except (TypeError, ValueError):
        raise HistoryError(f"{where}: a group event's offsets are [partition, offset] pairs") from None
    e = GroupEvent(d["kind"], d["process"], d["time"], d["topic"], get("generation"), partitions, offsets,
                   get("end"), get("invoke"), get("until"))
    if e.kind not in GROUP_EVENT_KINDS:
        raise HistoryError(f"{where}: unknown group event {e.kind!r}")
    _typed(where, ("process", e.process, _STR), ("time", e.time, _TIME), ("topic", e.topic, _STR),
           ("generation", e.generation, _OPT_INT), ("end", e.end, _OPT_INT), ("invoke", e.invoke, _OPT_TIME),
           ("until", e.until, _OPT_TIME))
    for p in partitions:
        _typed(where, ("a partition", p, _INT))
    for p, o in offsets:
        _typed(where, ("a partition", p, _INT), ("an offset", o, _INT))
    if e.kind == "processed" and (len(partitions) != 1 or len(offsets) != 1 or e.end is None):
        raise HistoryError(f"{where}: a processed event names one partition, its first offset and its end")
    return e


def loads(data: bytes) -> History:
    """A history from the bytes of a JSON-lines file (see L{load})."""
    with paused_gc():
        return _loads(data)


def _loads(data: bytes) -> History:
    history = History()
    lines = data.split(b"\n")
    if lines and lines[-1].strip():
        # The writer died in the middle of its last line: a prefix is all there is.
        try:
            orjson.loads(lines[-1])
        except orjson.JSONDecodeError:
            lines.pop()
            history.truncated = True
    numbers = [n for n, line in enumerate(lines, 1) if line and not line.isspace()]
    records: list[Any] | None = None
    try:
        # One parse of the whole file is much faster than one per line; it stands only if
        # every line held exactly one value (a line "{...},{...}" would hold two).
        parsed = orjson.loads(b"[" + b",".join(lines[n - 1] for n in numbers) + b"]")
        if len(parsed) == len(numbers):
            records = parsed
    except orjson.JSONDecodeError:
        pass
    if records is None:
        records = []
        for n in numbers:
            try:
                records.append(orjson.loads(lines[n - 1]))
            except orjson.JSONDecodeError as e:
                raise HistoryError(f"line {n}: not JSON ({e})") from None
    if not records or not isinstance(records[0], dict) or records[0].get("type") != "history":
        raise HistoryError("not a streamlog history: its first line must be the header "
                           '{"type": "history", "version": ...} that the Recorder writes')
    for n, d in zip(numbers, records):
        if not isinstance(d, dict):
            raise HistoryError(f"line {n}: a record is a JSON object")
        try:
            _decode(d, history, n)
        except HistoryError:
            raise
        except KeyError as e:
            raise HistoryError(f"line {n}: a {d.get('type')} record needs {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise HistoryError(f"line {n}: {e}") from None
    return history


def load(path: str | Path) -> History:
    """Read a history file.  A half-written last line is dropped (C{truncated}); anything
    else that is not a valid record is a L{HistoryError} naming its line."""
    return loads(Path(path).read_bytes())


def iter_records(history: History) -> Iterator[Send | Poll | Fault | Drain | GroupEvent]:
    """Every record of C{history}, operations in id order, then faults, drains and group events."""
    ops: list[Send | Poll] = [*history.sends, *history.polls]
    ops.sort(key=lambda op: op.id)
    yield from ops
    yield from history.faults
    yield from history.drains
    yield from history.group


def dumps(history: History) -> bytes:
    """The JSON-lines bytes of C{history} (header first)."""
    return header(history.meta) + b"".join(encode_record(r) for r in iter_records(history))


def dump(history: History, path: str | Path) -> None:
    """Write C{history} to C{path} as JSON lines."""
    Path(path).write_bytes(dumps(history))


# -- recording -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingSend:
    """A send invoked and not completed yet (what L{Recorder.invoke_send} hands back)."""

    id: int
    process: str
    invoke: float
    topic: str
    value: Value
    partition: int | None
    producer: str | None
    idempotent: bool


@dataclass(frozen=True, slots=True)
class PendingPoll:
    """A poll invoked and not completed yet (what L{Recorder.invoke_poll} hands back)."""

    id: int
    process: str
    invoke: float
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class PendingFault:
    """A fault started and not healed yet."""

    number: int
    kind: str
    node: str | None
    start: float
    detail: str | None


class Recorder:
    """What a chaos runner calls around each client operation; writes one line per completion.

    C{invoke_*} takes the invoke time and an id (ids grow in invoke order, which is how
    the checker knows a producer's send order and a consumer's poll order) and keeps the
    operation in memory; C{*_ok}/C{*_failed} write its one line.  L{close} writes every
    operation still pending as C{info} (its outcome was never seen) and every fault not
    healed with no end, so a history closed after a crash of the clients is still whole.

    C{out} is a binary file (written and flushed per line, so a crash of the runner loses
    at most the line being written); C{clock} is a monotonic clock in seconds.
    """

    def __init__(self, out: IO[bytes], *, clock: Callable[[], float] = time.monotonic,
                 meta: Mapping[str, Any] | None = None, flush: bool = True) -> None:
        self._out = out
        self._clock = clock
        self._flush = flush
        self._next_id = 0
        self._next_fault = 0
        self._sends: dict[int, PendingSend] = {}
        self._polls: dict[int, PendingPoll] = {}
        self._faults: dict[int, PendingFault] = {}
        self.closed = False
        self._write(header(meta))

    def _write(self, line: bytes) -> None:
        if self.closed:
            raise ValueError("the recorder is closed")
        self._out.write(line)
        if self._flush:
            self._out.flush()

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # sends

    def invoke_send(self, process: str, topic: str, value: Value, *, partition: int | None = None,
                    producer: str | None = None, idempotent: bool = False) -> PendingSend:
        """A producer is about to send C{value} (unique in the run)."""
        op = PendingSend(self._take_id(), process, self._clock(), topic, _value(value, "invoke_send"),
                         partition, producer, idempotent)
        self._sends[op.id] = op
        return op

    def _complete_send(self, op: PendingSend, outcome: Outcome, partition: int | None,
                       offset: int | None, error: str | None) -> None:
        if self._sends.pop(op.id, None) is None:
            raise ValueError(f"send {op.id} is not pending (completed twice?)")
        self._write(encode_record(Send(
            op.id, op.process, op.invoke, self._clock(), op.topic, op.value, outcome,
            partition, offset, op.producer, op.idempotent, error,
        )))

    def send_ok(self, op: PendingSend, partition: int, offset: int) -> None:
        """The send was acknowledged at C{partition}/C{offset}."""
        self._complete_send(op, OK, partition, offset, None)

    def send_failed(self, op: PendingSend, error: BaseException | str, *, may_have_landed: bool = False) -> None:
        """The send failed with C{error} (a client error or a code): C{fail} or C{info}
        as L{outcome_of_error} decides.

        C{may_have_landed=True} makes it C{info} whatever the error says: for a runner
        that knows an earlier attempt of the same message may have been appended (the
        Producer can fail a message with a refusal, or on close with C{sent: false},
        after an earlier attempt of its batch timed out).
        """
        code, sent = describe_error(error)
        outcome = INFO if may_have_landed else outcome_of_error(code, sent=sent)
        self._complete_send(op, outcome, op.partition, None, code)

    def send_unknown(self, op: PendingSend, reason: str = "unknown") -> None:
        """The send's outcome cannot be known (the runner gave up waiting, say)."""
        self._complete_send(op, INFO, op.partition, None, reason)

    # polls

    def invoke_poll(self, process: str, topic: str, partition: int, offset: int) -> PendingPoll:
        """A consumer is about to read C{topic}/C{partition} from C{offset}."""
        op = PendingPoll(self._take_id(), process, self._clock(), topic, partition, offset)
        self._polls[op.id] = op
        return op

    def poll_ok(self, op: PendingPoll, messages: Iterable[Mapping[str, Any] | Sequence[Any]],
                next_offset: int, log_start_offset: int | None = None) -> None:
        """The poll returned C{messages} (message objects with C{offset} and C{value}, or
        C{(offset, value)} pairs) and said to continue at C{next_offset}."""
        pairs = tuple(
            (m["offset"], m["value"]) if isinstance(m, Mapping) else (m[0], m[1]) for m in messages
        )
        if self._polls.pop(op.id, None) is None:
            raise ValueError(f"poll {op.id} is not pending (completed twice?)")
        self._write(encode_record(Poll(
            op.id, op.process, op.invoke, self._clock(), op.topic, op.partition, op.offset, OK,
            pairs, next_offset, log_start_offset,
        )))

    def poll_failed(self, op: PendingPoll, error: BaseException | str, *, log_start_offset: int | None = None) -> None:
        """The poll failed (a read changes nothing, so C{fail} and C{info} are alike to the
        checker; C{log_start_offset} of an C{OFFSET_OUT_OF_RANGE} answer is kept)."""
        code, sent = describe_error(error)
        if log_start_offset is None and not isinstance(error, str):
            details = getattr(error, "details", None)
            if isinstance(details, Mapping) and isinstance(details.get("log_start_offset"), int):
                log_start_offset = details["log_start_offset"]
        if self._polls.pop(op.id, None) is None:
            raise ValueError(f"poll {op.id} is not pending (completed twice?)")
        self._write(encode_record(Poll(
            op.id, op.process, op.invoke, self._clock(), op.topic, op.partition, op.offset,
            outcome_of_error(code, sent=sent), (), None, log_start_offset, code,
        )))

    # faults and the end

    def fault_started(self, kind: str, node: str | None = None, detail: str | None = None) -> PendingFault:
        """A fault begins now; its line is written when it heals (or on L{close})."""
        self._next_fault += 1
        fault = PendingFault(self._next_fault, kind, node, self._clock(), detail)
        self._faults[fault.number] = fault
        return fault

    def fault_healed(self, fault: PendingFault) -> None:
        if self._faults.pop(fault.number, None) is None:
            raise ValueError(f"fault {fault.number} is not active")
        self._write(encode_record(Fault(fault.kind, fault.node, fault.start, self._clock(), fault.detail)))

    def group_event(self, event: GroupEvent) -> None:
        """A consumer-group event (a member's, copied from its events file, or the runner's read
        of the committed offsets), with its times already on this recorder's clock."""
        self._write(encode_record(event))

    def now(self) -> float:
        return self._clock()

    def drained(self, topic: str, partition: int, end_offset: int) -> None:
        """The final drain read C{topic}/C{partition} up to C{end_offset} (its high watermark)."""
        self._write(encode_record(Drain(topic, partition, end_offset, self._clock())))

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Operations invoked and not completed."""
        return len(self._sends) + len(self._polls)

    def close(self) -> None:
        """Write what is still open (pending operations as C{info}, faults without an end),
        then stop.  The file is the caller's to close."""
        if self.closed:
            return
        now = self._clock()
        for s in sorted(self._sends.values(), key=lambda s: s.id):
            self._write(encode_record(Send(s.id, s.process, s.invoke, now, s.topic, s.value, INFO,
                                           s.partition, None, s.producer, s.idempotent, "PENDING")))
        for p in sorted(self._polls.values(), key=lambda p: p.id):
            self._write(encode_record(Poll(p.id, p.process, p.invoke, now, p.topic, p.partition, p.offset,
                                           INFO, (), None, None, "PENDING")))
        for f in sorted(self._faults.values(), key=lambda f: f.number):
            self._write(encode_record(Fault(f.kind, f.node, f.start, None, f.detail)))
        self._sends.clear()
        self._polls.clear()
        self._faults.clear()
        self.closed = True

"""The sans-io wire codec: request lines in, validated request objects out.

Nothing here touches a transport or the broker.  L{decode_request} turns one
line of bytes into a L{Request} (or raises a L{StreamlogError} whose code is
what the client gets back); the C{parse_*} functions turn a request's
C{params} into typed objects, checking every field; the C{encode_*} functions
build answer lines.  docs/protocol.md is the prose version of this module.

JSON is read by orjson, which already refuses what RFC 8259 does not allow and
Python's C{json} module accepts: NaN and Infinity, invalid UTF-8, lone
surrogates, numbers that overflow a double.  Two things remain ours to check:
the nesting depth of message values (orjson's own limit, 1024 for the whole
line, is far too deep to store and serve) and the shape of each request.
"""

from __future__ import annotations

import re
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, Literal, TypeGuard, overload

import attrs
import orjson

from streamlog import errors
from streamlog.topic_config import TopicConfig

#: Largest offset/number the protocol accepts (signed 64-bit, as Kafka).
MAX_INT64 = 2**63 - 1

#: orjson refuses a document nested deeper than this (NESTING_TOO_DEEP, id null).
ORJSON_MAX_DEPTH = 1024

# As Kafka ([A-Za-z0-9._-], 1-249), and not starting with "." (which also rules
# out "." and ".."): names are directory names, and dot-names are the storage's own.
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,248}")

ACKS = ("all", "leader", "none")


@attrs.frozen
class Limits:
    """Every bound the server enforces at its edge (docs/operations.md, "Limits")."""

    max_line_bytes: int = 1024 * 1024
    max_message_bytes: int = 1_000_000
    max_key_bytes: int = 16 * 1024
    max_batch_messages: int = 10_000
    max_depth: int = 64
    max_poll_messages: int = 10_000
    max_poll_bytes: int = 16 * 1024 * 1024
    default_poll_bytes: int = 1024 * 1024
    max_wait_ms: int = 60_000
    max_partitions: int = 1024
    max_partitions_per_node: int = 4096
    max_id_length: int = 256
    max_in_flight: int = 1024
    max_waiting_polls_per_connection: int = 1000
    #: All connections of one client address together (IPv6: one /64): a quarter of the node's,
    #: as --max-connections-per-address is of --max-connections.
    max_waiting_polls_per_address: int = 12_500
    max_waiting_polls: int = 50_000
    max_connections: int = 1024
    max_connections_per_address: int = 256
    listen_backlog: int = 1024
    max_outbound_bytes: int = 64 * 1024 * 1024
    idle_timeout: float = 600.0
    partial_line_timeout: float = 30.0
    #: Seconds a connection the server is closing may take to send its last answers.
    close_timeout: float = 30.0


DEFAULT_LIMITS = Limits()


@attrs.frozen
class Request:
    id: int | str
    method: str
    params: dict[str, Any]


#: A message as validated: a dict with C{value} and optionally C{key} (str or
#: None), C{partition} (int) and C{headers} (dict of str).  Plain dicts, not
#: objects: a SendBatch of thousands pays for no per-message allocation.
Message = dict[str, Any]


_MESSAGE_FIELDS = frozenset(("value", "key", "partition", "headers"))


@attrs.frozen
class SendParams:
    topic: str
    messages: list[Message]
    acks: str = "all"
    #: An idempotent producer's id and epoch (-1: not idempotent; docs/protocol.md, "Idempotent producers").
    producer_id: int = -1
    epoch: int = -1
    #: partition -> base sequence of its batch (SendBatch); for Send, the one batch's under key -1.
    sequences: dict[int, int] | None = None
    #: Every message is C{{"value": v}}, or every one C{{"value": v, "partition": p}}
    #: (L{plain_batch}): no key, no headers, so routing and encoding may take it whole.
    #: Set by L{parse_send_batch} only, for the C{messages} it checked: the encoding of a
    #: plain batch reads nothing but C{value}.
    plain: bool = False

    @property
    def idempotent(self) -> bool:
        return self.producer_id >= 0


@attrs.frozen
class PollParams:
    topic: str
    partition: int
    offset: int
    max_messages: int
    max_bytes: int
    max_wait_ms: int


@attrs.frozen
class CreateTopicParams:
    topic: str
    partitions: int
    config: TopicConfig
    #: Replicas per partition (cluster); None: the server's --replication-factor.
    replication_factor: int | None = None


@attrs.frozen
class ListOffsetsParams:
    topic: str
    partition: int
    at: str | int  # "earliest", "latest" or a timestamp in ms


# --- decoding requests -------------------------------------------------------


def decode_request(line: bytes, limits: Limits = DEFAULT_LIMITS) -> Request:
    """Parse and check the envelope of one request line.

    Raises L{errors.ParseError} for bytes that are not JSON, and
    L{errors.InvalidRequest} for JSON that is not a request; where the id could
    be read, the error's C{request_id} attribute holds it.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e):
            # orjson's own hard limit on the whole line, not --max-depth (which only values get).
            raise errors.NestingTooDeep(
                f"JSON nesting deeper than {ORJSON_MAX_DEPTH} (the parser's limit for a line)", limit=ORJSON_MAX_DEPTH,
            ) from None
        raise errors.ParseError(f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise errors.InvalidRequest("a request must be a JSON object")
    rid: Any = obj.get("id")
    if not _valid_id(rid, limits):
        raise errors.InvalidRequest(
            f"'id' must be an integer or a string of at most {limits.max_id_length} characters"
        )
    method = obj.get("method")
    if not isinstance(method, str):
        raise _invalid("'method' must be a string", rid)
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _invalid("'params' must be an object", rid)
    extra = set(obj) - {"id", "method", "params"}
    if extra:
        raise _invalid(f"unknown request fields: {', '.join(sorted(extra))}", rid)
    return Request(id=rid, method=method, params=params)


def _invalid(message: str, rid: int | str) -> errors.InvalidRequest:
    """An InvalidRequest that remembers the id it should be answered with."""
    error = errors.InvalidRequest(message)
    error.request_id = rid  # type: ignore[attr-defined]
    return error


def _valid_id(rid: Any, limits: Limits) -> TypeGuard[int | str]:
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return True
    return isinstance(rid, str) and len(rid) <= limits.max_id_length


def check_depth(value: Any, max_depth: int) -> None:
    """Refuse a message value nested deeper than C{max_depth} containers.

    Values are the only deep structures the server accepts and stores (every
    other param has a fixed shape), so only they are walked, and only when
    they are containers at all: a string or number value costs one type check.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise errors.NestingTooDeep(f"message value nested deeper than {max_depth} levels", limit=max_depth)
        children = item.values() if type(item) is dict else item
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))


# --- checking params ---------------------------------------------------------


class _Params:
    """Reads typed fields from a params object, refusing what is left unread."""

    def __init__(self, params: dict[str, Any], where: str = "params") -> None:
        self._params = params
        self._where = where
        self._seen: set[str] = set()

    def _get(self, name: str) -> Any:
        self._seen.add(name)
        return self._params.get(name)

    def _name(self, name: str) -> str:
        return _field(self._where, name)

    @overload
    def integer(
        self, name: str, *, default: int, required: bool = False, minimum: int = 0, maximum: int | None = MAX_INT64,
    ) -> int: ...

    @overload
    def integer(
        self, name: str, *, default: None = None, required: Literal[True], minimum: int = 0,
        maximum: int | None = MAX_INT64,
    ) -> int: ...

    @overload
    def integer(
        self, name: str, *, default: None = None, required: bool = False, minimum: int = 0,
        maximum: int | None = MAX_INT64,
    ) -> int | None: ...

    def integer(
        self, name: str, *, default: int | None = None, required: bool = False,
        minimum: int = 0, maximum: int | None = MAX_INT64,
    ) -> int | None:
        """An integer field (booleans are not integers); C{maximum=None} leaves it unbounded."""
        value = self._get(name)
        if value is None:
            if required:
                raise errors.InvalidParams(f"'{self._name(name)}' is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.InvalidParams(f"'{self._name(name)}' must be an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise errors.InvalidParams(
                f"'{self._name(name)}' must be {bound}, got {value}",
                field=self._name(name),
            )
        return value

    def raw(self, name: str) -> Any:
        return self._get(name)

    def has(self, name: str) -> bool:
        return name in self._params

    def done(self) -> None:
        extra = set(self._params) - self._seen
        if extra:
            raise errors.InvalidParams(
                f"unknown fields in {self._where}: {', '.join(sorted(extra))}"
            )


def check_topic_name(name: Any) -> str:
    """Topic names: 1-249 of C{[A-Za-z0-9._-]}, not starting with C{.}."""
    if not isinstance(name, str):
        raise errors.InvalidParams("'topic' must be a string")
    if not _TOPIC_RE.fullmatch(name):
        raise errors.InvalidTopic(
            f"invalid topic name {name[:260]!r}: use 1-249 characters from [A-Za-z0-9._-], not starting with '.'"
        )
    return name


def _topic(p: _Params) -> str:
    if not p.has("topic"):
        raise errors.InvalidParams("'topic' is required")
    return check_topic_name(p.raw("topic"))


def _acks(p: _Params) -> str:
    acks = p.raw("acks")
    if acks is None:
        return "all"
    if acks not in ACKS:
        raise errors.InvalidParams("'acks' must be one of 'all', 'leader', 'none'")
    return str(acks)


def check_message(m: Any, where: str | int, limits: Limits) -> Message:
    """Check one message object; the common case costs a few C-level operations.

    C{where} names it in an error: C{"params"} (Send) or its index in a SendBatch's
    C{messages}, turned into C{messages[i]} only when there is an error to write (the
    f-string per message was a third of the cost of checking a batch of 500).
    """
    if type(m) is not dict:
        raise errors.InvalidParams(f"'{_where(where)}' must be an object")
    if not m.keys() <= _MESSAGE_FIELDS:
        extra = sorted(set(m) - _MESSAGE_FIELDS)
        raise errors.InvalidParams(f"unknown fields in {_where(where)}: {', '.join(extra)}")
    if "value" not in m:
        raise errors.InvalidParams(f"'{_field(where, 'value')}' is required (it may be null)")
    value = m["value"]
    if type(value) is dict or type(value) is list:
        check_depth(value, limits.max_depth)
    key = m.get("key")
    if key is not None:
        if type(key) is not str:
            raise errors.InvalidParams(f"'{_field(where, 'key')}' must be a string or null")
        # A character is 1 to 4 UTF-8 bytes: encode only a key that might be too long.
        if len(key) * 4 > limits.max_key_bytes and (size := len(key.encode("utf-8"))) > limits.max_key_bytes:
            raise errors.KeyTooLarge(
                f"'{_field(where, 'key')}' is {size} bytes (UTF-8), over the limit of {limits.max_key_bytes}",
                limit=limits.max_key_bytes, size=size,
            )
    partition = m.get("partition")
    # Any non-negative integer is a well-formed partition; one the topic lacks is the
    # broker's UNKNOWN_PARTITION, not a malformed request (docs/protocol.md).
    if partition is not None and (type(partition) is not int or partition < 0):
        raise errors.InvalidParams(
            f"'{_field(where, 'partition')}' must be a non-negative integer",
            field=_field(where, "partition"),
        )
    headers = m.get("headers")
    if headers is not None and (
        type(headers) is not dict or not all(type(v) is str for v in headers.values())
    ):
        raise errors.InvalidParams(f"'{_field(where, 'headers')}' must be an object of strings")
    return m


_VALUE = itemgetter("value")
_PARTITION = itemgetter("partition")
_JSON_SCALARS = frozenset((str, int, float, bool, type(None)))
_JSON_TYPES = _JSON_SCALARS | {dict, list}


def plain_batch(messages: list[Any], limits: Limits) -> bool:
    """Whether a SendBatch's messages are all C{{"value": v}}, or all C{{"value": v,
    "partition": p}} with C{p} an integer >= 0: the shape a L{streamlog.client} Producer
    sends, and one in which every message passes L{check_message} (a value nested too
    deep is refused here with its error, as there).

    The answer comes from passes over the whole batch that each run in C (C{map},
    C{set}, C{all}), where L{check_message} runs a dozen Python operations per message
    and L{check_depth} walks every container value: for 500 messages whose values are
    flat objects, a quarter of the cost.  False means only that the batch is checked
    message by message, which then names the first bad one.
    """
    if set(map(type, messages)) != {dict}:
        return False
    sizes = set(map(len, messages))
    if sizes != {1} and sizes != {2}:
        return False
    if not all(map(dict.__contains__, messages, repeat("value"))):
        return False
    if sizes == {2}:
        if not all(map(dict.__contains__, messages, repeat("partition"))):
            return False
        partitions = list(map(_PARTITION, messages))
        if set(map(type, partitions)) != {int} or min(partitions) < 0:
            return False
    values = list(map(_VALUE, messages))
    kinds = set(map(type, values))
    if kinds <= _JSON_SCALARS:
        return True
    if not kinds <= _JSON_TYPES:
        return False
    inner: set[type] = set()
    if dict in kinds:
        inner.update(map(type, chain.from_iterable(map(dict.values, [v for v in values if type(v) is dict]))))
    if list in kinds:
        inner.update(map(type, chain.from_iterable([v for v in values if type(v) is list])))
    if limits.max_depth < 1 or dict in inner or list in inner:
        for v in values:  # a container in a container: walked, in message order
            if type(v) is dict or type(v) is list:
                check_depth(v, limits.max_depth)
    return True


def _where(where: str | int) -> str:
    return where if type(where) is str else f"messages[{where}]"


def _field(where: str | int, name: str) -> str:
    return name if where == "params" else f"{_where(where)}.{name}"


#: Largest epoch and base sequence (signed 32-bit header fields; streamlog.idempotence.rules).
MAX_INT32 = 2**31 - 1
_PRODUCER_FIELDS = ("producer_id", "epoch", "base_sequence")


def _producer(p: _Params) -> tuple[int, int]:
    """C{(producer_id, epoch)} of an idempotent Send or SendBatch, C{(-1, -1)} if it names none."""
    producer_id, epoch = p.raw("producer_id"), p.raw("epoch")
    if type(producer_id) is int and type(epoch) is int and 0 <= producer_id <= MAX_INT64 and 0 <= epoch <= MAX_INT32:
        return producer_id, epoch  # well formed: the common case, without the checks' calls
    producer_id = p.integer("producer_id", maximum=MAX_INT64)
    epoch = p.integer("epoch", maximum=MAX_INT32)
    if producer_id is None and epoch is None:
        return -1, -1
    if producer_id is None or epoch is None:
        raise errors.InvalidParams("'producer_id' and 'epoch' go together (an idempotent producer sends both)",
                                   field="producer_id" if producer_id is None else "epoch")
    return producer_id, epoch


def parse_send(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> SendParams:
    p = _Params(params)
    topic = _topic(p)
    acks = _acks(p)
    if "producer_id" in params or "epoch" in params or "base_sequence" in params:
        producer_id, epoch = _producer(p)
        base_sequence = p.integer("base_sequence", maximum=MAX_INT32)
        if (base_sequence is None) != (producer_id < 0):
            raise errors.InvalidParams("an idempotent Send carries 'producer_id', 'epoch' and 'base_sequence'",
                                       field="base_sequence")
        message = {k: v for k, v in params.items() if k not in ("topic", "acks", *_PRODUCER_FIELDS)}
        return SendParams(topic=topic, messages=[check_message(message, "params", limits)], acks=acks,
                          producer_id=producer_id, epoch=epoch,
                          sequences=None if base_sequence is None else {-1: base_sequence})
    message = {k: v for k, v in params.items() if k not in ("topic", "acks")}
    return SendParams(topic=topic, messages=[check_message(message, "params", limits)], acks=acks)


def _sequences(raw: Any) -> dict[int, int]:
    """SendBatch's C{sequences}: C{[{"partition", "base_sequence"}, ...]}, one per partition."""
    if type(raw) is list and len(raw) == 1:
        # The common case (one partition per request, as streamlog.client sends), checked in a few
        # C-level operations; anything unusual takes the full path below for its error message.
        item = raw[0]
        if type(item) is dict and len(item) == 2:
            partition, base = item.get("partition"), item.get("base_sequence")
            if type(partition) is int and type(base) is int and partition >= 0 and 0 <= base <= MAX_INT32:
                return {partition: base}
    if not isinstance(raw, list) or not raw:
        raise errors.InvalidParams("'sequences' must be a non-empty array of {partition, base_sequence}",
                                   field="sequences")
    out: dict[int, int] = {}
    for i, item in enumerate(raw):
        if type(item) is not dict:
            raise errors.InvalidParams(f"'sequences[{i}]' must be an object", field=f"sequences[{i}]")
        q = _Params(item, f"sequences[{i}]")
        partition = q.integer("partition", required=True, maximum=None)
        base = q.integer("base_sequence", required=True, maximum=MAX_INT32)
        q.done()
        if partition in out:
            raise errors.InvalidParams(f"'sequences' names partition {partition} twice", field=f"sequences[{i}]")
        out[partition] = base
    return out


def parse_send_batch(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> SendParams:
    p = _Params(params)
    topic = _topic(p)
    acks = _acks(p)
    raw = p.raw("messages")
    producer_id, epoch = _producer(p)
    sequences = p.raw("sequences")
    p.done()
    if (sequences is None) != (producer_id < 0):
        raise errors.InvalidParams("an idempotent SendBatch carries 'producer_id', 'epoch' and 'sequences'",
                                   field="sequences")
    if not isinstance(raw, list):
        raise errors.InvalidParams("'messages' must be an array")
    if not raw:
        raise errors.InvalidParams("'messages' must not be empty")
    if len(raw) > limits.max_batch_messages:
        raise errors.BatchTooLarge(
            f"batch of {len(raw)} messages exceeds the limit of {limits.max_batch_messages}",
            limit=limits.max_batch_messages,
        )
    plain = plain_batch(raw, limits)
    if not plain:
        for i, m in enumerate(raw):
            check_message(m, i, limits)
    if sequences is None:
        return SendParams(topic=topic, messages=raw, acks=acks, plain=plain)
    return SendParams(topic=topic, messages=raw, acks=acks, producer_id=producer_id, epoch=epoch,
                      sequences=_sequences(sequences), plain=plain)


def parse_poll(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> PollParams:
    p = _Params(params)
    topic = _topic(p)
    result = PollParams(
        topic=topic,
        partition=p.integer("partition", default=0, maximum=None),
        offset=p.integer("offset", required=True),
        max_messages=p.integer("max_messages", default=limits.max_poll_messages, minimum=1,
                               maximum=limits.max_poll_messages),
        max_bytes=p.integer("max_bytes", default=limits.default_poll_bytes, minimum=1,
                            maximum=limits.max_poll_bytes),
        max_wait_ms=p.integer("max_wait_ms", default=0, maximum=limits.max_wait_ms),
    )
    p.done()
    return result


#: The most replicas a partition may have (CreateTopic's replication_factor).
MAX_REPLICATION_FACTOR = 7

_CONFIG_KEYS = ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms")


def parse_create_topic(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> CreateTopicParams:
    p = _Params(params)
    topic = _topic(p)
    partitions = p.integer("partitions", default=1, minimum=1, maximum=limits.max_partitions)
    replication_factor = p.integer("replication_factor", minimum=1, maximum=MAX_REPLICATION_FACTOR)
    config = p.raw("config")
    p.done()
    if config is None:  # absent or null: the server defaults (not any falsy value: 0, "", [] are mistakes)
        config = {}
    if not isinstance(config, dict):
        raise errors.InvalidParams("'config' must be an object")
    c = _Params(config, "config")
    values = {
        "retention_ms": c.integer("retention_ms", minimum=1),
        "retention_bytes": c.integer("retention_bytes", minimum=1),
        "segment_bytes": c.integer("segment_bytes", minimum=1024),
        "segment_ms": c.integer("segment_ms", minimum=1),
    }
    c.done()
    return CreateTopicParams(topic=topic, partitions=partitions, config=TopicConfig(**values),
                             replication_factor=replication_factor)


def is_auto_create(params: dict[str, Any]) -> bool:
    """Is this C{CreateTopic} the C{auto_create} form (see L{parse_auto_create_topic})?"""
    return isinstance(params, dict) and "auto_create" in params


def parse_auto_create_topic(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> str:
    """C{CreateTopic {topic, auto_create: true}}: the topic a Send would auto-create; the server
    chooses what a Send's auto-creation would (its C{--default-partitions}), so nothing else is given."""
    p = _Params(params)
    topic = _topic(p)
    if p.raw("auto_create") is not True:
        raise errors.InvalidParams("'auto_create' must be true (or left out)", field="auto_create")
    extra = sorted(set(params) - {"topic", "auto_create"})
    if extra:
        raise errors.InvalidParams(
            f"with 'auto_create' the server chooses the topic's settings as a Send's auto-creation does; "
            f"leave out {', '.join(extra)}", field=extra[0])
    return topic


def parse_topic_only(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> str:
    p = _Params(params)
    topic = _topic(p)
    p.done()
    return topic


def parse_list_offsets(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> ListOffsetsParams:
    p = _Params(params)
    topic = _topic(p)
    partition = p.integer("partition", default=0, maximum=None)
    at = p.raw("at")
    p.done()
    if at is None:
        at = "latest"
    if isinstance(at, bool) or not (at in ("earliest", "latest") or isinstance(at, int)):
        raise errors.InvalidParams("'at' must be 'earliest', 'latest' or a timestamp in milliseconds")
    if isinstance(at, int) and not 0 <= at <= MAX_INT64:
        raise errors.InvalidParams("'at' timestamp must be between 0 and 2**63-1")
    return ListOffsetsParams(topic=topic, partition=partition, at=at)


def parse_metadata(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> list[str] | None:
    """C{Metadata}'s C{topics}: the names asked about, or None for every topic."""
    p = _Params(params)
    names = p.raw("topics")
    p.done()
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise errors.InvalidParams("'topics' must be an array of topic names", field="topics")
    return names


def parse_empty(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> None:
    _Params(params).done()


# --- encoding answers ----------------------------------------------------------


@attrs.frozen
class RawResult:
    """A result already encoded, as chunks whose concatenation is its JSON object.

    Poll answers are built this way from stored record bytes: the chunks go to
    the transport as they are (C{writeSequence}), so a megabyte of records is
    copied once on its way out instead of at every layer of encoding.
    """

    chunks: list[bytes]


def encode_result(rid: int | str | None, result: Any) -> list[bytes]:
    """One answer line (with its newline), as chunks for C{writeSequence}."""
    if type(result) is RawResult:
        return [b'{"id":', orjson.dumps(rid), b',"result":', *result.chunks, b"}\n"]
    return [orjson.dumps({"id": rid, "result": result}), b"\n"]


def encode_error(rid: int | str | None, error: errors.StreamlogError) -> list[bytes]:
    return [orjson.dumps({"id": rid, "error": error.to_wire()}), b"\n"]


def encode_request(rid: int | str, method: str, params: dict[str, Any]) -> bytes:
    """One request line (client side)."""
    return orjson.dumps({"id": rid, "method": method, "params": params}) + b"\n"


_RECORD = b'{"offset":%d,"timestamp":%d,"key":%b,"value":%b,"headers":%b}'


def encode_records(base_offset: int, timestamp: int, messages: list[Message], plain: bool = False) -> list[bytes]:
    """The records as stored and served (ARCHITECTURE.md decision 3), one per message.

    Built from a template around C{orjson.dumps(value)}: five times cheaper than
    dumping a dict per record, and the same bytes.  A message with no key and no
    headers (the common case) is three concatenations around its value instead of a
    five-field C{%} format: a tenth less time per batch.  Messages known to have
    neither (C{plain}, L{SendParams.plain}) are formatted by C{map} over the batch.
    """
    dumps = orjson.dumps
    if plain:
        template = b'{"offset":%%d,"timestamp":%d,"key":null,"value":%%b,"headers":{}}' % timestamp
        return list(map(template.__mod__, zip(range(base_offset, base_offset + len(messages)),
                                              map(dumps, map(_VALUE, messages)))))
    template = _RECORD
    unkeyed = b',"timestamp":%d,"key":null,"value":' % timestamp
    out = []
    offset = base_offset
    for m in messages:
        key = m.get("key")
        headers = m.get("headers")
        if key is None and not headers:
            out.append(b'{"offset":%d' % offset + unkeyed + dumps(m["value"]) + b',"headers":{}}')
        else:
            out.append(
                template % (
                    offset,
                    timestamp,
                    b"null" if key is None else dumps(key),
                    dumps(m["value"]),
                    dumps(headers) if headers else b"{}",
                )
            )
        offset += 1
    return out


#: C{InitProducerId}'s C{request_token}: what it may be.
MAX_REQUEST_TOKEN_LENGTH = 64
REQUEST_TOKEN_RULE = (f"'request_token' must be a string of 1 to {MAX_REQUEST_TOKEN_LENGTH} printable ASCII "
                      "characters")


def valid_request_token(token: Any) -> bool:
    return (type(token) is str and 1 <= len(token) <= MAX_REQUEST_TOKEN_LENGTH and token.isascii()
            and token.isprintable())


@attrs.frozen
class InitProducerIdParams:
    #: The producer's stable name (a new instance under it fences the older ones), or None.
    producer_name: str | None = None
    #: The current id and epoch of an instance asking for its next epoch, or None.
    producer_id: int | None = None
    epoch: int | None = None
    #: Chosen by the client, the same in every resend of one request: a resend gets the first answer.
    request_token: str | None = None


def parse_init_producer_id(params: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> InitProducerIdParams:
    p = _Params(params)
    name = p.raw("producer_name")
    if name is not None:
        if type(name) is not str or not name:
            raise errors.InvalidParams("'producer_name' must be a non-empty string", field="producer_name")
        if len(name) > limits.max_id_length or "\x00" in name:
            raise errors.InvalidParams(
                f"'producer_name' must be at most {limits.max_id_length} characters, without NUL",
                field="producer_name")
    token = p.raw("request_token")
    if token is not None and not valid_request_token(token):
        raise errors.InvalidParams(REQUEST_TOKEN_RULE, field="request_token")
    producer_id, epoch = _producer(p)
    p.done()
    if producer_id < 0:
        return InitProducerIdParams(name, request_token=token)
    return InitProducerIdParams(name, producer_id, epoch, token)

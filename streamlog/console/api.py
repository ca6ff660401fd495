"""The console's JSON API: its routes, its refusals, and what each route asks of the node.

L{route} (pure) maps an HTTP method and path to a route name and its
arguments; L{ConsoleApi} answers each route with the node's RPCs
(L{streamlog.console.calls.NodeCalls}) shaped by L{streamlog.console.shape}.
Errors are the protocol's (C{UNKNOWN_TOPIC}, C{INVALID_PARAMS}, ...) plus the
console's own few below; L{http_status} gives each its HTTP status.  The whole
table is in docs/console.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from streamlog import __version__, errors
from streamlog.console import shape
from streamlog.console.calls import NodeCalls
from streamlog.console.samples import Sample, SampleHistory
from streamlog.groups.config import OFFSETS_TOPIC
from streamlog.groups.offsets import reset_target
from streamlog.groups.params import parse_reset as parse_group_reset


class NotFound(errors.StreamlogError):
    """No such console path."""

    code = "NOT_FOUND"


class MethodNotAllowed(errors.StreamlogError):
    code = "METHOD_NOT_ALLOWED"


class ConsoleReadOnly(errors.StreamlogError):
    """An admin action while the node runs without C{--console-admin}."""

    code = "CONSOLE_READ_ONLY"


class CsrfCheckFailed(errors.StreamlogError):
    """A mutating request without the console's header, or from another origin."""

    code = "CSRF_CHECK_FAILED"


class HostNotAllowed(errors.StreamlogError):
    """A request naming a host this listener does not answer for (DNS rebinding)."""

    code = "HOST_NOT_ALLOWED"


class BodyTooLarge(errors.StreamlogError):
    code = "BODY_TOO_LARGE"


class PlanChanged(errors.StreamlogError):
    """A confirmed reset whose dry run now gives other offsets than the ones confirmed."""

    code = "PLAN_CHANGED"


#: Partitions the topic list or a sample describes in one reactor turn before it yields: about
#: a few milliseconds of work, so a node of thousands of partitions keeps answering its clients.
PARTITIONS_PER_TURN = 200

#: Leaders the topic page asks for offsets at once (partitions this node holds no replica of).
LEADER_ASKS_AT_ONCE = 32

#: Polls a C{from=latest} browse makes at most to end its answer at the high watermark.
LATEST_TRIES = 8

#: HTTP status per error code; any other code is 500.
STATUS = {
    "NOT_FOUND": 404, "UNKNOWN_TOPIC": 404, "UNKNOWN_PARTITION": 404, "UNKNOWN_GROUP": 404,
    "METHOD_NOT_ALLOWED": 405,
    "CONSOLE_READ_ONLY": 403, "CSRF_CHECK_FAILED": 403, "INTERNAL_TOPIC": 403,
    "BODY_TOO_LARGE": 413, "HOST_NOT_ALLOWED": 421,
    "PARSE_ERROR": 400, "INVALID_PARAMS": 400, "INVALID_TOPIC": 400, "INVALID_REQUEST": 400,
    "OFFSET_OUT_OF_RANGE": 416,
    "TOPIC_EXISTS": 409, "GROUP_NOT_EMPTY": 409, "PLAN_CHANGED": 409, "TOO_MANY_PARTITIONS": 409,
    "PARTITION_UNAVAILABLE": 503, "LEADER_NOT_AVAILABLE": 503, "NOT_LEADER": 503, "NOT_CONTROLLER": 503,
    "NOT_COORDINATOR": 503, "COORDINATOR_NOT_AVAILABLE": 503, "SHUTTING_DOWN": 503, "TIMEOUT": 504,
    "CONNECTION_LOST": 502,
}

#: route name -> (HTTP method, path pattern); C{{}} is one path segment.  Admin routes mutate.
ROUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "overview": ("GET", ("overview",)),
    "topics": ("GET", ("topics",)),
    "topic_names": ("GET", ("topic-names",)),
    "topic": ("GET", ("topics", "{}")),
    "messages": ("GET", ("topics", "{}", "partitions", "{}", "messages")),
    "groups": ("GET", ("groups",)),
    "group": ("GET", ("groups", "{}")),
    "samples": ("GET", ("samples",)),
    "create_topic": ("POST", ("topics",)),
    "delete_topic": ("DELETE", ("topics", "{}")),
    "reset_offsets": ("POST", ("groups", "{}", "reset-offsets")),
}
ADMIN_ROUTES = frozenset(("create_topic", "delete_topic", "reset_offsets"))


def read_only() -> ConsoleReadOnly:
    return ConsoleReadOnly("admin actions are off on this node; start it with --console-admin to "
                           "create and delete topics and reset offsets from the console")


def http_status(error: errors.StreamlogError) -> int:
    return STATUS.get(error.code, 500)


def route(method: str, segments: list[str]) -> tuple[str, list[str]]:
    """(route name, the path's C{{}} segments) for C{method} on C{/api/<segments>}.

    Raises L{NotFound} for a path no route has, L{MethodNotAllowed} (with C{allow}) for a
    path whose routes take other methods.
    """
    if segments and segments[-1] == "":
        segments = segments[:-1]  # a trailing slash
    allowed = []
    for name, (verb, pattern) in ROUTES.items():
        if len(pattern) != len(segments):
            continue
        args = []
        for want, got in zip(pattern, segments, strict=True):
            if want == "{}":
                if not got:
                    break
                args.append(got)
            elif want != got:
                break
        else:
            if verb == method or (verb == "GET" and method == "HEAD"):
                return name, args
            allowed.append(verb)
    if allowed:
        raise MethodNotAllowed(f"{method} is not allowed here; use {' or '.join(sorted(set(allowed)))}",
                               allow=sorted(set(allowed)))
    raise NotFound(f"no console API at /api/{'/'.join(segments)}")


def _partition_number(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        raise errors.InvalidParams(f"partition must be an integer ≥ 0, not {raw[:40]!r}", field="partition")
    return int(raw)


class ConsoleApi:
    """Answers each route (coroutines: the resource runs them as Deferreds).

    @param calls: the node's RPCs.
    @param node_id: this node's id (shown in the overview).
    @param sizes: topic -> {partition: bytes} of this node's replicas.
    """

    def __init__(self, calls: NodeCalls, config: shape.ConsoleConfig, node_id: int,
                 sizes: Callable[[str], Mapping[int, int]], clock: IReactorTime,
                 history: SampleHistory | None = None) -> None:
        self.calls = calls
        self.config = config
        self.node_id = node_id
        self.sizes = sizes
        self.clock = clock
        self.history = history if history is not None else SampleHistory(config.samples)
        #: Called on every C{GET /api/samples}: the sampler runs only while a page asks (L{mount} sets it).
        self.samples_asked: Callable[[], None] = lambda: None

    async def _turn(self, done: int) -> int:
        """After every L{PARTITIONS_PER_TURN} partitions described, give the reactor a turn (the
        local handlers answer at once, so a loop over topics would otherwise hold the data path)."""
        if done >= PARTITIONS_PER_TURN:
            await deferLater(self.clock, 0, lambda: None)
            return 0
        return done

    async def answer(self, name: str, args: list[str], query: Mapping[str, str], body: Any) -> Any:
        """The JSON answer of route C{name}; raises a L{errors.StreamlogError}."""
        if name in ADMIN_ROUTES and not self.config.admin:
            raise read_only()
        if name == "overview":
            return await self.overview()
        if name == "topics":
            return await self.topics(query)
        if name == "topic_names":
            return await self.topic_names()
        if name == "topic":
            return await self.topic(args[0])
        if name == "messages":
            return await self.messages(args[0], _partition_number(args[1]), query)
        if name == "groups":
            return await self.groups()
        if name == "group":
            return await self.group(args[0])
        if name == "samples":
            self.samples_asked()
            return {"interval_s": self.config.sample_interval, **self.history.series()}
        if name == "create_topic":
            return await self.calls.call("CreateTopic", shape.parse_create_topic(body))
        if name == "delete_topic":
            return await self.calls.call("DeleteTopic", {"topic": args[0]})
        if name == "reset_offsets":
            return await self.reset_offsets(args[0], body)
        raise NotFound(f"no route {name!r}")

    async def overview(self) -> dict[str, Any]:
        metadata = await self.calls.local("Metadata", {})
        return shape.overview(metadata, node_id=self.node_id, version=__version__, admin=self.config.admin)

    async def _offsets_topic_exists(self) -> bool:
        """Whether any group can exist yet: ListGroups creates the offsets topic, which a
        console that only looks must not do."""
        metadata = await self.calls.local("Metadata", {"topics": [OFFSETS_TOPIC]})
        return any(t.get("topic") == OFFSETS_TOPIC and "partitions" in t for t in metadata.get("topics", []))

    async def groups(self) -> dict[str, Any]:
        if not await self._offsets_topic_exists():
            return shape.groups_view({"groups": []})
        return shape.groups_view(await self.calls.call("ListGroups", {}))

    async def group(self, name: str) -> dict[str, Any]:
        if not await self._offsets_topic_exists():  # no group can exist; DescribeGroup would create the topic
            raise errors.UnknownGroup(f"group {name!r} has no members and no committed offsets", group=name)
        return shape.group_view(await self.calls.call("DescribeGroup", {"group": name}))

    async def _fresh_plan(self, params: dict[str, Any]) -> dict[str, Any]:
        """A reset's dry run before any group exists (so every C{previous} is null), from the
        partitions' own offsets: the broker's dry run would create the offsets topic first."""
        p = parse_group_reset(params)
        metadata = await self.calls.local("Metadata", {"topics": [p.topic]})
        entry = next((t for t in metadata.get("topics", []) if t.get("topic") == p.topic), None)
        if entry is None or "error" in entry:
            raise errors.from_wire(entry["error"]) if entry else errors.UnknownTopic(
                f"unknown topic {p.topic!r}", topic=p.topic)
        count = len(entry["partitions"])
        indexes = p.partitions if p.partitions is not None else tuple(range(count))
        for index in indexes:
            if index >= count:
                raise errors.UnknownPartition(f"topic {p.topic!r} has {count} partitions, not {index}",
                                              topic=p.topic, partitions=count)
        timestamp = p.to[1] if isinstance(p.to, tuple) and p.to[0] == "timestamp" else None
        rows = []
        for index in indexes:
            where = {"topic": p.topic, "partition": index}
            try:
                bounds: list[int | None] = [
                    (await self.calls.call("ListOffsets", {**where, "at": at}))["offset"]
                    for at in ("earliest", "latest", *([timestamp] if timestamp is not None else []))]
            except errors.StreamlogError:
                # As the broker's ResetOffsets: every target needs the log's bounds, {"offset": n} too.
                raise errors.PartitionUnavailable(
                    f"{p.topic}/{index} has no leader this node can reach, so {p.to!r} cannot be resolved "
                    "against its log; nothing was reset: retry", topic=p.topic, partition=index) from None
            if timestamp is None:
                bounds.append(None)  # not asked: the target is no timestamp
            start, end, at = bounds
            assert start is not None and end is not None
            rows.append({**where, "offset": reset_target(p.to, (start, end, at), None), "previous": None})
        return {"group": p.group, "dry_run": True, "offsets": rows}

    async def _described(self, name: str) -> dict[str, Any] | None:
        try:
            described: dict[str, Any] = await self.calls.local("DescribeTopic", {"topic": name})
        except errors.UnknownTopic:  # deleted between the two answers
            return None
        return described

    async def topics(self, query: Mapping[str, str]) -> dict[str, Any]:
        """At most C{--console-max-topics} topics (internal ones last), after the topic C{after}."""
        after = shape.parse_topics_page(query)
        metadata = await self.calls.local("Metadata", {})
        entries = shape.topics_page([t for t in metadata.get("topics", []) if "partitions" in t], after,
                                    self.config.max_topics)
        described = {}
        done = 0
        for entry in entries["topics"]:
            one = await self._described(entry["topic"])
            if one is not None:
                described[entry["topic"]] = one
            done = await self._turn(done + len(entry["partitions"]))
        view = shape.topics_view({"topics": entries["topics"]}, described,
                                 {t["topic"]: self.sizes(t["topic"]) for t in entries["topics"]})
        return {**view, "next_after": entries["next_after"], "total": entries["total"]}

    async def topic_names(self) -> dict[str, Any]:
        """Every topic's name and partition count, from C{Metadata} alone (the message browser's list)."""
        metadata = await self.calls.local("Metadata", {})
        return shape.topic_names(metadata)

    async def topic(self, name: str) -> dict[str, Any]:
        metadata = await self.calls.local("Metadata", {"topics": [name]})
        entry = next((t for t in metadata.get("topics", []) if t.get("topic") == name), None)
        if entry is None or "error" in entry:
            raise errors.from_wire(entry["error"]) if entry else errors.UnknownTopic(
                f"unknown topic {name!r}", topic=name)
        described = await self._described(name)
        known = {p["partition"] for p in (described or {}).get("partitions", []) if p.get("high_watermark") is not None}
        # Partitions this node holds no replica of: their leaders asked at once (at most
        # LEADER_ASKS_AT_ONCE in flight), so one unreachable leader costs one timeout, not one each.
        missing = [p["partition"] for p in entry["partitions"] if p["partition"] not in known]
        limit = DeferredSemaphore(LEADER_ASKS_AT_ONCE)
        answers = await gatherResults([
            limit.run(lambda i=i: Deferred.fromCoroutine(self._leader_offsets(name, i))) for i in missing])
        asked: dict[int, dict[str, Any]] = dict(zip(missing, answers, strict=True))
        return shape.topic_view(entry, described, self.sizes(name), asked)

    async def _leader_offsets(self, topic: str, partition: int) -> dict[str, Any]:
        fields = (("log_start_offset", "earliest"), ("high_watermark", "latest"))
        answers = await gatherResults([
            self.calls.call("ListOffsets", {"topic": topic, "partition": partition, "at": at}).addErrback(
                lambda f: None if f.check(errors.StreamlogError) else f)  # no leader now: shown as unknown
            for _, at in fields], consumeErrors=True)
        return {field: answer["offset"] for (field, _), answer in zip(fields, answers, strict=True)
                if answer is not None}

    async def messages(self, topic: str, partition: int, query: Mapping[str, str]) -> dict[str, Any]:
        browse = shape.parse_browse(query, self.config.max_messages)
        where = {"topic": topic, "partition": partition}
        if browse.offset is not None:
            offset = browse.offset
        elif browse.timestamp is not None:
            offset = (await self.calls.call("ListOffsets", {**where, "at": browse.timestamp}))["offset"]
        else:
            start = (await self.calls.call("ListOffsets", {**where, "at": "earliest"}))["offset"]
            high = (await self.calls.call("ListOffsets", {**where, "at": "latest"}))["offset"]
            offset = shape.browse_start(browse, start, high)
        asked = offset
        poll = await self.calls.call("Poll", {**where, "offset": offset, "max_messages": browse.limit,
                                              "max_wait_ms": 0})
        if browse.position == "latest":
            # The Poll's byte cap may stop short of the head: move the start on until the answer
            # ends there (the newest messages, fewer than asked when they are large).
            for _ in range(LATEST_TRIES):
                head = poll.get("high_watermark")
                end = poll.get("next_offset")
                if not isinstance(head, int) or not isinstance(end, int) or end >= head or not poll.get("messages"):
                    break
                offset += head - end
                poll = await self.calls.call("Poll", {**where, "offset": offset, "max_messages": browse.limit,
                                                      "max_wait_ms": 0})
        view = shape.messages_view(topic, partition, poll)
        # Fewer messages than the range asked held: the byte cap cut the answer (the page says so).
        head = view["high_watermark"]
        view["truncated"] = isinstance(head, int) and len(view["messages"]) < min(browse.limit, head - asked)
        return view

    async def reset_offsets(self, group: str, body: Any) -> dict[str, Any]:
        params, confirm = shape.parse_reset(group, body)
        if confirm is None:
            if not await self._offsets_topic_exists():  # looking changes nothing: no offsets topic made
                return await self._fresh_plan(params)
            planned: dict[str, Any] = await self.calls.call("ResetOffsets", params)
            return planned
        planned = await self.calls.call("ResetOffsets", params)  # the group is still empty (else refused)
        if not shape.still_confirmable(confirm, planned):
            raise PlanChanged("the committed offsets or the partitions changed since the dry run; review the "
                              "new plan and confirm it", plan=shape.plan_of(planned))
        done: list[dict[str, Any]] = []
        for offset, partitions in sorted(shape.by_offset(confirm).items()):
            answer = await self.calls.call("ResetOffsets", {"group": group, "topic": params["topic"],
                                                            "partitions": partitions, "to": {"offset": offset},
                                                            "dry_run": False})
            done.extend(answer["offsets"])
        return {"group": group, "dry_run": False, "offsets": sorted(done, key=lambda o: o["partition"])}

    # --- samples -------------------------------------------------------------------------------

    async def take_sample(self) -> Sample:
        """Each topic's high watermarks summed (over the partitions this node knows offsets of)
        and the lag of the first C{sample_max_groups} groups."""
        metadata = await self.calls.local("Metadata", {})
        topics: dict[str, int] = {}
        done = 0
        for t in metadata.get("topics", []):
            if "partitions" not in t or t.get("internal"):
                continue
            described = await self._described(t["topic"])
            marks = {p["partition"]: p["high_watermark"] for p in (described or {}).get("partitions", [])
                     if p.get("high_watermark") is not None}
            if marks:
                topics[t["topic"]] = marks
            done = await self._turn(done + len(t["partitions"]))
        lags: dict[str, int | None] = {}
        if self.config.sample_max_groups and await self._offsets_topic_exists():
            listed = await self.calls.call("ListGroups", {})
            for g in sorted(listed.get("groups", []), key=lambda g: g["group"])[:self.config.sample_max_groups]:
                try:
                    lags[g["group"]] = shape.group_lag(await self.calls.call("DescribeGroup", {"group": g["group"]}))
                except errors.StreamlogError:
                    lags[g["group"]] = None
        return Sample(int(self.clock.seconds() * 1000), topics, lags)

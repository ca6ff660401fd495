"""Raft wire messages: frozen attrs classes with a plain-dict form for JSON.

Every message carries the sender's `term`: the core's first step on receipt is comparing it.
`to_dict` produces JSON-safe values (entry data as base64) so the driver can frame each
message as one JSON line; `from_dict` validates the shape and raises ValueError on bad input,
because peer input is untrusted even inside a cluster.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar

import attrs

from streamlog.raft.log import Entry


@attrs.frozen
class RequestVote:
    """Ask for a vote. With `pre_vote` it asks "would you vote for me at `term`?" and changes
    no one's term (Raft thesis §9.6). `transfer` marks an election started by TimeoutNow, which
    voters honour even while they still hear from a leader."""

    kind: ClassVar[str] = "request_vote"
    term: int
    candidate_id: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@attrs.frozen
class RequestVoteResponse:
    """A vote. For a granted pre-vote, `term` is the term asked about (not the voter's)."""

    kind: ClassVar[str] = "request_vote_response"
    term: int
    granted: bool
    pre_vote: bool = False


@attrs.frozen
class AppendEntries:
    """Replicate `entries` after (prev_index, prev_term); an empty list is a heartbeat. With
    `quiet` the leader says it has nothing more to send: a follower that matches it entirely
    stops its election timer until the group wakes (the leader's node heartbeats stand in)."""

    kind: ClassVar[str] = "append_entries"
    term: int
    leader_id: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    quiet: bool = False


@attrs.frozen
class AppendEntriesResponse:
    """Answer to AppendEntries or InstallSnapshot.

    On success `match_index` is the last index known to match the leader. On rejection
    `reject_index` is the prev_index that failed, and the hint lets the leader skip back in one
    round trip: `conflict_term` is the follower's term at reject_index (None if its log is too
    short) and `conflict_index` is the first index the follower holds with that term, or its
    last_index + 1 when the log is too short.
    """

    kind: ClassVar[str] = "append_entries_response"
    term: int
    success: bool
    match_index: int = 0
    reject_index: int = 0
    conflict_term: int | None = None
    conflict_index: int = 0


@attrs.frozen
class InstallSnapshot:
    """Tell a follower whose next entry was removed by retention that the log starts after
    (last_index, last_term). `data` is an opaque snapshot of the state machine below that point
    (empty for partition logs, whose removed records are simply gone); `config` is the
    membership in force at last_index."""

    kind: ClassVar[str] = "install_snapshot"
    term: int
    leader_id: str
    last_index: int
    last_term: int
    data: bytes = b""
    config: tuple[str, ...] | None = None


@attrs.frozen
class TimeoutNow:
    """Leadership transfer: start an election now, skipping pre-vote."""

    kind: ClassVar[str] = "timeout_now"
    term: int
    leader_id: str


Message = (
    RequestVote | RequestVoteResponse | AppendEntries | AppendEntriesResponse | InstallSnapshot | TimeoutNow
)

_TYPES: dict[str, type[Message]] = {
    cls.kind: cls
    for cls in (RequestVote, RequestVoteResponse, AppendEntries, AppendEntriesResponse, InstallSnapshot, TimeoutNow)
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("bytes field must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(f"bad base64: {e}") from None


def _entry_to_list(e: Entry) -> list[Any]:
    out: list[Any] = [e.index, e.term, _b64(e.data)]
    if e.config is not None:
        out.append(list(e.config))
    return out


def _members(value: Any) -> tuple[str, ...]:
    if not (isinstance(value, list) and all(isinstance(m, str) for m in value)):
        raise ValueError("config must be a list of node ids")
    return tuple(value)


def to_dict(msg: Message) -> dict[str, Any]:
    """A JSON-safe dict: {"type": kind, field: value, ...}."""
    out: dict[str, Any] = {"type": msg.kind}
    for field in attrs.fields(type(msg)):
        value = getattr(msg, field.name)
        if field.name == "entries":
            value = [_entry_to_list(e) for e in value]
        elif field.name == "data":
            value = _b64(value)
        elif field.name == "config" and value is not None:
            value = list(value)
        out[field.name] = value
    return out


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "term": (int,),
    "candidate_id": (str,),
    "leader_id": (str,),
    "last_log_index": (int,),
    "last_log_term": (int,),
    "pre_vote": (bool,),
    "transfer": (bool,),
    "quiet": (bool,),
    "granted": (bool,),
    "prev_index": (int,),
    "prev_term": (int,),
    "commit": (int,),
    "success": (bool,),
    "match_index": (int,),
    "reject_index": (int,),
    "conflict_term": (int, type(None)),
    "conflict_index": (int,),
    "last_index": (int,),
    "last_term": (int,),
}


def _check(name: str, value: Any) -> Any:
    types = _FIELD_TYPES[name]
    # bool is an int subclass: keep the two apart so {"term": true} is rejected.
    if isinstance(value, bool) and bool not in types:
        raise ValueError(f"{name}: expected {types}, got bool")
    if not isinstance(value, types):
        raise ValueError(f"{name}: expected {types}, got {type(value).__name__}")
    return value


def from_dict(d: Any) -> Message:
    """Parse the dict form back into a message; ValueError on anything malformed."""
    if not isinstance(d, dict):
        raise ValueError("message must be an object")
    kind = d.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown message type {kind!r}")
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if field.name not in d:
            if field.default is attrs.NOTHING:
                raise ValueError(f"{cls.kind}: missing {field.name}")
            continue
        value = d[field.name]
        if field.name == "entries":
            if not isinstance(value, list):
                raise ValueError("entries must be a list")
            entries = []
            for item in value:
                if not (isinstance(item, list) and len(item) in (3, 4)):
                    raise ValueError("entry must be [index, term, data] or [index, term, data, config]")
                config = _members(item[3]) if len(item) == 4 else None
                entries.append(Entry(_check("prev_index", item[0]), _check("term", item[1]), _unb64(item[2]), config))
            value = tuple(entries)
        elif field.name == "data":
            value = _unb64(value)
        elif field.name == "config":
            value = None if value is None else _members(value)
        else:
            value = _check(field.name, value)
        kwargs[field.name] = value
    return cls(**kwargs)

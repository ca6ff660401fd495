"""The error codes of the wire protocol, as exceptions.

Every error a client can see is a L{StreamlogError} subclass with a stable
C{code} (UPPER_SNAKE, documented in docs/protocol.md) and optional extra
fields that travel in the error object, e.g. the current offsets with
C{OFFSET_OUT_OF_RANGE}.  The server answers anything else as C{INTERNAL}.
The same classes are raised by the client library, so application code can
catch C{UnknownTopic} whichever side noticed it.
"""

from __future__ import annotations

from typing import Any


class StreamlogError(Exception):
    """Base of every error with a wire code."""

    code = "INTERNAL"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        """The C{error} object of a response."""
        return {"code": self.code, "message": self.message, **self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.details!r})"


class Internal(StreamlogError):
    """An unexpected server fault; logged on the server with its traceback."""

    code = "INTERNAL"


class ParseError(StreamlogError):
    """The line is not valid JSON (or not valid UTF-8, or holds NaN/Infinity or lone surrogates)."""

    code = "PARSE_ERROR"


class InvalidRequest(StreamlogError):
    """The JSON is not a request object: not an object, or bad C{id}/C{method}/C{params}."""

    code = "INVALID_REQUEST"


class MethodNotFound(StreamlogError):
    code = "METHOD_NOT_FOUND"


class InvalidParams(StreamlogError):
    """A parameter is missing, of the wrong type or out of range."""

    code = "INVALID_PARAMS"


class NestingTooDeep(StreamlogError):
    code = "NESTING_TOO_DEEP"


class LineTooLong(StreamlogError):
    """The request line exceeds the server's limit; the connection is closed."""

    code = "LINE_TOO_LONG"


class MessageTooLarge(StreamlogError):
    code = "MESSAGE_TOO_LARGE"


class BatchTooLarge(StreamlogError):
    code = "BATCH_TOO_LARGE"


class KeyTooLarge(StreamlogError):
    """A message key is longer than C{--max-key-bytes} (in UTF-8); details C{limit}, C{size}.

    Keys are hashed to pick a partition; the bound keeps that work small.
    """

    code = "KEY_TOO_LARGE"


class InvalidTopic(StreamlogError):
    """The topic name breaks the naming rules."""

    code = "INVALID_TOPIC"


class UnknownTopic(StreamlogError):
    code = "UNKNOWN_TOPIC"


class TopicExists(StreamlogError):
    code = "TOPIC_EXISTS"


class UnknownPartition(StreamlogError):
    code = "UNKNOWN_PARTITION"


class OffsetOutOfRange(StreamlogError):
    """The offset is before the log start or past the log end (details carry both)."""

    code = "OFFSET_OUT_OF_RANGE"


class TooManyConnections(StreamlogError):
    """The node (C{scope: "node"}) or the client's address (C{scope: "address"}) has its
    maximum of connections open; the new connection is closed after this answer."""

    code = "TOO_MANY_CONNECTIONS"


class TooManyWaitingPolls(StreamlogError):
    """A Poll that would wait was refused: its connection or the node (C{scope}) already
    has C{limit} polls waiting.  A Poll with data to return is never refused."""

    code = "TOO_MANY_WAITING_POLLS"


class TooManyPartitions(StreamlogError):
    """Creating the topic would pass the node's partition cap (C{--max-partitions-per-node}),
    or the process ran out of file descriptors; nothing was created.

    Details: C{limit} (the cap) and C{partitions} (what the node holds now).
    """

    code = "TOO_MANY_PARTITIONS"


class TooManyOpenFiles(StreamlogError):
    """A Send/SendBatch needed a new segment and the node is out of file descriptors;
    nothing of the request was appended.  Retriable: rolled segments' files are closed
    as they are synced.  Details: C{topic}, C{partition}."""

    code = "TOO_MANY_OPEN_FILES"


class PartitionUnavailable(StreamlogError):
    """The partition cannot serve, e.g. its storage found corruption in synced data."""

    code = "PARTITION_UNAVAILABLE"


class StorageError(StreamlogError):
    """Writing to disk failed; the node stops rather than pretend the data is safe."""

    code = "STORAGE_ERROR"


class ShuttingDown(StreamlogError):
    """The node is stopping and takes no more writes; nothing of the request was appended.

    Retry against the node once it is back (or another node, once there are
    several).
    """

    code = "SHUTTING_DOWN"


class NotLeader(StreamlogError):
    """This node does not lead the partition (cluster).

    Details: C{topic}, C{partition}, C{leader} (node id, or None when this
    node does not know), C{leader_address} (C{host:port} or None) and
    C{leader_term}: where to ask again.  Retriable.
    """

    code = "NOT_LEADER"


class LeaderNotAvailable(StreamlogError):
    """The partition has no leader right now (an election is in progress): retry shortly (cluster)."""

    code = "LEADER_NOT_AVAILABLE"


class NotController(StreamlogError):
    """Topic administration reached a node that is not the controller and could not forward it (cluster).

    Details: C{controller} (node id or None) and C{controller_address}: where to ask again.
    """

    code = "NOT_CONTROLLER"


class Timeout(StreamlogError):
    """No answer came within the client's request timeout (client side only)."""

    code = "TIMEOUT"


class ConnectionLost(StreamlogError):
    """The connection closed before the answer came (client side only)."""

    code = "CONNECTION_LOST"


class DeliveryTimeout(Timeout):
    """A message or request was retried until its delivery timeout passed (client side only).

    Details: C{timeout} (seconds), C{attempts}, C{last_error} (the wire
    error of the last attempt, C{{code, message, ...}}, or None if none was
    made) and C{sent} (False when no attempt was ever written: nothing of it
    can have been appended).  A subclass of L{Timeout}.
    """

    code = "DELIVERY_TIMEOUT"


class BufferFull(StreamlogError):
    """A Producer's send waited C{max_block} seconds for room in its C{buffer_bytes} of
    unsettled messages and got none (client side only): the message was never sent.

    Details: C{buffer_bytes}, C{max_block} (seconds), C{size} (the message's bytes in the
    buffer) and C{sent} (always False).
    """

    code = "BUFFER_FULL"


class OutOfOrderSequence(StreamlogError):
    """An idempotent batch's C{base_sequence} is not the next one its partition expects, nor one it holds.

    Details: C{topic}, C{partition}.  Retriable in order: the producer sends
    its earlier batches first (docs/storage.md, "Idempotent producers").
    """

    code = "OUT_OF_ORDER_SEQUENCE"


class ProducerFenced(StreamlogError):
    """The batch's epoch is older than the partition's (or the registry's): a newer instance of
    the producer exists.  Fatal to this producer instance."""

    code = "PRODUCER_FENCED"


class UnknownProducerId(StreamlogError):
    """The partition holds no state for this producer and epoch (never seen, expired or evicted)
    and the batch does not start at sequence 0: the producer continues in a new epoch."""

    code = "UNKNOWN_PRODUCER_ID"


class TooManyProducers(StreamlogError):
    """The partition remembers C{--max-producers-per-partition} producers, all active too recently
    to be evicted: a new producer is refused (retry later).  Details: C{topic}, C{partition}, C{limit}."""

    code = "TOO_MANY_PRODUCERS"


class ProducerIdsExhausted(StreamlogError):
    """Every producer id (2^63) has been handed out."""

    code = "PRODUCER_IDS_EXHAUSTED"


# --- consumer groups (issue 11) ------------------------------------------------


class NotCoordinator(StreamlogError):
    """A group request reached a node that does not coordinate the group (it does not lead
    the group's offsets partition); details: C{group}, C{coordinator} (node id or None),
    C{coordinator_address} (host:port or None)."""

    code = "NOT_COORDINATOR"


class CoordinatorNotAvailable(StreamlogError):
    """The group's offsets partition is electing its leader, or its coordinator is still
    loading the group's offsets from it; retry shortly."""

    code = "COORDINATOR_NOT_AVAILABLE"


class UnknownMember(StreamlogError):
    """The member id is not (or no longer) in the group: it left, its session expired, or
    the coordinator moved; the member rejoins with JoinGroup.  Details: C{group}, C{member_id}."""

    code = "UNKNOWN_MEMBER"


class StaleGeneration(StreamlogError):
    """A commit carried a generation older than the one the coordinator last gave the
    member; details: C{group}, C{generation} (the member's current one).  Heartbeat, then retry."""

    code = "STALE_GENERATION"


class PartitionNotAssigned(StreamlogError):
    """A member committed an offset for a partition the coordinator does not count as its
    own; details: C{group}, C{topic}, C{partition}."""

    code = "PARTITION_NOT_ASSIGNED"


class OffsetBehindCommitted(StreamlogError):
    """A commit would move a committed offset backwards (only ResetOffsets may); details:
    C{group}, C{topic}, C{partition}, C{committed}."""

    code = "OFFSET_BEHIND_COMMITTED"


class UnknownGroup(StreamlogError):
    """DescribeGroup, DeleteGroup or ResetOffsets of a group with no members and no committed
    offsets; details: C{group}."""

    code = "UNKNOWN_GROUP"


class GroupNotEmpty(StreamlogError):
    """DeleteGroup or ResetOffsets of a group that still has members; details: C{group}, C{members}."""

    code = "GROUP_NOT_EMPTY"


class GroupFull(StreamlogError):
    """A JoinGroup would pass the group's member limit; details: C{group}, C{limit}."""

    code = "GROUP_FULL"


class InternalTopic(StreamlogError):
    """A client tried to write to an internal topic (C{__consumer_offsets}), create it or delete
    it: only the node itself does (Poll of it is allowed).  Details: C{topic}."""

    code = "INTERNAL_TOPIC"


GROUP_ERRORS: list[type[StreamlogError]] = [
    NotCoordinator, CoordinatorNotAvailable, UnknownMember, StaleGeneration, PartitionNotAssigned,
    OffsetBehindCommitted, UnknownGroup, GroupNotEmpty, GroupFull, InternalTopic,
]


#: code -> class, for turning a wire error back into an exception.
BY_CODE: dict[str, type[StreamlogError]] = {
    cls.code: cls
    for cls in [
        Internal, ParseError, InvalidRequest, MethodNotFound, InvalidParams, NestingTooDeep,
        LineTooLong, MessageTooLarge, BatchTooLarge, KeyTooLarge, InvalidTopic, UnknownTopic, TopicExists,
        UnknownPartition, OffsetOutOfRange, TooManyConnections, TooManyWaitingPolls, TooManyPartitions,
        TooManyOpenFiles, PartitionUnavailable,
        StorageError, ShuttingDown, NotLeader, LeaderNotAvailable, NotController, Timeout, ConnectionLost,
        DeliveryTimeout, BufferFull, OutOfOrderSequence, ProducerFenced, UnknownProducerId, TooManyProducers,
        ProducerIdsExhausted,
    ]
}
BY_CODE.update({cls.code: cls for cls in GROUP_ERRORS})


def from_wire(error: dict[str, Any]) -> StreamlogError:
    """Rebuild the exception for a wire C{error} object (unknown codes stay generic)."""
    code = str(error.get("code", "INTERNAL"))
    message = str(error.get("message", code))
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    cls = BY_CODE.get(code)
    if cls is None:
        exc = StreamlogError(message, **details)
        exc.code = code
        return exc
    return cls(message, **details)

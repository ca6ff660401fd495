"""The params of each request, built once for every client.

The Twisted client, the blocking client and the Producer all send the same
requests; these functions are the one place that knows which fields are
optional and left out when they hold their default.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

#: The most messages a Poll may ask for on a server with the default limits
#: (C{--max-poll-messages}, docs/operations.md): a tool that wants more asks for
#: this many, and again.
MAX_POLL_MESSAGES = 10_000
#: The most messages a SendBatch may carry on a server with the default limits
#: (C{--max-batch-messages}, docs/operations.md): the Producer merges ready batches
#: into one request up to this many at most (see L{streamlog.client.producer}).
MAX_BATCH_MESSAGES = 10_000
#: The longest long-poll wait a server with the default limits allows (C{--max-wait-ms}).
MAX_WAIT_MS = 60_000
#: Longest answer line a client accepts: a Poll may return up to 16 MiB of
#: messages (the server's max_poll_bytes) plus the envelope.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class PartitionBound(NamedTuple):
    """What a partition-bound request (Send/SendBatch/Poll/ListOffsets of a known partition) was
    sent for: its partition, and the leader term the client knew when it chose the node.  A stalled
    connection is left only when one of these is led elsewhere in a later term (ClusterClient)."""

    topic: str
    partition: int
    term: int


def server_wait(method: str, params: dict[str, Any] | None) -> float:
    """Seconds the server may legitimately hold C{method} before answering: a long Poll's
    C{max_wait_ms}; 0 for everything else (their answers come as soon as they are done)."""
    if method == "Poll" and params:
        wait = params.get("max_wait_ms")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0:
            return float(wait) / 1000.0
    return 0.0


def message(value: Any, key: str | None = None, partition: int | None = None,
            headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One message object of C{Send}/C{SendBatch}."""
    m: dict[str, Any] = {"value": value}
    if key is not None:
        m["key"] = key
    if partition is not None:
        m["partition"] = partition
    if headers:
        m["headers"] = headers
    return m


def send(topic: str, value: Any, key: str | None = None, partition: int | None = None,
         headers: dict[str, str] | None = None, acks: str = "all") -> dict[str, Any]:
    params = message(value, key, partition, headers)
    params["topic"] = topic
    if acks != "all":
        params["acks"] = acks
    return params


def send_batch(topic: str, messages: Any, acks: str = "all") -> dict[str, Any]:
    params: dict[str, Any] = {"topic": topic, "messages": messages}
    if acks != "all":
        params["acks"] = acks
    return params


def producer_fields(producer_id: int, epoch: int, partition: int | None, base_sequence: int) -> dict[str, Any]:
    """The fields an idempotent producer adds to a SendBatch of one partition's batch."""
    return {"producer_id": producer_id, "epoch": epoch,
            "sequences": [{"partition": partition, "base_sequence": base_sequence}]}


def init_producer_id(producer_name: str | None = None, current: tuple[int, int] | None = None,
                     request_token: str | None = None) -> dict[str, Any]:
    """C{InitProducerId}: a new producer (named or not), or C{current}'s next epoch; C{request_token}
    (L{new_request_token}) lets a resend after a lost answer get the same identity."""
    params: dict[str, Any] = {}
    if producer_name is not None:
        params["producer_name"] = producer_name
    if current is not None:
        params["producer_id"], params["epoch"] = current
    if request_token is not None:
        params["request_token"] = request_token
    return params


def new_request_token() -> str:
    """A token for one C{InitProducerId} and its resends: 128 random bits, as 32 hex digits."""
    return os.urandom(16).hex()


def merge_batch_answer(merged: dict[str, Any], appended: list[dict[str, Any]], result: dict[str, Any]) -> None:
    """Fold one partition's SendBatch answer into the answer of a batch split by partition.

    A batch spread over partitions is sent as one SendBatch per partition (each led by its
    own node); the caller's answer lists every partition's appends, the first timestamp and
    durability seen, and the smallest replica counts (what every part got at least).
    """
    appended.extend(result.get("partitions") or [])
    for field in ("timestamp", "durability"):
        merged.setdefault(field, result.get(field))
    for field in ("replicas", "replication_factor"):
        if field in result:
            merged[field] = min(merged.get(field, result[field]), result[field])


def poll(topic: str, partition: int, offset: int, max_messages: int | None = None,
         max_bytes: int | None = None, max_wait_ms: int = 0) -> dict[str, Any]:
    params: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset}
    if max_messages is not None:
        params["max_messages"] = max_messages
    if max_bytes is not None:
        params["max_bytes"] = max_bytes
    if max_wait_ms:
        params["max_wait_ms"] = max_wait_ms
    return params


def create_topic(topic: str, partitions: int = 1, config: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"topic": topic, "partitions": partitions}
    if config:
        params["config"] = config
    return params


def auto_create_topic(topic: str) -> dict[str, Any]:
    """C{CreateTopic} as a Send's auto-creation (the server's partitions and config); existing is fine."""
    return {"topic": topic, "auto_create": True}

"""What a partition's InstallSnapshot carries: where its log resumes.

A partition's Raft log is its storage log, and retention removes whole batches
of records from its head (C{truncate_prefix}).  A follower whose next entry is
gone (a wiped node rejoining, one that was down longer than retention keeps)
is sent an InstallSnapshot at the leader's log start.  The removed records are
gone for every reader alike, so there is no state to ship, but two things must
travel for the follower's log to be the leader's: the record offset the log
resumes at (record offsets are dense across the cut; without it the follower
would number its first record 0) and the producer state the log kept at its
start (opaque bytes of the idempotence table).

The encoding is canonical JSON, versioned, so a newer node can refuse what it
cannot read rather than guess: C{{"next_offset": N, "producer_state": base64,
"v": 1}}.  Empty data (sent by a node that predates it) means "resume at the
log's own end", the log's default.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import attrs
import orjson

#: Version of the partition snapshot encoding.
PARTITION_SNAPSHOT_VERSION = 1


class PartitionSnapshotError(ValueError):
    """The bytes are not a partition snapshot this version reads."""


@attrs.frozen
class PartitionSnapshot:
    """The log start a follower installs: its next record offset and producer state."""

    next_offset: int = attrs.field(validator=attrs.validators.ge(0))
    producer_state: bytes = b""

    def encode(self) -> bytes:
        return orjson.dumps({"next_offset": self.next_offset,
                             "producer_state": base64.b64encode(self.producer_state).decode(),
                             "v": PARTITION_SNAPSHOT_VERSION}, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def decode(cls, data: bytes) -> PartitionSnapshot:
        try:
            obj: Any = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise PartitionSnapshotError(f"a partition snapshot is JSON: {e}") from None
        if not isinstance(obj, dict) or obj.get("v") != PARTITION_SNAPSHOT_VERSION:
            raise PartitionSnapshotError(f"not a version {PARTITION_SNAPSHOT_VERSION} partition snapshot")
        offset, state = obj.get("next_offset"), obj.get("producer_state")
        if type(offset) is not int or offset < 0 or not isinstance(state, str) or set(obj) != {
                "next_offset", "producer_state", "v"}:
            raise PartitionSnapshotError("a partition snapshot is {next_offset, producer_state, v}")
        try:
            raw = base64.b64decode(state, validate=True)
        except binascii.Error as e:
            raise PartitionSnapshotError(f"producer_state is not base64: {e}") from None
        return cls(offset, raw)


def snapshot_of(log: Any, index: int, producer_state: bytes | None = None) -> bytes:
    """The snapshot of a partition log whose entries up to C{index} (its start - 1) are gone:
    C{producer_state} is the producer table as of C{index} (default: what the log's start kept)."""
    state = bytes(log.producer_state) if producer_state is None else producer_state
    return PartitionSnapshot(log.next_offset_after(index), state).encode()

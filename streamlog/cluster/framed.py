"""L{FramedLog}: a partition's Raft log whose entries travel as stored frames (bytes).

The JSON-lines peer transport of C{streamlog.raft.driver} carries entry data
as bytes (base64).  A partition's record entries are C{RecordBatch}es; this
adapter hands the Raft core each one as its stored frame (header and payload,
exactly the bytes on disk) and turns a frame received from the leader back
into the batch it is, CRC checked and stored as received.  No-op and
configuration entries pass as they are.  The raw-frame transport
(C{streamlog/raft/transport.py}) carries batches itself: then this adapter
is not needed (C{ReplicaDirectory.framed}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamlog.raft.log import Entry
from streamlog.storage import codec
from streamlog.storage.base import RecordBatch


class FramedLog:
    def __init__(self, log: Any) -> None:
        self.log = log

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        out = []
        for entry in self.log.entries(lo, hi, max_bytes):
            data = entry.data
            if isinstance(data, RecordBatch):
                head, payload = codec.frame_parts(data)
                entry = Entry(entry.index, entry.term, head + payload)
            out.append(entry)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        converted = []
        for entry in entries:
            data = entry.data
            if entry.config is None and isinstance(data, (bytes, bytearray)) and data:
                entry = Entry(entry.index, entry.term, codec.decode(bytes(data)))  # type: ignore[arg-type]
            converted.append(entry)
        self.log.append(converted)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)

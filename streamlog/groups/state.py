"""The groups of one offsets partition: their membership and committed offsets, rebuilt from its records.

A L{ShardState} is what a coordinator knows of the groups of one partition of
the offsets topic.  It is built by applying the partition's stored records in
log order (L{ShardState.apply_stored}): offsets records (L{streamlog.groups.offsets})
go to the L{OffsetState}, membership records (L{streamlog.groups.membership})
to the L{GroupCoordinator}.  Plain objects: the broker reads the log and feeds
the values in.

A snapshot bounds the replay: one batch holding a C{snapshot} marker, then
every group's C{group} and C{member} records and an C{offsets_snapshot}
record of its committed offsets (C{{"type": "offsets_snapshot", "group",
"offsets": [{topic, partition, offset, metadata, timestamp}]}}, applied as
they are: the snapshot is the state, timestamps included).  Its C{group} and
C{offsets_snapshot} records also carry C{"active_ms"}: the time of the
group's last activity (L{streamlog.groups.retention}), which the snapshot's
own timestamp must not replace.  Applying the
marker forgets everything before it, so a replay may start at the marker,
and the records before it can be removed from the log (the broker does, on
every replica, once the snapshot is committed).  The coordinator writes one
only while none of its appends is in flight, so that its memory is exactly
what the log before the snapshot says.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamlog.groups.coordinator import GroupCoordinator
from streamlog.groups.membership import MEMBERSHIP_TYPES, BadMembershipRecord, decode_membership
from streamlog.groups.offsets import BadOffsetRecord, Committed, OffsetState, decode_record
from streamlog.groups.retention import GroupActivity

#: The first record of a snapshot batch (its value, with C{"records"}: how many follow it in the
#: batch; the message has no key).
SNAPSHOT_MARKER = {"type": "snapshot", "group": ""}
#: What a stored record's bytes hold iff it is a snapshot marker (its value is encoded by orjson,
#: so no string inside a value can hold these bytes unescaped).
SNAPSHOT_BYTES = b'"type":"snapshot","group":""'
#: Encoded bytes of the offsets in one C{offsets_snapshot} record at most: a group's are split over
#: several records, each well under the default 1,000,000-byte message limit.
SNAPSHOT_RECORD_BYTES = 256 * 1024


class ShardState:
    """One offsets partition's groups, as its records say."""

    def __init__(self, coordinator: GroupCoordinator) -> None:
        self.coordinator = coordinator
        self.offsets = OffsetState()
        #: When each group was last active, for offsets retention.
        self.activity = GroupActivity()
        #: Records applied, by kind, and those skipped (not ours, or malformed), for the log.
        self.applied_offsets = 0
        self.applied_membership = 0
        self.skipped = 0
        #: Snapshot markers met.
        self.snapshots = 0
        #: Records after the last snapshot (its own left out): when the next one is due.
        self.since_snapshot = 0
        self._in_snapshot = 0

    def apply_stored(self, value: Any, timestamp: int) -> None:
        """Apply one stored record's value (replay); one that is not ours is counted and skipped."""
        in_snapshot = self._in_snapshot > 0
        if in_snapshot:
            self._in_snapshot -= 1
        else:
            self.since_snapshot += 1
        try:
            kind = value.get("type") if isinstance(value, dict) else None
            if kind in MEMBERSHIP_TYPES:
                self.coordinator.restore(decode_membership(value))
                self.applied_membership += 1
                self._active(value, timestamp, in_snapshot)
                return
            if kind == "snapshot":
                self.coordinator.groups.clear()
                self.offsets.groups.clear()
                self.activity.clear()
                self.snapshots += 1
                follow = value.get("records")
                self._in_snapshot = follow if isinstance(follow, int) and not isinstance(follow, bool) else 0
                self.since_snapshot = 0
                return
            if kind == "offsets_snapshot":
                self._restore_offsets(value, timestamp)
                self.applied_offsets += 1
                self._active(value, timestamp, in_snapshot)
                return
            decoded = decode_record(value)
        except (BadOffsetRecord, BadMembershipRecord):
            self.skipped += 1
            return
        self.offsets.apply(decoded, timestamp)
        if decoded.type == "delete":
            self.coordinator.restore_delete(decoded.group)
        self.applied_offsets += 1
        self._active(value, timestamp, in_snapshot)

    def note_written(self, value: Any, timestamp: int) -> None:
        """A record this coordinator writes now, stamped C{timestamp}: its group's activity, as a
        replay of the record will find it (snapshots are not passed here)."""
        self._active(value, timestamp, False)

    def _active(self, value: dict[str, Any], timestamp: int, in_snapshot: bool) -> None:
        """The group's last activity, from a record applied at C{timestamp} (ms): a C{delete}
        forgets it; a record of a snapshot counts with the C{active_ms} it carries (without it,
        a snapshot of an older version: the snapshot's time, for a group not seen yet in it)."""
        group = value.get("group")
        if not isinstance(group, str) or not group:
            return
        if value.get("type") == "delete":
            self.activity.forget(group)
            return
        if in_snapshot:
            active = value.get("active_ms")
            if isinstance(active, int) and not isinstance(active, bool):
                self.activity.note(group, active)
            elif group not in self.activity.last:
                self.activity.note(group, timestamp)
            return
        self.activity.note(group, timestamp)

    def _restore_offsets(self, value: dict[str, Any], timestamp: int) -> None:
        group = value.get("group")
        entries = value.get("offsets")
        if not isinstance(group, str) or not isinstance(entries, list):
            raise BadOffsetRecord(f"bad offsets snapshot {str(value)[:200]}")
        record = decode_record({"type": "reset", "group": group, "offsets": entries})
        committed = self.offsets.groups.setdefault(group, {})
        for entry, raw in zip(record.offsets, entries, strict=True):
            when = raw.get("timestamp")
            committed[entry.tp] = Committed(entry.offset, entry.metadata,
                                            when if isinstance(when, int) and not isinstance(when, bool) else timestamp)

    def snapshot(self) -> list[tuple[str | None, Any]]:
        """The snapshot batch of this state: C{(key, value)} records, the marker first."""
        out: list[tuple[str | None, Any]] = [(None, {})]
        membership: dict[str, list[Any]] = {}
        active = self.activity.last
        for record in self.coordinator.snapshot_records():
            value = record.to_value()
            if value["type"] == "group" and record.group in active:
                value["active_ms"] = active[record.group]
            membership.setdefault(record.group, []).append(value)
        for group in sorted(set(membership) | set(self.offsets.groups)):
            out.extend((group, value) for value in membership.get(group, ()))
            entries = [{"topic": t, "partition": p, "offset": c.offset, "metadata": c.metadata, "timestamp": c.timestamp}
                       for (t, p), c in sorted(self.offsets.groups.get(group, {}).items())]
            chunk: list[dict[str, Any]] = []
            size = 0
            for entry in entries:
                chunk.append(entry)
                size += len(orjson.dumps(entry))
                if size >= SNAPSHOT_RECORD_BYTES or entry is entries[-1]:
                    chunk_value: dict[str, Any] = {"type": "offsets_snapshot", "group": group, "offsets": chunk}
                    if group in active:
                        chunk_value["active_ms"] = active[group]
                    out.append((group, chunk_value))
                    chunk, size = [], 0
        out[0] = (None, {**SNAPSHOT_MARKER, "records": len(out) - 1})
        return out

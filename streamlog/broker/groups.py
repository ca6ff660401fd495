"""The consumer-group RPCs of a node, over the pure coordinator and the offsets topic.

A group lives in one partition of the internal topic C{__consumer_offsets}
(partition = the murmur2 of its name, as a message key); the node leading
that partition is the group's coordinator.  For each offsets partition it
leads, this node keeps a L{Shard}: a L{GroupCoordinator} (membership, in
memory) and an L{OffsetState} (committed offsets, rebuilt by replaying the
partition when the node becomes its leader, then kept up to date by applying
each record once the partition committed it).  Requests for a group led
elsewhere are answered C{NOT_COORDINATOR} with where to go.

A node loads an offsets partition's groups as soon as it starts to lead it
(L{GroupService.load_led}, on the reactor turn after the replica announced
it: L{streamlog.cluster.directory.ReplicaDirectory.leading_listeners}), so
the sessions of members that died with the previous coordinator run out
from the take-over, whether or not any group request comes.

Session expiry and offsets retention run on the node's clock: one timer,
set for the earliest deadline of any member or of any empty group's
retention (C{--group-offsets-retention}: a group without members and without
a commit for that long is deleted with the record DeleteGroup writes), at
most C{--group-retention-deletes-per-turn} groups per offsets partition per
turn of the reactor (docs/groups.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import orjson
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors, wire
from streamlog.groups import params as gp
from streamlog.groups.assignors import TopicPartition
from streamlog.groups.config import OFFSETS_TOPIC, GroupConfig
from streamlog.groups.coordinator import GroupCoordinator, partitions_to_wire
from streamlog.groups.offsets import OffsetCommit, OffsetRecord, behind_committed, fetch_to_wire, reset_target
from streamlog.groups.state import SNAPSHOT_BYTES, ShardState
from streamlog.partitioner import partition_for_key
from streamlog.storage.base import TopicConfig

#: Keep the offsets topic's records for ever (there is no compaction yet): its replay is the offsets.
_KEEP = TopicConfig(retention_ms=2**62, retention_bytes=2**62)


class Shard(ShardState):
    """The groups of one offsets partition this node leads, at one leader term."""

    def __init__(self, index: int, term: int, coordinator: GroupCoordinator) -> None:
        super().__init__(coordinator)
        self.index = index
        self.term = term
        #: Appends of this shard not settled yet.
        self.writing = 0
        #: An append failed: the log may not hold what the coordinator's memory does, so the
        #: shard is replayed again once its other appends settled.
        self.stale = False
        #: Where its replay goes on (None: done).
        self.replay_at: int | None = None
        #: Offsets retention deletes none of its groups before this time (node clock, s): set at a
        #: take-over of a log without membership records (L{GroupService._took_over}).
        self.retention_hold_until = 0.0


class GroupService:
    """The group RPCs of one node (registered in the broker's handler table)."""

    _log = Logger()

    def __init__(self, broker: Any, config: GroupConfig | None = None,
                 new_member_id: Callable[[str], str] | None = None) -> None:
        self.broker = broker
        self.clock = broker.clock
        self.config = config if config is not None else GroupConfig()
        self.new_member_id = new_member_id or (lambda group: uuid.uuid4().hex)
        self.shards: dict[int, Shard] = {}
        self._timer: Any = None
        #: Per local replica of the offsets topic (by partition): how far compaction scanned
        #: its committed records, and the offset of the last snapshot marker it found there.
        self._scanned: dict[int, int] = {}
        self._snapshot_at: dict[int, int] = {}
        #: The load_led scheduled after this node started to lead an offsets partition.
        self._load_call: Any = None
        self._stopped = False
        directory = getattr(broker, "directory", None)
        if directory is not None:
            directory.leading_listeners.append(self._started_leading)

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "FindCoordinator": self.handle_find_coordinator,
            "JoinGroup": self.handle_join_group,
            "Heartbeat": self.handle_heartbeat,
            "LeaveGroup": self.handle_leave_group,
            "CommitOffsets": self.handle_commit_offsets,
            "FetchOffsets": self.handle_fetch_offsets,
            "ListGroups": self.handle_list_groups,
            "DescribeGroup": self.handle_describe_group,
            "DeleteGroup": self.handle_delete_group,
            "ResetOffsets": self.handle_reset_offsets,
        }

    def now(self) -> float:
        return float(self.clock.seconds())

    def stop(self) -> None:
        """The node stops: no more expiry checks (members move with the offsets partitions)."""
        self._stopped = True
        for call in (self._timer, self._load_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._load_call = None
        self.shards.clear()

    def _started_leading(self, replica: Any) -> None:
        """This node now leads C{replica} (a ReplicaDirectory leading listener): if it is an
        offsets partition, load its groups on the next reactor turn (not inside the Raft
        callback; by then the topic of a partition that just opened is in the broker's table)."""
        if replica.topic == OFFSETS_TOPIC:
            self._load_soon()

    def _load_soon(self) -> None:
        """L{load_led} on the next reactor turn (once, however many ask on this one)."""
        if self._stopped:
            return
        if self._load_call is None or not self._load_call.active():
            self._load_call = self.clock.callLater(0, self._load_now)

    def _load_now(self) -> None:
        self._load_call = None
        try:
            self.load_led()
        except Exception:
            self._log.failure("loading the groups of the offsets partitions this node leads failed")

    # --- where a group lives -----------------------------------------------------

    def _offsets_topic(self) -> Any:
        """The offsets topic, or a Deferred of it once created (by this node, or the controller)."""
        topic = self.broker.topics.get(OFFSETS_TOPIC)
        if topic is not None:
            return topic
        if self.broker.cluster is None:
            try:
                return self.broker.create_topic(OFFSETS_TOPIC, self.config.offsets_partitions, _KEEP)
            except errors.TopicExists:
                return self.broker.topics[OFFSETS_TOPIC]
        request: dict[str, Any] = {"topic": OFFSETS_TOPIC, "partitions": self.config.offsets_partitions,
                                   "config": {"retention_ms": _KEEP.retention_ms, "retention_bytes": _KEEP.retention_bytes}}
        if self.config.offsets_replication_factor is not None:
            request["replication_factor"] = self.config.offsets_replication_factor

        def created(result: Any) -> Any:
            if isinstance(result, Failure) and not result.check(errors.TopicExists):
                return result
            topic = self.broker.topics.get(OFFSETS_TOPIC)
            if topic is None:
                raise errors.CoordinatorNotAvailable("the offsets topic is being created; retry shortly")
            return topic

        return self.broker.cluster.create_topic(request).addBoth(created)

    def _replica(self, topic: Any, group: str) -> Any:
        return topic.partitions[partition_for_key(group, len(topic.partitions))]

    def _with_shard(self, group: str, work: Callable[[Shard], Any]) -> Any:
        """Run C{work} with the group's shard, once the offsets topic exists and its
        partition's leader is known; C{NOT_COORDINATOR} if that is another node."""
        found = self._offsets_topic()
        if isinstance(found, Deferred):
            return found.addCallback(lambda topic: self._with_shard(group, work))
        replica = self._replica(found, group)
        if not replica.leads and replica.closed_error is None and not _known_elsewhere(replica):
            # Electing (a new group of one elects itself in a hard-state round): wait for it.
            waited = replica.when_leading(self.clock, self.broker.config.election_wait)
            return waited.addCallback(lambda _: work(self._shard(found, group)))
        return work(self._shard(found, group))

    def _reading(self, group: str, work: Callable[[Shard], Any], absent: Callable[[], Any]) -> Any:
        """L{_with_shard} for a request that changes nothing: while the offsets topic does not
        exist no group has members or offsets, so C{absent()} answers, and nothing is created
        (a look at a cluster, a console page, a dry run must leave no state behind)."""
        if self.broker.topics.get(OFFSETS_TOPIC) is None:
            return absent()
        return self._with_shard(group, work)

    def _shard(self, topic: Any, group: str) -> Shard:
        replica = self._replica(topic, group)
        self._check_coordinator(replica, group)
        shard = self.shards.get(replica.index)
        if shard is not None and shard.stale and shard.term == replica.term:
            if shard.writing:
                raise errors.CoordinatorNotAvailable(
                    f"the coordinator of group {group!r} is settling a failed write; retry shortly", group=group)
            shard = None
        if shard is None or shard.term != replica.term:
            shard = self._load(replica)
        if shard.replay_at is not None:
            raise errors.CoordinatorNotAvailable(
                f"the coordinator of group {group!r} is loading its groups ({shard.replay_at - replica.start_offset} "
                f"of {replica.high_watermark - replica.start_offset} records); retry shortly",
                group=group, loading=True)
        return shard

    def _check_coordinator(self, replica: Any, group: str) -> None:
        if replica.failed is not None or replica.closed_error is not None:
            raise errors.CoordinatorNotAvailable(
                f"the offsets partition of group {group!r} is unavailable", group=group)
        if replica.leads:
            return
        try:
            replica.check_leader()
        except errors.NotLeader as e:
            raise errors.NotCoordinator(
                f"this node does not coordinate group {group!r}"
                + (f"; node {e.details['leader']} at {e.details['leader_address']} does" if e.details["leader"] else ""),
                group=group, coordinator=e.details["leader"], coordinator_address=e.details["leader_address"],
            ) from None
        except errors.LeaderNotAvailable:
            pass
        raise errors.CoordinatorNotAvailable(
            f"the coordinator of group {group!r} is being elected; retry shortly", group=group)

    def _load(self, replica: Any) -> Shard:
        """Replay the offsets partition (this node just became its leader), from its last
        snapshot if compaction saw one, C{--offsets-replay-slice-records} per reactor turn:
        the first slice now, the others later (the shard answers "loading" meanwhile).  Refused
        once L{stop}ped: a request still arriving, or one that waited for an election, must not
        start a replay and its timers again on a node that is closing."""
        if self._stopped:
            raise errors.CoordinatorNotAvailable(
                f"this node is stopping: offsets partition {replica.index} moves to another node; retry shortly")
        shard = Shard(replica.index, replica.term, GroupCoordinator(
            self._partition_count, self.new_member_id, self.config.limits))
        start = self._snapshot_at.get(replica.index, replica.start_offset)
        shard.replay_at = start if replica.start_offset <= start <= replica.high_watermark else replica.start_offset
        self.shards[replica.index] = shard
        self._replay(replica, shard)
        return shard

    def load_led(self) -> None:
        """Start loading the shard of every offsets partition this node leads and has none of
        (in its term): a new coordinator's groups are known, their sessions run and /metrics
        shows them without waiting for a group request.  Called on the reactor turn after this
        node starts to lead an offsets partition, and again at each /metrics scrape (which
        retries a shard whose replay failed); a group request loads its shard anyway.  The
        replay runs in slices as for a request.  Nothing once L{stop}ped (the node is closing)."""
        topic = self.broker.topics.get(OFFSETS_TOPIC)
        if topic is None or self._stopped:
            return
        for replica in topic.partitions:
            if not getattr(replica, "leads", False) or replica.failed is not None:
                continue
            shard = self.shards.get(replica.index)
            if shard is not None and shard.term == replica.term and not (shard.stale and not shard.writing):
                continue
            try:
                self._load(replica)
            except Exception:
                self._log.failure("loading the groups of offsets partition {index} failed", index=replica.index)
                self.shards.pop(replica.index, None)

    def _replay(self, replica: Any, shard: Shard) -> None:
        """One slice of the replay; the next one on a later reactor turn, until the end."""
        if self.shards.get(shard.index) is not shard or replica.term != shard.term or not replica.leads:
            if self.shards.get(shard.index) is shard:
                del self.shards[shard.index]  # it lost the leadership meanwhile
            return
        if shard.replay_at is None:
            return
        offset, end = shard.replay_at, replica.high_watermark
        if offset < end:
            read = replica.log.read(offset, min(self.config.replay_slice_records, end - offset), 2**62)
            for record in orjson.loads(b"[" + b",".join(read.fragments) + b"]"):
                shard.apply_stored(record["value"], record["timestamp"])
            shard.replay_at = offset = read.next_offset
        if offset < end:
            self.clock.callLater(0, self._replay_step, replica, shard)
            return
        shard.replay_at = None
        self._took_over(replica, shard)

    def _replay_step(self, replica: Any, shard: Shard) -> None:
        try:
            self._replay(replica, shard)
        except Exception:
            self._log.failure("replaying offsets partition {index} failed", index=shard.index)
            if self.shards.get(shard.index) is shard:
                del self.shards[shard.index]  # the next request tries again

    def _took_over(self, replica: Any, shard: Shard) -> None:
        """The replay is over: members resume with a full session from now."""
        now = self.now()
        shard.coordinator.resume(now)
        if shard.applied_offsets and not shard.applied_membership:
            # A log written before membership was: the members are unknown here.
            limits = self.config.limits
            if self.broker.cluster is not None:
                # The old coordinator's may still read their partitions until their sessions run out.
                shard.coordinator.hold_until = now + limits.takeover_hold
            # Nor is any group known to have members (after a restart too): a live member of an
            # idle topic commits nothing, so its group looks idle.  Deleting offsets cannot be
            # undone, so no group goes until the longest session a member may have ran out (by
            # then a live member has heartbeated here and rejoined); a grant waits only
            # takeover_hold, as waiting costs its partitions' consumption.
            shard.retention_hold_until = now + max(limits.takeover_hold, limits.max_session_timeout)
        if shard.skipped:
            self._log.warn("offsets partition {index}: skipped {skipped} records that are not offsets records",
                           index=replica.index, skipped=shard.skipped)
        self._log.info("coordinating the groups of offsets partition {index} (term {term}): {groups} groups, "
                       "{members} members, {records} records", index=replica.index, term=replica.term,
                       groups=len(set(shard.offsets.groups) | set(shard.coordinator.groups)),
                       members=sum(len(g.members) for g in shard.coordinator.groups.values()),
                       records=shard.applied_offsets + shard.applied_membership + shard.skipped)
        self._schedule()

    def _partition_count(self, topic: str) -> int:
        found = self.broker.topics.get(topic)
        return len(found.partitions) if found is not None else 0

    def _append(self, shard: Shard, record: OffsetRecord) -> Deferred:
        """Append C{record} to the shard's partition (after the membership records due); apply
        it once committed."""
        values = [(r.group, r.to_value()) for r in shard.coordinator.take_records()]
        d = self._write(shard, record.group, [*values, (record.group, record.to_value())])

        def applied(result: dict[str, Any]) -> dict[str, Any]:
            if self.shards.get(shard.index) is shard:
                shard.offsets.apply(record, result["timestamp"])
            return result

        return d.addCallback(applied)

    def _delete(self, shard: Shard, groups: list[str]) -> Deferred:
        """Write the C{delete} records of C{groups} in one batch (DeleteGroup, offsets retention);
        once committed, their offsets are gone from memory as from a replay, and so are the
        groups whose membership did not change meanwhile (empty then, as both callers ask).  A
        member that joined meanwhile, even one gone again since, wrote its records after the
        delete: a replay recreates the group from them, so memory keeps it (its generation
        moved on, or it was created, since the delete was written)."""
        records = [OffsetRecord("delete", group) for group in groups]
        due = [(r.group, r.to_value()) for r in shard.coordinator.take_records()]
        written = {group: _generation(shard, group) for group in groups}
        d = self._write(shard, groups[0], [*due, *((r.group, r.to_value()) for r in records)])

        def applied(result: dict[str, Any]) -> dict[str, Any]:
            if self.shards.get(shard.index) is shard:
                for record in records:
                    shard.offsets.apply(record, result["timestamp"])
                    state = shard.coordinator.group(record.group)
                    if state is not None and not state.members and _generation(shard, record.group) == written[record.group]:
                        shard.coordinator.forget(record.group)
            return result

        return d.addCallback(applied)

    def _persisted(self, shard: Shard, group: str, answer: Any) -> Any:
        """C{answer}, once the membership records the request caused are committed (at once
        if it caused none): a member is never told of a grant the log does not hold."""
        self._schedule()
        records = shard.coordinator.take_records()
        if not records:
            return answer
        return self._write(shard, group, [(r.group, r.to_value()) for r in records]).addCallback(lambda _: answer)

    def _write(self, shard: Shard, group: str, values: list[tuple[str | None, Any]], snapshot: bool = False) -> Deferred:
        """Append C{(key, value)} records to the shard's partition, in one batch, C{acks=all}
        (a C{snapshot} does not count towards the next one)."""
        p = wire.SendParams(topic=OFFSETS_TOPIC, acks="all", messages=[
            {"value": value, "key": key, "partition": shard.index} for key, value in values])
        if not snapshot:
            # The groups' activity (offsets retention), as a replay will find it: the leader stamps
            # the records with its clock now.  Noted now, not at the commit, so that a group whose
            # last member just went is never found idle since before it went.
            now_ms = self.broker.now_ms()
            for _, value in values:
                shard.note_written(value, now_ms)
            self._check_retention_timer(shard)
        # One partition, so one part: the whole request is appended and committed, or fails.
        d = maybeDeferred(self.broker.send, p)
        shard.writing += 1
        if not snapshot:
            shard.since_snapshot += len(values)

        def settled(result: Any) -> Any:
            shard.writing -= 1
            if isinstance(result, Failure) and not snapshot:  # a snapshot changed nothing in memory
                shard.stale = True
            else:
                self._maybe_snapshot(shard)
            if shard.stale and not shard.writing and self.shards.get(shard.index) is shard:
                # Replayed now, not at the next request or scrape: until then its session
                # expiry and retention stop (load_led skips it if this node no longer leads).
                self._load_soon()
            return result

        d.addBoth(settled)

        def moved(failure: Failure) -> Failure:
            if failure.check(errors.NotLeader):
                raise errors.NotCoordinator(
                    f"the coordinator of group {group!r} moved; its outcome is unknown",
                    group=group, coordinator=failure.value.details.get("leader"),
                    coordinator_address=failure.value.details.get("leader_address"))
            if failure.check(errors.LeaderNotAvailable):
                raise errors.CoordinatorNotAvailable(
                    f"the coordinator of group {group!r} is being elected; retry", group=group)
            return failure

        return d.addErrback(moved)

    # --- snapshots and compaction ------------------------------------------------

    def _maybe_snapshot(self, shard: Shard) -> None:
        """Write a snapshot of the shard's groups once C{--offsets-snapshot-records} were
        appended since the last, at a moment none of its appends is in flight (so that its
        memory is exactly what the log before the snapshot holds)."""
        every = self.config.snapshot_records
        if not every or shard.since_snapshot < every or shard.writing or shard.stale or shard.replay_at is not None:
            return
        if self.shards.get(shard.index) is not shard:
            return
        shard.coordinator.take_records()  # none are due (nothing in flight); the snapshot holds them all
        shard.since_snapshot = 0
        d = self._write(shard, "", shard.snapshot(), snapshot=True)
        d.addCallback(lambda result: self._log.info(
            "offsets partition {index}: snapshot of {groups} groups at offset {offset}", index=shard.index,
            groups=len(set(shard.offsets.groups) | set(shard.coordinator.groups)),
            offset=result["partitions"][0]["base_offset"]))
        d.addErrback(lambda f: self._log.warn("offsets partition {index}: snapshot failed: {error}",
                                              index=shard.index, error=f.value))

    def compact(self) -> None:
        """On every node, for each replica of the offsets topic it holds (leader or follower):
        find the snapshot markers in what it committed since the last call (a search of the
        stored bytes: only candidates are decoded), and remove the records before the last
        one (never past the commit index: C{RaftNode.compact}).  Called with retention."""
        topic = self.broker.topics.get(OFFSETS_TOPIC)
        if topic is None or not self.config.snapshot_records:
            return
        for replica in topic.partitions:
            if not hasattr(replica, "log") or replica.closed_error is not None or replica.failed is not None:
                continue
            offset = max(self._scanned.get(replica.index, 0), replica.start_offset)
            end = replica.high_watermark
            while offset < end:
                read = replica.log.read(offset, min(self.config.replay_slice_records, end - offset), 2**62)
                for fragment in read.fragments:  # one or more records, comma-separated
                    if SNAPSHOT_BYTES in fragment:
                        for record in orjson.loads(b"[" + fragment + b"]"):
                            value = record.get("value")
                            if isinstance(value, dict) and value.get("type") == "snapshot" and value.get("group") == "":
                                self._snapshot_at[replica.index] = int(record["offset"])
                offset = read.next_offset
            self._scanned[replica.index] = offset
            at = self._snapshot_at.get(replica.index)
            if at is not None and at > replica.start_offset and replica.node is not None:
                index = replica.log.index_for_offset(at)
                if index is not None:
                    replica.node.compact(index - 1)
                    self._log.info("offsets partition {index}: removed the records before the snapshot at {offset}",
                                   index=replica.index, offset=at)

    # --- the session timer -------------------------------------------------------

    def _schedule(self) -> None:
        # A shard still replaying has no deadlines yet (its members get theirs when it is done).
        if self._stopped:
            return
        retention = self._retention_ms()
        deadlines = [d for s in self.shards.values()
                     if s.replay_at is None and (d := s.coordinator.next_deadline()) is not None]
        deadlines.extend(due for s in self.shards.values() if (due := self._retention_due(s, retention)) is not None)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if deadlines:
            self._timer = self.clock.callLater(max(0.0, min(deadlines) - self.now()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        try:
            topic = self.broker.topics.get(OFFSETS_TOPIC)
            for index, shard in list(self.shards.items()):
                replica = topic.partitions[index] if topic is not None and index < len(topic.partitions) else None
                if replica is None or not replica.leads or replica.term != shard.term:
                    del self.shards[index]  # another node coordinates these groups now
                    continue
                if shard.replay_at is not None:
                    continue
                for removed in shard.coordinator.tick(self.now()):
                    self._log.info("group {group}: member {member} removed ({reason} timeout)",
                                   group=removed.group, member=removed.member_id, reason=removed.reason)
                records = shard.coordinator.take_records()
                if records:
                    d = self._write(shard, records[0].group, [(r.group, r.to_value()) for r in records])
                    d.addErrback(lambda f: self._log.warn("recording expired members failed: {error}",
                                                          error=f.value))
                if self._retention_due(shard, self._retention_ms()) is not None \
                        and self.now() >= shard.retention_hold_until:
                    self._expire_groups(shard)
        except Exception:
            self._log.failure("the group session check failed")
        self._schedule()

    def _check_retention_timer(self, shard: Shard) -> None:
        """Set the timer sooner if the shard's next retention check (queued by a record just
        noted) comes before it."""
        due = self._retention_due(shard, self._retention_ms())
        if due is not None and (self._timer is None or not self._timer.active() or self._timer.getTime() > due):
            self._schedule()

    def _retention_ms(self) -> int:
        return round(self.config.offsets_retention * 1000)

    def _retention_due(self, shard: Shard, retention_ms: int) -> float | None:
        """When offsets retention may next delete a group of C{shard} (node clock, s; None: it
        will not): not while it replays, nor while stale (a failed write: not until it is
        replayed), nor while the node stops (its Send refuses the delete: the shard would turn
        stale, be replayed on the next turn and find the group due again, in a loop), nor before
        its take-over hold ends (the L{_expire} check mirrors this, so
        that the timer does not come back at once for nothing)."""
        if not retention_ms or shard.replay_at is not None or shard.stale or self.broker.stopping:
            return None
        due = shard.activity.next_due(retention_ms)
        return None if due is None else max(due / 1000.0, shard.retention_hold_until)

    def _expire_groups(self, shard: Shard) -> None:
        """Delete the shard's groups idle past C{--group-offsets-retention} (no members, no
        commit), at most C{--group-retention-deletes-per-turn} of them (the timer comes back
        on the next turn for the rest)."""
        retention = self._retention_ms()

        def has_members(group: str) -> bool:
            state = shard.coordinator.group(group)
            return state is not None and bool(state.members)

        due = shard.activity.expired(round(self.now() * 1000), retention, has_members,
                                     self.config.retention_deletes_per_turn)
        groups = []
        for group in due:
            if shard.offsets.has_group(group) or shard.coordinator.group(group) is not None:
                groups.append(group)
            else:
                shard.activity.forget(group)  # only ever named by a record about nothing (a member_gone)
        if not groups:
            return
        self._log.info("offsets partition {index}: deleting {count} group{s} idle for {idle}, no members and "
                       "no commit (--group-offsets-retention): {groups}", index=shard.index, count=len(groups),
                       s="" if len(groups) == 1 else "s",
                       idle=duration_text(self.config.offsets_retention), groups=", ".join(groups[:10]))
        self._delete(shard, groups).addErrback(lambda f: self._log.warn(
            "offsets partition {index}: deleting idle groups failed: {error}", index=shard.index, error=f.value))

    def _after(self, result: Any) -> Any:
        self._schedule()
        return result

    # --- the RPCs ------------------------------------------------------------------

    def handle_find_coordinator(self, params: dict[str, Any]) -> Any:
        """Any node answers: the group's offsets partition and its leader (null, null: the
        node asked, when it runs alone)."""
        group = gp.parse_group_only(params)

        def answer(topic: Any) -> Any:
            replica = self._replica(topic, group)
            if not replica.leads and replica.closed_error is None and not _known_elsewhere(replica):
                waited = replica.when_leading(self.clock, self.broker.config.election_wait)
                return waited.addCallback(lambda _: where(replica))
            return where(replica)

        def where(replica: Any) -> dict[str, Any]:
            try:
                self._check_coordinator(replica, group)
                node, address = replica.locate(replica.member)
            except errors.NotCoordinator as e:
                node, address = e.details["coordinator"], e.details["coordinator_address"]
            return {"group": group, "partition": replica.index, "coordinator": node, "coordinator_address": address}

        found = self._offsets_topic()
        return found.addCallback(answer) if isinstance(found, Deferred) else answer(found)

    def handle_join_group(self, params: dict[str, Any]) -> Any:
        p = gp.parse_join(params)

        def join(shard: Shard) -> Any:
            answer = shard.coordinator.join(
                p.group, p.topics, self.now(), p.session_timeout_ms / 1000.0, p.rebalance_timeout_ms / 1000.0,
                instance_id=p.group_instance_id, assignor=p.assignor)
            return self._persisted(shard, p.group, answer.to_wire())

        return self._with_shard(p.group, join)

    def handle_heartbeat(self, params: dict[str, Any]) -> Any:
        p = gp.parse_heartbeat(params)

        def beat(shard: Shard) -> Any:
            answer = shard.coordinator.heartbeat(p.group, p.member_id, p.owned, self.now())
            return self._persisted(shard, p.group, answer.to_wire())

        return self._with_shard(p.group, beat)

    def handle_leave_group(self, params: dict[str, Any]) -> Any:
        group, member = gp.parse_leave(params)

        def leave(shard: Shard) -> Any:
            shard.coordinator.leave(group, member, self.now())
            return self._persisted(shard, group, {"group": group, "member_id": member, "left": True})

        return self._with_shard(group, leave)

    def handle_commit_offsets(self, params: dict[str, Any]) -> Any:
        p = gp.parse_commit(params)

        def commit(shard: Shard) -> Any:
            shard.coordinator.check_commit(p.group, p.member_id, p.generation, [o.tp for o in p.offsets], self.now())
            behind = shard.offsets.behind(p.group, p.offsets)
            if not behind:
                return write(shard, p.offsets)
            # Lower than committed: allowed only where the committed offset is past the
            # partition's high watermark (asked only on this path; the common commit asks nothing).
            return self._partition_bounds([entry.tp for entry, _ in behind]).addCallback(rewound, shard)

        def rewound(bounds: dict[TopicPartition, Any], shard: Shard) -> Any:
            if self.shards.get(shard.index) is not shard:
                raise errors.NotCoordinator(f"the coordinator of group {p.group!r} moved; retry", group=p.group,
                                            coordinator=None, coordinator_address=None)
            # Checked again: the member or the offsets may have changed while the leaders answered.
            shard.coordinator.check_commit(p.group, p.member_id, p.generation, [o.tp for o in p.offsets], self.now())
            back = set()
            for entry, committed in shard.offsets.behind(p.group, p.offsets):
                found = bounds.get(entry.tp)
                if found is None or committed <= found[1]:
                    raise behind_committed(p.group, entry, committed)
                back.add(entry.tp)
            return write(shard, tuple(attrs.evolve(o, rewind=True) if o.tp in back else o for o in p.offsets))

        def write(shard: Shard, offsets: tuple[OffsetCommit, ...]) -> Any:
            self._schedule()  # the commit counted as a sign of life
            d = self._append(shard, OffsetRecord("commit", p.group, offsets))
            return d.addCallback(lambda _: {"group": p.group, "offsets": [o.to_wire() for o in p.offsets]})

        return self._with_shard(p.group, commit)

    def handle_fetch_offsets(self, params: dict[str, Any]) -> Any:
        group, topics = gp.parse_fetch(params)
        return self._reading(group, lambda shard: {
            "group": group, "offsets": fetch_to_wire(shard.offsets.fetch(group, topics))},
            lambda: {"group": group, "offsets": []})

    def handle_list_groups(self, params: dict[str, Any]) -> Any:
        """Every group of the cluster: this node's, and those of every other node it is
        connected to (asked over the peer links, C{GroupsHere}); C{unreachable} lists the
        nodes that could not answer."""
        wire.parse_empty(params)
        found = self.broker.topics.get(OFFSETS_TOPIC)  # not made by looking: without it, no group here
        groups = {g["group"]: g for g in self._groups_here(found)} if found is not None else {}
        cluster = self.broker.cluster
        if cluster is None:
            return {"groups": sorted(groups.values(), key=lambda g: g["group"])}
        unreachable: list[int] = []

        def merge(answer: Any, node: int) -> None:
            if isinstance(answer, Failure) or not isinstance(answer, dict) or not isinstance(answer.get("groups"), list):
                unreachable.append(node)
                return
            for entry in answer["groups"]:
                # A group met twice (its coordinator moving): the one with members wins.
                if isinstance(entry, dict) and (entry.get("group") not in groups or entry.get("members")):
                    groups[entry["group"]] = entry

        asks = [cluster.ask(node, "GroupsHere", {}).addBoth(merge, node) for node in sorted(cluster.peers)]
        return gatherResults(asks).addCallback(lambda _: {
            "groups": sorted(groups.values(), key=lambda g: g["group"]), "unreachable": sorted(unreachable)})

    def _groups_here(self, topic: Any) -> list[dict[str, Any]]:
        """The groups of the offsets partitions this node leads."""
        groups = []
        for replica in topic.partitions:
            if not getattr(replica, "leads", False):
                continue
            shard = self.shards.get(replica.index)
            if shard is None or shard.term != replica.term:
                shard = self._load(replica)
            if shard.replay_at is not None:
                raise errors.CoordinatorNotAvailable(
                    f"node is loading the groups of offsets partition {replica.index}; retry shortly", loading=True)
            for name in set(shard.offsets.groups) | set(shard.coordinator.groups):
                state = shard.coordinator.group(name)
                groups.append({"group": name, "state": state.state if state is not None else "empty",
                               "members": len(state.members) if state is not None else 0})
        return groups

    def peer_handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """What other nodes ask of this one over the peer links (L{ClusterNode.ask})."""

        def groups_here(params: dict[str, Any]) -> dict[str, Any]:
            topic = self.broker.topics.get(OFFSETS_TOPIC)
            return {"groups": self._groups_here(topic) if topic is not None else []}

        def partition_offsets(params: dict[str, Any]) -> dict[str, Any]:
            wanted = params.get("partitions")
            if not isinstance(wanted, list):
                raise errors.InvalidParams("PartitionOffsets: 'partitions' must be [[topic, partition, ts|null]]")
            out = []
            for entry in wanted[:gp.MAX_PARTITIONS]:
                if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                        and isinstance(entry[1], int) and (entry[2] is None or isinstance(entry[2], int))):
                    raise errors.InvalidParams("PartitionOffsets: bad entry")
                replica = self._local_partition((entry[0], entry[1]))
                bounds = _bounds(replica, entry[2]) if replica is not None and replica.leads else None
                out.append([entry[0], entry[1], bounds])
            return {"partitions": out}

        return {"GroupsHere": groups_here, "PartitionOffsets": partition_offsets}

    def _partition_bounds(self, tps: list[TopicPartition], timestamp: int | None = None) -> Deferred:
        """Fires with C{{tp: (log start, high watermark, first offset at C{timestamp} or None) or None}}:
        from this node's replica where it leads the partition (or runs alone), else from the
        partition's leader over the peer link; None where neither answers (no leader, unreachable)."""
        found: dict[TopicPartition, tuple[int, int, int | None] | None] = {}
        remote: dict[int, list[TopicPartition]] = {}
        cluster = self.broker.cluster
        for tp in tps:
            replica = self._local_partition(tp)
            if replica is not None and (replica.leads or cluster is None):
                found[tp] = _bounds(replica, timestamp)
                continue
            node = self._leader_node(tp) if cluster is not None else None
            if node is None or node == cluster.node_id:
                found[tp] = None
            else:
                remote.setdefault(node, []).append(tp)

        def answered(answer: Any, node: int) -> None:
            entries = answer.get("partitions") if isinstance(answer, dict) else None
            if not isinstance(entries, list):
                return
            for topic, partition, bounds in entries:
                if (topic, partition) in found and isinstance(bounds, list):
                    found[(topic, partition)] = (bounds[0], bounds[1], bounds[2])

        asks = []
        for node, wanted in sorted(remote.items()):
            for tp in wanted:
                found[tp] = None
            d = cluster.ask(node, "PartitionOffsets", {"partitions": [[t, p, timestamp] for t, p in wanted]})
            asks.append(d.addCallback(answered, node).addErrback(lambda f, node=node: self._log.warn(
                "asking node {node} for partition offsets failed: {error}", node=node, error=f.value)))
        return gatherResults(asks).addCallback(lambda _: found)

    def _leader_node(self, tp: TopicPartition) -> int | None:
        """The node leading a data partition, as this node knows it (None: unknown)."""
        topic = self.broker.topics.get(tp[0])
        if topic is None or tp[1] >= len(topic.partitions):
            return None
        replica = topic.partitions[tp[1]]
        try:
            replica.check_leader()
        except errors.NotLeader as e:
            leader: int | None = e.details.get("leader")
            return leader
        except errors.StreamlogError:
            return None
        node: int | None = self.broker.cluster.node_id
        return node

    def handle_describe_group(self, params: dict[str, Any]) -> Any:
        group = gp.parse_group_only(params)

        def describe(shard: Shard) -> Any:
            state = shard.coordinator.group(group)
            committed = shard.offsets.fetch(group)
            if (state is None or not state.members) and not committed:
                _unknown_group(group)
            members = []
            subscribed: set[TopicPartition] = set(committed)
            now = self.now()
            if state is not None:
                for m in sorted(state.members.values(), key=lambda m: m.member_id):
                    subscribed |= m.held | m.target
                    members.append({
                        "member_id": m.member_id, "group_instance_id": m.instance_id, "topics": sorted(m.topics),
                        "generation": m.generation, "assignment": partitions_to_wire(m.held),
                        "target": partitions_to_wire(m.target),
                        "last_heartbeat_ms_ago": int((now - m.last_seen) * 1000),
                    })
            answer = {
                "group": group, "coordinator_partition": shard.index,
                "state": state.state if state is not None else "empty",
                "generation": state.generation if state is not None else 0,
                "assignor": state.assignor if state is not None else None,
                "members": members,
            }

            def with_lag(bounds: dict[TopicPartition, Any]) -> dict[str, Any]:
                offsets = []
                for tp in sorted(subscribed):
                    c = committed.get(tp)
                    end = bounds[tp][1] if bounds.get(tp) is not None else None
                    offsets.append({
                        "topic": tp[0], "partition": tp[1], "offset": c.offset if c is not None else None,
                        "metadata": c.metadata if c is not None else None, "high_watermark": end,
                        "lag": max(0, end - c.offset) if c is not None and end is not None else None,
                    })
                return {**answer, "offsets": offsets}

            return self._partition_bounds(sorted(subscribed)).addCallback(with_lag)

        return self._reading(group, describe, lambda: _unknown_group(group))

    def _local_partition(self, tp: TopicPartition) -> Any:
        """This node's replica of a data partition, or None."""
        topic = self.broker.topics.get(tp[0])
        if topic is None or tp[1] >= len(topic.partitions):
            return None
        replica = topic.partitions[tp[1]]
        return replica if hasattr(replica, "log") else None

    def handle_delete_group(self, params: dict[str, Any]) -> Any:
        group = gp.parse_group_only(params)

        def delete(shard: Shard) -> Any:
            shard.coordinator.require_empty(group)
            if not shard.offsets.has_group(group) and shard.coordinator.group(group) is None:
                _unknown_group(group)
            return self._delete(shard, [group]).addCallback(lambda _: {"group": group, "deleted": True})

        return self._reading(group, delete, lambda: _unknown_group(group))

    def handle_reset_offsets(self, params: dict[str, Any]) -> Any:
        p = gp.parse_reset(params)

        def reset(shard: Shard | None) -> Any:
            if shard is not None:
                shard.coordinator.require_empty(p.group)
            topic = self.broker.topics.get(p.topic)
            if topic is None:
                raise errors.UnknownTopic(f"unknown topic {p.topic!r}", topic=p.topic)
            indexes = p.partitions if p.partitions is not None else tuple(range(len(topic.partitions)))
            for index in indexes:
                if index >= len(topic.partitions):
                    raise errors.UnknownPartition(f"topic {p.topic!r} has {len(topic.partitions)} partitions, not {index}",
                                                  topic=p.topic, partitions=len(topic.partitions))
            timestamp = p.to[1] if isinstance(p.to, tuple) and p.to[0] == "timestamp" else None
            tps = [(p.topic, index) for index in indexes]
            return self._partition_bounds(tps, timestamp).addCallback(resolved, shard)

        def resolved(bounds: dict[TopicPartition, Any], shard: Shard | None) -> Any:
            if shard is None:  # a dry run before any group exists: nothing is committed
                committed = {}
            else:
                if self.shards.get(shard.index) is not shard:
                    raise errors.NotCoordinator(f"the coordinator of group {p.group!r} moved; retry", group=p.group,
                                                coordinator=None, coordinator_address=None)
                shard.coordinator.require_empty(p.group)  # a member may have joined meanwhile
                committed = shard.offsets.fetch(p.group, [p.topic])
            offsets = []
            rows = []
            for tp, found in sorted(bounds.items()):
                before = committed.get(tp)
                if found is None:
                    # Not even {"offset": n} is taken as given (Kafka's tool refuses it too): it could
                    # not be kept within the log, and one past the end stops the group's commits.
                    raise errors.PartitionUnavailable(
                        f"{tp[0]}/{tp[1]} has no leader this node can reach, so {p.to!r} cannot be resolved "
                        "against its log; nothing was reset: retry", topic=tp[0], partition=tp[1])
                offset = reset_target(p.to, found, before.offset if before is not None else None)
                offsets.append(OffsetCommit(tp[0], tp[1], offset, before.metadata if before else None))
                rows.append({"topic": tp[0], "partition": tp[1], "offset": offset,
                             "previous": before.offset if before is not None else None})
            answer = {"group": p.group, "dry_run": p.dry_run, "offsets": rows}
            if p.dry_run:
                return answer
            assert shard is not None
            return self._append(shard, OffsetRecord("reset", p.group, tuple(offsets))).addCallback(lambda _: answer)

        if p.dry_run:
            return self._reading(p.group, reset, lambda: reset(None))
        return self._with_shard(p.group, reset)


def _unknown_group(group: str) -> NoReturn:
    raise errors.UnknownGroup(f"group {group!r} has no members and no committed offsets", group=group)


def _bounds(replica: Any, timestamp: int | None) -> list[int | None]:
    """C{[log start, high watermark, first offset with a timestamp >= C{timestamp} (None if not asked)]}."""
    at = int(replica.log.offset_for_timestamp(timestamp)) if timestamp is not None else None
    return [int(replica.start_offset), int(replica.high_watermark), at]


def _known_elsewhere(replica: Any) -> bool:
    """Whether a replica that does not lead knows of another leader (or cannot: a remote partition)."""
    leader = getattr(replica, "leader", None)
    member = getattr(replica, "member", None)
    return not hasattr(replica, "log") or (leader is not None and leader != member)


def _generation(shard: Shard, group: str) -> int | None:
    """The group's generation in the shard's memory (None: no membership known)."""
    state = shard.coordinator.group(group)
    return state.generation if state is not None else None


def duration_text(seconds: float) -> str:
    """C{seconds} for a person: in the largest unit that divides it (C{"7 d"}, C{"2 h"},
    C{"90 min"}), else in seconds without a float's tail (C{"100 s"}, C{"0.5 s"})."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"

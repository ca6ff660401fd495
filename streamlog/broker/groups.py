"""The consumer-group RPCs of a node, over the pure coordinator and the offsets topic.

A group lives in one partition of the internal topic C{__consumer_offsets}
(partition = the murmur2 of its name, as a message key); the node leading
that partition is the group's coordinator.  For each offsets partition it
leads, this node keeps a L{Shard}: a L{GroupCoordinator} (membership, in
memory) and an L{OffsetState} (committed offsets, rebuilt by replaying the
partition when the node becomes its leader, then kept up to date by applying
each record once the partition committed it).  Requests for a group led
elsewhere are answered C{NOT_COORDINATOR} with where to go.

Session expiry runs on the node's clock: one timer, set for the earliest
deadline of any member (docs/groups.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import errors, wire
from streamlog.groups import params as gp
from streamlog.groups.assignors import TopicPartition
from streamlog.groups.config import OFFSETS_TOPIC, GroupConfig
from streamlog.groups.coordinator import GroupCoordinator, partitions_to_wire
from streamlog.groups.offsets import (
    BadOffsetRecord,
    OffsetCommit,
    OffsetRecord,
    OffsetState,
    decode_record,
    fetch_to_wire,
)
from streamlog.partitioner import partition_for_key
from streamlog.storage.base import TopicConfig

#: Keep the offsets topic's records for ever (there is no compaction yet): its replay is the offsets.
_KEEP = TopicConfig(retention_ms=2**62, retention_bytes=2**62)
#: Records read per step when a shard replays its partition.
_REPLAY_BATCH = 10_000


class Shard:
    """The groups of one offsets partition this node leads, at one leader term."""

    def __init__(self, index: int, term: int, coordinator: GroupCoordinator) -> None:
        self.index = index
        self.term = term
        self.coordinator = coordinator
        self.offsets = OffsetState()


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
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.shards.clear()

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

    def _shard(self, topic: Any, group: str) -> Shard:
        replica = self._replica(topic, group)
        self._check_coordinator(replica, group)
        shard = self.shards.get(replica.index)
        if shard is None or shard.term != replica.term:
            shard = self._load(replica)
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
        """Replay the offsets partition (this node just became its leader)."""
        offset, end = replica.start_offset, replica.high_watermark
        # In a cluster, another node may have coordinated these groups (it held records): its
        # members may still read their partitions until their sessions run out.
        hold = self.config.limits.takeover_hold if self.broker.cluster is not None and end > offset else 0.0
        shard = Shard(replica.index, replica.term, GroupCoordinator(
            self._partition_count, self.new_member_id, self.config.limits, hold_until=self.now() + hold))
        skipped = 0
        while offset < end:
            read = replica.log.read(offset, min(_REPLAY_BATCH, end - offset), 2**62)
            records = orjson.loads(b"[" + b",".join(read.fragments) + b"]")
            for record in records:
                try:
                    shard.offsets.apply(decode_record(record["value"]), record["timestamp"])
                except BadOffsetRecord:
                    skipped += 1
            offset = read.next_offset
        if skipped:
            self._log.warn("offsets partition {index}: skipped {skipped} records that are not offsets records",
                           index=replica.index, skipped=skipped)
        self._log.info("coordinating the groups of offsets partition {index} (term {term}): {groups} groups, "
                       "{records} records", index=replica.index, term=replica.term,
                       groups=len(shard.offsets.groups), records=end - replica.start_offset)
        self.shards[replica.index] = shard
        return shard

    def _partition_count(self, topic: str) -> int:
        found = self.broker.topics.get(topic)
        return len(found.partitions) if found is not None else 0

    def _append(self, shard: Shard, record: OffsetRecord) -> Deferred:
        """Append C{record} to the shard's partition; apply it once committed."""
        p = wire.SendParams(topic=OFFSETS_TOPIC, acks="all",
                            messages=[{"value": record.to_value(), "key": record.group, "partition": shard.index}])
        d = maybeDeferred(self.broker.send, p)

        def applied(result: dict[str, Any]) -> dict[str, Any]:
            if self.shards.get(shard.index) is shard:
                shard.offsets.apply(record, result["timestamp"])
            return result

        def moved(failure: Failure) -> Failure:
            if failure.check(errors.NotLeader):
                raise errors.NotCoordinator(
                    f"the coordinator of group {record.group!r} moved; its outcome is unknown",
                    group=record.group, coordinator=failure.value.details.get("leader"),
                    coordinator_address=failure.value.details.get("leader_address"))
            if failure.check(errors.LeaderNotAvailable):
                raise errors.CoordinatorNotAvailable(
                    f"the coordinator of group {record.group!r} is being elected; retry", group=record.group)
            return failure

        return d.addCallbacks(applied, moved)

    # --- the session timer -------------------------------------------------------

    def _schedule(self) -> None:
        deadlines = [d for s in self.shards.values() if (d := s.coordinator.next_deadline()) is not None]
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
                for removed in shard.coordinator.tick(self.now()):
                    self._log.info("group {group}: member {member} removed ({reason} timeout)",
                                   group=removed.group, member=removed.member_id, reason=removed.reason)
        except Exception:
            self._log.failure("the group session check failed")
        self._schedule()

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

        def join(shard: Shard) -> dict[str, Any]:
            answer = shard.coordinator.join(
                p.group, p.topics, self.now(), p.session_timeout_ms / 1000.0, p.rebalance_timeout_ms / 1000.0,
                instance_id=p.group_instance_id, assignor=p.assignor)
            self._schedule()
            return answer.to_wire()

        return self._with_shard(p.group, join)

    def handle_heartbeat(self, params: dict[str, Any]) -> Any:
        p = gp.parse_heartbeat(params)

        def beat(shard: Shard) -> dict[str, Any]:
            answer = shard.coordinator.heartbeat(p.group, p.member_id, p.owned, self.now())
            self._schedule()
            return answer.to_wire()

        return self._with_shard(p.group, beat)

    def handle_leave_group(self, params: dict[str, Any]) -> Any:
        group, member = gp.parse_leave(params)

        def leave(shard: Shard) -> dict[str, Any]:
            shard.coordinator.leave(group, member, self.now())
            self._schedule()
            return {"group": group, "member_id": member, "left": True}

        return self._with_shard(group, leave)

    def handle_commit_offsets(self, params: dict[str, Any]) -> Any:
        p = gp.parse_commit(params)

        def commit(shard: Shard) -> Any:
            shard.coordinator.check_commit(p.group, p.member_id, p.generation, [o.tp for o in p.offsets], self.now())
            shard.offsets.check_commit(p.group, p.offsets)
            self._schedule()  # the commit counted as a sign of life
            d = self._append(shard, OffsetRecord("commit", p.group, p.offsets))
            return d.addCallback(lambda _: {"group": p.group, "offsets": [o.to_wire() for o in p.offsets]})

        return self._with_shard(p.group, commit)

    def handle_fetch_offsets(self, params: dict[str, Any]) -> Any:
        group, topics = gp.parse_fetch(params)
        return self._with_shard(group, lambda shard: {
            "group": group, "offsets": fetch_to_wire(shard.offsets.fetch(group, topics))})

    def handle_list_groups(self, params: dict[str, Any]) -> Any:
        """The groups this node coordinates (in a cluster, ask every node)."""
        wire.parse_empty(params)
        found = self._offsets_topic()
        if isinstance(found, Deferred):
            return found.addCallback(lambda _: self.handle_list_groups(params))
        groups = []
        for replica in found.partitions:
            if not getattr(replica, "leads", False):
                continue
            shard = self.shards.get(replica.index)
            if shard is None or shard.term != replica.term:
                shard = self._load(replica)
            names = set(shard.offsets.groups) | set(shard.coordinator.groups)
            for name in names:
                state = shard.coordinator.group(name)
                groups.append({"group": name, "state": state.state if state is not None else "empty",
                               "members": len(state.members) if state is not None else 0})
        return {"groups": sorted(groups, key=lambda g: g["group"])}

    def handle_describe_group(self, params: dict[str, Any]) -> Any:
        group = gp.parse_group_only(params)

        def describe(shard: Shard) -> dict[str, Any]:
            state = shard.coordinator.group(group)
            committed = shard.offsets.fetch(group)
            if (state is None or not state.members) and not committed:
                raise errors.UnknownGroup(f"group {group!r} has no members and no committed offsets", group=group)
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
            offsets = []
            for tp in sorted(subscribed):
                c = committed.get(tp)
                end = self._high_watermark(tp)
                offsets.append({
                    "topic": tp[0], "partition": tp[1], "offset": c.offset if c is not None else None,
                    "metadata": c.metadata if c is not None else None, "high_watermark": end,
                    "lag": max(0, end - c.offset) if c is not None and end is not None else None,
                })
            return {
                "group": group, "coordinator_partition": shard.index,
                "state": state.state if state is not None else "empty",
                "generation": state.generation if state is not None else 0,
                "assignor": state.assignor if state is not None else None,
                "members": members, "offsets": offsets,
            }

        return self._with_shard(group, describe)

    def _local_partition(self, tp: TopicPartition) -> Any:
        """This node's replica of a data partition, or None."""
        topic = self.broker.topics.get(tp[0])
        if topic is None or tp[1] >= len(topic.partitions):
            return None
        replica = topic.partitions[tp[1]]
        return replica if hasattr(replica, "log") else None

    def _high_watermark(self, tp: TopicPartition) -> int | None:
        replica = self._local_partition(tp)
        return int(replica.high_watermark) if replica is not None else None

    def handle_delete_group(self, params: dict[str, Any]) -> Any:
        group = gp.parse_group_only(params)

        def delete(shard: Shard) -> Any:
            shard.coordinator.require_empty(group)
            if not shard.offsets.has_group(group) and shard.coordinator.group(group) is None:
                raise errors.UnknownGroup(f"group {group!r} has no members and no committed offsets", group=group)

            def done(_: Any) -> dict[str, Any]:
                if self.shards.get(shard.index) is shard and shard.coordinator.group(group) is not None:
                    shard.coordinator.forget(group)
                return {"group": group, "deleted": True}

            return self._append(shard, OffsetRecord("delete", group)).addCallback(done)

        return self._with_shard(group, delete)

    def handle_reset_offsets(self, params: dict[str, Any]) -> Any:
        p = gp.parse_reset(params)

        def reset(shard: Shard) -> Any:
            shard.coordinator.require_empty(p.group)
            topic = self.broker.topics.get(p.topic)
            if topic is None:
                raise errors.UnknownTopic(f"unknown topic {p.topic!r}", topic=p.topic)
            indexes = p.partitions if p.partitions is not None else tuple(range(len(topic.partitions)))
            committed = shard.offsets.fetch(p.group, [p.topic])
            offsets = []
            rows = []
            for index in indexes:
                if index >= len(topic.partitions):
                    raise errors.UnknownPartition(f"topic {p.topic!r} has {len(topic.partitions)} partitions, not {index}",
                                                  topic=p.topic, partitions=len(topic.partitions))
                replica = self._local_partition((p.topic, index))
                before = committed.get((p.topic, index))
                if replica is None and not (isinstance(p.to, tuple) and p.to[0] == "offset"):
                    raise errors.PartitionUnavailable(
                        f"this node (the coordinator) holds no replica of {p.topic}/{index}, so it cannot resolve "
                        f"{p.to!r}; give {{\"offset\": n}}", topic=p.topic, partition=index)
                offset = _reset_target(p.to, replica, before.offset if before is not None else None)
                offsets.append(OffsetCommit(p.topic, index, offset, before.metadata if before else None))
                rows.append({"topic": p.topic, "partition": index, "offset": offset,
                             "previous": before.offset if before is not None else None})
            answer = {"group": p.group, "dry_run": p.dry_run, "offsets": rows}
            if p.dry_run:
                return answer
            return self._append(shard, OffsetRecord("reset", p.group, tuple(offsets))).addCallback(lambda _: answer)

        return self._with_shard(p.group, reset)


def _reset_target(to: str | tuple[str, int], replica: Any, committed: int | None) -> int:
    """Where ResetOffsets moves a partition, within [log start, high watermark]."""
    if replica is None:  # {"offset": n} for a partition this node holds no replica of: taken as given
        assert isinstance(to, tuple)
        return to[1]
    start, end = int(replica.start_offset), int(replica.high_watermark)
    if to == "earliest":
        return start
    if to == "latest":
        return end
    kind, n = to
    if kind == "offset":
        target = n
    elif kind == "shift":
        target = (committed if committed is not None else start) + n
    else:
        target = int(replica.log.offset_for_timestamp(n))
    return max(start, min(target, end))


def _known_elsewhere(replica: Any) -> bool:
    """Whether a replica that does not lead knows of another leader (or cannot: a remote partition)."""
    leader = getattr(replica, "leader", None)
    member = getattr(replica, "member", None)
    return not hasattr(replica, "log") or (leader is not None and leader != member)

"""L{ReplicaDirectory}: this node's partition replicas, by topic and partition and by Raft group.

The broker's handlers look partitions up here, the same way on one node and
on many.  The directory opens each local replica's log from the storage,
adds its Raft group to the node's C{RaftHost} and routes the host's
callbacks (commits, role changes) to the replica they concern; callbacks of
groups that are not partitions (the metadata group) go to C{other}.

Whoever must act when this node starts leading a partition (the group
coordinator loads an offsets partition's groups then, not at their first
request) adds itself to L{ReplicaDirectory.leading_listeners}: each is called
with the replica once per term, as soon as the replica L{leads
<PartitionReplica.leads>} (it is the leader and has committed an entry of
its term, so its high watermark is what the previous leader let readers see).

A group whose only voter is this node (every group of a node started
without C{--peers}) is elected at once when it is added: waiting an election
timeout for a vote nobody else casts would only delay the first write.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.logger import Logger

from streamlog.cluster.catchup import snapshot_of
from streamlog.cluster.producer_log import ProducerTrackingLog, rebuild
from streamlog.cluster.replica import PartitionReplica, ReplicaStorage
from streamlog.idempotence.table import ProducerStateConfig, ProducerStateTable
from streamlog.raft.driver import GroupCallbacks
from streamlog.storage.base import TopicConfig
from streamlog.storage.group_commit import ALWAYS


class Topic:
    """One topic's local replicas (every partition, on a node that holds them all)."""

    def __init__(self, name: str, config: TopicConfig, partitions: list[PartitionReplica],
                 topic_id: str | None = None) -> None:
        self.name = name
        self.config = config
        self.partitions = partitions
        self.topic_id = topic_id
        self._round_robin = itertools.count()

    def next_partition(self) -> int:
        return next(self._round_robin) % len(self.partitions)


def local_group(topic: str, partition: int) -> str:
    """The Raft group id of a partition on a node alone (no metadata group gives topic ids)."""
    return f"{topic}-{partition}"


class ReplicaDirectory(GroupCallbacks):
    """(topic, partition) -> this node's L{PartitionReplica}, and the host's callbacks for them.

    @param host: the node's C{RaftHost}; its callbacks must be this directory.
    @param member: this node's Raft member id.
    @param hard_state: the node's hard-state store, or None (memory storage).
    @param locate: member id -> (node id, client address), for C{NOT_LEADER} hints.
    @param unsynced_durability: what an answer says when the policy did not fsync.
    """

    _log = Logger()
    #: The replica class (the cluster simulator's broken variants put a subclass here).
    replica_class: type[PartitionReplica] = PartitionReplica

    def __init__(self, host: Any, member: str, hard_state: Any = None,
                 locate: Callable[[str | None], tuple[int | None, str | None]] | None = None,
                 unsynced_durability: str = "written", other: GroupCallbacks | None = None) -> None:
        self.host = host
        self.member = member
        self.hard_state = hard_state
        self.locate = locate or (lambda member: (None, None))
        self.unsynced_durability = unsynced_durability
        self.other = other or GroupCallbacks()
        self.committer: Any = None
        #: Whether the node has peers (answers then say how many replicas hold a batch).
        self.clustered = False
        #: Whether every peer fsyncs before acknowledging (their hellos say; the node wiring
        #: sets it): otherwise a majority "holding" a batch may hold it unsynced.
        self.peers_fsync: Callable[[], bool] = lambda: True
        self.topics: dict[str, Topic] = {}
        self.by_group: dict[str, PartitionReplica] = {}
        #: The bounds of every replica's producer-state table (the --producer-* server options).
        self.producer_state = ProducerStateConfig()
        #: Called with a replica once per term, when it starts to lead (see the module docstring).
        #: A listener runs inside the Raft host's callback: it should only schedule its work.
        self.leading_listeners: list[Callable[[PartitionReplica], object]] = []

    # --- opening and closing replicas

    def durability(self) -> str:
        """What an acks=all answer says its batch got: C{fsync} only if this node fsyncs
        before counting itself (C{--fsync always}) and so does every peer (which acknowledge
        after their own sync); else C{written} (in the OS page cache of a majority, not known
        to be on disk), or C{memory} for C{--storage memory}."""
        committer = self.committer
        if committer is not None and committer.policy.mode == ALWAYS and self.peers_fsync():
            return "fsync"
        return self.unsynced_durability

    def open_replica(self, topic: str, index: int, log: Any, group: str, members: Iterable[str],
                     replication_factor: int = 1) -> PartitionReplica:
        """Run this node's member of C{group} over C{log} (recovered or new)."""
        log = getattr(log, "log", log)  # a LocalLog from the storage: the Raft log underneath
        replica = self.replica_class(topic, index, log, group, self.host, self.member, self.locate,
                                   replication_factor, self.durability)
        members = tuple(members)
        storage = ReplicaStorage(group, log, self.hard_state, lambda: self.committer, replica.storage_failed,
                                 alone=members == (self.member,))
        # The Raft node writes through a log that keeps the replica's producer state in step.
        replica.producer_log = storage.log = ProducerTrackingLog(log, self._producer_table(group, log))
        self.by_group[group] = replica
        replica.node = self.host.add_group(group, members, storage)
        if members == (self.member,) and getattr(log, "failed", None) is None:
            # (A log that found damage at recovery serves nothing: PARTITION_UNAVAILABLE.)
            self.elect_alone(group)
        return replica

    def _producer_table(self, group: str, log: Any) -> ProducerStateTable:
        """The producer state of C{log} at start-up, rebuilt from it (empty for a log that failed)."""
        if getattr(log, "failed", None) is not None:
            return ProducerStateTable(self.producer_state)
        try:
            return rebuild(log, self.producer_state)
        except Exception:
            # Damage found while reading the batches: the log fails and serves nothing.
            self._log.failure("group {group}: rebuilding its producer state failed", group=group)
            return ProducerStateTable(self.producer_state)

    def add_topic(self, name: str, config: TopicConfig, logs: Sequence[Any], members: Iterable[str] | None = None,
                  topic_id: str | None = None, groups: Sequence[str] | None = None) -> Topic:
        members = tuple(members) if members is not None else (self.member,)
        replicas = [
            self.open_replica(name, i, log, groups[i] if groups else local_group(name, i), members, len(members))
            for i, log in enumerate(logs)
        ]
        topic = self.topics[name] = Topic(name, config, replicas, topic_id)
        return topic

    def write_producer_snapshots(self) -> int:
        """Every replica's producer-state snapshot file as of its commit index, its log fsynced first
        (a clean close: the next start-up then reads back only the entries not committed when the
        node stopped); returns how many were written."""
        written = 0
        for replica in list(self.by_group.values()):
            producer_log = replica.producer_log
            if producer_log is not None and producer_log.write_snapshot(sync=True):
                written += 1
        return written

    def close_topic(self, topic: Topic, error: Exception) -> None:
        """Stop a topic's replicas and their groups (its files are the storage's to delete,
        its entry in L{topics} the caller's to drop); their waiters get C{error}."""
        for replica in topic.partitions:
            self.by_group.pop(replica.group, None)
            replica.close(error)  # first: its waiting writes get C{error}, not the host's NOT_LEADER
            self.host.remove_group(replica.group)
            if self.committer is not None:
                self.committer.forget(replica.log, error)
            if self.hard_state is not None:
                self.hard_state.remove(replica.group).addErrback(
                    lambda f: self._log.failure("forgetting the term of a deleted group failed", f))

    def elect_alone(self, group: str) -> None:
        """Make this node the leader of C{group}, of which it is the only voter, now: what the
        group's own election would do after its timeout, sooner (C{RaftHost.campaign})."""
        try:
            self.host.campaign(group)
        except Exception:  # e.g. the no-op's append found damage: the partition is unavailable
            self._log.failure("group {group}: electing this node failed", group=group)

    # --- the host's callbacks

    def committed(self, group: str, upto: int) -> None:
        replica = self.by_group.get(group)
        if replica is None:
            self.other.committed(group, upto)
        else:
            replica.committed(upto)
            self.announce_leading(replica)

    def role_changed(self, group: str, role: str, term: int, leader: str | None) -> None:
        replica = self.by_group.get(group)
        if replica is None:
            self.other.role_changed(group, role, term, leader)
        else:
            replica.role_changed(role, term, leader)
            self.announce_leading(replica)

    def announce_leading(self, replica: PartitionReplica) -> None:
        """Tell the L{leading_listeners} once the replica leads in a term they were not told
        of: at its election if its log already ends in an entry of the term (a group of one),
        else at the commit of its first entry of the term (its no-op).  A replica a restarted
        cluster node opened before its metadata named it (topic C{""}) is announced when the
        node names it (C{ClusterNode._refresh_topics} calls this again)."""
        if not replica.leads or not replica.topic or replica.announced_term == replica.term:
            return
        replica.announced_term = replica.term
        for listener in list(self.leading_listeners):
            try:
                listener(replica)
            except Exception:
                self._log.failure("a listener of {group}'s leadership failed", group=replica.group)

    def snapshot_installed(self, group: str, index: int, term: int, data: bytes) -> None:
        if group not in self.by_group:
            self.other.snapshot_installed(group, index, term, data)

    def snapshot_data(self, group: str, index: int) -> bytes:
        replica = self.by_group.get(group)
        if replica is None:
            return self.other.snapshot_data(group, index)
        # Where the partition's log resumes (its removed records are gone for every reader alike)
        # and its producers as of the snapshot: one PartitionSnapshot (streamlog.cluster.catchup).
        if replica.producer_log is not None:
            data: bytes = replica.producer_log.snapshot_data(index)
            return data
        return snapshot_of(replica.log, index)

    # --- lookups

    def replicas(self) -> Iterable[PartitionReplica]:
        for topic in self.topics.values():
            yield from topic.partitions

    @property
    def partition_count(self) -> int:
        return sum(len(topic.partitions) for topic in self.topics.values())


#: The member id of a node started without peers (its groups have no other member to tell apart).
ALONE = "1"


def alone(storage: Any, config: Any, clock: Any, on_fatal: Callable[[Any], object] | None = None) -> ReplicaDirectory:
    """The directory of a node started without C{--peers}: a cluster of one.

    Its C{RaftHost} has no peers and is not ticked: a group of one is elected
    when it is added (L{ReplicaDirectory.elect_alone}), never times out and
    has nobody to send heartbeats to, so an idle node costs nothing.
    C{on_fatal} is called when a group's fsync fails (the node exits 70).
    """
    from streamlog.raft.core import RaftConfig
    from streamlog.raft.driver import RaftHost

    directory = ReplicaDirectory(None, ALONE, hard_state=getattr(storage, "hard_state", None),
                                 unsynced_durability=config.unsynced_durability)
    directory.host = RaftHost(ALONE, (), RaftConfig(), callbacks=directory, clock=clock, on_fatal=on_fatal)
    return directory

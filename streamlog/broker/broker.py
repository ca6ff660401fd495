"""The broker's logic: every RPC method, over topics of partition logs.

L{Broker} knows nothing of connections: the protocol hands it a method name
and a params object and gets back a value, a Deferred of one, or an
exception carrying a wire error code.  Storage durability comes from the
injected committer (group commit, see L{streamlog.storage.group_commit}).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from operator import itemgetter
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import __version__, errors, wire
from streamlog.broker.groups import GroupService
from streamlog.broker.partition import WaitQuota
from streamlog.broker.producer_ids import REGISTRY_FILE, LocalRegistry, MetadataRegistry, ProducerIds
from streamlog.cluster.alone import LoneNode
from streamlog.cluster.directory import ReplicaDirectory, Topic, alone
from streamlog.cluster.replica import PartitionReplica
from streamlog.groups.config import GroupConfig
from streamlog.idempotence.rules import Outcome
from streamlog.idempotence.table import Decision, ProducerStateConfig
from streamlog.metrics.requests import BYTES_IN, BYTES_OUT, MESSAGES_IN, MESSAGES_OUT, RequestStats, TopicTraffic
from streamlog.partitioner import partition_for_key
from streamlog.storage.base import RECORD_SEPARATOR, PartitionLog, RecordBatch, Storage, TopicConfig
from streamlog.storage.errors import InvalidTopicName, OutOfDescriptors, StorageCorrupted, StorageFailed
from streamlog.topic_config import INTERNAL_TOPICS, internal_mark


class Committer(Protocol):
    """Makes appended records durable (see L{streamlog.storage.group_commit.GroupCommitter})."""

    def wait(self, log: PartitionLog, offset: int) -> Deferred:
        """Fires with True once records below C{offset} are fsynced, False if the policy does not fsync."""

    def forget(self, log: PartitionLog, error: Exception | None = None) -> None:
        """The log is going away (its topic is deleted): fail its waiters with C{error}, sync it no more."""


@attrs.frozen
class BrokerConfig:
    auto_create_topics: bool = True
    default_partitions: int = 1
    limits: wire.Limits = wire.DEFAULT_LIMITS
    #: What a durable-but-not-fsynced ack says: "written" for files, "memory" for --storage memory.
    unsynced_durability: str = "written"
    #: Seconds a Send or Poll waits for a partition's election (no leader known) before
    #: answering LEADER_NOT_AVAILABLE (a group of one elects itself in one hard-state fsync).
    election_wait: float = 1.0
    #: The bounds of each partition's idempotent-producer table (the --producer-* options).
    producer_state: ProducerStateConfig = ProducerStateConfig()
    #: Consumer groups: the offsets topic's partitions, the coordinator's limits (streamlog.broker.groups).
    groups: GroupConfig = GroupConfig()


class Broker:
    """All topics of one node, and the handlers of every RPC method."""

    _log = Logger()

    def __init__(
        self,
        storage: Storage,
        config: BrokerConfig = BrokerConfig(),
        clock: IReactorTime | None = None,
        committer: Committer | None = None,
        on_fatal: Callable[[BaseException], object] | None = None,
        directory: ReplicaDirectory | None = None,
        hard_state_runner: Callable[..., Deferred] | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.storage = storage
        self.config = config
        self.limits = config.limits
        self.on_fatal = on_fatal
        loaded = storage.load() if directory is None else {}
        store = getattr(storage, "hard_state", None)  # opened by load()
        if store is not None:
            # Terms and votes are saved in rounds scheduled on the node's clock.
            store.bind(clock, hard_state_runner)
            in_flight = getattr(committer, "in_flight", None)
            if in_flight is not None:  # its saves count in /ready's disk check (a hung one stalls elections)
                store.bind(clock, in_flight=in_flight)
        #: This node's replicas; without one given, the node is a cluster of one.
        self.directory = directory if directory is not None else alone(storage, config, clock, on_fatal)
        self.directory.producer_state = config.producer_state
        self.committer = committer
        self._cluster: Any = None
        #: Without a cluster: what Metadata says of this node alone (its id and address are
        #: the service's to set, once the listener is bound).
        self.alone = LoneNode(self.directory)
        #: Set when the node begins to stop: no more appends (see BrokerService.stopService).
        self.stopping = False
        #: Long polls parked on this node, across all connections (--max-waiting-polls).
        self.waiting_polls = WaitQuota(self.limits.max_waiting_polls, "node")
        #: What /metrics reports of the client edge: requests (the protocol counts them) and
        #: messages and bytes in and out per topic (counted here).
        self.requests = RequestStats()
        self.traffic = TopicTraffic()
        # Consumer groups (issue 11): FindCoordinator, JoinGroup, ... live in streamlog.broker.groups.
        # Made before the recovered topics are opened: it hears when this node starts to lead
        # an offsets partition (a node alone leads its partitions as they open).
        self.groups = GroupService(self, config.groups)
        for name, (topic_config, logs) in loaded.items():
            self.directory.add_topic(name, topic_config, list(logs))
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "Send": self.handle_send,
            "SendBatch": self.handle_send_batch,
            "Poll": self.handle_poll,
            "CreateTopic": self.handle_create_topic,
            "DeleteTopic": self.handle_delete_topic,
            "ListTopics": self.handle_list_topics,
            "DescribeTopic": self.handle_describe_topic,
            "ListOffsets": self.handle_list_offsets,
            "Metadata": self.handle_metadata,
            "Ping": self.handle_ping,
            "InitProducerId": self.handle_init_producer_id,
        }
        self._producer_ids: ProducerIds | None = None
        self.handlers.update(self.groups.handlers())

    @property
    def cluster(self) -> Any:
        """The node's cluster (L{streamlog.cluster.node.ClusterNode}) when it has peers: topic
        administration goes through the controller, topics come from the metadata."""
        return self._cluster

    @cluster.setter
    def cluster(self, cluster: Any) -> None:
        self._cluster = cluster
        handlers = getattr(cluster, "peer_handlers", None)
        if handlers is not None:
            handlers.update(self.groups.peer_handlers())  # what peers ask of the groups here

    def connection_handlers(self, *waits: WaitQuota) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The handler table for one connection: its parked Polls also count against each
        of C{waits} (the connection's quota, its client address's)."""
        return {**self.handlers, "Poll": partial(self.handle_poll, waits=waits)}

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    @property
    def topics(self) -> dict[str, Topic]:
        return self.directory.topics

    @property
    def committer(self) -> Committer | None:
        committer: Committer | None = self.directory.committer
        return committer

    @committer.setter
    def committer(self, committer: Committer | None) -> None:
        # Set once the node runs (its sync threads start in the final process): the
        # replicas' Raft logs sync through it.
        self.directory.committer = committer

    # --- topics ----------------------------------------------------------------

    def topic(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            if self.cluster is not None:
                raise self.cluster.unknown_topic(name)  # LEADER_NOT_AVAILABLE while its metadata may be behind
            raise errors.UnknownTopic(f"unknown topic {name!r}", topic=name)
        return topic

    def partition(self, name: str, index: int) -> PartitionReplica:
        topic = self.topic(name)
        if index >= len(topic.partitions):
            raise errors.UnknownPartition(
                f"topic {name!r} has {len(topic.partitions)} partitions, not {index}",
                topic=name, partitions=len(topic.partitions),
            )
        partition = topic.partitions[index]
        if partition.failed is not None:
            raise self._unavailable(partition, partition.failed)
        return partition

    @property
    def partition_count(self) -> int:
        """Partitions on this node, all topics together (what C{--max-partitions-per-node} caps)."""
        return self.directory.partition_count

    def create_topic(self, name: str, partitions: int, config: TopicConfig | None = None) -> Topic:
        """Create a topic (CreateTopic, or a Send's auto-creation).

        The node's partition cap is checked before anything is opened.  A
        storage fault while creating is fail-stop (C{STORAGE_ERROR}, as for an
        append); running out of descriptors is a refusal, with nothing created.
        """
        if name in self.topics:
            raise errors.TopicExists(f"topic {name!r} already exists", topic=name)
        limit = self.limits.max_partitions_per_node
        held = self.partition_count
        if held + partitions > limit:
            raise errors.TooManyPartitions(
                f"topic {name!r} with {partitions} partitions would pass this node's limit of {limit} "
                f"partitions ({held} exist)",
                limit=limit, partitions=held,
            )
        config = config or TopicConfig()
        try:
            logs = self.storage.create_topic(name, partitions, config)
        except InvalidTopicName as e:  # e.g. longer than the data directory's file system allows
            raise errors.InvalidTopic(str(e)) from None
        except OutOfDescriptors as e:
            self._log.warn("refused topic {topic}: {error}", topic=name, error=e)
            raise errors.TooManyPartitions(
                f"topic {name!r} was not created: the process is out of file descriptors ({held} partitions exist); "
                "raise the open-file limit or lower --max-partitions-per-node",
                limit=limit, partitions=held,
            ) from None
        except (OSError, StorageFailed) as e:
            # Its files are in an unknown state (EIO, a read-only disk): stop rather than serve around them.
            self._fatal(e)
            message = str(e) if isinstance(e, StorageFailed) else f"creating topic {name!r} failed: {e}"
            raise errors.StorageError(message) from None
        topic = self.directory.add_topic(name, config, list(logs))
        self._log.info("created topic {topic} with {partitions} partitions", topic=name, partitions=partitions)
        return topic

    def handle_create_topic(self, params: dict[str, Any]) -> Any:
        if wire.is_auto_create(params):
            return self._auto_create_topic(params)
        if self.cluster is not None:
            # Bad params are answered here, not forwarded.
            _refuse_internal(wire.parse_create_topic(params, self.limits).topic, "created")
            return self.cluster.create_topic(params).addCallback(_without_index)
        p = wire.parse_create_topic(params, self.limits)
        _refuse_internal(p.topic, "created")
        if p.replication_factor not in (None, 1):
            raise errors.InvalidParams(
                f"'replication_factor' {p.replication_factor} needs as many nodes; this node runs alone",
                field="replication_factor")
        topic = self.create_topic(p.topic, p.partitions, p.config)
        return _describe_topic(topic)

    def _auto_create_topic(self, params: dict[str, Any]) -> Any:
        """C{CreateTopic {topic, auto_create: true}}: create the topic as a Send to it would (this
        node's C{--auto-create-topics} and C{--default-partitions}), or find it there already.

        What an idempotent producer asks before its first batch to a topic it does not know: a
        Send that auto-creates places its messages itself, so they could not carry sequence
        numbers (docs/protocol.md, "CreateTopic").  Answered as DescribeTopic plus C{created}.
        """
        name = wire.parse_auto_create_topic(params, self.limits)
        _refuse_internal(name, "created")
        if not self.config.auto_create_topics:
            if name in self.topics or (self.cluster is not None and self._cluster_knows(name)):
                return self._existing_topic(name)
            raise errors.UnknownTopic(f"unknown topic {name!r} (auto-creation is off)", topic=name)
        if self.cluster is None:
            if name in self.topics:
                return self._existing_topic(name)
            return {**_describe_topic(self.create_topic(name, self.config.default_partitions)), "created": True}
        d = maybeDeferred(self.cluster.create_topic, {"topic": name, "partitions": self.config.default_partitions})

        def answered(result: Any) -> Any:
            if isinstance(result, Failure):
                result.trap(errors.TopicExists)
                return self._existing_topic(name)
            return {**_without_index(result), "created": True}

        return d.addBoth(answered)

    def _cluster_knows(self, name: str) -> bool:
        try:
            self.cluster.describe(name)
        except errors.UnknownTopic:
            return False
        return True

    def _existing_topic(self, name: str) -> dict[str, Any]:
        """The auto_create answer for a topic that exists (this node may not have applied its creation yet)."""
        if self.cluster is None:
            return {**_describe_topic(self.topics[name]), "created": False}
        try:
            described: dict[str, Any] = self.cluster.describe(name)
        except errors.UnknownTopic:
            raise errors.LeaderNotAvailable(f"topic {name!r} is being created; retry shortly", topic=name) from None
        return {**described, "created": False}

    def handle_delete_topic(self, params: dict[str, Any]) -> Any:
        if self.cluster is not None:
            _refuse_internal(wire.parse_topic_only(params, self.limits), "deleted")
            return self.cluster.delete_topic(params).addCallback(_without_index)
        name = wire.parse_topic_only(params, self.limits)
        _refuse_internal(name, "deleted")
        topic = self.topic(name)
        gone = errors.UnknownTopic(f"topic {name!r} was deleted", topic=name)
        self.directory.close_topic(topic, gone)
        try:
            self.storage.delete_topic(name)
        except (OSError, StorageFailed) as e:
            # Its files are in an unknown state: stop rather than serve around them.
            self._fatal(e)
            raise errors.StorageError(f"deleting topic {name!r} failed: {e}") from None
        del self.topics[name]
        self._log.info("deleted topic {topic}", topic=name)
        return {"topic": name, "deleted": True}

    def handle_list_topics(self, params: dict[str, Any]) -> dict[str, Any]:
        wire.parse_empty(params)
        return {
            "topics": [
                {"topic": name, "partitions": len(topic.partitions), **internal_mark(name)}
                for name, topic in sorted(self.topics.items())
            ]
        }

    def handle_describe_topic(self, params: dict[str, Any]) -> dict[str, Any]:
        name = wire.parse_topic_only(params, self.limits)
        if self.cluster is not None:
            result: dict[str, Any] = self.cluster.describe(name)
            return result
        return _describe_topic(self.topic(name))

    def handle_metadata(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.cluster is None:
            return self.alone.metadata(wire.parse_metadata(params, self.limits))
        result: dict[str, Any] = self.cluster.metadata(params)
        return result

    def handle_list_offsets(self, params: dict[str, Any]) -> Any:
        p = wire.parse_list_offsets(params, self.limits)
        partition = self.partition(p.topic, p.partition)
        if not partition.leads:
            return self._retry_when_leading(partition, partial(self.handle_list_offsets, params))
        if p.at == "earliest":
            offset = partition.start_offset
        elif p.at == "latest":
            offset = partition.high_watermark
        else:
            offset = min(partition.log.offset_for_timestamp(int(p.at)), partition.high_watermark)
            offset = max(offset, partition.start_offset)
        return {"topic": p.topic, "partition": p.partition, "offset": offset}

    @property
    def producer_ids(self) -> ProducerIds:
        """Where InitProducerId takes ids and epochs: the cluster metadata, or (a node alone) its registry file."""
        if self._producer_ids is None:
            if self.cluster is not None:
                self._producer_ids = ProducerIds(MetadataRegistry(self.cluster))
            else:
                data_dir = getattr(self.storage, "data_dir", None)
                path = None if data_dir is None else os.path.join(data_dir, REGISTRY_FILE)
                self._producer_ids = ProducerIds(LocalRegistry(path))
        return self._producer_ids

    def handle_init_producer_id(self, params: dict[str, Any]) -> Deferred:
        if self.stopping:
            raise errors.ShuttingDown("the node is shutting down")
        return self.producer_ids.handle(params, self.limits)

    def handle_ping(self, params: dict[str, Any]) -> dict[str, Any]:
        wire.parse_empty(params)
        return {"pong": True, "time": self.now_ms(), "version": __version__}

    # --- send ------------------------------------------------------------------

    def handle_send(self, params: dict[str, Any]) -> Deferred | None:
        p = wire.parse_send(params, self.limits)
        _refuse_internal(p.topic, "written to")
        d = self.send(p)
        if d is None:
            return None
        return d.addCallback(_single_result)

    def handle_send_batch(self, params: dict[str, Any]) -> Deferred | None:
        p = wire.parse_send_batch(params, self.limits)
        _refuse_internal(p.topic, "written to")
        return self.send(p)

    def send(self, p: wire.SendParams, waited: bool = False) -> Deferred | None:
        """Append C{p.messages}, one atomic batch per partition.

        Three steps: routing (which partition each message goes to), encoding
        (records, and their size checks), appending (through each partition's
        replica, answered per C{acks}).  Everything is checked before anything
        is appended (or a new topic created), so a request either lands whole
        on every partition it takes or leaves no trace.  A partition whose
        leader is being elected makes the request wait for the election
        (at most C{election_wait}), then start over (C{waited}).  In a
        cluster, the partitions another node leads (or still electing after
        the wait) are answered per partition, with their error and hint, and
        the others appended; only if this node takes none of them is the
        whole request refused.  Returns None for C{acks=none}, else a
        Deferred of the placement.
        """
        if self.stopping:
            raise errors.ShuttingDown("the node is shutting down; nothing was appended")
        topic, groups, sticky = self._route(p)
        if p.sequences is not None:
            _check_sequences(p, groups)
        if topic is None and self.cluster is not None:
            return self._create_through_controller(p)
        refused: dict[int, errors.StreamlogError] = {}
        first_use = list(groups)  # the answer's entries come in this order, refused ones included
        if topic is not None:
            electing, refused = self._leaders(topic, groups, waited)
            if electing is not None:
                return self._after_election(electing, p)
            groups = {i: m for i, m in groups.items() if i not in refused}
        timestamp = self.now_ms()
        encoded = self._encode(topic, groups, timestamp, p.plain)
        if topic is None:
            topic = self.create_topic(p.topic, self.config.default_partitions)
            if sticky is not None:
                topic.next_partition()  # the pick made above, for the counter
            electing, refused = self._leaders(topic, groups, waited)
            if electing is not None:  # the new groups elect themselves in a hard-state fsync
                return self._after_election(electing, p)
        return self._append(p, topic, encoded, timestamp, refused, first_use)

    def _route(self, p: wire.SendParams) -> tuple[Topic | None, dict[int, list[wire.Message]], int | None]:
        """Which partition each message goes to: C{(topic or None if it is to be created,
        {partition: messages}, the round-robin pick or None)}."""
        # A topic that does not exist yet is created only once the whole request has
        # passed every check: a refused Send must leave nothing behind.
        topic = self.topics.get(p.topic)
        if topic is None and self.cluster is not None and not self.cluster.metadata_current():
            # A node whose metadata may be behind (just restarted, cut off from the controller)
            # cannot tell a live topic from a new one: retriable, and no partition judged against
            # the count a new topic would get (a Producer's batches for partition 80 of a live
            # topic failed UNKNOWN_PARTITION at a node just restarted).
            raise self.cluster.unknown_topic(p.topic)
        if topic is None and not self.config.auto_create_topics:
            raise errors.UnknownTopic(f"unknown topic {p.topic!r} (auto-creation is off)", topic=p.topic)
        count = len(topic.partitions) if topic is not None else self.config.default_partitions
        sticky: int | None = None
        if p.plain:  # every message names a partition, or none does: often one for all, found in C
            named = set(map(_PARTITION, p.messages)) if "partition" in p.messages[0] else None
            if named is None or len(named) == 1:
                index = named.pop() if named is not None else None
                if index is None:
                    sticky = index = topic.next_partition() if topic is not None else 0
                elif index >= count:
                    raise self._unknown_partition(p, topic, count, index)
                return topic, {index: p.messages}, sticky
        groups: dict[int, list[wire.Message]] = {}
        for message in p.messages:
            index = message.get("partition")
            if index is not None:
                if index >= count:
                    raise self._unknown_partition(p, topic, count, index)
            elif message.get("key") is not None:
                index = partition_for_key(message["key"], count)
            else:
                if sticky is None:
                    # A new topic's first round-robin pick is 0 (its counter is moved on once it exists).
                    sticky = topic.next_partition() if topic is not None else 0
                index = sticky
            groups.setdefault(index, []).append(message)
        return topic, groups, sticky

    @staticmethod
    def _unknown_partition(p: wire.SendParams, topic: Topic | None, count: int, index: int) -> errors.UnknownPartition:
        where = f"has {count}" if topic is not None else f"does not exist; auto-created it would have {count}"
        return errors.UnknownPartition(
            f"topic {p.topic!r} {where} partitions, not {index}", topic=p.topic, partitions=count,
        )

    def _create_through_controller(self, p: wire.SendParams) -> Deferred:
        """Auto-create in a cluster: the controller creates the topic, then the request
        starts over (at this node: it answers NOT_LEADER where another node leads)."""
        d = self.cluster.create_topic({"topic": p.topic, "partitions": self.config.default_partitions})

        def created(result: Any) -> Any:
            if isinstance(result, Failure):
                if not result.check(errors.TopicExists):
                    return result
            if p.topic not in self.topics:
                raise errors.LeaderNotAvailable(f"topic {p.topic!r} is being created; retry shortly", topic=p.topic)
            return self.send(p)

        d.addBoth(created)
        if p.acks == "none":
            d.addErrback(lambda f: None)
        return d

    def _leaders(self, topic: Topic, groups: dict[int, list[wire.Message]],
                 waited: bool = False) -> tuple[PartitionReplica | None, dict[int, errors.StreamlogError]]:
        """Which partitions of the request this node cannot take now: C{(a partition still
        electing its leader to wait for, or None; {partition: NOT_LEADER with its hint, or
        LEADER_NOT_AVAILABLE once C{waited}})}.  Raises the first refusal if it takes none."""
        refused: dict[int, errors.StreamlogError] = {}
        for index in groups:
            replica = self.partition(topic.name, index)
            if not replica.writable:
                try:
                    replica.check_leader(write=True)
                except errors.LeaderNotAvailable as e:
                    if not waited:
                        return replica, {}
                    refused[index] = e
                except errors.NotLeader as e:
                    refused[index] = e
        if refused and len(refused) == len(groups):
            raise next(iter(refused.values()))
        return None, refused

    def _after_election(self, replica: PartitionReplica, p: wire.SendParams) -> Deferred:
        """Wait for C{replica}'s election, then run the request again from the start
        (answering C{LEADER_NOT_AVAILABLE} if there is still no leader)."""
        waited = replica.when_leading(self.clock, self.config.election_wait, write=True)

        def again(_: Any) -> Any:
            if replica.closed_error is not None:
                raise replica.closed_error
            return self.send(p, waited=True)  # what still has no leader is answered per partition

        d = waited.addCallback(again)
        if p.acks == "none":
            d.addErrback(lambda f: None)  # nobody hears of it
        return d

    def _encode(self, topic: Topic | None, groups: dict[int, list[wire.Message]],
                timestamp: int, plain: bool = False) -> list[tuple[int, int, list[bytes]]]:
        """Each partition's records, encoded once as they will be served (offsets included),
        with the size check: C{[(partition, base offset, records)]}."""
        limit = self.limits.max_message_bytes
        encoded: list[tuple[int, int, list[bytes]]] = []
        for index, messages in groups.items():
            base = self.partition(topic.name, index).end_offset if topic is not None else 0
            records = wire.encode_records(base, timestamp, messages, plain)
            largest = max(map(len, records))
            if largest > limit:
                raise errors.MessageTooLarge(
                    f"message of {largest} bytes (encoded) exceeds the limit of {limit}",
                    limit=limit, size=largest,
                )
            encoded.append((index, base, records))
        return encoded

    def _append(self, p: wire.SendParams, topic: Topic, encoded: list[tuple[int, int, list[bytes]]],
                timestamp: int, refused: dict[int, errors.StreamlogError] | None = None,
                first_use: list[int] | None = None) -> Deferred | None:
        """Append each partition's batch through its replica and answer per C{p.acks}, with
        an entry C{{partition, error}} for each partition C{refused} (another node leads it,
        or its Raft core refused the proposal: a leadership transfer is on), in the order of
        C{first_use} (the request's)."""
        batches: list[tuple[PartitionReplica, RecordBatch]] = []
        duplicates: list[tuple[PartitionReplica, Decision]] = []
        refused = dict(refused or {})
        for index, base, records in encoded:
            replica = topic.partitions[index]
            if p.sequences is None:
                batch = RecordBatch(
                    base_offset=base, count=len(records), term=0, first_timestamp=timestamp,
                    max_timestamp=timestamp, payload=RECORD_SEPARATOR.join(records),
                )
            else:
                # Checked in log order at the leader: nothing runs between this check and the
                # append below, which records the batch in the table (ProducerTrackingLog).
                sequence = p.sequences.get(index, p.sequences.get(-1, -1))
                try:
                    decision = replica.check_producer(p.producer_id, p.epoch, sequence, len(records), timestamp)
                except _PART_REFUSALS as e:
                    refused[index] = e  # that part only: an error entry, as a partition another node leads
                    continue
                if decision.outcome is Outcome.DUPLICATE:
                    duplicates.append((replica, decision))
                    continue
                batch = RecordBatch(
                    base_offset=base, count=len(records), term=0, first_timestamp=timestamp,
                    max_timestamp=timestamp, payload=RECORD_SEPARATOR.join(records),
                    producer_id=p.producer_id, producer_epoch=p.epoch, base_sequence=sequence,
                )
            batches.append((replica, batch))
        # Every partition that needs a new segment gets it before anything is appended: a
        # roll refused for want of descriptors then leaves the whole request unappended.
        for replica, batch in batches:
            make_room = getattr(replica.log, "make_room", None)  # logs that roll segments
            if make_room is not None:
                self._append_step(replica, make_room, batch)
        placed = {}
        waits = []
        appended: list[tuple[PartitionReplica, RecordBatch]] = []
        for replica, batch in batches:
            try:
                d = self._append_step(replica, partial(replica.append, acks=p.acks), batch)
            except errors.NotLeader as e:
                # Writable a moment ago, but its core refused the proposal (a leadership
                # transfer is on): nothing of this part was appended, while earlier parts may
                # have been, so it is this part's error entry, never the whole request's.
                refused[replica.index] = e
                continue
            appended.append((replica, batch))
            placed[replica.index] = {"partition": replica.index, "base_offset": batch.base_offset,
                                     "count": batch.count}
            if d is not None:
                waits.append((replica, d))
        batches = appended
        if batches:
            counts = self.traffic.by_topic.get(p.topic)
            if counts is None:
                counts = self.traffic.add(p.topic)
            for _, batch in batches:
                counts[MESSAGES_IN] += batch.count
                counts[BYTES_IN] += len(batch.payload)
        if not batches and not duplicates:
            # No part taken (refused at the checks or at the proposal): the whole request is
            # refused with its first part's error, as a request for one partition always is.
            raise next(refused[i] for i in [*(i for i, _, _ in encoded), *refused] if i in refused)
        for replica, decision in duplicates:
            # Stored already: answered with the original's offsets once the original is committed.
            placed[replica.index] = {"partition": replica.index, "base_offset": decision.base_offset,
                                     "count": decision.last_offset - decision.base_offset + 1, "duplicate": True}
            if p.acks == "all":
                waits.append((replica, _holding_once_committed(replica, decision.raft_index)))
        if p.acks == "none":
            return None
        for index, error in refused.items():
            placed[index] = {"partition": index, "error": error.to_wire()}
        order = [i for i in dict.fromkeys([*(first_use or []), *(i for i, _, _ in encoded), *refused]) if i in placed]
        result: dict[str, Any] = {"topic": p.topic, "timestamp": timestamp}
        replicas = [replica for replica, _ in batches] + [replica for replica, _ in duplicates]
        if p.acks == "leader":
            result["partitions"] = [placed[i] for i in order]
            result["durability"] = self.config.unsynced_durability
            self._replication(result, replicas, 1)
            return succeed(result)
        result["durability"] = replicas[0].durability
        return self._per_partition(result, placed, order, waits)

    def _per_partition(self, result: dict[str, Any], placed: dict[int, dict[str, Any]], order: list[int],
                       waits: list[tuple[PartitionReplica, Deferred]]) -> Deferred:
        """The acks=all answer once every part's commit is settled: a part that failed (its
        leadership lost meanwhile) is an error entry like a refused one; if no part is left
        appended the request fails with the first error (a one-partition request as before)."""
        holding: dict[PartitionReplica, int] = {}
        failed: list[BaseException] = []

        def settled(outcome: Any, replica: PartitionReplica) -> None:
            if isinstance(outcome, Failure):
                error = outcome.value
                if not isinstance(error, errors.StreamlogError):
                    failed.append(error)
                    return
                placed[replica.index] = {"partition": replica.index, "error": error.to_wire()}
                failed.append(error)
            else:
                holding[replica] = outcome

        def answer(_: Any) -> dict[str, Any]:
            if not holding:
                raise failed[0]
            for error in failed:
                if not isinstance(error, errors.StreamlogError):
                    raise error  # an unexpected failure: INTERNAL, as before
            result["partitions"] = [placed[i] for i in order]
            self._replication(result, list(holding), min(holding.values()))
            return result

        parts = [d.addBoth(settled, replica) for replica, d in waits]
        return gatherResults(parts).addCallback(answer)

    def _replication(self, result: dict[str, Any], replicas: list[PartitionReplica], holding: int) -> None:
        """In a cluster, say how many replicas hold the batch (the weakest partition's)."""
        if not self.directory.clustered:
            return
        result["replicas"] = holding
        result["replication_factor"] = min(r.replication_factor for r in replicas)

    def _append_step(self, partition: PartitionReplica, step: Callable[[RecordBatch], Any], batch: RecordBatch) -> Any:
        """Run one storage step of an append, turning its errors into wire errors (or a fail-stop)."""
        try:
            return step(batch)
        except StorageCorrupted as e:
            raise self._unavailable(partition, e) from None
        except OutOfDescriptors as e:
            self._log.warn("refused a send to {topic}/{partition}: {error}",
                           topic=partition.topic, partition=partition.index, error=e)
            raise errors.TooManyOpenFiles(
                f"partition {partition.topic}/{partition.index} needs a new segment and the node is out of file "
                "descriptors; nothing of the request was appended, retry later",
                topic=partition.topic, partition=partition.index,
            ) from None
        except (OSError, StorageFailed) as e:
            self._fatal(e)
            raise errors.StorageError(f"append failed: {e}") from None

    def _unavailable(self, partition: PartitionReplica, error: Exception) -> errors.PartitionUnavailable:
        return errors.PartitionUnavailable(
            f"partition {partition.topic}/{partition.index} is unavailable: {error}",
            topic=partition.topic, partition=partition.index,
        )

    def _fatal(self, error: BaseException) -> None:
        self._log.critical("storage failure, the node stops: {error!r}", error=error)
        if self.on_fatal is not None:
            self.on_fatal(error)

    # --- poll ------------------------------------------------------------------

    def handle_poll(self, params: dict[str, Any], waits: Sequence[WaitQuota] = ()) -> Any:
        """Answer at once if there is data (or no wait is asked); else park the poll.

        A poll that would park is refused with C{TOO_MANY_WAITING_POLLS} when one
        of C{waits} (its connection's quota, its address's) or the node's is full.
        """
        p = wire.parse_poll(params, self.limits)
        partition = self.partition(p.topic, p.partition)
        if not partition.leads:
            return self._retry_when_leading(partition, partial(self.handle_poll, params, waits))
        offset = p.offset
        if offset < partition.start_offset or offset > partition.end_offset:
            raise errors.OffsetOutOfRange(
                f"offset {offset} is outside [{partition.start_offset}, {partition.end_offset}]",
                log_start_offset=partition.start_offset,
                high_watermark=partition.high_watermark,
                log_end_offset=partition.end_offset,
            )
        if offset < partition.high_watermark or p.max_wait_ms == 0:
            return self._read(partition, p)
        quotas = (*waits, self.waiting_polls)
        return partition.wait(self.clock, offset, p.max_wait_ms / 1000.0, lambda: self._read(partition, p), quotas)

    def _retry_when_leading(self, replica: PartitionReplica, retry: Callable[[], Any]) -> Any:
        """C{NOT_LEADER} (with a hint) at once; while C{replica} elects its leader, wait
        for it (at most C{election_wait}) and C{retry}, or answer C{LEADER_NOT_AVAILABLE}."""
        try:
            replica.check_leader()
        except errors.LeaderNotAvailable:
            def again(_: Any) -> Any:
                if not replica.leads:
                    replica.check_leader()
                return retry()

            return replica.when_leading(self.clock, self.config.election_wait).addCallback(again)
        return retry()

    def _read(self, partition: PartitionReplica, p: wire.PollParams) -> wire.RawResult:
        if partition.failed is not None:
            raise self._unavailable(partition, partition.failed)
        start = partition.start_offset
        if p.offset < start:
            raise errors.OffsetOutOfRange(
                f"offset {p.offset} was removed by retention; the log starts at {start}",
                log_start_offset=start, high_watermark=partition.high_watermark,
                log_end_offset=partition.end_offset,
            )
        available = partition.high_watermark - p.offset
        chunks = [b'{"messages":[']
        next_offset = p.offset
        if available > 0:
            try:
                read = partition.log.read(p.offset, min(p.max_messages, available), p.max_bytes)
            except StorageCorrupted as e:
                raise self._unavailable(partition, e) from None
            problem = _malformed(read, p.offset, available)
            if problem is not None:
                self._log.critical(
                    "partition {topic}/{partition} returned a malformed read at offset {offset} ({problem}); not served",
                    topic=partition.topic, partition=partition.index, offset=p.offset, problem=problem,
                )
                raise self._unavailable(partition, Exception(f"malformed read at offset {p.offset}: {problem}"))
            if read.fragments:
                chunks.append(read.fragments[0])
                for fragment in read.fragments[1:]:
                    chunks.append(b",")
                    chunks.append(fragment)
                counts = self.traffic.by_topic.get(partition.topic)  # (inline: every Poll with data)
                if counts is None:
                    counts = self.traffic.add(partition.topic)
                counts[MESSAGES_OUT] += read.count
                counts[BYTES_OUT] += sum(map(len, read.fragments))
            next_offset = read.next_offset
        chunks.append(
            b'],"next_offset":%d,"high_watermark":%d,"log_start_offset":%d}'
            % (next_offset, partition.high_watermark, start)
        )
        return wire.RawResult(chunks)

    # --- maintenance -------------------------------------------------------------

    def apply_retention(self) -> None:
        now = self.now_ms()
        for topic in self.topics.values():
            # Only this node's replicas (in a cluster, each replica applies retention to its own log).
            for partition in [p for p in topic.partitions if isinstance(p, PartitionReplica)]:
                partition.expire_producers(now)  # idle producers are forgotten (--producer-id-expiry-ms)
                before = partition.start_offset
                try:
                    after = partition.apply_retention(now)
                except OutOfDescriptors as e:  # its roll (segment_ms) waits for the next check
                    self._log.warn("retention of {topic}/{partition} put off: {error}",
                                   topic=topic.name, partition=partition.index, error=e)
                    continue
                except (OSError, StorageFailed) as e:  # e.g. no space to roll: fail-stop
                    self._fatal(e)
                    raise errors.StorageError(f"retention of {topic.name}/{partition.index} failed: {e}") from None
                if after != before:
                    self._log.info(
                        "retention moved {topic}/{partition} start from {before} to {after}",
                        topic=topic.name, partition=partition.index, before=before, after=after,
                    )
        # The offsets topic keeps everything by time and size: its records before the last
        # snapshot of its groups go instead (streamlog.broker.groups).
        self.groups.compact()

    def close(self) -> None:
        self.groups.stop()
        self.directory.host.stop()
        try:
            self.directory.write_producer_snapshots()  # nothing appends any more
        except Exception:
            self._log.failure("writing the producer-state snapshots failed")
        self.storage.close()


def _refuse_internal(name: str, what: str) -> None:
    """C{INTERNAL_TOPIC} for a client's write, creation or deletion of an internal topic (the
    node writes the offsets topic through L{Broker.send}, not through these handlers)."""
    if name in INTERNAL_TOPICS:
        raise errors.InternalTopic(f"topic {name!r} is internal: it cannot be {what} by clients (Poll may read it)",
                                   topic=name)


def _describe_topic(topic: Topic) -> dict[str, Any]:
    return {
        "topic": topic.name,
        **internal_mark(topic.name),
        "partitions": [
            {
                "partition": p.index,
                "log_start_offset": p.start_offset,
                "high_watermark": p.high_watermark,
                "log_end_offset": p.end_offset,
            }
            for p in topic.partitions
        ],
        "config": topic.config.to_dict(),
    }


def _without_index(result: dict[str, Any]) -> dict[str, Any]:
    result.pop("index", None)  # the metadata index, for the forwarding node
    return result


def _malformed(read: Any, offset: int, available: int) -> str | None:
    """Why a read cannot be served as a JSON array of records, or None.

    The storage checks what it reads; this is the last line before bytes go
    out, so that no storage fault can make a Poll answer invalid JSON or an
    offset that does not move.  Cheap: a look at each fragment's first and
    last byte, never a parse (records are served as stored).
    """
    if read.count > available or read.next_offset != offset + read.count:
        return f"{read.count} records ending at {read.next_offset}"
    if bool(read.count) != bool(read.fragments):
        return f"{read.count} records in {len(read.fragments)} fragments"
    for fragment in read.fragments:
        if fragment[:1] != b"{" or fragment[-1:] != b"}":
            return "a fragment that is not a JSON object"
    return None


def _single_result(result: dict[str, Any]) -> dict[str, Any]:
    placed = result["partitions"][0]
    answer = {
        "topic": result["topic"],
        "partition": placed["partition"],
        "offset": placed["base_offset"],
        "timestamp": result["timestamp"],
        "durability": result["durability"],
        **{k: result[k] for k in ("replicas", "replication_factor") if k in result},
    }
    if placed.get("duplicate"):
        answer["duplicate"] = True
    return answer


_PARTITION = itemgetter("partition")

#: An idempotent part its partition refuses: in a SendBatch over several partitions, an error
#: entry for that part (the others are taken), as a part another node leads.
_PART_REFUSALS = (errors.OutOfOrderSequence, errors.ProducerFenced, errors.UnknownProducerId,
                  errors.TooManyProducers)


def _check_sequences(p: wire.SendParams, groups: dict[int, list[wire.Message]]) -> None:
    """An idempotent request names the base sequence of every partition batch it makes, and no other."""
    assert p.sequences is not None
    if -1 in p.sequences:
        return  # a Send: one message, one partition
    if set(p.sequences) != set(groups):
        raise errors.InvalidParams(
            f"'sequences' names partitions {sorted(p.sequences)} but the messages go to {sorted(groups)} "
            "(an idempotent producer names each message's partition)", field="sequences")


def _holding_once_committed(replica: PartitionReplica, index: int) -> Deferred:
    """A duplicate's answer: fires once its original (entry C{index}) is committed, with how many
    replicas hold it (L{PartitionReplica.holding}), as a fresh append's does."""
    return replica.when_committed(index).addCallback(lambda _: replica.holding(index))

"""The node's Prometheus metrics, read from its state when C{/metrics} is scraped.

One L{NodeCollector} per node, registered in a C{CollectorRegistry} of that
node's own (L{node_registry}).  It keeps no state: every scrape reads the
counters the data path keeps (L{streamlog.metrics.requests}, the group
committer's histograms, the Raft host's role counts) and walks the node's
replicas, Raft groups, peer links and consumer groups.  All of it runs on
the reactor thread (Twisted Web renders there), so it sees one consistent
moment of the node and needs no lock.

Cardinality is bounded: series per partition (size, segments, Raft term,
role and commit index, follower lag, a group's lag per partition) are
emitted while the node holds at most C{max_partition_series} partitions
(and a group's committed partitions are as many at most); above that only
the per-topic and per-node aggregates are, and
C{streamlog_metrics_partition_series_limited} says so.  Any client can make a
group (JoinGroup with a made-up name), so the C{group} label is bounded too:
a group with no members and no committed offsets has no series (nothing to
watch: its series end once its members' sessions do), and per-group series
are emitted for at most C{max_group_series} groups, the most lagging first
(an alert watches lag); C{streamlog_metrics_group_series_dropped} counts the
rest.  Names follow the
Prometheus conventions: a C{streamlog_} prefix, base units (C{_seconds},
C{_bytes}), C{_total} for counters.  docs/operations.md lists each one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from streamlog import __version__
from streamlog.metrics.histogram import Histogram
from streamlog.storage.in_flight import KINDS
from streamlog.topic_config import OFFSETS_TOPIC

#: Per-partition series are emitted while the node holds at most this many partitions
#: (--metrics-max-partition-series).
DEFAULT_MAX_PARTITION_SERIES = 256
#: Per-group series are emitted for at most this many groups per node (--metrics-max-group-series).
DEFAULT_MAX_GROUP_SERIES = 1000
#: The metadata group's Raft group id (streamlog.cluster.metadata.META).
META_GROUP = "__meta"
LEADER = "leader"


def _histogram(name: str, doc: str, labels: list[str], items: Iterable[tuple[list[str], Histogram]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in items:
        family.add_metric(values, h.cumulative(), h.total)
    return family


class NodeCollector(Collector):
    """Every streamlog metric of one node.

    @param service: the node's L{streamlog.broker.service.BrokerService}
        (opened: its broker, committer, cluster and recovery are read).
    @param factory: the client listener's factory (open connections), or None.
    @param max_partition_series: see the module docstring.
    @param max_group_series: see the module docstring.
    """

    def __init__(self, service: Any, factory: Any = None,
                 max_partition_series: int = DEFAULT_MAX_PARTITION_SERIES,
                 max_group_series: int = DEFAULT_MAX_GROUP_SERIES) -> None:
        self.service = service
        self.factory = factory
        self.max_partition_series = max_partition_series
        self.max_group_series = max_group_series

    def collect(self) -> Iterator[Metric]:
        broker = self.service.broker
        if broker is None:  # not opened, or closed
            return
        replicas = [r for r in broker.directory.replicas() if hasattr(r, "log")]
        detailed = len(replicas) <= self.max_partition_series
        yield from self._node(broker, detailed)
        yield from self._requests(broker)
        yield from self._storage(broker, replicas, detailed)
        yield from self._raft(broker, replicas, detailed)
        yield from self._peers(broker)
        yield from self._meta_snapshots()
        yield from self._groups(broker, detailed)

    # --- the node and its client edge ---------------------------------------------------

    def _node(self, broker: Any, detailed: bool) -> Iterator[Metric]:
        info = GaugeMetricFamily("streamlog_build_info", "Always 1: the node's version and id.",
                                 labels=["version", "node_id"])
        info.add_metric([__version__, str(self.service.config.node_id)], 1)
        yield info
        recovery = self.service.recovery
        if recovery is not None:
            yield GaugeMetricFamily("streamlog_storage_recovery_seconds",
                                    "Seconds the node's start-up took to open and recover its storage.",
                                    value=recovery.seconds)
        yield GaugeMetricFamily("streamlog_metrics_partition_series_limited",
                                "1 if per-partition series are left out (the node holds more partitions than "
                                "--metrics-max-partition-series), else 0.", value=0 if detailed else 1)

    def _requests(self, broker: Any) -> Iterator[Metric]:
        stats = broker.requests
        requests = CounterMetricFamily("streamlog_requests", "Client requests received, by method "
                                       "('invalid': not a request; 'unknown': no such method).", labels=["method"])
        for method, n in sorted(stats.requests.items()):
            requests.add_metric([method], n)
        yield requests
        failed = CounterMetricFamily("streamlog_request_errors", "Client requests answered with an error, by "
                                     "method and error code.", labels=["method", "code"])
        for (method, code), n in sorted(stats.errors.items()):
            failed.add_metric([method, code], n)
        yield failed
        yield _histogram("streamlog_send_duration_seconds",
                         "Seconds from a Send or SendBatch's arrival to its answer, by method and acks.",
                         ["method", "acks"],
                         ((list(key), h) for key, h in sorted(stats.send_latency.items())))
        yield _histogram("streamlog_poll_duration_seconds",
                         "Seconds from a Poll's arrival to its answer (a long poll's wait included).",
                         [], [([], stats.poll_latency)])
        traffic = broker.traffic
        traffic.forget_except(broker.topics)
        families = [
            CounterMetricFamily("streamlog_topic_messages_in", "Messages appended by Send and SendBatch at this "
                                "node, per topic.", labels=["topic"]),
            CounterMetricFamily("streamlog_topic_bytes_in", "Bytes of stored records appended by Send and "
                                "SendBatch at this node, per topic.", labels=["topic"]),
            CounterMetricFamily("streamlog_topic_messages_out", "Messages served by Poll at this node, per topic.",
                                labels=["topic"]),
            CounterMetricFamily("streamlog_topic_bytes_out", "Bytes of records served by Poll at this node, "
                                "per topic.", labels=["topic"]),
        ]
        for topic, counts in sorted(traffic.by_topic.items()):
            for family, n in zip(families, counts, strict=True):
                family.add_metric([topic], n)
        yield from families
        connections = len(self.factory.connections) if self.factory is not None else 0
        yield GaugeMetricFamily("streamlog_connections_open", "Client connections open now.", value=connections)
        yield GaugeMetricFamily("streamlog_parked_polls", "Long polls parked now, waiting for data.",
                                value=broker.waiting_polls.waiting)

    # --- storage ---------------------------------------------------------------------

    def _storage(self, broker: Any, replicas: list[Any], detailed: bool) -> Iterator[Metric]:
        committer = broker.committer
        if committer is not None:
            yield _histogram("streamlog_fsync_duration_seconds",
                             "Seconds of one log sync, from its hand-off to a sync worker until its result is "
                             "back on the reactor (fsync included; queueing when more logs need syncs than "
                             "--sync-workers).", [], [([], committer.sync_seconds)])
            oldest = GaugeMetricFamily("streamlog_fsync_oldest_in_flight_seconds",
                                       "Seconds since the oldest sync of the kind (log, hard_state: Raft term and "
                                       "vote, checkpoint, meta_snapshot: a metadata snapshot write) not finished "
                                       "yet was handed to a worker (queueing "
                                       "included; 0: none is); a hung fsync shows here, never in "
                                       "streamlog_fsync_duration_seconds.", labels=["kind"])
            for kind in KINDS:
                oldest.add_metric([kind], committer.in_flight.oldest_seconds(kind))
            yield oldest
            yield _histogram("streamlog_group_commit_batch_entries",
                             "Raft entries (stored batches) one log sync made durable: the appends one fsync "
                             "covered.", [], [([], committer.sync_entries)])
        sizes = GaugeMetricFamily("streamlog_topic_size_bytes", "Bytes of this node's logs of the topic "
                                  "(every local partition).", labels=["topic"])
        segments = GaugeMetricFamily("streamlog_topic_segments", "Segment files of this node's logs of the topic.",
                                     labels=["topic"])
        part_sizes = GaugeMetricFamily("streamlog_partition_size_bytes", "Bytes of this node's log of the "
                                       "partition.", labels=["topic", "partition"])
        part_segments = GaugeMetricFamily("streamlog_partition_segments", "Segment files of this node's log of "
                                          "the partition.", labels=["topic", "partition"])
        by_topic: dict[str, list[int]] = {}
        unavailable = 0
        for replica in replicas:
            log = replica.log
            size = int(getattr(log, "size_bytes", 0) or 0)
            count = int(getattr(log, "segment_count", 1 if size else 0) or 0)
            totals = by_topic.setdefault(replica.topic, [0, 0])
            totals[0] += size
            totals[1] += count
            if replica.failed is not None:
                unavailable += 1
            if detailed:
                labels = [replica.topic, str(replica.index)]
                part_sizes.add_metric(labels, size)
                part_segments.add_metric(labels, count)
        for topic, (size, count) in sorted(by_topic.items()):
            sizes.add_metric([topic], size)
            segments.add_metric([topic], count)
        yield from (sizes, segments)
        if detailed:
            yield from (part_sizes, part_segments)
        yield GaugeMetricFamily("streamlog_partitions", "Partitions this node holds a replica of.",
                                value=len(replicas))
        yield GaugeMetricFamily("streamlog_partitions_unavailable", "Local partitions that found damaged synced "
                                "data and refuse to serve (PARTITION_UNAVAILABLE).", value=unavailable)

    # --- Raft --------------------------------------------------------------------------

    def _raft(self, broker: Any, replicas: list[Any], detailed: bool) -> Iterator[Metric]:
        host = broker.directory.host
        groups: dict[str, Any] = dict(getattr(host, "groups", {}) or {})
        where = {r.group: (r.topic, str(r.index)) for r in replicas}
        labels = ["group", "topic", "partition"]
        term = GaugeMetricFamily("streamlog_raft_term", "The Raft group's current term at this node.", labels=labels)
        commit = GaugeMetricFamily("streamlog_raft_commit_index", "The Raft group's commit index at this node.",
                                   labels=labels)
        role = GaugeMetricFamily("streamlog_raft_role", "1 for this node's role in the Raft group (leader, "
                                 "follower, candidate, pre-candidate).", labels=[*labels, "role"])
        lag_entries = GaugeMetricFamily("streamlog_raft_follower_lag_entries", "Entries a follower lacks of the "
                                        "leader's log (groups this node leads).", labels=[*labels, "follower"])
        lag_seconds = GaugeMetricFamily("streamlog_raft_follower_lag_seconds", "Seconds since a follower that "
                                        "lacks entries last caught up more of them (0 when it has them all; "
                                        "groups this node leads).", labels=[*labels, "follower"])
        roles: dict[str, int] = {}
        under = 0
        worst_entries = 0
        worst_seconds = 0.0
        now = host.now() if host is not None else 0.0
        for group, runner in sorted(groups.items()):
            node = runner.node
            roles[node.role] = roles.get(node.role, 0) + 1
            topic, partition = where.get(group, ("", ""))
            show = detailed or group == META_GROUP
            values = [group, topic, partition]
            if show:
                term.add_metric(values, node.term)
                commit.add_metric(values, node.commit_index)
                role.add_metric([*values, node.role], 1)
            if node.role != LEADER:
                continue
            last = node.log.last_index
            progress = node.follower_progress()
            in_sync = 1 + sum(1 for peer in node.voters if peer != node.id and (node.match_index(peer) or 0)
                              >= node.commit_index)
            if in_sync < len(node.voters) and group != META_GROUP:
                under += 1
            for peer, (match, since) in sorted(progress.items()):
                behind = max(0, last - match)
                seconds = max(0.0, now - since) if behind else 0.0
                worst_entries = max(worst_entries, behind)
                worst_seconds = max(worst_seconds, seconds)
                if show:
                    lag_entries.add_metric([*values, peer], behind)
                    lag_seconds.add_metric([*values, peer], seconds)
        yield from (term, commit, role, lag_entries, lag_seconds)
        by_role = GaugeMetricFamily("streamlog_raft_groups", "Raft groups at this node, by this node's role.",
                                    labels=["role"])
        for name, n in sorted(roles.items()):
            by_role.add_metric([name], n)
        yield by_role
        yield GaugeMetricFamily("streamlog_raft_max_follower_lag_entries", "The largest follower lag in entries "
                                "over the groups this node leads.", value=worst_entries)
        yield GaugeMetricFamily("streamlog_raft_max_follower_lag_seconds", "The largest follower lag in seconds "
                                "over the groups this node leads.", value=worst_seconds)
        yield GaugeMetricFamily("streamlog_under_replicated_partitions", "Partitions this node leads with fewer "
                                "voters holding the commit index than voters.", value=under)
        counts = getattr(host, "role_counts", {})
        for key, name, doc in (
            ("elections_started", "streamlog_raft_elections_started", "Elections this node started (became a "
             "candidate, or leader at once as the only voter)."),
            ("elections_won", "streamlog_raft_elections_won", "Elections this node won (became a group's leader)."),
            ("leader_changes", "streamlog_raft_leader_changes", "Times a group's leader, as this node knows it, "
             "became another node (the first leader learned, after the group was made or the node started, is not "
             "counted)."),
        ):
            yield CounterMetricFamily(name, doc, value=counts.get(key, 0))

    def _peers(self, broker: Any) -> Iterator[Metric]:
        host = broker.directory.host
        peers = sorted(getattr(host, "peers", ()) or ())
        connected = GaugeMetricFamily("streamlog_peer_connected", "1 if this node's link to the peer node is up.",
                                      labels=["peer"])
        links = getattr(host, "connections", {}) if peers else {}
        for peer in peers:
            connected.add_metric([peer], 1 if peer in links else 0)
        yield connected
        events = CounterMetricFamily("streamlog_peer_events", "Events of the peer transport (connections, frames "
                                     "sent and received, drops), by kind.", labels=["event"])
        for event, n in sorted((getattr(host, "stats", None) or {}).items()):
            events.add_metric([event], n)
        yield events

    def _meta_snapshots(self) -> Iterator[Metric]:
        """The metadata group's compaction (a cluster node: L{streamlog.cluster.meta_snapshots})."""
        compactor = getattr(self.service.cluster, "compactor", None) if self.service.cluster is not None else None
        if compactor is None:  # a node alone, or a cluster node before Raft runs
            return
        stats = compactor.stats
        yield CounterMetricFamily("streamlog_meta_snapshots_written", "Snapshots of the cluster metadata this "
                                  "node took and wrote (every --metadata-snapshot-entries applied entries).",
                                  value=stats.get("written", 0))
        yield CounterMetricFamily("streamlog_meta_snapshot_installs", "Metadata snapshots this node received from "
                                  "the controller (InstallSnapshot) and stored as its newest (one not newer than the "
                                  "snapshot held is not stored, nor counted).", value=stats.get("installed", 0))
        yield CounterMetricFamily("streamlog_meta_snapshots_refused", "Metadata snapshot files found damaged (or "
                                  "contradicting the log) at start-up and set aside (one that could not be set aside "
                                  "is not counted: a warning says so).", value=stats.get("refused", 0))
        yield GaugeMetricFamily("streamlog_meta_snapshot_index", "The metadata log index the newest snapshot "
                                "this node holds is as of (0: none).", value=compactor.index)
        yield GaugeMetricFamily("streamlog_meta_snapshot_bytes", "Bytes of the newest metadata snapshot this "
                                "node holds (what InstallSnapshot sends a follower).", value=len(compactor.data))

    # --- consumer groups -----------------------------------------------------------

    def _groups(self, broker: Any, detailed: bool) -> Iterator[Metric]:
        members = GaugeMetricFamily("streamlog_group_members", "Members of the consumer group (groups this node "
                                    "coordinates).", labels=["group"])
        rebalances = CounterMetricFamily("streamlog_group_rebalances", "Rebalances of the consumer group since it "
                                         "was made (its generation).", labels=["group"])
        lag = GaugeMetricFamily("streamlog_group_lag_records", "Records between the group's committed offset and "
                                "the partition's high watermark (partitions this node holds).",
                                labels=["group", "topic", "partition"])
        topic_lag = GaugeMetricFamily("streamlog_group_topic_lag_records", "The group's lag summed over the "
                                      "topic's partitions this node holds.", labels=["group", "topic"])
        offsets = broker.topics.get(OFFSETS_TOPIC)
        load = getattr(broker.groups, "load_led", None)
        if load is not None:  # loaded as the node took over; this retries a replay that failed
            load()
        shards = broker.groups.shards
        shown: list[tuple[int, str, int, int, dict[str, int], list[tuple[str, int, int]]]] = []
        known = 0
        if offsets is not None:
            for replica in offsets.partitions:
                shard = shards.get(getattr(replica, "index", -1))
                if shard is None or not getattr(replica, "leads", False) or shard.term != replica.term \
                        or shard.replay_at is not None:
                    continue
                for name in set(shard.offsets.groups) | set(shard.coordinator.groups):
                    known += 1
                    state = shard.coordinator.group(name)
                    count = len(state.members) if state is not None else 0
                    committed = shard.offsets.fetch(name)
                    if not count and not committed:
                        continue  # nothing to watch: no consumer, no offsets (a made-up name, say)
                    sums: dict[str, int] = {}
                    parts: list[tuple[str, int, int]] = []
                    for (topic, partition), c in sorted(committed.items()):
                        held = broker.topics.get(topic)
                        if held is None or partition >= len(held.partitions):
                            continue
                        local = held.partitions[partition]
                        if not hasattr(local, "log"):
                            continue
                        behind = max(0, local.high_watermark - c.offset)
                        sums[topic] = sums.get(topic, 0) + behind
                        if detailed and len(committed) <= self.max_partition_series:
                            parts.append((topic, partition, behind))
                    shown.append((sum(sums.values()), name, count, state.generation if state is not None else 0,
                                  sums, parts))
        shown.sort(key=lambda g: (-g[0], g[1]))  # the most lagging first: what an alert watches
        dropped = max(0, len(shown) - self.max_group_series)
        for _, name, count, generation, sums, parts in sorted(shown[:self.max_group_series], key=lambda g: g[1]):
            members.add_metric([name], count)
            rebalances.add_metric([name], generation)
            for topic, partition, behind in parts:
                lag.add_metric([name, topic, str(partition)], behind)
            for topic, total in sorted(sums.items()):
                topic_lag.add_metric([name, topic], total)
        yield GaugeMetricFamily("streamlog_groups_coordinated", "Consumer groups this node coordinates, series "
                                "or not (empty ones included: DeleteGroup removes a group).", value=known)
        yield GaugeMetricFamily("streamlog_metrics_group_series_dropped", "Groups with members or committed "
                                "offsets whose series are left out: more than --metrics-max-group-series have "
                                "them (the most lagging are shown).", value=dropped)
        yield from (members, rebalances, lag, topic_lag)


def node_registry(service: Any, factory: Any = None,
                  max_partition_series: int = DEFAULT_MAX_PARTITION_SERIES,
                  process: bool = True, max_group_series: int = DEFAULT_MAX_GROUP_SERIES) -> CollectorRegistry:
    """A registry of the node's own: its L{NodeCollector} and (with C{process}) the
    process's CPU, memory and descriptors (C{process_*}, prometheus_client's collector)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(service, factory, max_partition_series, max_group_series))
    if process:
        from prometheus_client import ProcessCollector

        ProcessCollector(registry=registry)
    return registry

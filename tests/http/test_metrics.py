"""/metrics values move as the node works: requests, latency, traffic, storage, Raft, groups.

A broker on a Clock with StringTransport connections (BrokerHarness), or three
cluster nodes over in-memory peer links (ClusterHarness); the node's registry is
read as a scrape would read it.
"""

from __future__ import annotations

import orjson
import pytest
from http_support import get
from metrics_support import Scrape, SyncedLog
from prometheus_client.parser import text_string_to_metric_families

from streamlog.http.metrics import MetricsResource
from streamlog.metrics.histogram import Histogram
from streamlog.storage.group_commit import FsyncPolicy, GroupCommitter
from streamlog.testing import BrokerHarness, ManualThreads


def test_a_histogram_counts_each_value_in_the_first_bucket_it_fits_upper_bounds_inclusive():
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(value)
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert h.count == 5 and h.total == pytest.approx(4.65)
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))


def test_requests_and_errors_are_counted_by_method_and_code(harness):
    scrape = Scrape(harness.broker, harness.factory)
    conn = harness.connect()
    conn.call("Send", {"topic": "t", "value": 1})
    conn.call("Send", {"topic": "t", "value": 2, "acks": "leader"})
    conn.call("Poll", {"topic": "t", "partition": 0, "offset": 0})
    conn.call("Poll", {"topic": "nope", "partition": 0, "offset": 0})
    conn.call("Frobnicate", {})
    conn.send_line(b"not json")
    conn.answers()
    assert scrape.value("streamlog_requests_total", method="Send") == 2
    assert scrape.value("streamlog_requests_total", method="Poll") == 2
    assert scrape.value("streamlog_requests_total", method="unknown") == 1
    assert scrape.value("streamlog_requests_total", method="invalid") == 1
    assert scrape.value("streamlog_request_errors_total", method="Poll", code="UNKNOWN_TOPIC") == 1
    assert scrape.value("streamlog_request_errors_total", method="unknown", code="METHOD_NOT_FOUND") == 1
    assert scrape.value("streamlog_request_errors_total", method="invalid", code="PARSE_ERROR") == 1
    assert scrape.value("streamlog_request_errors_total", method="Send", code="UNKNOWN_TOPIC") is None
    assert scrape.value("streamlog_send_duration_seconds_count", method="Send", acks="all") == 1
    assert scrape.value("streamlog_send_duration_seconds_count", method="Send", acks="leader") == 1
    assert scrape.value("streamlog_poll_duration_seconds_count") == 2


def test_a_long_polls_latency_is_its_wait_and_it_counts_as_parked_meanwhile(harness, clock):
    scrape = Scrape(harness.broker, harness.factory)
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 1})
    conn.request("Poll", {"topic": "t", "partition": 0, "offset": 0, "max_wait_ms": 2000})
    assert scrape.value("streamlog_parked_polls") == 1
    assert scrape.value("streamlog_connections_open") == 1
    clock.advance(0.75)
    conn.request("Send", {"topic": "t", "value": "wakes it"})
    harness.settle()
    assert [a for a in conn.answers() if "messages" in a.get("result", {})]
    assert scrape.value("streamlog_parked_polls") == 0
    assert scrape.value("streamlog_poll_duration_seconds_sum") == pytest.approx(0.75)
    assert scrape.value("streamlog_poll_duration_seconds_bucket", le="0.5") == 0
    assert scrape.value("streamlog_poll_duration_seconds_bucket", le="1.0") == 1
    conn.lose()
    assert scrape.value("streamlog_connections_open") == 0


def test_messages_and_bytes_in_and_out_are_counted_per_topic(harness):
    scrape = Scrape(harness.broker, harness.factory)
    conn = harness.connect()
    conn.call("SendBatch", {"topic": "a", "messages": [{"value": i} for i in range(3)]})
    conn.call("Send", {"topic": "b", "value": "x" * 100})
    conn.request("Poll", {"topic": "a", "partition": 0, "offset": 0})
    answer = orjson.loads(conn.transport.value().split(b"\n")[0])
    assert len(answer["result"]["messages"]) == 3
    assert scrape.value("streamlog_topic_messages_in_total", topic="a") == 3
    assert scrape.value("streamlog_topic_messages_in_total", topic="b") == 1
    assert scrape.value("streamlog_topic_messages_out_total", topic="a") == 3
    assert scrape.value("streamlog_topic_messages_out_total", topic="b") == 0
    # Stored records are served as stored: what went in is what came out, byte for byte.
    assert scrape.value("streamlog_topic_bytes_in_total", topic="a") == scrape.value(
        "streamlog_topic_bytes_out_total", topic="a") > 0
    assert scrape.value("streamlog_topic_bytes_in_total", topic="b") > 100
    conn.call("DeleteTopic", {"topic": "b"})
    assert scrape.value("streamlog_topic_messages_in_total", topic="b") is None  # its series end


def test_storage_size_and_segments_per_partition_and_topic(harness):
    scrape = Scrape(harness.broker, harness.factory)
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 2})
    for i in range(10):
        conn.call("Send", {"topic": "t", "value": i, "partition": i % 2})
    logs = [p.log for p in harness.broker.topics["t"].partitions]
    for i, log in enumerate(logs):
        assert scrape.value("streamlog_partition_size_bytes", topic="t", partition=str(i)) == log.size_bytes > 0
    assert scrape.value("streamlog_topic_size_bytes", topic="t") == sum(log.size_bytes for log in logs)
    assert scrape.value("streamlog_partitions") == 2
    assert scrape.value("streamlog_partitions_unavailable") == 0
    assert scrape.value("streamlog_storage_recovery_seconds") == 0.25


def test_per_partition_series_are_left_out_above_the_limit_aggregates_stay(harness):
    scrape = Scrape(harness.broker, harness.factory, max_partition_series=2)
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 2})
    assert scrape.value("streamlog_metrics_partition_series_limited") == 0
    assert len(scrape.samples("streamlog_raft_term")) == 2
    conn.call("CreateTopic", {"topic": "u", "partitions": 1})
    assert scrape.value("streamlog_metrics_partition_series_limited") == 1
    for name in ("streamlog_partition_size_bytes", "streamlog_partition_segments", "streamlog_raft_term",
                 "streamlog_raft_role", "streamlog_raft_commit_index"):
        assert scrape.samples(name) == {}, name
    assert scrape.value("streamlog_topic_size_bytes", topic="u") is not None
    assert scrape.value("streamlog_raft_groups", role="leader") == 3


def test_raft_groups_of_a_node_alone_lead_and_their_commits_move(harness):
    scrape = Scrape(harness.broker, harness.factory)
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 1})
    harness.settle()
    group = harness.broker.topics["t"].partitions[0].group
    before = scrape.value("streamlog_raft_commit_index", group=group, topic="t", partition="0")
    conn.call("Send", {"topic": "t", "value": 1})
    harness.settle()
    assert scrape.value("streamlog_raft_commit_index", group=group, topic="t", partition="0") == before + 1
    assert scrape.value("streamlog_raft_role", group=group, topic="t", partition="0", role="leader") == 1
    assert scrape.value("streamlog_raft_term", group=group, topic="t", partition="0") >= 1
    assert scrape.value("streamlog_raft_elections_won_total") == scrape.value(
        "streamlog_raft_elections_started_total") == 1
    assert scrape.value("streamlog_raft_leader_changes_total") == 0  # a first leader is no change
    assert scrape.value("streamlog_under_replicated_partitions") == 0
    assert scrape.samples("streamlog_peer_connected") == {}  # no peers


def test_group_members_rebalances_and_lag(harness):
    scrape = Scrape(harness.broker, harness.factory)
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 1})
    for i in range(5):
        conn.call("Send", {"topic": "t", "value": i})
    harness.settle()
    joined = conn.call("JoinGroup", {"group": "g", "topics": ["t"]})["result"]
    harness.settle()
    conn.answers()
    rid = conn.request("CommitOffsets", {"group": "g", "member_id": joined["member_id"],
                                         "generation": joined["generation"],
                                         "offsets": [{"topic": "t", "partition": 0, "offset": 2}]})
    harness.settle()
    assert [a for a in conn.answers() if a["id"] == rid and "result" in a]
    assert scrape.value("streamlog_group_members", group="g") == 1
    assert scrape.value("streamlog_group_rebalances_total", group="g") == joined["generation"] >= 1
    assert scrape.value("streamlog_group_lag_records", group="g", topic="t", partition="0") == 3
    assert scrape.value("streamlog_group_topic_lag_records", group="g", topic="t") == 3
    harness.broker.groups.stop()  # its session timer


def test_the_committer_times_each_sync_and_counts_the_entries_it_made_durable(clock):
    threads = ManualThreads()
    committer = GroupCommitter(FsyncPolicy("always"), clock=clock, run_in_thread=threads, checkpoint_interval=None)

    log = SyncedLog()
    done = committer.wait_index(log, 3)
    clock.advance(0)  # the round
    clock.advance(0.004)  # the sync takes 4 ms
    threads.run_all()
    assert done.called
    assert committer.sync_seconds.count == 1 and committer.sync_seconds.total == pytest.approx(0.004)
    assert committer.sync_entries.cumulative()[:3] == [("1.0", 0), ("2.0", 0), ("4.0", 1)]


def test_metrics_resource_serves_the_text_format_that_parses(harness):
    scrape = Scrape(harness.broker, harness.factory)
    harness.connect().call("Send", {"topic": "t", "value": 1})
    answer = get(MetricsResource(scrape.registry), "/")
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}
    assert families["streamlog_requests"].type == "counter"
    assert families["streamlog_send_duration_seconds"].type == "histogram"
    assert all(name.startswith("streamlog_") for name in families)


def test_two_nodes_in_one_process_keep_their_metrics_apart(clock):
    first, second = BrokerHarness(clock=clock), BrokerHarness(clock=clock)
    try:
        a, b = Scrape(first.broker, first.factory), Scrape(second.broker, second.factory)
        first.connect().call("Send", {"topic": "t", "value": 1})
        assert a.value("streamlog_requests_total", method="Send") == 1
        assert b.value("streamlog_requests_total", method="Send") is None
    finally:
        first.stop()
        second.stop()


# --- a cluster: follower lag, under-replication, peer links ------------------------------


def test_a_dead_follower_shows_as_lag_under_replication_and_a_down_peer_link(cluster):
    from streamlog.cluster.metadata import partition_group

    answer = cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 1, "replication_factor": 3})
    assert "result" in answer, answer
    group = partition_group(cluster.nodes[1].state.topics["t"].topic_id, 0)
    cluster.run_until(lambda: cluster.leader_of("t") is not None, timeout=20)
    at = cluster.leader_of("t")
    scrape = Scrape(cluster.brokers[at], cluster.factories[at], cluster=cluster.nodes[at], node_id=at)
    cluster.run_until(lambda: scrape.value("streamlog_under_replicated_partitions") == 0, timeout=10)
    victim = next(i for i in cluster.nodes if i != at)
    member = next(m for m in cluster.nodes[at].cores[group].voters if m.startswith(f"{victim}."))
    assert scrape.value("streamlog_peer_connected", peer=str(victim)) == 1
    cluster.kill(victim)
    for i in range(4):
        assert "result" in cluster.call(at, "Send", {"topic": "t", "value": i})
    cluster.run(1.0)
    labels = {"group": group, "topic": "t", "partition": "0", "follower": member}
    assert scrape.value("streamlog_raft_follower_lag_entries", **labels) == 4
    assert scrape.value("streamlog_raft_follower_lag_seconds", **labels) >= 0.9
    assert scrape.value("streamlog_raft_max_follower_lag_entries") >= 4
    assert scrape.value("streamlog_under_replicated_partitions") == 1
    assert scrape.value("streamlog_peer_connected", peer=str(victim)) == 0
    assert scrape.value("streamlog_raft_role", group="__meta", topic="", partition="",
                        role=cluster.nodes[at].cores["__meta"].role) == 1


def test_leader_changes_count_a_failover_not_the_first_leaders(cluster):
    from streamlog.cluster.metadata import partition_group

    assert "result" in cluster.call(1, "CreateTopic", {"topic": "t", "partitions": 1, "replication_factor": 3})
    group = partition_group(cluster.nodes[1].state.topics["t"].topic_id, 0)
    cluster.run_until(lambda: all(group in n.cores and n.cores[group].leader_id is not None
                                  for n in cluster.nodes.values()), timeout=20)
    cluster.run(3.0)  # the planner's move to the preferred leader, if any, is over
    scrapes = {i: Scrape(cluster.brokers[i], cluster.factories[i], cluster=cluster.nodes[i], node_id=i)
               for i in cluster.nodes}
    before = {i: s.value("streamlog_raft_leader_changes_total") for i, s in scrapes.items()}
    at = cluster.leader_of("t")
    cluster.kill(at)
    survivors = [i for i in cluster.nodes if i != at]
    cluster.run_until(lambda: all((cluster.nodes[i].cores[group].leader_id or f"{at}.").split(".")[0] != str(at)
                                  for i in survivors), timeout=20)
    for i in survivors:  # t-0's leader moved (and the metadata group's, if the dead node led it)
        assert scrapes[i].value("streamlog_raft_leader_changes_total") >= before[i] + 1


def test_the_first_leader_learned_is_no_change_another_one_is(harness):
    """The counting rule, on this node's runner of a group: a leader learned (first) counts
    nothing; another node leading counts one; losing the leader and learning it again, nothing."""
    from streamlog.raft.core import CANDIDATE, FOLLOWER, RoleChange

    host = harness.broker.directory.host
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 1})
    harness.settle()
    runner = host.groups[harness.broker.topics["t"].partitions[0].group]
    runner.known_leader = None  # as on a node that just started and knows no leader of the group yet
    before = host.role_counts["leader_changes"]
    for role, leader, changes in ((FOLLOWER, "2.a", 0), (FOLLOWER, "3.b", 1), (CANDIDATE, None, 1),
                                  (FOLLOWER, "3.b", 1), (FOLLOWER, "2.a", 2)):
        list(host._role_changed(runner, RoleChange(role, 5, leader)) or ())
        assert host.role_counts["leader_changes"] - before == changes, (role, leader)


class CountingRegistry:
    """A registry whose collector counts how often a scrape ran it."""

    def __init__(self, registry):
        self.registry = registry
        self.collected = 0

    def collect(self):
        self.collected += 1
        return self.registry.collect()


def test_scrapes_within_the_cache_interval_reuse_one_rendering(harness, clock):
    scrape = Scrape(harness.broker, harness.factory)
    counting = CountingRegistry(scrape.registry)
    resource = MetricsResource(counting, cache_seconds=1.0, clock=clock)
    conn = harness.connect()
    conn.call("Send", {"topic": "t", "value": 1})
    first = get(resource, "/")
    for _ in range(50):  # a scraper 50 times as eager costs no more
        clock.advance(0.01)
        assert get(resource, "/").body == first.body
    assert counting.collected == 1
    conn.call("Send", {"topic": "t", "value": 2})
    clock.advance(0.5)  # past the interval: the next scrape reads the node again
    fresh = get(resource, "/")
    assert counting.collected == 2 and fresh.body != first.body
    families = {f.name: f for f in text_string_to_metric_families(fresh.body.decode())}
    assert {s.value for s in families["streamlog_requests"].samples if s.labels.get("method") == "Send"} == {2}


def test_each_exposition_format_is_cached_apart_and_zero_turns_the_cache_off(harness, clock):
    scrape = Scrape(harness.broker, harness.factory)
    counting = CountingRegistry(scrape.registry)
    resource = MetricsResource(counting, cache_seconds=1.0, clock=clock)
    text = get(resource, "/")
    openmetrics = get(resource, "/", headers={b"accept": b"application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert text.headers["content-type"].startswith("text/plain") and counting.collected == 2
    get(resource, "/", headers={b"accept": b"application/openmetrics-text; version=1.0.0"})
    assert counting.collected == 2
    uncached = MetricsResource(counting, cache_seconds=0.0, clock=clock)
    get(uncached, "/")
    get(uncached, "/")
    assert counting.collected == 4

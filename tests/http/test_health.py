"""/health and /ready: the readiness logic over a node's state, and the answers over HTTP."""

from __future__ import annotations

from http_support import get, http_get
from metrics_support import service_of

from streamlog.http.health import MAX_LISTED, HealthResource, ReadyResource, readiness
from streamlog.storage.errors import StorageCorrupted
from streamlog.testing import ClusterHarness, ServerProcess, wait_for


def test_a_node_alone_with_its_partitions_led_is_ready(harness):
    harness.connect().call("CreateTopic", {"topic": "t", "partitions": 3})
    harness.settle()
    ready, body = readiness(service_of(harness.broker))
    assert ready and body["checks"]["partitions"] == {"ok": True, "should_lead": 3, "unavailable": 0}
    assert body["checks"]["cluster"] == {"ok": True, "nodes": 1}
    answer = get(ReadyResource(service_of(harness.broker)), "/")
    assert answer.status == 200 and answer.json()["ready"] is True


def test_a_partition_whose_storage_failed_makes_the_node_not_ready_and_says_which(harness):
    harness.connect().call("CreateTopic", {"topic": "t", "partitions": 2})
    harness.settle()
    replica = harness.broker.topics["t"].partitions[1]
    replica.log.failed = StorageCorrupted("t-1/0.log", 4096, "bad CRC")  # as a log that found damage says
    ready, body = readiness(service_of(harness.broker))
    assert not ready
    check = body["checks"]["partitions"]
    assert check["ok"] is False and check["unavailable"] == 1
    assert check["reason"] == "1 of the 2 partitions this node should lead are unavailable"
    assert check["partitions"] == [{"topic": "t", "partition": 1,
                                    "reason": "its storage refuses to serve: t-1/0.log at byte 4096: bad CRC"}]
    answer = get(ReadyResource(service_of(harness.broker)), "/")
    assert answer.status == 503 and answer.json()["checks"]["partitions"]["unavailable"] == 1


def test_the_list_of_unavailable_partitions_is_bounded(harness):
    harness.connect().call("CreateTopic", {"topic": "t", "partitions": MAX_LISTED + 5})
    harness.settle()
    for replica in harness.broker.topics["t"].partitions:
        replica.log.failed = StorageCorrupted("x.log", 0, "gone")
    check = readiness(service_of(harness.broker))[1]["checks"]["partitions"]
    assert check["unavailable"] == MAX_LISTED + 5 and len(check["partitions"]) == MAX_LISTED


def test_a_stopping_node_or_one_without_storage_is_not_ready(harness):
    service = service_of(harness.broker)
    harness.broker.stopping = True
    ready, body = readiness(service)
    assert not ready and body["checks"]["storage"] == {"ok": False, "reason": "the node is stopping"}
    service.broker = None
    ready, body = readiness(service)
    assert not ready and body["checks"]["storage"]["reason"] == "the storage is not open"


def test_health_answers_while_the_reactor_does():
    answer = get(HealthResource(7, started=0.0), "/")
    body = answer.json()
    assert answer.status == 200 and body["status"] == "ok" and body["node_id"] == 7 and body["uptime_seconds"] > 0


def test_a_cluster_node_is_ready_once_it_knows_the_cluster_and_leads_what_it_should():
    c = ClusterHarness(3)
    try:
        service = service_of(c.brokers[2], cluster=c.nodes[2], node_id=2)
        before = readiness(service)
        c.run_until_formed()
        assert "result" in c.call(1, "CreateTopic", {"topic": "t", "partitions": 3, "replication_factor": 3})
        c.run_until(lambda: "t" in c.nodes[2].state.topics and readiness(service)[0], timeout=20)
        ready, body = readiness(service)
        assert body["checks"]["cluster"]["nodes"] == 3
        preferred = [p.replicas[0] for p in c.nodes[2].state.topics["t"].partitions]
        assert body["checks"]["partitions"]["should_lead"] == preferred.count(2) >= 1
        # A node that has not heard of its cluster yet was not ready, and said why.
        assert not before[0] and before[1]["checks"]["cluster"]["ok"] is False
        # Partitions node 2 should lead with no leader (two nodes gone: no majority) make it not ready.
        c.kill(1)
        c.kill(3)
        c.run(3.0)
        ready, body = readiness(service)
        assert not ready
        assert body["checks"]["cluster"]["ok"] is False or body["checks"]["partitions"]["ok"] is False
    finally:
        c.stop()


def test_a_real_node_answers_health_ready_and_metrics_over_http(tmp_path):
    server = ServerProcess(tmp_path, ["--storage", "memory"], http=True)
    try:
        health = http_get(server.http_port, "/health")
        assert health.status == 200 and health.json()["status"] == "ok"
        ready = wait_for(lambda: (a := http_get(server.http_port, "/ready")).status == 200 and a, 10, "/ready")
        assert ready.json()["ready"] is True
        metrics = http_get(server.http_port, "/metrics")
        assert metrics.status == 200 and b"streamlog_build_info{" in metrics.body
        assert b"process_resident_memory_bytes" in metrics.body
    finally:
        server.stop()

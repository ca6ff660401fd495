"""C{/health} (the process is alive) and C{/ready} (it can serve), with JSON bodies that say why not.

Liveness is what a supervisor restarts on: if the reactor answers this, the
node is alive (a node whose disk failed does not linger: it exits, see
L{streamlog.broker.service.fail_stop}).  Readiness is what a load balancer
or a rolling restart waits for, and it needs three things:

  - C{storage}: the storage is open and recovered, and the node is not stopping;
  - C{cluster}: the node knows its cluster (a node alone always does; a
    cluster node once Raft runs, the metadata group has a leader and the
    metadata names this node);
  - C{partitions}: no partition this node should lead is unavailable, where
    "should lead" is every partition for a node alone and, in a cluster, those
    whose preferred leader (first replica) it is; unavailable means its
    storage found damage, it has no local replica yet, or its group has no
    leader.  At most L{MAX_LISTED} are named in the answer.

L{readiness} is the logic, over the node's plain state; the resources are
thin.  Both answer 200 or 503, always with a JSON body.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from streamlog import __version__
from streamlog.http.root import json_body

#: Unavailable partitions named in a /ready answer (the count is always whole).
MAX_LISTED = 20
META_GROUP = "__meta"


def readiness(service: Any) -> tuple[bool, dict[str, Any]]:
    """Whether the node of C{service} (a L{BrokerService}) is ready, and the checks' details."""
    checks = {"storage": _storage(service), "cluster": _cluster(service), "partitions": _partitions(service)}
    ready = all(check["ok"] for check in checks.values())
    return ready, {"ready": ready, "checks": checks}


def _storage(service: Any) -> dict[str, Any]:
    broker = service.broker
    if broker is None or service.recovery is None:
        return {"ok": False, "reason": "the storage is not open"}
    if broker.stopping:
        return {"ok": False, "reason": "the node is stopping"}
    return {"ok": True, "recovery_seconds": round(service.recovery.seconds, 6)}


def _cluster(service: Any) -> dict[str, Any]:
    cluster = service.cluster
    if cluster is None:
        return {"ok": True, "nodes": 1}
    if cluster.stopped:
        return {"ok": False, "reason": "the node is stopping"}
    if cluster.refused is not None:
        return {"ok": False, "reason": f"refused by the cluster: {cluster.refused}"}
    if cluster.host is None or cluster.state is None:
        return {"ok": False, "reason": "the cluster is not known yet (waiting for the peers' hellos, or the "
                                       "cluster's bootstrap)"}
    meta = cluster.host.groups.get(META_GROUP)
    if meta is None or meta.node.leader_id is None:
        return {"ok": False, "reason": "the metadata group has no leader"}
    if cluster.node_id not in cluster.state.nodes:
        return {"ok": False, "reason": f"node {cluster.node_id} is not registered in the metadata yet"}
    return {"ok": True, "nodes": len(cluster.state.nodes), "controller_leader": meta.node.leader_id}


def _partitions(service: Any) -> dict[str, Any]:
    broker = service.broker
    if broker is None:
        return {"ok": False, "reason": "the storage is not open"}
    cluster = service.cluster
    should: list[tuple[str, int, Any]] = []  # (topic, partition, local replica or None)
    if cluster is None:
        for replica in broker.directory.replicas():
            should.append((replica.topic, replica.index, replica))
    elif cluster.state is not None:
        for name, info in sorted(cluster.state.topics.items()):
            topic = broker.topics.get(name)
            for index, placement in enumerate(info.partitions):
                if placement.replicas and placement.replicas[0] == cluster.node_id:
                    local = topic.partitions[index] if topic is not None and index < len(topic.partitions) else None
                    should.append((name, index, local if hasattr(local, "log") else None))
    unavailable = []
    for topic, index, replica in should:
        why = _unavailable(replica)
        if why is not None:
            unavailable.append({"topic": topic, "partition": index, "reason": why})
    check: dict[str, Any] = {"ok": not unavailable, "should_lead": len(should), "unavailable": len(unavailable)}
    if unavailable:
        check["reason"] = f"{len(unavailable)} of the {len(should)} partitions this node should lead are unavailable"
        check["partitions"] = unavailable[:MAX_LISTED]
    return check


def _unavailable(replica: Any) -> str | None:
    if replica is None:
        return "no local replica yet"
    if replica.failed is not None:
        return f"its storage refuses to serve: {replica.failed}"
    if getattr(replica, "closed_error", None) is not None:
        return "closed"
    if replica.leader is None:
        return "no leader (an election is on)"
    return None


class HealthResource(Resource):
    """C{GET /health}: 200 while the node's reactor answers."""

    isLeaf = True

    def __init__(self, node_id: int, started: float | None = None) -> None:
        super().__init__()
        self.node_id = node_id
        self.started = time.monotonic() if started is None else started

    def render_GET(self, request: Request) -> bytes:
        return json_body(request, 200, {"status": "ok", "node_id": self.node_id, "version": __version__,
                                        "uptime_seconds": round(time.monotonic() - self.started, 3)})


class ReadyResource(Resource):
    """C{GET /ready}: 200 when L{readiness} holds, else 503; the body says which check fails and why."""

    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        ready, body = readiness(self.service)
        return json_body(request, 200 if ready else 503, body)

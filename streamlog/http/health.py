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
    leader.  At most L{MAX_LISTED} are named in the answer;
  - C{disk}: no sync (fsync) of any kind has been in a worker for longer than
    C{--ready-max-sync-seconds} (L{DEFAULT_READY_MAX_SYNC_SECONDS}): a log
    sync, a Raft hard-state save (term and vote), a checkpoint or a cluster
    node's metadata snapshot write (L{streamlog.storage.in_flight}).  A hung disk does not fail a sync, it
    never finishes one: the node's reactor and its Raft heartbeats go on, so
    without this check the node would look ready while every write waiting
    for a log sync goes unanswered, or its groups cannot elect while a
    hard-state save hangs.

C{/health} stays 200 on a hung sync (and says the sync's age): a restart
does not mend a disk, and a process stuck in the kernel's fsync may not even
die of a kill; the supervisor should not loop on it.

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
#: /ready fails while a sync of any kind (a log sync, a Raft hard-state save, a checkpoint, a metadata
#: snapshot write) has been in a worker longer than this many seconds (--ready-max-sync-seconds).
DEFAULT_READY_MAX_SYNC_SECONDS = 10.0


def readiness(service: Any) -> tuple[bool, dict[str, Any]]:
    """Whether the node of C{service} (a L{BrokerService}) is ready, and the checks' details."""
    checks = {"storage": _storage(service), "cluster": _cluster(service), "partitions": _partitions(service),
              "disk": _disk(service)}
    ready = all(check["ok"] for check in checks.values())
    return ready, {"ready": ready, "checks": checks}


def _storage(service: Any) -> dict[str, Any]:
    broker = service.broker
    if broker is None or service.recovery is None:
        return {"ok": False, "reason": "the storage is not open"}
    if broker.stopping:
        return {"ok": False, "reason": "the node is stopping"}
    return {"ok": True, "recovery_seconds": round(service.recovery.seconds, 6)}


def oldest_sync(service: Any) -> tuple[float, str] | None:
    """(seconds, kind) of the node's oldest sync in flight, (0.0, "") when none is; None without a
    committer (memory storage).  Every kind counts: a log sync, a Raft hard-state save, a checkpoint, a
    metadata snapshot write."""
    committer = getattr(service.broker, "committer", None) if service.broker is not None else None
    if committer is None:
        return None
    oldest = committer.in_flight.oldest()
    if oldest is None:
        return 0.0, ""
    return round(float(oldest[0]), 3), oldest[1]


def oldest_sync_seconds(service: Any) -> float | None:
    """Seconds the node's oldest sync in flight has taken so far (None: no committer, memory storage)."""
    oldest = oldest_sync(service)
    return None if oldest is None else oldest[0]


#: What a hung sync of each kind holds back, for /ready's reason.
_STALLS = {"log": "writes that wait for it are not answered",
           "hard_state": "its Raft groups cannot vote or elect until it is durable",
           "checkpoint": "that log gets no newer checkpoint, a truncation, retention or close of it may block "
                         "the node's reactor until it ends (they take the lock a checkpoint write holds), and "
                         "a periodic pass's checkpoint also holds that log's later syncs and the rest of the pass",
           "meta_snapshot": "the metadata log is not compacted, and no newer snapshot is taken, until it is durable"}


def _disk(service: Any) -> dict[str, Any]:
    oldest = oldest_sync(service)
    if oldest is None:
        return {"ok": True}
    age, kind = oldest
    limit = float(getattr(service.config, "ready_max_sync_seconds", DEFAULT_READY_MAX_SYNC_SECONDS))
    if age <= limit:
        return {"ok": True, "oldest_sync_seconds": age}
    what = {"log": "a log sync (fsync)", "hard_state": "a Raft hard-state save (term and vote, fsync)",
            "checkpoint": "a checkpoint sync",
            "meta_snapshot": "a metadata snapshot write (fsync)"}.get(kind, "a sync")
    return {"ok": False, "oldest_sync_seconds": age, "limit_seconds": limit, "sync": kind,
            "reason": f"{what} has been in flight for {age:g} s, more than --ready-max-sync-seconds "
                      f"({limit:g} s): {_STALLS.get(kind, 'what waits for it is not answered')}"}


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
    """C{GET /health}: 200 while the node's reactor answers (with C{service}, the oldest sync's age too)."""

    isLeaf = True

    def __init__(self, node_id: int, started: float | None = None, service: Any = None) -> None:
        super().__init__()
        self.node_id = node_id
        self.started = time.monotonic() if started is None else started
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        body: dict[str, Any] = {"status": "ok", "node_id": self.node_id, "version": __version__,
                                "uptime_seconds": round(time.monotonic() - self.started, 3)}
        age = oldest_sync_seconds(self.service) if self.service is not None else None
        if age is not None:
            body["oldest_sync_seconds"] = age
        return json_body(request, 200, body)


class ReadyResource(Resource):
    """C{GET /ready}: 200 when L{readiness} holds, else 503; the body says which check fails and why."""

    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        ready, body = readiness(self.service)
        return json_body(request, 200 if ready else 503, body)

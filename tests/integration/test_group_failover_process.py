"""Three real twistd nodes: the coordinator of a group is SIGKILLed; its members carry on at the
new coordinator with their ids, generation and partitions (membership is in the offsets topic),
and no partition is granted to two members at any time."""

from __future__ import annotations

import signal
import time

from streamlog.testing import LineClient, wait_for
from tests.integration.test_cluster_process import formed, free_ports, start_cluster

RETRY = ("NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE", "LEADER_NOT_AVAILABLE", "NOT_CONTROLLER", "NOT_LEADER")


def call(nodes, method, params, at=None, within=30.0):
    """C{method} at node C{at} (else any living node), retried on the retriable codes."""
    deadline = time.monotonic() + within
    while True:
        for i, node in nodes.items():
            if (at is not None and i != at) or not node.alive():
                continue
            try:
                client = LineClient(node.port, timeout=5)
            except OSError:
                continue
            try:
                answer = client.call(method, params)
            except (OSError, ConnectionError):
                continue
            finally:
                client.close()
            if "result" in answer:
                return answer["result"]
            if answer["error"]["code"] not in RETRY:
                return answer
        assert time.monotonic() < deadline, f"{method} did not go through"
        time.sleep(0.1)


def coordinator(nodes, group="g"):
    def found():
        where = call(nodes, "FindCoordinator", {"group": group})
        node = where.get("coordinator")
        return node if node is not None and nodes[node].alive() else None
    return wait_for(found, 30, "the group's coordinator")


def at_coordinator(nodes, method, params, within=30.0):
    """C{method} at the group's coordinator (its result, or a non-retriable error answer), asked
    again where the coordinator is after each short round of retries: it may move meanwhile (the
    planner hands a new offsets partition's leadership to its preferred replica), and a node that
    no longer coordinates answers NOT_COORDINATOR for good."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call(nodes, method, params, at=coordinator(nodes), within=2.0)
        except AssertionError as e:
            print(f"{method} at the coordinator: {e}; asking where the coordinator is again")
            if time.monotonic() > deadline:
                raise


def test_members_keep_their_partitions_when_the_coordinator_is_sigkilled(tmp_path):
    nodes = start_cluster(tmp_path, free_ports(3))
    try:
        wait_for(lambda: formed(nodes), 30, "three nodes to form a cluster")
        call(nodes, "CreateTopic", {"topic": "orders", "partitions": 4, "replication_factor": 3})
        join = {"group": "g", "topics": ["orders"], "session_timeout_ms": 8000}
        members = [at_coordinator(nodes, "JoinGroup", join) for _ in range(2)]
        owned = {m["member_id"]: m["assignment"] for m in members}
        for _ in range(4):  # converge: one revokes half, the other takes it
            for m in owned:
                answer = at_coordinator(nodes, "Heartbeat", {"group": "g", "member_id": m, "owned": owned[m]})
                owned[m], generation = answer["assignment"], answer["generation"]
        sizes = sorted(sum(len(e["partitions"]) for e in o) for o in owned.values())
        assert sizes == [2, 2], owned

        killed = coordinator(nodes)
        nodes[killed].signal(signal.SIGKILL)
        nodes[killed].wait(10)
        began = time.monotonic()
        for m in owned:  # each member's next heartbeat, at whichever node coordinates now
            answer = at_coordinator(nodes, "Heartbeat", {"group": "g", "member_id": m, "owned": owned[m]})
            assert "error" not in answer, answer  # never UNKNOWN_MEMBER: no rejoin
            assert (answer["generation"], answer["assignment"], answer["revoke"], answer["pending"]) == (
                generation, owned[m], [], []), answer
        took = time.monotonic() - began
        assert coordinator(nodes) != killed
        commit = at_coordinator(nodes, "CommitOffsets", {
            "group": "g", "member_id": members[0]["member_id"], "generation": generation,
            "offsets": [{"topic": "orders", "partition": owned[members[0]["member_id"]][0]["partitions"][0],
                         "offset": 1}]})
        assert "error" not in commit, commit
        print(f"coordinator failover: both members carried on {took:.2f} s after the SIGKILL of node {killed}")
    finally:
        for n in nodes.values():
            n.stop()

"""The console of each node of a real 3-node cluster (twistd on 127.0.0.1): partitions held by
one node only (RF 1) are browsed from every node's console, which follows the NOT_LEADER hint
to the leader; a group is described from every node, following NOT_COORDINATOR; the overview
shows the three nodes and, once one is SIGKILLed, that it is down."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request

import orjson

from streamlog import errors
from streamlog.client.blocking import BlockingClient
from streamlog.testing import LineClient, ServerProcess, wait_for
from tests.integration.test_cluster_process import RETRIABLE, formed, free_ports, node_options


def get(node: ServerProcess, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}{path}", timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def retried(f, what: str, within: float = 20.0):
    deadline = time.monotonic() + within
    while True:
        try:
            return f()
        except (*RETRIABLE, errors.CoordinatorNotAvailable, Moved):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not succeed within {within} s") from None
            time.sleep(0.1)


#: What a console answers while a group's coordinator moves (docs/console.md: retry).
MOVING = ("NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE")


def settled_get(node: ServerProcess, path: str, within: float = 20.0) -> tuple[int, dict]:
    """GET C{path}, asked again while the answer is a 503 of a coordinator still moving: the
    planner may hand the offsets partition to its preferred replica after the member
    committed, and a node whose view is a step behind names the old coordinator, whose
    answer (the second hint) is then the console's."""
    deadline = time.monotonic() + within
    while True:
        status, body = get(node, path)
        if status != 503 or body.get("error", {}).get("code") not in MOVING or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


class Moved(Exception):
    """The group's coordinator answered that it no longer is (or not yet): ask again."""


def member_that_committed(client: BlockingClient, nodes: dict[int, ServerProcess]) -> tuple[LineClient, str]:
    group = client.call("FindCoordinator", {"group": "billing"})
    coordinator = next(n for n in nodes.values() if n.address == group["coordinator_address"])
    member = LineClient(coordinator.port)
    try:
        joined = member.call("JoinGroup", {"group": "billing", "topics": ["solo"], "session_timeout_ms": 60000})
        if "error" in joined:
            raise Moved(joined)
        mid = joined["result"]["member_id"]
        beat = member.call("Heartbeat", {"group": "billing", "member_id": mid, "owned": []})
        if "error" in beat:
            raise Moved(beat)
        committed = member.call("CommitOffsets", {"group": "billing", "member_id": mid,
                                                  "generation": beat["result"]["generation"],
                                                  "offsets": [{"topic": "solo", "partition": 1, "offset": 1}]})
        if "error" in committed:
            raise Moved(committed)
    except Exception:
        member.close()
        raise
    return member, mid


def test_every_nodes_console_shows_the_whole_cluster_and_reads_partitions_it_does_not_hold(tmp_path):
    ports = free_ports(3)
    nodes: dict[int, ServerProcess] = {}
    try:
        for i in (1, 2, 3):
            work = tmp_path / f"n{i}"
            work.mkdir()
            nodes[i] = ServerProcess(work, name=f"node{i}", extra=node_options(ports, i), http=True)
        wait_for(lambda: formed(nodes), 30, "three nodes to form a cluster")
        bootstrap = ",".join(n.address for n in nodes.values())
        with BlockingClient(bootstrap, timeout=5) as client:
            # Two single-copy partitions on three nodes: some node holds neither, whatever the placement.
            retried(lambda: client.call("CreateTopic", {"topic": "solo", "partitions": 2, "replication_factor": 1}),
                    "CreateTopic")
            for p in range(2):
                for i in range(p + 2):  # partition p holds p + 2 messages
                    retried(lambda p=p, i=i: client.send("solo", {"p": p, "i": i}, partition=p), "Send")
            # A member joins, heartbeats and commits at the group's coordinator; the coordinator may
            # move meanwhile (the planner hands a new partition's leadership to its preferred
            # replica), and then the member starts over at the new one, as a GroupConsumer would.
            member, mid = retried(lambda: member_that_committed(client, nodes), "a member's join and commit")

        held_by: dict[int, int] = {}
        for i, node in nodes.items():
            status, overview = get(node, "/api/overview")
            assert status == 200 and overview["node_id"] == i and overview["nodes_up"] == 3
            assert overview["alone"] is False and overview["controller"] in (1, 2, 3)
            status, topic = get(node, "/api/topics/solo")
            assert status == 200
            assert [p["high_watermark"] for p in topic["partitions"]] == [2, 3]  # every leader's, asked
            for p in topic["partitions"]:
                held_by[p["partition"]] = p["leader"]
                assert (p["size_bytes"] is not None) == (p["leader"] == i)  # sizes of this node's replicas only
            for p in range(2):
                status, page = get(node, f"/api/topics/solo/partitions/{p}/messages?from=earliest")
                assert status == 200, page
                assert [m["value"] for m in page["messages"]] == [{"p": p, "i": k} for k in range(p + 2)]
            status, g = settled_get(node, "/api/groups/billing")
            assert status == 200, g
            # (a member whose coordinator moved under it before it committed stays until its session ends)
            assert mid in [m["member_id"] for m in g["members"]]
            assert {(o["partition"], o["offset"], o["lag"]) for o in g["offsets"]} >= {(1, 1, 2)}
            status, listed = get(node, "/api/groups")
            assert [x["group"] for x in listed["groups"]] == ["billing"] and listed["unreachable"] == []
        # Some node holds none of them: its console read every partition through the leader's hint.
        assert set(nodes) - set(held_by.values()), held_by
        member.close()

        # One node SIGKILLed: the others' overview says it is down, its partition has no leader.
        victim = held_by[0]
        nodes[victim].signal(signal.SIGKILL)
        nodes[victim].wait(10)
        other = nodes[next(i for i in nodes if i != victim)]
        wait_for(lambda: get(other, "/api/overview")[1]["nodes_up"] == 2, 20, "the overview to show a node down")
        status, overview = get(other, "/api/overview")
        assert [n["up"] for n in overview["nodes"] if n["node_id"] == victim] == [False]
        status, page = get(other, "/api/topics/solo/partitions/0/messages?from=earliest")
        assert status in (502, 503, 504) and page["error"]["code"] in (
            "LEADER_NOT_AVAILABLE", "NOT_LEADER", "CONNECTION_LOST", "TIMEOUT"), page
    finally:
        for n in nodes.values():
            n.stop()



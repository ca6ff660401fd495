"""Consumer groups on three real twistd nodes (127.0.0.1), consumed by real consumer daemons.

Three C{streamlog-consumer --group} daemons share a six-partition RF=3
topic, two partitions each.  One daemon is SIGKILLed: its partitions move to
the other two within its session timeout.  Then the group's coordinator node
(found with FindCoordinator) is SIGKILLed: the commits survive on the new
coordinator, never lower than before, and the daemons carry on from them.
Every message is written at least once, none is skipped, and the duplicates
(only from the windows not committed yet when a member died or lost its
session) are counted and printed.  A commit of an older generation is
refused with STALE_GENERATION; the killed node restarts and the offsets are
still there.
"""

from __future__ import annotations

import signal
import time

import orjson
from test_cluster_process import RETRIABLE, create_topic, formed, free_ports, node_options, start_cluster

from streamlog.client.blocking import BlockingClient
from streamlog.testing import Daemon, LineClient, ServerProcess, wait_for

SESSION_MS = 2000
GROUP_OPTIONS = ("--group-heartbeat-interval-ms", "300", "--group-takeover-hold-ms", "2500",
                 "--offsets-partitions", "2", "--group-min-session-timeout-ms", "1000")
COMMIT_INTERVAL = 0.2
BATCH = 20


def _call(node: ServerProcess, method: str, params: dict) -> dict:
    try:
        c = LineClient(node.port, timeout=5)
    except OSError as e:
        return {"error": {"code": "CONNECTION_LOST", "message": str(e)}}
    try:
        return c.call(method, params)
    except (OSError, ConnectionError) as e:
        return {"error": {"code": "CONNECTION_LOST", "message": str(e)}}
    finally:
        c.close()


def coordinator(nodes: dict[int, ServerProcess]) -> int | None:
    """The node coordinating group "workers", as a live node's FindCoordinator says (None while electing)."""
    by_address = {n.address: i for i, n in nodes.items()}
    for node in nodes.values():
        if node.alive():
            answer = _call(node, "FindCoordinator", {"group": "workers"}).get("result")
            if answer and answer["coordinator_address"] in by_address:
                found = by_address[answer["coordinator_address"]]
                if nodes[found].alive():
                    return found
    return None


def at_coordinator(nodes: dict[int, ServerProcess], method: str, params: dict) -> dict | None:
    """C{method} at the coordinator; None while there is none that answers."""
    i = coordinator(nodes)
    if i is None:
        return None
    answer = _call(nodes[i], method, params)
    if answer.get("error", {}).get("code") in ("NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE", "CONNECTION_LOST"):
        return None
    return answer


def shares(nodes: dict[int, ServerProcess]) -> list[int] | None:
    """Partitions held per member, sorted, once the group is stable (None before)."""
    answer = at_coordinator(nodes, "DescribeGroup", {"group": "workers"})
    d = answer.get("result") if answer else None
    if d is None or d["state"] != "stable":
        return None
    return sorted(sum(len(e["partitions"]) for e in m["assignment"]) for m in d["members"])


def committed(nodes: dict[int, ServerProcess]) -> dict[int, int] | None:
    answer = at_coordinator(nodes, "FetchOffsets", {"group": "workers"})
    if not answer or "result" not in answer:
        return None
    return {o["partition"]: o["offset"] for o in answer["result"]["offsets"] if o["topic"] == "jobs"}


def offsets_leaders_settled(nodes: dict[int, ServerProcess]) -> bool:
    """Every __consumer_offsets partition led by its preferred replica (the planner's transfers done).

    A coordinator that moves before any commit is recorded grants at once (there is nothing to
    replay, so no takeover hold), while the previous one's members still read: waiting here keeps
    that start-up move (membership is not persisted yet) out of what the test counts."""
    answer = _call(next(n for n in nodes.values() if n.alive()), "Metadata", {}).get("result")
    if not answer:
        return False
    offsets = [t for t in answer["topics"] if t["topic"] == "__consumer_offsets"]
    return bool(offsets) and all(p["leader"] is not None and p["leader"] == p["replicas"][0]
                                 for p in offsets[0]["partitions"])


def produce(client: BlockingClient, first: int, count: int) -> None:
    """Values first..first+count-1, value v to partition v % 6, retried through a failover."""
    for p in range(6):
        batch = [{"value": v, "partition": p} for v in range(first, first + count) if v % 6 == p]
        deadline = time.monotonic() + 30
        while True:
            try:
                client.idempotent_sender().send_batch("jobs", batch)
                break
            except RETRIABLE:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def written(outputs) -> list[tuple[int, int, int]]:
    """(partition, offset, value) of every line the daemons wrote (whole lines only)."""
    seen = []
    for path in outputs:
        if path.exists():
            for line in path.read_bytes().splitlines():
                m = orjson.loads(line)
                seen.append((m["partition"], m["offset"], m["value"]))
    return seen


def test_three_daemons_share_six_partitions_through_a_member_kill_and_a_coordinator_kill(tmp_path):
    ports = free_ports(3)
    nodes = start_cluster(tmp_path, ports, GROUP_OPTIONS)
    members: list[Daemon] = []
    outputs = [tmp_path / f"member{i}.jsonl" for i in range(3)]
    try:
        wait_for(lambda: formed(nodes), 30, "three nodes to form a cluster")
        bootstrap = ",".join(n.address for n in nodes.values())
        with BlockingClient(bootstrap, timeout=5) as client:
            create_topic(client, topic="jobs", partitions=6)
            produce(client, 0, 600)
            wait_for(lambda: coordinator(nodes), 30, "a coordinator (FindCoordinator creates the offsets topic)")
            wait_for(lambda: offsets_leaders_settled(nodes), 30, "the offsets partitions on their preferred leaders")
            for i, out in enumerate(outputs):
                work = tmp_path / f"member{i}"
                work.mkdir()
                # The one to be killed commits only on a revoke (every 60 s otherwise): what it wrote
                # of its last two partitions is all uncommitted when it dies, and must come again.
                interval = 60.0 if i == 0 else COMMIT_INTERVAL
                members.append(Daemon(f"member{i}", [
                    "streamlog-consumer", "--connect", bootstrap, "--topic", "jobs", "--group", "workers",
                    "--output", str(out), "--session-timeout-ms", str(SESSION_MS),
                    "--commit-interval", str(interval), "--max-messages", str(BATCH),
                    "--max-wait-ms", "200", "--interval", "0.2", "--timeout", "3"], work))
            wait_for(lambda: shares(nodes) == [2, 2, 2], 60, "three members holding two partitions each")
            produce(client, 600, 120)  # 20 more per partition, read by their final owners
            wait_for(lambda: {v for _, _, v in written(outputs)} >= set(range(720)), 30, "720 messages written")

            # 1. SIGKILL a member: no leave, no last commit.
            victim = members[0]
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            killed_at = time.monotonic()
            # The victim commits no more: what is committed now is the floor of what may come again.
            at_member_kill = wait_for(lambda: committed(nodes), 10, "the offsets after the member's death")
            wait_for(lambda: shares(nodes) == [3, 3], 20, "the two others taking the killed member's partitions")
            moved_after = time.monotonic() - killed_at
            produce(client, 720, 180)
            wait_for(lambda: {v for _, _, v in written(outputs)} >= set(range(900)), 30, "900 messages written")

            # 2. SIGKILL the group's coordinator node; the commits must survive it.
            wait_for(lambda: committed(nodes) == {p: 150 for p in range(6)}, 20, "every message committed")
            before = committed(nodes)
            dead = wait_for(lambda: coordinator(nodes), 10, "the coordinator")
            nodes[dead].signal(signal.SIGKILL)
            nodes[dead].wait(10)
            coordinator_killed_at = time.monotonic()
            produce(client, 900, 300)
            after = wait_for(lambda: committed(nodes), 30, "a new coordinator answering FetchOffsets")
            assert coordinator(nodes) != dead
            assert all(after[p] >= before[p] for p in before), (before, after)  # survived, never backwards
            wait_for(lambda: {v for _, _, v in written(outputs)} >= set(range(1200)), 60,
                     "1200 messages written after the coordinator's death")
            wait_for(lambda: shares(nodes) == [3, 3], 30, "the members holding every partition again")
            regrouped_after = time.monotonic() - coordinator_killed_at
            wait_for(lambda: committed(nodes) == {p: 200 for p in range(6)}, 30, "every message committed again")

            # 3. A commit of an older generation is refused: two raw members make generation N+1.
            target = nodes[coordinator(nodes)]
            first = _call(target, "JoinGroup", {"group": "workers", "topics": ["jobs"],
                                                "session_timeout_ms": SESSION_MS})["result"]
            second = _call(target, "JoinGroup", {"group": "workers", "topics": ["jobs"],
                                                 "session_timeout_ms": SESSION_MS})["result"]
            assert second["generation"] > first["generation"]
            # The first member hears of the new generation in its heartbeat; its commit at the old one
            # (a zombie's, as after a long pause) is refused.
            beat = _call(target, "Heartbeat", {"group": "workers", "member_id": first["member_id"], "owned": []})
            assert beat["result"]["generation"] == second["generation"], beat
            stale = _call(target, "CommitOffsets", {
                "group": "workers", "member_id": first["member_id"], "generation": first["generation"],
                "offsets": [{"topic": "jobs", "partition": 0, "offset": 1}]})
            assert stale["error"]["code"] == "STALE_GENERATION", stale
            for raw in (first, second):
                _call(target, "LeaveGroup", {"group": "workers", "member_id": raw["member_id"]})
            assert committed(nodes)[0] == 200  # the refused commit changed nothing

        seen = written(outputs)
        values = [v for _, _, v in seen]
        assert set(values) == set(range(1200))  # none skipped
        for p, o, v in seen:
            assert v % 6 == p and o == v // 6  # each value at its own offset
        counts: dict[tuple[int, int], int] = {}
        for p, o, _ in seen:
            counts[(p, o)] = counts.get((p, o), 0) + 1
        again = {po: n - 1 for po, n in counts.items() if n > 1}
        # Duplicates only from the uncommitted windows: every message written twice is at or past
        # its partition's committed offset at the failure that made it come again (the member's
        # death for the first 900, the coordinator's for the last 300, written while no commit
        # could be made, then read again from the last commit by the rejoined members).
        first_window = {po: n for po, n in again.items() if po[1] < 150}
        second_window = {po: n for po, n in again.items() if po[1] >= 150}
        assert all(o >= at_member_kill.get(p, 0) for p, o in first_window), (at_member_kill, first_window)
        assert all(o >= before[p] for p, o in second_window), (before, second_window)
        # And what the victim wrote past the commits is all there again (by the others).
        uncommitted = {(p, o) for p, o, _ in written(outputs[:1]) if o >= at_member_kill.get(p, 0)}
        assert uncommitted and uncommitted <= set(first_window), (len(uncommitted), len(first_window))
        print(f"\nmember SIGKILL: partitions moved after {moved_after:.2f} s (session {SESSION_MS / 1000:g} s), "
              f"{sum(first_window.values())} duplicate(s) from its uncommitted window ({len(uncommitted)} "
              f"message(s) it wrote after the last commit); coordinator (node {dead}) "
              f"SIGKILL: every partition held again after {regrouped_after:.2f} s (session, takeover hold 2.5 s), "
              f"{sum(second_window.values())} duplicate(s) (written while no commit could be made); "
              f"{len(values)} lines for 1200 messages")
        assert moved_after < SESSION_MS / 1000 + 3.0  # its session, and the others' next heartbeats

        # 4. The killed node comes back; the offsets are still the group's.
        nodes[dead] = ServerProcess(tmp_path / f"n{dead}", name=f"node{dead}-again",
                                    extra=node_options(ports, dead, GROUP_OPTIONS))
        wait_for(lambda: formed(nodes), 30, "the killed node to rejoin")
        assert wait_for(lambda: committed(nodes), 30, "FetchOffsets after the rejoin") == {p: 200 for p in range(6)}
    finally:
        for m in members:
            m.stop()
        for n in nodes.values():
            n.stop()

"""A node whose data dir was wiped rejoins its cluster as a new incarnation (ClusterNode over
ClusterHarness: real RaftHosts, metadata group, planner and replicas on a Clock).

What these show: the wiped node adopts the cluster id its peers agree on, registers, is
added to every group as a learner, caught up and promoted in place of its old member; it
never votes nor campaigns in a group before it is a voter there; once promoted its copy
counts towards the majority; an old copy of the replaced data dir is refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamlog.cluster.metadata import METADATA_GROUP, partition_group
from streamlog.cluster.reconcile import Promote
from streamlog.raft.core import LEADER
from streamlog.raft.messages import RequestVote, RequestVoteResponse
from streamlog.testing import ClusterHarness


def newest_state(c: ClusterHarness) -> Any:
    return max((n.state for n in c.nodes.values() if n.state is not None), key=lambda s: s.applied_index)


def groups_of(c: ClusterHarness, topic: str = "t") -> list[str]:
    info = newest_state(c).topics[topic]
    return [METADATA_GROUP] + [partition_group(info.topic_id, p) for p in range(len(info.partitions))]


def leader_core(c: ClusterHarness, group: str) -> Any:
    cores = [n.cores[group] for n in c.nodes.values() if not n.stopped and group in n.cores
             and n.cores[group].role == LEADER]
    return cores[0] if len(cores) == 1 else None


def partition_leader(c: ClusterHarness, topic: str, p: int) -> int | None:
    group = partition_group(newest_state(c).topics[topic].topic_id, p)
    for i, n in c.nodes.items():
        if not n.stopped and group in n.cores and n.cores[group].role == LEADER and n.directory.by_group[group].leads:
            return i
    return None


def create_and_fill(c: ClusterHarness, partitions: int = 3, count: int = 30, **config: Any) -> dict[int, list[tuple[int, str]]]:
    answer = c.call(1, "CreateTopic", {"topic": "t", "partitions": partitions, **config})
    assert "result" in answer, answer
    c.run_until(lambda: all(partition_leader(c, "t", p) is not None for p in range(partitions)), timeout=20)
    return send(c, partitions, count, "v")


def send(c: ClusterHarness, partitions: int, count: int, prefix: str) -> dict[int, list[tuple[int, str]]]:
    """acks=all Sends to each partition's leader: partition -> [(offset, value)] acknowledged."""
    acked: dict[int, list[tuple[int, str]]] = {p: [] for p in range(partitions)}
    for i in range(count):
        p = i % partitions
        c.run_until(lambda p=p: partition_leader(c, "t", p) is not None, timeout=20)
        value = f"{prefix}{i}"
        answer = c.call(partition_leader(c, "t", p), "Send", {"topic": "t", "partition": p, "value": value})
        assert "result" in answer, answer
        acked[p].append((answer["result"]["offset"], value))
    return acked


def assert_readable(c: ClusterHarness, acked: dict[int, list[tuple[int, str]]]) -> None:
    """Every acknowledged value is read at its acknowledged offset from the partition's leader."""
    for p, sent in acked.items():
        c.run_until(lambda p=p: partition_leader(c, "t", p) is not None, timeout=20)
        leader = partition_leader(c, "t", p)
        polled = c.call(leader, "Poll", {"topic": "t", "partition": p, "offset": sent[0][0], "max_messages": 1000})
        got = {m["offset"]: m["value"] for m in polled["result"]["messages"]}
        assert all(got.get(offset) == value for offset, value in sent), (p, sent, got)


def rejoined(c: ClusterHarness, node: Any, groups: list[str]) -> bool:
    """In every group the leader has the node's new member as a voter and no older one of its node."""
    for g in groups:
        core = leader_core(c, g)
        if core is None or node.member not in core.voters:
            return False
        if any(m.split(".")[0] == str(node.node_id) and m != node.member for m in core.voters):
            return False
    return True


def record_votes(node: Any) -> list[tuple[str, str, bool]]:
    """Every RequestVote / RequestVoteResponse C{node} sends: (group, kind, was it a voter there)."""
    sent: list[tuple[str, str, bool]] = []
    host = node.raft
    original = host._send

    def spy(to: str, group: str, msg: Any) -> None:
        if isinstance(msg, (RequestVote, RequestVoteResponse)):
            core = node.cores.get(group)
            sent.append((group, type(msg).__name__, core is not None and node.member in core.voters))
        original(to, group, msg)

    host._send = spy
    return sent


@pytest.mark.parametrize("which", ["a follower", "the controller"])
def test_a_wiped_node_rejoins_every_group_as_a_new_incarnation_and_then_counts_for_the_majority(cluster, which):
    acked = create_and_fill(cluster)
    wiped = 3 if which == "a follower" else cluster.controller()
    others = [i for i in (1, 2, 3) if i != wiped]
    old = cluster.nodes[wiped].member
    cluster_id = cluster.nodes[others[0]].state.cluster_id
    groups = groups_of(cluster)
    cluster.kill(wiped)
    reborn = cluster.wipe_and_start(wiped)
    votes = record_votes(reborn)
    assert reborn.member != old and reborn.identity.cluster_id is None
    took = cluster.run_until(lambda: rejoined(cluster, reborn, groups), timeout=30)
    assert took < 5.0  # reconnect backoff (up to 2 s), then a few rounds per group
    assert reborn.identity.cluster_id == cluster_id and reborn.identity.members == {}
    for i in (1, 2, 3):
        state = cluster.nodes[i].state
        assert state.nodes[wiped].incarnation == reborn.identity.incarnation and state.is_retired(old)
    # Its copy of every partition is the leader's, record for record.
    for p in range(3):
        group = groups[p + 1]
        mine = reborn.directory.by_group[group]
        cluster.run_until(lambda mine=mine, group=group: mine.commit_index == leader_core(cluster, group).commit_index,
                          timeout=5)
        leader = cluster.nodes[partition_leader(cluster, "t", p)].directory.by_group[group]
        assert mine.log.read(0, 1000, 1 << 20) == leader.log.read(0, 1000, 1 << 20)
    assert all(voter for _, _, voter in votes)  # nothing before it was a voter there
    # Another node dies: for every group the majority now needs the rejoined node's copy.
    cluster.kill(others[0])
    assert_readable(cluster, acked)
    more = send(cluster, 3, 6, "after")
    assert_readable(cluster, more)
    assert votes and all(voter for _, _, voter in votes)  # it voted (or campaigned) now, as a voter


def test_a_learner_never_helps_elect_a_leader_nor_stands(cluster):
    """With its promotions held back, the wiped node is a caught-up learner everywhere; then
    node 1 dies and each group is left with one voter of two: no leader may be elected with
    the learner's help, and the learner neither campaigns nor votes."""
    acked = create_and_fill(cluster)
    held: list[Any] = []
    for i in (1, 2):
        node = cluster.nodes[i]
        real = node._carry_out

        def carry_out(action: Any, real: Any = real) -> None:
            if isinstance(action, Promote) and not held:
                return  # held back: the learner stays a learner
            real(action)

        node._carry_out = carry_out
    cluster.kill(3)
    reborn = cluster.wipe_and_start(3)
    votes = record_votes(reborn)
    groups = groups_of(cluster)

    def learner_everywhere() -> bool:
        for g in groups:
            core = leader_core(cluster, g)
            if core is None or reborn.member not in core.learners or not core.caught_up(reborn.member):
                return False
            if any(m.startswith("3.") for m in core.voters):
                return False  # the old member is removed first
        return True

    cluster.run_until(learner_everywhere, timeout=30)
    cluster.kill(1)
    cluster.run(5.0)  # many election timeouts (300 ms)
    for g in groups:
        for i in (2, 3):
            core = cluster.nodes[i].cores[g]
            assert core.role != LEADER and reborn.member not in core.voters, (i, g, core.role, sorted(core.voters), core.quiet, core.term)
    assert votes == []
    # Node 1 back, promotions allowed: every group converges and keeps what was acknowledged.
    held.append(True)
    cluster.start(1)
    cluster.run_until(lambda: rejoined(cluster, reborn, groups), timeout=30)
    assert_readable(cluster, acked)
    assert all(voter for _, _, voter in votes)


def test_rejoin_after_retention_installs_the_leaders_log_start(cluster):
    """The leaders' retention removed the head of every partition: the new replica starts at
    their log start (InstallSnapshot carrying the next record offset), not at offset 0."""
    acked = create_and_fill(cluster, count=60, config={"retention_bytes": 200})
    groups = groups_of(cluster)
    for i in (1, 2, 3):
        for replica in cluster.nodes[i].directory.by_group.values():
            replica.log.sync()
        cluster.brokers[i].apply_retention()
    starts = {}
    for p in range(3):
        leader = cluster.nodes[partition_leader(cluster, "t", p)].directory.by_group[groups[p + 1]]
        assert leader.log.start_index > 1 and leader.log.start_offset > 0
        starts[p] = (leader.log.start_offset, leader.log.end_offset)
    cluster.kill(3)
    reborn = cluster.wipe_and_start(3)
    cluster.run_until(lambda: rejoined(cluster, reborn, groups), timeout=30)
    for p in range(3):
        mine = reborn.directory.by_group[groups[p + 1]]
        cluster.run_until(lambda mine=mine, g=groups[p + 1]: mine.commit_index == leader_core(cluster, g).commit_index,
                          timeout=5)
        assert (mine.log.start_offset, mine.log.end_offset) == starts[p]
        assert mine.high_watermark == starts[p][1]
    cluster.kill(1)  # the rejoined copies now make the majority
    kept = {p: [(o, v) for o, v in sent if o >= starts[p][0]] for p, sent in acked.items()}
    assert all(kept.values())
    assert_readable(cluster, kept)
    more = send(cluster, 3, 3, "after")
    assert all(sent[0][0] == starts[p][1] for p, sent in more.items())  # offsets go on densely


def test_a_wiped_node_joins_only_once_a_majority_of_its_peers_name_the_cluster(cluster):
    cluster.kill(2)
    cluster.kill(3)
    reborn = cluster.wipe_and_start(3)
    cluster.run(3.0)
    assert reborn.identity.cluster_id is None and reborn.host is None and reborn.refused is None  # 1 of 2: waits
    cluster.start(2)
    cluster.run_until(lambda: reborn.identity.cluster_id == cluster.nodes[1].state.cluster_id, timeout=10)
    cluster.run_until(lambda: rejoined(cluster, reborn, [METADATA_GROUP]), timeout=30)


def test_the_replaced_data_dir_coming_back_is_refused_and_the_cluster_serves_on(cluster):
    acked = create_and_fill(cluster, count=6)
    old_storage, old_identity = cluster.storages[3], cluster.identities[3]
    cluster.kill(3)
    reborn = cluster.wipe_and_start(3)
    groups = groups_of(cluster)
    cluster.run_until(lambda: rejoined(cluster, reborn, groups), timeout=30)
    cluster.kill(3)
    # The old disk is put back (a restored backup): its incarnation was replaced.
    cluster.storages[3], cluster.identities[3] = old_storage, old_identity
    refused: list[str] = []
    stale = cluster.start(3)
    stale.on_fatal = refused.append
    cluster.run_until(lambda: refused, timeout=10)
    assert len(refused) == 1 and refused[0].startswith("STALE_INCARNATION") and "\n" not in refused[0]
    assert cluster.nodes[1].refused is None and cluster.nodes[2].refused is None
    cluster.run(1.0)
    assert stale.stopped
    assert_readable(cluster, acked)  # nodes 1 and 2 serve on (2 of the 3 voters)

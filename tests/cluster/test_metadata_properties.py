"""Property tests: apply is total and deterministic, its states keep their invariants,
snapshots restore exactly, and decode turns every byte string into a command or a
CommandDecodeError."""

from __future__ import annotations

import attrs
from cluster_support import CLUSTER_ID
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlog.cluster import metadata as md
from streamlog.cluster.metadata import (
    AllocateProducerIds,
    Applied,
    ClusterState,
    CommandDecodeError,
    CreateTopic,
    DeleteTopic,
    Refused,
    RegisterNode,
    apply,
    check_state,
    decode_command,
    decode_snapshot,
    encode_command,
    encode_snapshot,
)
from streamlog.storage.base import TopicConfig

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)

incarnations = st.sampled_from([f"{i:016x}" for i in range(1, 5)] + ["nothex", "ABCDEF0123456789"])
addresses = st.sampled_from(["127.0.0.1:7001", "h:2", "[::1]:9", "bad", "h:0"])
names = st.sampled_from(["a", "b", "c", "a", "b", "c", "x" * 249, "", ".a", "a/b"])
node_ids = st.sampled_from([1, 2, 3, 4, 5, 6, 0, -1, 2**31])
configs = st.one_of(st.just(TopicConfig()), st.just(TopicConfig()), st.builds(
    TopicConfig,
    retention_ms=st.sampled_from([None, 1, 0, 10**12]),
    retention_bytes=st.sampled_from([None, 1, -3]),
    segment_bytes=st.sampled_from([None, 1024, 1023]),
    segment_ms=st.sampled_from([None, 5]),
))


# Static strategies (building one per step is what makes hypothesis slow): references to
# "existing" things come from fixed pools that the scripts do hit (nodes 1..5 are
# registered by each script's prefix; topic ids are derived from the index of their entry).
known_ids = st.sampled_from([md.topic_id_for(CLUSTER_ID, i) for i in range(1, 200)] + ["ab" * 16])
replica_lists = st.lists(st.lists(node_ids, max_size=4).map(tuple), max_size=6).map(tuple)
# Mostly well-formed replica sets of one replication factor, so topics do get created.
good_replicas = st.tuples(st.integers(1, 3), st.lists(st.permutations([1, 2, 3, 4, 5]), min_size=1, max_size=6)).map(
    lambda t: tuple(tuple(p[: t[0]]) for p in t[1]))
# Well-formed but for one node named twice in a partition.
dup_replicas = good_replicas.filter(lambda r: len(r[0]) >= 2).map(lambda r: tuple((*p[:-1], p[0]) for p in r))
good_names = st.sampled_from(["a", "b", "c"])
good_create = st.builds(CreateTopic, good_names, good_replicas, st.just(TopicConfig()), st.just(1024),
                        st.sampled_from([100_000, 12]))
# Re-registrations that retire incarnations, and the retired ones trying to come back.
good_register = st.builds(RegisterNode, st.integers(1, 5), st.sampled_from([f"{i:016x}" for i in range(1, 5)]),
                          st.just("127.0.0.1:7001"), st.just("127.0.0.1:8001"))
commands = st.one_of(
    good_create,
    good_register,
    good_create,
    st.builds(DeleteTopic, good_names),
    st.builds(RegisterNode, node_ids, incarnations, addresses, addresses),
    st.builds(CreateTopic, names, st.one_of(good_replicas, good_replicas, dup_replicas, replica_lists), configs,
              st.sampled_from([1024, 1024, 1024, 1, 4, 0]), st.sampled_from([100_000, 100_000, 1, 3, 10, 0])),
    st.builds(DeleteTopic, names, st.one_of(st.none(), known_ids)),
    st.builds(AllocateProducerIds, st.sampled_from([-1, 0, 1, 7, 1000, md.MAX_PRODUCER_ID_BLOCK,
                                                    md.MAX_PRODUCER_ID_BLOCK + 1])),
)
scripts = st.tuples(
    st.sampled_from([5, 5, 3, 1]),
    st.lists(st.tuples(commands, st.sampled_from([1, 1, 1, 3])), min_size=1, max_size=40),
).map(lambda t: [(RegisterNode(n, f"{n:016x}", "h:1", "h:2"), 1) for n in range(1, t[0] + 1)] + t[1])


def run(start: ClusterState, script):
    state = start
    index = state.applied_index
    results = []
    for command, gap in script:
        index += gap
        state, result = apply(state, command, index)
        results.append(result)
    return state, results


@PROPERTY
@given(scripts, st.integers(0, 100))
def test_apply_is_total_keeps_invariants_and_replays_identically(script, cut):
    state = ClusterState.empty(CLUSTER_ID)
    blocks = []
    retired: set[tuple[int, str]] = set()
    index = 0
    for command, gap in script:
        index += gap  # gaps: no-ops and configuration entries between commands
        before = state
        state, result = apply(state, command, index)  # never raises on a well-formed command
        check_state(state)
        assert state.applied_index == index
        if isinstance(result, Refused):
            assert attrs.evolve(state, applied_index=before.applied_index) == before
            assert result.code in {"INVALID_PARAMS", "INVALID_TOPIC", "TOPIC_EXISTS", "UNKNOWN_TOPIC",
                                   md.TOO_MANY_PARTITIONS, md.STALE_INCARNATION}
        else:
            assert isinstance(result, Applied)
            if isinstance(command, AllocateProducerIds):
                blocks.append((result.value["first"], result.value["first"] + result.value["count"]))
        # A retired incarnation stays retired and never becomes current again.
        for node_id, incarnation in retired:
            assert incarnation in state.nodes[node_id].retired and state.nodes[node_id].incarnation != incarnation
        retired |= {(n.node_id, r) for n in state.nodes.values() for r in n.retired}
        # Every command survives its encoding unchanged.
        assert decode_command(encode_command(command)) == command
    # Producer id blocks never overlap and never go back.
    for (_, end), (start, _) in zip(blocks, blocks[1:]):
        assert start >= end
    # Replaying the same log gives byte-identical state (every node agrees).
    again, _ = run(ClusterState.empty(CLUSTER_ID), script)
    assert encode_snapshot(again) == encode_snapshot(state)
    # A node restored from a snapshot taken midway ends in the same state as one that never was.
    cut = min(cut, len(script))
    middle, _ = run(ClusterState.empty(CLUSTER_ID), script[:cut])
    restored = decode_snapshot(encode_snapshot(middle))
    assert restored == middle
    finished, _ = run(restored, script[cut:])
    assert finished == state


@PROPERTY
@given(st.data())
def test_decode_gives_a_command_or_a_decode_error_for_any_bytes(data):
    valid = [
        RegisterNode(1, f"{1:016x}", "h:1", "h:2"),
        CreateTopic("t", ((1, 2), (2, 1)), TopicConfig(retention_ms=5), 8, 9),
        DeleteTopic("t", "ab" * 16),
        AllocateProducerIds(3),
    ]
    raw = data.draw(st.one_of(
        st.binary(max_size=200),
        st.sampled_from(valid).map(encode_command).flatmap(lambda b: _mutations(b)),
    ))
    try:
        command = decode_command(raw)
    except CommandDecodeError:
        return
    assert encode_command(command) == raw


def _mutations(data: bytes):
    positions = st.integers(0, len(data) - 1)
    return st.one_of(
        st.tuples(positions, st.integers(0, 255)).map(lambda pb: data[: pb[0]] + bytes([pb[1]]) + data[pb[0] + 1:]),
        positions.map(lambda p: data[:p] + data[p + 1:]),
        st.tuples(positions, st.binary(min_size=1, max_size=8)).map(lambda pb: data[: pb[0]] + pb[1] + data[pb[0]:]),
        positions.map(lambda p: data[:p]),
    )


@PROPERTY
@given(st.binary(max_size=300))
def test_snapshot_decode_never_raises_anything_else(raw):
    try:
        decode_snapshot(raw)
    except md.SnapshotDecodeError:
        pass

"""The metadata state machine: identities, apply, encoding, snapshots."""

from __future__ import annotations

import attrs
import orjson
import pytest
from cluster_support import CLUSTER_ID, LIMIT, Log, cluster, create, inc, member, register

from streamlog import errors
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
    SnapshotDecodeError,
    apply,
    apply_entry,
    check_state,
    decode_command,
    decode_snapshot,
    encode_command,
    encode_snapshot,
)
from streamlog.storage.base import TopicConfig

# ---------------------------------------------------------------------------- identities


def test_member_ids_round_trip_and_refuse_lookalikes():
    assert md.member_id(2, "9f3c01aa77e2b410") == "2.9f3c01aa77e2b410"
    assert md.parse_member_id("2.9f3c01aa77e2b410") == (2, "9f3c01aa77e2b410")
    assert md.node_of("12.9f3c01aa77e2b410") == 12
    for bad in ["2", "2.", ".9f3c01aa77e2b410", "02.9f3c01aa77e2b410", "0.9f3c01aa77e2b410",
                "2.9F3C01AA77E2B410", "2.9f3c01aa77e2b41", "2.9f3c01aa77e2b4100", "x.9f3c01aa77e2b410",
                "99999999999.9f3c01aa77e2b410", "2.9f3c01aa77e2b410 ", 2, None]:
        with pytest.raises(ValueError):
            md.parse_member_id(bad)
        with pytest.raises(ValueError):  # memoized answers: a refusal is never remembered as an answer
            md.parse_member_id(bad)
    assert md.parse_member_id("2.9f3c01aa77e2b410") == (2, "9f3c01aa77e2b410")


def test_cluster_id_is_the_same_whatever_order_the_hellos_came_in():
    config = md.bootstrap_configuration({3: inc(3), 1: inc(1), 10: inc(10), 2: inc(2)})
    assert config == tuple(sorted([member(1), member(2), member(3), member(10)]))
    assert config[0] == member(1) and config[1] == member(10)  # string order, as the Raft core sorts
    cid = md.cluster_id_for(config)
    assert cid == md.cluster_id_for(reversed(config))
    assert len(cid) == 32 and int(cid, 16) >= 0
    # The hash covers the stored form of the configuration: the compact JSON array.
    import hashlib
    assert cid == hashlib.sha256(orjson.dumps(list(config))).hexdigest()[:32]
    # Another incarnation anywhere is another cluster.
    assert md.cluster_id_for(md.bootstrap_configuration({1: inc(1), 2: inc(2, 1), 3: inc(3)})) != md.cluster_id_for(
        md.bootstrap_configuration({1: inc(1), 2: inc(2), 3: inc(3)}))
    with pytest.raises(ValueError):
        md.bootstrap_configuration({})
    with pytest.raises(ValueError):
        md.bootstrap_configuration({0: inc(1)})
    with pytest.raises(ValueError):
        md.bootstrap_configuration({1: "not-hex"})
    with pytest.raises(ValueError):
        md.cluster_id_for(["1.x"])


def test_topic_ids_embed_their_creating_index_and_differ_per_cluster():
    tid = md.topic_id_for(CLUSTER_ID, 7)
    assert len(tid) == 32 and md.topic_created_index(tid) == 7
    assert md.topic_id_for(CLUSTER_ID, 8) != tid
    assert md.topic_id_for("d2" * 16, 7) != tid
    assert md.partition_group(tid, 3) == f"{tid}-3"
    assert md.parse_partition_group(f"{tid}-3") == (tid, 3)
    for bad in [md.METADATA_GROUP, f"{tid}-", f"{tid}-03", f"{tid}--1", tid, f"{tid[:-1]}-0", f"{tid.upper()}-0"]:
        assert md.parse_partition_group(bad) is None
    with pytest.raises(ValueError):
        md.topic_created_index("zz" * 16)
    with pytest.raises(ValueError):
        md.topic_id_for(CLUSTER_ID, 0)


def test_address_rules():
    for good in ["127.0.0.1:7070", "node-1.example.com:1", "[::1]:65535", "a:80"]:
        assert md.valid_address(good), good
    for bad in ["127.0.0.1", ":7070", "host:0", "host:65536", "host: 1", "ho st:1", "-host:1", "[::1:80", 7070, ""]:
        assert not md.valid_address(bad), bad


def test_empty_state_needs_a_real_cluster_id():
    with pytest.raises(ValueError):
        ClusterState.empty("short")
    assert ClusterState.empty(CLUSTER_ID).applied_index == 0


# ---------------------------------------------------------------------------- RegisterNode


def test_register_new_node_then_update_its_addresses():
    log = Log()
    assert log.ok(register(1)) == {"node_id": 1, "incarnation": inc(1), "replaced": None}
    node = log.state.nodes[1]
    assert (node.incarnation, node.client_address, node.peer_address) == (inc(1), "127.0.0.1:7001", "127.0.0.1:8001")
    assert log.ok(RegisterNode(1, inc(1), "10.0.0.1:7070", "10.0.0.1:7170"))["replaced"] is None
    assert log.state.nodes[1].client_address == "10.0.0.1:7070"
    assert log.state.nodes[1].retired == frozenset()


def test_new_incarnation_retires_the_old_one_for_good():
    log = cluster(3)
    assert log.ok(register(2, generation=1))["replaced"] == inc(2)
    assert log.state.nodes[2].incarnation == inc(2, 1)
    assert log.state.is_retired(member(2)) and not log.state.is_retired(member(2, 1))
    assert log.state.current_member(2) == member(2, 1)
    # The old data directory coming back (a restored backup) must not rejoin.
    before = log.state
    result = log.apply(register(2))
    assert not result.ok and result.code == md.STALE_INCARNATION
    assert result.details == {"node_id": 2, "incarnation": inc(2), "current": inc(2, 1)}
    assert attrs.evolve(log.state, applied_index=before.applied_index) == before
    # A third incarnation retires the second one too.
    log.ok(register(2, generation=2))
    assert log.state.nodes[2].retired == {inc(2), inc(2, 1)}


@pytest.mark.parametrize("command, text", [
    (RegisterNode(0, inc(1), "h:1", "h:2"), "node id"),
    (RegisterNode(2**31, inc(1), "h:1", "h:2"), "node id"),
    (RegisterNode(1, "ABCDEF0123456789", "h:1", "h:2"), "incarnation"),
    (RegisterNode(1, "1.2", "h:1", "h:2"), "incarnation"),
    (RegisterNode(1, inc(1), "h", "h:2"), "client_address"),
    (RegisterNode(1, inc(1), "h:1", "h:99999"), "peer_address"),
])
def test_register_refuses_malformed_identities(command, text):
    log = Log()
    result = log.apply(command)
    assert isinstance(result, Refused) and result.code == "INVALID_PARAMS" and text in result.message
    assert log.state.nodes == {}


# ---------------------------------------------------------------------------- CreateTopic / DeleteTopic


def test_create_topic_records_replicas_initial_members_and_a_fresh_id():
    log = cluster(3)
    value = create(log, "orders", [[1, 2, 3], [2, 3, 1]]).value
    topic = log.state.topics["orders"]
    assert value == {"topic": "orders", "topic_id": topic.topic_id, "partitions": 2, "replication_factor": 3,
                     "replicas": [[1, 2, 3], [2, 3, 1]]}
    assert topic.topic_id == md.topic_id_for(CLUSTER_ID, log.index) and topic.created_index == log.index
    assert topic.partitions[1].initial_members == (member(2), member(3), member(1))
    assert log.state.topic_by_id(topic.topic_id) is topic
    # After node 2 is replaced, the topic still says whom the group started with...
    log.ok(register(2, 1))
    assert log.state.topics["orders"].partitions[1].initial_members[0] == member(2)
    # ...and the members it should have now use the new incarnation.
    assert md.intended_members(log.state, topic.partitions[1].replicas) == (member(2, 1), member(3), member(1))
    # A topic created now starts with the new incarnation.
    create(log, "later", [[2]])
    assert log.state.topics["later"].partitions[0].initial_members == (member(2, 1),)


def test_recreated_topic_gets_a_new_id_even_from_the_same_command():
    log = cluster(1)
    command = CreateTopic("t", ((1,),), TopicConfig(), 1024, LIMIT)
    first = log.ok(command)["topic_id"]
    log.ok(DeleteTopic("t"))
    second = log.ok(command)["topic_id"]  # the same command committed again (a retried forward)
    assert first != second
    assert log.state.topic_by_id(first) is None and log.state.topic_by_id(second).name == "t"


@pytest.mark.parametrize("name, replicas, config, code, text", [
    ("", [[1]], TopicConfig(), "INVALID_TOPIC", "invalid topic name"),
    (".hidden", [[1]], TopicConfig(), "INVALID_TOPIC", "invalid topic name"),
    ("x" * 250, [[1]], TopicConfig(), "INVALID_TOPIC", "invalid topic name"),
    ("t", [], TopicConfig(), "INVALID_PARAMS", "'partitions' must be between 1 and 1024"),
    ("t", [[1]] * 1025, TopicConfig(), "INVALID_PARAMS", "'partitions' must be between 1 and 1024"),
    ("t", [[]], TopicConfig(), "INVALID_PARAMS", "replication factor must be at least 1"),
    ("t", [[1, 2], [1]], TopicConfig(), "INVALID_PARAMS", "partition 1 has 1 replicas"),
    ("t", [[1, 1]], TopicConfig(), "INVALID_PARAMS", "names a node twice"),
    ("t", [[1, 4]], TopicConfig(), "INVALID_PARAMS", "node 4 is not registered"),
    ("t", [[1]], TopicConfig(segment_bytes=10), "INVALID_PARAMS", "segment_bytes"),
    ("t", [[1]], TopicConfig(retention_ms=0), "INVALID_PARAMS", "retention_ms"),
    ("t", [[1]], TopicConfig(retention_bytes=-1), "INVALID_PARAMS", "retention_bytes"),
])
def test_create_topic_refusals_change_nothing(name, replicas, config, code, text):
    log = cluster(3)
    before = log.state
    result = create(log, name, replicas, config)
    assert isinstance(result, Refused) and result.code == code and text in result.message, result
    assert attrs.evolve(log.state, applied_index=before.applied_index) == before


def test_create_existing_topic_is_topic_exists():
    log = cluster(3)
    create(log, "t", [[1]])
    result = create(log, "t", [[2]])
    assert result.code == "TOPIC_EXISTS" and result.details == {"topic": "t"}
    assert log.state.topics["t"].partitions[0].replicas == (1,)


def test_per_node_partition_cap_is_too_many_partitions():
    log = cluster(2)
    assert log.apply(CreateTopic("a", ((1, 2),) * 3, TopicConfig(), 1024, 4)).ok
    result = log.apply(CreateTopic("b", ((2,),) * 2, TopicConfig(), 1024, 4))
    assert result.code == md.TOO_MANY_PARTITIONS
    assert result.details == {"limit": 4, "node": 2, "partitions": 3}
    assert "b" not in log.state.topics
    assert log.apply(CreateTopic("b", ((2,),), TopicConfig(), 1024, 4)).ok  # exactly at the cap
    for bad in (0, -1):
        r = log.apply(CreateTopic("c", ((1,),), TopicConfig(), 1024, bad))
        assert r.code == "INVALID_PARAMS" and "max_partitions_per_node" in r.message
    r = log.apply(CreateTopic("c", ((1,),), TopicConfig(), 0, 10))
    assert r.code == "INVALID_PARAMS" and "max_partitions" in r.message


def test_refused_results_become_the_clients_errors():
    log = cluster(1)
    create(log, "t", [[1]])
    assert isinstance(create(log, "t", [[1]]).exception(), errors.TopicExists)
    assert isinstance(log.apply(DeleteTopic("nope")).exception(), errors.UnknownTopic)
    capped = log.apply(CreateTopic("u", ((1,),), TopicConfig(), 1024, 1)).exception()
    assert capped.code == "TOO_MANY_PARTITIONS" and capped.details["limit"] == 1


def test_delete_topic_by_name_and_optionally_by_id():
    log = cluster(2)
    old = create(log, "t", [[1], [2]]).value["topic_id"]
    assert log.ok(DeleteTopic("t", old)) == {"topic": "t", "topic_id": old}
    assert "t" not in log.state.topics and old not in log.state.topic_ids
    new = create(log, "t", [[1]]).value["topic_id"]
    # A delayed delete of the old topic must not take the new one with it.
    result = log.apply(DeleteTopic("t", old))
    assert result.code == "UNKNOWN_TOPIC" and log.state.topics["t"].topic_id == new
    assert log.apply(DeleteTopic("gone")).code == "UNKNOWN_TOPIC"
    assert log.apply(DeleteTopic("../x")).code == "INVALID_TOPIC"
    log.ok(DeleteTopic("t"))
    assert log.state.topics == {} and log.state.topic_ids == {}


# ---------------------------------------------------------------------------- producer ids


def test_producer_id_blocks_are_consecutive_and_bounded():
    log = cluster(1)
    assert log.ok(AllocateProducerIds(1000)) == {"first": 0, "count": 1000}
    assert log.ok(AllocateProducerIds(1)) == {"first": 1000, "count": 1}
    assert log.state.next_producer_id == 1001
    for bad in (0, -5, md.MAX_PRODUCER_ID_BLOCK + 1):
        result = log.apply(AllocateProducerIds(bad))
        assert result.code == "INVALID_PARAMS" and result.details == {"field": "count"}
    assert log.state.next_producer_id == 1001
    near_end = Log(attrs.evolve(log.state, next_producer_id=md.MAX_PRODUCER_ID - 9))
    assert near_end.ok(AllocateProducerIds(10)) == {"first": md.MAX_PRODUCER_ID - 9, "count": 10}
    result = near_end.apply(AllocateProducerIds(1))
    assert result.code == md.PRODUCER_IDS_EXHAUSTED and result.details == {"left": 0}


# ---------------------------------------------------------------------------- apply contract


def test_apply_refuses_an_index_that_does_not_move_forward():
    log = cluster(1)
    with pytest.raises(ValueError, match="applied after"):
        apply(log.state, register(2), log.index)
    with pytest.raises(ValueError):
        apply_entry(log.state, b"", log.index)
    with pytest.raises(TypeError, match="not a metadata command"):
        apply(log.state, "register", log.index + 1)  # type: ignore[arg-type]
    for bad in (float(log.index + 1), True, "9"):
        with pytest.raises(TypeError, match="a metadata index is an int"):
            apply(log.state, register(2), bad)  # type: ignore[arg-type]


def test_commands_take_lists_but_check_their_types():
    assert CreateTopic("t", [[1, 2], (2, 1)], TopicConfig(), 8, 9).replicas == ((1, 2), (2, 1))
    with pytest.raises(TypeError, match="replicas must be a tuple of tuples"):
        CreateTopic("t", [["1"]], TopicConfig(), 8, 9)
    with pytest.raises(TypeError, match="replicas must be a tuple of tuples"):
        CreateTopic("t", "12", TopicConfig(), 8, 9)
    with pytest.raises(TypeError, match="config must be a TopicConfig"):
        CreateTopic("t", [[1]], {"retention_ms": 5}, 8, 9)
    with pytest.raises(TypeError, match="node_id must be an integer"):
        RegisterNode("1", inc(1), "h:1", "h:2")
    with pytest.raises(TypeError, match="count must be an integer"):
        AllocateProducerIds(True)


def test_apply_entry_moves_past_noops_and_stops_at_garbage():
    log = cluster(1)
    state, result = apply_entry(log.state, b"", log.index + 1)
    assert result is None and state.applied_index == log.index + 1 and state.nodes == log.state.nodes
    state, result = apply_entry(state, encode_command(register(2)), state.applied_index + 1)
    assert isinstance(result, Applied) and 2 in state.nodes
    with pytest.raises(CommandDecodeError):
        apply_entry(state, b"\x00garbage", state.applied_index + 1)


def test_states_share_what_did_not_change_and_cannot_be_mutated():
    log = cluster(3)
    create(log, "t", [[1]])
    before = log.state
    log.ok(AllocateProducerIds(5))
    assert log.state.topics is before.topics and log.state.nodes is before.nodes
    with pytest.raises(TypeError):
        log.state.topics["x"] = None  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        log.state.applied_index = 0  # type: ignore[misc]


def test_hosted_partitions_and_metadata_members():
    log = cluster(3)
    create(log, "b", [[1, 2], [2, 3]])
    create(log, "a", [[3]])
    hosted = md.hosted_partitions(log.state, 3)
    assert [(h.topic.name, h.partition) for h in hosted] == [("a", 0), ("b", 1)]
    assert hosted[1].group == md.partition_group(log.state.topics["b"].topic_id, 1)
    assert hosted[1].info.replicas == (2, 3)
    assert md.hosted_partitions(log.state, 9) == []
    assert md.metadata_members(log.state) == (member(1), member(2), member(3))
    assert dict(md.replica_counts(log.state)) == {1: 1, 2: 2, 3: 2}
    assert dict(md.leader_counts(log.state)) == {1: 1, 2: 1, 3: 1}


# ---------------------------------------------------------------------------- encoding


EXAMPLES = [
    register(3),
    CreateTopic("t", ((1, 2), (2, 1)), TopicConfig(retention_ms=5, segment_bytes=2048), 1024, 9),
    DeleteTopic("t"),
    DeleteTopic("t", "ab" * 16),
    AllocateProducerIds(10),
]


@pytest.mark.parametrize("command", EXAMPLES)
def test_commands_round_trip_through_canonical_bytes(command):
    data = encode_command(command)
    assert decode_command(data) == command
    assert data == orjson.dumps(orjson.loads(data), option=orjson.OPT_SORT_KEYS)


def test_encoded_forms_are_stable():
    # The log is kept forever: its bytes must not change under an upgrade.
    assert encode_command(register(3)) == (
        b'{"client_address":"127.0.0.1:7003","incarnation":"0000000000000003","node_id":3,'
        b'"peer_address":"127.0.0.1:8003","type":"register_node"}')
    assert encode_command(CreateTopic("t", ((1, 2),), TopicConfig(retention_ms=5), 8, 9)) == (
        b'{"config":{"retention_bytes":null,"retention_ms":5,"segment_bytes":null,"segment_ms":null},'
        b'"max_partitions":8,"max_partitions_per_node":9,"replicas":[[1,2]],"topic":"t","type":"create_topic"}')


@pytest.mark.parametrize("data, text", [
    (b"", "not JSON"),
    (b"\xff", "not JSON"),
    (b"[]", "JSON object"),
    (b'"register_node"', "JSON object"),
    (b'{"type":"drop_cluster"}', "unknown metadata command type"),
    (b'{"type":7}', "unknown metadata command type"),
    (b'{"count":1}', "unknown metadata command type"),
    (b'{"count":1,"extra":2,"type":"allocate_producer_ids"}', "unknown fields ['extra']"),
    (b'{"type":"allocate_producer_ids"}', "missing fields ['count']"),
    (b'{"count":true,"type":"allocate_producer_ids"}', "count must be an integer"),
    (b'{"count":1.0,"type":"allocate_producer_ids"}', "count must be an integer"),
    (b'{"count":"1","type":"allocate_producer_ids"}', "count must be an integer"),
    (b'{"count":NaN,"type":"allocate_producer_ids"}', "not JSON"),
    (b'{"count":99999999999999999999999,"type":"allocate_producer_ids"}', "count must be an integer"),
    (b'{"count":1, "type":"allocate_producer_ids"}', "not canonical"),
    (b'{"type":"allocate_producer_ids","count":1}', "not canonical"),
    (b'{"count":2,"count":1,"type":"allocate_producer_ids"}', "not canonical"),
    (b'{"count":1,"type":"allocate_producer_ids"}\n', "not canonical"),
    (b'{"topic":"t","topic_id":5,"type":"delete_topic"}', "topic_id must be a string or null"),
    (b'{"topic":["t"],"topic_id":null,"type":"delete_topic"}', "topic must be a string"),
    (b'{"config":{},"max_partitions":1,"max_partitions_per_node":1,"replicas":[[1]],"topic":"t",'
     b'"type":"create_topic"}', "config must be an object with exactly"),
    (b'{"config":{"retention_bytes":null,"retention_ms":"5","segment_bytes":null,"segment_ms":null},'
     b'"max_partitions":1,"max_partitions_per_node":1,"replicas":[[1]],"topic":"t","type":"create_topic"}',
     "config.retention_ms must be an integer or null"),
    (b'{"config":{"retention_bytes":null,"retention_ms":null,"segment_bytes":null,"segment_ms":null},'
     b'"max_partitions":1,"max_partitions_per_node":1,"replicas":[1],"topic":"t","type":"create_topic"}',
     "replicas must be an array of arrays"),
    (b'{"config":{"retention_bytes":null,"retention_ms":null,"segment_bytes":null,"segment_ms":null},'
     b'"max_partitions":1,"max_partitions_per_node":1,"replicas":[["1"]],"topic":"t","type":"create_topic"}',
     "replicas must be a tuple of tuples of node ids"),
    (b"[" * 2000 + b"]" * 2000, "not JSON"),
])
def test_decode_refuses_anything_but_a_canonical_command(data, text):
    with pytest.raises(CommandDecodeError) as info:
        decode_command(data)
    assert text in str(info.value)


def test_decode_takes_only_bytes():
    with pytest.raises(CommandDecodeError, match="expected bytes"):
        decode_command('{"count":1,"type":"allocate_producer_ids"}')  # type: ignore[arg-type]


def test_results_round_trip_as_forwarded():
    for result in [Applied({"first": 1, "count": 2}), Refused("TOPIC_EXISTS", "exists", {"topic": "t"})]:
        assert md.result_from_dict(orjson.loads(orjson.dumps(result.to_dict()))) == result
    for bad in [{}, {"result": 1}, {"error": {"code": 1, "message": "m"}}, {"error": {}}, [], None]:
        with pytest.raises(ValueError):
            md.result_from_dict(bad)


# ---------------------------------------------------------------------------- snapshots


def busy_state() -> ClusterState:
    log = cluster(3)
    create(log, "a", [[1, 2, 3], [2, 3, 1]], TopicConfig(retention_ms=60_000))
    create(log, "b", [[3]])
    log.ok(register(2, 1))
    log.ok(AllocateProducerIds(77))
    log.ok(DeleteTopic("b"))
    create(log, "b", [[2, 1]])
    return log.state


def test_snapshot_round_trips_exactly():
    state = busy_state()
    data = encode_snapshot(state)
    again = decode_snapshot(data)
    assert again == state and encode_snapshot(again) == data
    assert orjson.loads(data)["version"] == md.SNAPSHOT_VERSION
    # The restored state goes on exactly like the original.
    a = apply(state, register(4), state.applied_index + 1)
    b = apply(again, register(4), state.applied_index + 1)
    assert a == b
    empty = ClusterState.empty(CLUSTER_ID)
    assert decode_snapshot(encode_snapshot(empty)) == empty


def _mutated(edit):
    obj = orjson.loads(encode_snapshot(busy_state()))
    edit(obj)
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


@pytest.mark.parametrize("edit, text", [
    (lambda o: o.update(version=2), "version 2 is not 1"),
    (lambda o: o.update(version="1"), "integer 'version'"),
    (lambda o: o.pop("topics"), "snapshot must be an object with exactly"),
    (lambda o: o.update(extra=1), "snapshot must be an object with exactly"),
    (lambda o: o.update(cluster_id="x"), "cluster id"),
    (lambda o: o.update(applied_index=1), "after the applied index"),
    (lambda o: o.update(next_producer_id=-1), "next producer id"),
    (lambda o: o["nodes"].append(o["nodes"][0]), "appears twice"),
    (lambda o: o["nodes"][0].update(node_id="1"), "node_id must be of type int"),
    (lambda o: o["nodes"][0].update(incarnation="XYZ"), "malformed incarnation"),
    (lambda o: o["nodes"][1].update(retired=[o["nodes"][1]["incarnation"]]), "also retired"),
    (lambda o: o["nodes"][0].update(client_address="nowhere"), "malformed address"),
    (lambda o: o["nodes"].pop(0), "node 1 is not registered"),
    (lambda o: o["topics"][0].update(name=".a"), "invalid topic name"),
    (lambda o: o["topics"][0].update(topic_id=o["topics"][1]["topic_id"]), "not unique"),
    (lambda o: o["topics"][0].update(topic_id="ab" * 16), "not the one its index gives"),
    (lambda o: o["topics"][0].update(partitions=[]), "has no partitions"),
    (lambda o: o["topics"][0]["partitions"][0].update(replicas=[1, 1, 2]), "are not 3 nodes"),
    (lambda o: o["topics"][0]["partitions"][1].update(replicas=[2, 3]), "are not 3 nodes"),
    (lambda o: o["topics"][0]["partitions"][0].update(replicas=[1, 2, True]), "array of node ids"),
    (lambda o: o["topics"][0]["partitions"][0].update(initial_members=[]), "initial members do not match"),
    (lambda o: o["topics"][0]["partitions"][0].update(initial_members=[member(2), member(1), member(3)]),
     "is not an incarnation of node 1"),
    (lambda o: o["topics"][0]["partitions"][0].update(initial_members=[member(1, 5), member(2), member(3)]),
     "is not an incarnation of node 1"),
    (lambda o: o["topics"][0]["config"].update(segment_bytes=1), "segment_bytes"),
    (lambda o: o["topics"].append(o["topics"][0]), "appears twice"),
])
def test_snapshot_decode_refuses_states_apply_could_not_have_made(edit, text):
    with pytest.raises(SnapshotDecodeError) as info:
        decode_snapshot(_mutated(edit))
    assert text in str(info.value)


def test_snapshot_decode_refuses_garbage_and_non_canonical_bytes():
    data = encode_snapshot(busy_state())
    for bad in [b"", b"{}", b"[1]", data[:-1], data + b" ", data.replace(b'{"applied_index"', b'{ "applied_index"')]:
        with pytest.raises(SnapshotDecodeError):
            decode_snapshot(bad)
    with pytest.raises(SnapshotDecodeError, match="not canonical"):
        decode_snapshot(data.replace(b'{"applied_index":', b'{"applied_index":0,"applied_index":', 1))


def test_check_state_accepts_what_apply_makes():
    check_state(busy_state())
    check_state(ClusterState.empty(CLUSTER_ID))


def test_init_producer_entries_without_a_token_keep_their_bytes_and_tokens_round_trip():
    # Entries written before request_token existed decode, and encode to the same bytes.
    old = b'{"epoch":null,"name":"orders","producer_id":null,"type":"init_producer"}'
    assert decode_command(old) == md.InitProducer("orders") and encode_command(md.InitProducer("orders")) == old
    with_token = md.InitProducer("orders", 4, 1, request_token="tok")
    assert encode_command(with_token) == (
        b'{"epoch":1,"name":"orders","producer_id":4,"request_token":"tok","type":"init_producer"}')
    assert decode_command(encode_command(with_token)) == with_token
    with pytest.raises(md.CommandDecodeError, match="request_token must be a string"):
        decode_command(b'{"epoch":null,"name":"orders","producer_id":null,"request_token":7,"type":"init_producer"}')


def test_a_named_producers_token_is_applied_and_kept_in_snapshots():
    state = md.ClusterState.empty(CLUSTER_ID)
    state, first = md.apply(state, md.InitProducer("orders", request_token="a"), 1)
    again_state, again = md.apply(state, md.InitProducer("orders", request_token="a"), 2)
    assert again.value == first.value and again_state.producers == state.producers
    assert again_state.producer_tokens == {"orders": (("a", (0, 0)),)}
    data = encode_snapshot(again_state)
    assert b'["orders",0,0,"a"]' in data  # one token: the form written before several were kept
    assert decode_snapshot(data) == again_state and encode_snapshot(decode_snapshot(data)) == data
    newer, _ = md.apply(again_state, md.InitProducer("orders", request_token="b"), 3)
    data = encode_snapshot(newer)
    assert b'["orders",0,1,[["b",0,1],["a",0,0]]]' in data
    assert decode_snapshot(data) == newer and encode_snapshot(decode_snapshot(data)) == data
    bad, refused = md.apply(state, md.InitProducer("orders", request_token="x" * 65), 4)
    assert bad.producers == state.producers and bad.producer_tokens == state.producer_tokens
    assert refused.code == "INVALID_PARAMS"


def test_an_older_instances_init_resend_is_fenced_and_registers_nothing():
    state = md.ClusterState.empty(CLUSTER_ID)
    state, a = md.apply(state, md.InitProducer("orders", request_token="A"), 1)  # A's answer is lost
    state, b = md.apply(state, md.InitProducer("orders", request_token="B"), 2)  # B starts: epoch 1
    after, resent = md.apply(state, md.InitProducer("orders", request_token="A"), 3)  # A's resend
    assert resent.code == "PRODUCER_FENCED" and after.producers == state.producers == {"orders": (0, 1)}
    assert after.producer_tokens == state.producer_tokens


def test_a_name_keeps_its_last_few_tokens():
    from streamlog.idempotence import registry

    producers, tokens, next_id = {}, {}, 0
    given = []
    for i in range(registry.TOKENS_PER_NAME + 1):
        producers, tokens, next_id, identity = registry.register_once(producers, tokens, next_id, "n", None, f"t{i}")
        given.append(identity)
    assert [t for t, _ in tokens["n"]] == [f"t{i}" for i in range(registry.TOKENS_PER_NAME, 0, -1)]
    for i in range(1, registry.TOKENS_PER_NAME):
        with pytest.raises(registry.Fenced):
            registry.register_once(producers, tokens, next_id, "n", None, f"t{i}")
    # The oldest is forgotten: it registers afresh (as before tokens were kept at all).
    assert registry.register_once(producers, tokens, next_id, "n", None, "t0")[3] == (0, len(given))

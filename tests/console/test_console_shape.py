"""The console's pure parts: shaping answers, checking queries and bodies, routes, sample series."""

from __future__ import annotations

import pytest

from streamlog import errors
from streamlog.console import shape
from streamlog.console.api import STATUS, MethodNotAllowed, NotFound, http_status, route
from streamlog.console.samples import Sample, SampleHistory

METADATA = {
    "cluster_id": "c1", "controller": 2, "controller_isr": [1, 2],
    "nodes": [{"node_id": 2, "address": "127.0.0.1:7072", "up": True},
              {"node_id": 1, "address": "127.0.0.1:7071", "up": True},
              {"node_id": 3, "address": "127.0.0.1:7073", "up": False}],
    "topics": [
        {"topic": "orders", "topic_id": "t1", "partitions": [
            {"partition": 1, "leader": 2, "leader_term": 3, "replicas": [2, 3, 1], "isr": [2, 1]},
            {"partition": 0, "leader": None, "leader_term": 4, "replicas": [1, 2, 3], "isr": []}]},
        {"topic": "__consumer_offsets", "topic_id": "t2", "internal": True, "partitions": [
            {"partition": 0, "leader": 1, "leader_term": 1, "replicas": [1, 2, 3], "isr": [1, 2, 3]}]},
        {"topic": "gone", "error": {"code": "UNKNOWN_TOPIC", "message": "x"}},
    ],
}


def test_overview_counts_nodes_up_offline_and_under_replicated_partitions():
    o = shape.overview(METADATA, node_id=1, version="0.1.0", admin=False)
    assert [n["node_id"] for n in o["nodes"]] == [1, 2, 3]
    assert [n["controller"] for n in o["nodes"]] == [False, True, False]
    assert (o["nodes_up"], o["topics"], o["partitions"]) == (2, 1, 3)
    assert o["offline_partitions"] == 1 and o["under_replicated_partitions"] == 2
    assert o["controller"] == 2 and o["admin"] is False and o["alone"] is False


def test_topic_view_takes_local_offsets_then_the_leaders_and_counts_messages_only_when_all_known():
    described = {"replication_factor": 3, "config": {"retention_ms": None},
                 "partitions": [{"partition": 1, "log_start_offset": 2, "high_watermark": 10, "log_end_offset": 11}]}
    view = shape.topic_view(METADATA["topics"][0], described, {1: 4096})
    assert [p["partition"] for p in view["partitions"]] == [0, 1]
    p0, p1 = view["partitions"]
    assert p1["messages"] == 8 and p1["size_bytes"] == 4096 and p1["under_replicated"] is True
    assert p0["high_watermark"] is None and p0["messages"] is None and p0["size_bytes"] is None
    assert view["messages"] is None and view["size_bytes"] == 4096 and view["replication_factor"] == 3
    asked = {0: {"log_start_offset": 0, "high_watermark": 5}}
    view = shape.topic_view(METADATA["topics"][0], described, {1: 4096}, asked)
    assert view["partitions"][0]["messages"] == 5 and view["messages"] == 13


def test_topics_view_lists_internal_topics_last_and_skips_errors():
    names = [t["topic"] for t in shape.topics_view(METADATA, {}, {})["topics"]]
    assert names == ["orders", "__consumer_offsets"]


@pytest.mark.parametrize("query, expected", [
    ({}, shape.Browse(position="latest", limit=50)),
    ({"from": "earliest", "limit": "3"}, shape.Browse(position="earliest", limit=3)),
    ({"offset": "17"}, shape.Browse(offset=17)),
    ({"timestamp": "1796162676036", "limit": "500"}, shape.Browse(timestamp=1796162676036, limit=500)),
])
def test_parse_browse(query, expected):
    assert shape.parse_browse(query, 500) == expected


@pytest.mark.parametrize("query, field", [
    ({"offset": "1", "from": "earliest"}, "from"),
    ({"offset": "-1"}, "offset"),
    ({"offset": "1e3"}, "offset"),
    ({"offset": "9223372036854775808"}, "offset"),
    ({"timestamp": "١٢"}, "timestamp"),  # non-ASCII digits are not digits here
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"from": "middle"}, "from"),
    ({"partition": "1"}, "partition"),
])
def test_parse_browse_refuses_with_the_field(query, field):
    with pytest.raises(errors.InvalidParams) as e:
        shape.parse_browse(query, 500)
    assert e.value.details["field"] == field


def test_browse_start():
    assert shape.browse_start(shape.Browse(position="earliest", limit=5), 3, 100) == 3
    assert shape.browse_start(shape.Browse(position="latest", limit=5), 3, 100) == 95
    assert shape.browse_start(shape.Browse(position="latest", limit=500), 3, 100) == 3


def test_group_view_adds_holders_and_the_total_of_the_known_lags():
    described = {"group": "g", "members": [{"member_id": "m1", "assignment": [{"topic": "t", "partitions": [0]}]}],
                 "offsets": [{"topic": "t", "partition": 0, "offset": 3, "lag": 2},
                             {"topic": "t", "partition": 1, "offset": None, "lag": 5}]}
    view = shape.group_view(described)
    assert [o["member_id"] for o in view["offsets"]] == ["m1", None] and view["lag"] == 7
    assert view["lag_unknown"] == 0
    described["offsets"][1]["lag"] = None
    assert shape.group_lag(described) == 2 and shape.group_view(described)["lag_unknown"] == 1
    described["offsets"][0]["lag"] = None
    assert shape.group_lag(described) is None


def test_parse_create_topic_keeps_the_protocol_fields_only():
    assert shape.parse_create_topic({"topic": "a", "partitions": 2, "replication_factor": None}) == {
        "topic": "a", "partitions": 2}
    with pytest.raises(errors.InvalidParams):
        shape.parse_create_topic({"topic": "a", "admin": True})
    with pytest.raises(errors.InvalidParams):
        shape.parse_create_topic(["a"])


def test_parse_reset_is_a_dry_run_unless_confirmed_with_a_plan():
    params, confirm = shape.parse_reset("g", {"topic": "t", "to": "earliest"})
    assert params == {"group": "g", "topic": "t", "to": "earliest", "dry_run": True} and confirm is None
    with pytest.raises(errors.InvalidParams) as e:
        shape.parse_reset("g", {"topic": "t", "to": "earliest", "dry_run": False})
    assert e.value.details["field"] == "confirm"
    with pytest.raises(errors.InvalidParams):
        shape.parse_reset("g", {"topic": "t", "to": "earliest", "confirm": []})  # confirm without a real reset
    with pytest.raises(errors.InvalidParams):
        shape.parse_reset("g", {"topic": "t", "to": "earliest", "dry_run": "no"})
    plan = [{"topic": "t", "partition": 10, "offset": 0}, {"topic": "t", "partition": 2, "offset": 4}]
    params, confirm = shape.parse_reset("g", {"topic": "t", "to": "earliest", "dry_run": False, "confirm": plan})
    assert params["dry_run"] is True  # what is sent first is still the dry run to compare with
    answer = {"offsets": [{"topic": "t", "partition": 2, "offset": 4, "previous": 9},
                          {"topic": "t", "partition": 10, "offset": 0, "previous": None}]}
    assert shape.same_plan(confirm, answer)
    answer["offsets"][0]["offset"] = 5
    assert not shape.same_plan(confirm, answer)


def test_console_config_refuses_unusable_limits():
    for bad in ({"max_messages": 0}, {"sample_interval": -1}, {"samples": 1}, {"sample_max_groups": -1},
                {"max_body_bytes": 10}):
        with pytest.raises(ValueError):
            shape.ConsoleConfig(**bad)


def test_routes():
    assert route("GET", ["topics"]) == ("topics", [])
    assert route("GET", ["topics", ""]) == ("topics", [])
    assert route("HEAD", ["overview"]) == ("overview", [])
    assert route("GET", ["topics", "a b", "partitions", "3", "messages"]) == ("messages", ["a b", "3"])
    assert route("DELETE", ["topics", "x"]) == ("delete_topic", ["x"])
    assert route("POST", ["groups", "g", "reset-offsets"]) == ("reset_offsets", ["g"])
    with pytest.raises(MethodNotAllowed) as e:
        route("PUT", ["topics", "x"])
    assert e.value.details["allow"] == ["DELETE", "GET"]
    with pytest.raises(MethodNotAllowed):
        route("POST", ["overview"])
    for path in (["nothing"], ["topics", "", "partitions"], []):
        with pytest.raises(NotFound):
            route("GET", path)


def test_every_status_is_an_http_error_status_and_unknown_codes_are_500():
    assert all(400 <= s < 600 for s in STATUS.values())
    assert http_status(errors.UnknownTopic("x")) == 404 and http_status(errors.Internal("x")) == 500
    assert http_status(errors.StreamlogError("x")) == 500


def test_sample_history_rates_per_second_and_gaps():
    h = SampleHistory(3)
    h.add(Sample(1000, {"a": 10}, {"g": 4}))
    h.add(Sample(3000, {"a": 30, "b": 5}, {"g": None}))
    h.add(Sample(3000, {"a": 99}, {}))  # same time: ignored
    h.add(Sample(4000, {"a": 20, "b": 7}, {"g": 1}))  # a went back (recreated): no rate
    assert h.series() == {"times_ms": [1000, 3000, 4000], "topics": {"a": [None, 10.0, None], "b": [None, None, 2.0]},
                          "groups": {"g": [4, None, 1]}}
    h.add(Sample(5000, {"a": 25}, {}))
    assert len(h) == 3 and h.series()["times_ms"] == [3000, 4000, 5000]
    with pytest.raises(ValueError):
        SampleHistory(1)

"""The console API against a real broker (a node alone) on a Clock, and its hint following."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from streamlog import errors, wire
from streamlog.broker.broker import BrokerConfig
from streamlog.console.api import ConsoleApi, ConsoleReadOnly, PlanChanged
from streamlog.console.calls import NodeCalls
from streamlog.console.resource import local_sizes
from streamlog.console.samples import SampleHistory, Sampler
from streamlog.console.shape import ConsoleConfig
from streamlog.groups.config import GroupConfig
from streamlog.groups.coordinator import GroupLimits
from streamlog.testing import BrokerHarness, failure_of, result_of


@pytest.fixture
def harness(clock):
    h = BrokerHarness(clock=clock, config=BrokerConfig(groups=GroupConfig(
        offsets_partitions=2, limits=GroupLimits(min_session_timeout=1.0, heartbeat_interval=1.0))))
    yield h
    h.broker.groups.stop()
    h.stop()


@pytest.fixture
def conn(harness):
    c = harness.connect()
    assert "result" in c.call("CreateTopic", {"topic": "orders", "partitions": 2})
    for i in range(6):
        harness.clock.advance(1)
        sent = c.call("Send", {"topic": "orders", "partition": 0, "key": f"k{i}", "value": {"n": i, "tag": "<b>"},
                               "headers": {"h": str(i)}})
        assert "result" in sent, sent
    harness.settle()
    return c


def make_api(harness, admin=True, **config):
    calls = NodeCalls(harness.broker.handlers, connect=None)
    return ConsoleApi(calls, ConsoleConfig(admin=admin, **config), 1, lambda t: local_sizes(harness.broker, t),
                      harness.clock)


def answer(harness, api, name, args=(), query=None, body=None):
    d = Deferred.fromCoroutine(api.answer(name, list(args), query or {}, body))
    harness.settle()
    return d


def test_overview_and_topics_show_what_was_produced(harness, conn):
    api = make_api(harness, admin=False)
    o = result_of(answer(harness, api, "overview"))
    assert o["alone"] is True and o["topics"] == 1 and o["partitions"] == 2 and o["admin"] is False
    topics = result_of(answer(harness, api, "topics"))["topics"]
    orders = topics[0]
    assert orders["topic"] == "orders" and orders["messages"] == 6
    p0 = orders["partitions"][0]
    assert (p0["leader"], p0["replicas"], p0["isr"], p0["high_watermark"]) == (1, [1], [1], 6)
    assert p0["size_bytes"] == harness.broker.topics["orders"].partitions[0].log.size_bytes > 0
    one = result_of(answer(harness, api, "topic", ["orders"]))
    assert one["partitions"] == orders["partitions"]
    assert failure_of(answer(harness, api, "topic", ["nope"])).value.code == "UNKNOWN_TOPIC"


def test_messages_from_an_offset_a_timestamp_the_start_and_the_end(harness, conn):
    api = make_api(harness)
    page = result_of(answer(harness, api, "messages", ["orders", "0"], {"offset": "2", "limit": "2"}))
    assert [m["offset"] for m in page["messages"]] == [2, 3] and page["next_offset"] == 4
    assert page["messages"][0]["key"] == "k2" and page["messages"][0]["value"] == {"n": 2, "tag": "<b>"}
    assert page["messages"][0]["headers"] == {"h": "2"} and page["high_watermark"] == 6
    # Message i was sent at clock second i+1 (Send timestamps: the broker's clock).
    at = result_of(answer(harness, api, "messages", ["orders", "0"], {"timestamp": "4000", "limit": "1"}))
    assert [m["offset"] for m in at["messages"]] == [3]
    latest = result_of(answer(harness, api, "messages", ["orders", "0"], {"limit": "2"}))
    assert [m["offset"] for m in latest["messages"]] == [4, 5]
    earliest = result_of(answer(harness, api, "messages", ["orders", "0"], {"from": "earliest", "limit": "1"}))
    assert [m["offset"] for m in earliest["messages"]] == [0]
    empty = result_of(answer(harness, api, "messages", ["orders", "1"], {}))
    assert empty["messages"] == [] and empty["high_watermark"] == 0


@pytest.mark.parametrize("args, query, code", [
    (["orders", "0"], {"offset": "99"}, "OFFSET_OUT_OF_RANGE"),
    (["orders", "7"], {}, "UNKNOWN_PARTITION"),
    (["orders", "x"], {}, "INVALID_PARAMS"),
    (["nope", "0"], {}, "UNKNOWN_TOPIC"),
    (["orders", "0"], {"limit": "501"}, "INVALID_PARAMS"),
])
def test_messages_errors_are_the_protocols(harness, conn, args, query, code):
    api = make_api(harness)
    assert failure_of(answer(harness, api, "messages", args, query)).value.code == code


def test_the_browser_limit_is_configurable(harness, conn):
    api = make_api(harness, max_messages=3)
    assert failure_of(answer(harness, api, "messages", ["orders", "0"], {"limit": "4"})).value.details["field"] == "limit"
    assert len(result_of(answer(harness, api, "messages", ["orders", "0"], {"limit": "3"}))["messages"]) == 3


def test_admin_routes_are_refused_while_read_only(harness, conn):
    api = make_api(harness, admin=False)
    for name, args, body in (("create_topic", [], {"topic": "x"}), ("delete_topic", ["orders"], None),
                             ("reset_offsets", ["g"], {"topic": "orders", "to": "earliest"})):
        assert failure_of(answer(harness, api, name, args, body=body)).check(ConsoleReadOnly)
    assert "orders" in harness.broker.topics and "x" not in harness.broker.topics


def test_create_and_delete_topics(harness, conn):
    api = make_api(harness)
    created = result_of(answer(harness, api, "create_topic", body={"topic": "clicks", "partitions": 3}))
    assert len(created["partitions"]) == 3 and len(harness.broker.topics["clicks"].partitions) == 3
    assert failure_of(answer(harness, api, "create_topic", body={"topic": "clicks"})).value.code == "TOPIC_EXISTS"
    assert failure_of(answer(harness, api, "create_topic", body={"topic": "a/b"})).value.code == "INVALID_TOPIC"
    assert result_of(answer(harness, api, "delete_topic", ["clicks"])) == {"topic": "clicks", "deleted": True}
    assert "clicks" not in harness.broker.topics
    assert failure_of(answer(harness, api, "delete_topic", ["__consumer_offsets"])).value.code == "INTERNAL_TOPIC"


def _group_with_commits(conn):
    joined = conn.call("JoinGroup", {"group": "billing", "topics": ["orders"], "session_timeout_ms": 5000})["result"]
    committed = conn.call("CommitOffsets", {"group": "billing", "member_id": joined["member_id"],
                                            "generation": joined["generation"],
                                            "offsets": [{"topic": "orders", "partition": 0, "offset": 4}]})
    assert "result" in committed, committed
    return joined["member_id"]


def test_groups_and_a_group_with_members_assignment_and_lag(harness, conn):
    member = _group_with_commits(conn)
    api = make_api(harness)
    groups = result_of(answer(harness, api, "groups"))
    assert groups["groups"] == [{"group": "billing", "state": "stable", "members": 1}] and groups["unreachable"] == []
    g = result_of(answer(harness, api, "group", ["billing"]))
    assert [m["member_id"] for m in g["members"]] == [member]
    by_partition = {o["partition"]: o for o in g["offsets"]}
    assert by_partition[0]["offset"] == 4 and by_partition[0]["lag"] == 2 and by_partition[0]["member_id"] == member
    assert g["lag"] == 2
    assert failure_of(answer(harness, api, "group", ["nobody"])).value.code == "UNKNOWN_GROUP"


def test_reset_offsets_dry_run_then_confirm_and_a_stale_confirmation_is_refused(harness, conn):
    member = _group_with_commits(conn)
    api = make_api(harness)
    body = {"topic": "orders", "partitions": [0], "to": "earliest"}
    assert failure_of(answer(harness, api, "reset_offsets", ["billing"], body=body)).value.code == "GROUP_NOT_EMPTY"
    assert "result" in conn.call("LeaveGroup", {"group": "billing", "member_id": member})
    plan = result_of(answer(harness, api, "reset_offsets", ["billing"], body=body))
    assert plan["dry_run"] is True and plan["offsets"] == [{"topic": "orders", "partition": 0, "offset": 0,
                                                            "previous": 4}]
    stale = [{"topic": "orders", "partition": 0, "offset": 3}]
    refused = failure_of(answer(harness, api, "reset_offsets", ["billing"],
                                body={**body, "dry_run": False, "confirm": stale}))
    assert refused.check(PlanChanged) and refused.value.details["plan"] == [{"topic": "orders", "partition": 0,
                                                                             "offset": 0}]
    assert conn.call("FetchOffsets", {"group": "billing"})["result"]["offsets"][0]["offset"] == 4  # unchanged
    confirm = [{"topic": "orders", "partition": 0, "offset": 0}]
    done = result_of(answer(harness, api, "reset_offsets", ["billing"],
                            body={**body, "dry_run": False, "confirm": confirm}))
    assert done["dry_run"] is False
    assert conn.call("FetchOffsets", {"group": "billing"})["result"]["offsets"][0]["offset"] == 0


def test_samples_give_throughput_and_lag_over_time(harness, conn):
    _group_with_commits(conn)
    api = make_api(harness, sample_interval=2.0, samples=10)
    sampler = Sampler(api.history, lambda: Deferred.fromCoroutine(api.take_sample()), 2.0, harness.clock)
    sampler.start()
    harness.settle()
    for i in range(4):  # 4 messages in the next 2 s
        conn.call("Send", {"topic": "orders", "partition": 1, "value": i})
    harness.settle()
    harness.clock.advance(2.0)
    harness.settle()
    sampler.stop()
    series = result_of(answer(harness, api, "samples"))
    assert series["interval_s"] == 2.0 and len(series["times_ms"]) == 2
    assert series["topics"] == {"orders": [None, 2.0]}
    assert series["groups"] == {"billing": [2, 2]}


def test_sample_max_groups_bounds_the_groups_sampled(harness, conn):
    _group_with_commits(conn)
    api = make_api(harness, sample_max_groups=0)
    sample = result_of(Deferred.fromCoroutine(api.take_sample()))
    assert sample.groups == {} and sample.topics == {"orders": 6}


def test_sampler_skips_a_tick_while_busy_and_survives_a_failure(clock):
    pending: list[Deferred] = []
    history = SampleHistory(5)
    sampler = Sampler(history, lambda: pending.append(Deferred()) or pending[-1], 1.0, clock)
    sampler.start()
    clock.advance(1.0)
    assert len(pending) == 1 and sampler.skipped == 1
    pending[0].errback(RuntimeError("boom"))
    clock.advance(1.0)
    assert len(pending) == 2
    sampler.stop()
    assert len(history) == 0


# --- hints ---------------------------------------------------------------------------------------


class FakeClient:
    def __init__(self, answers):
        self.answers = answers
        self.asked = []
        self.closed = False

    def call(self, method, params):
        self.asked.append((method, params))
        result = self.answers.pop(0)
        return fail(result) if isinstance(result, Exception) else succeed(result)

    def close(self):
        self.closed = True
        return succeed(None)


def test_a_not_leader_hint_is_followed_once_to_the_leader():
    hint = errors.NotLeader("not here", topic="t", partition=0, leader=2, leader_address="127.0.0.1:7072",
                            leader_term=3)

    def poll(params):
        raise hint

    clients = {}

    def connect(address):
        clients[address] = FakeClient([{"messages": [], "next_offset": 0, "high_watermark": 0,
                                        "log_start_offset": 0}, hint])
        return clients[address]

    calls = NodeCalls({"Poll": poll}, connect)
    assert result_of(calls.call("Poll", {"topic": "t", "offset": 0}))["next_offset"] == 0
    assert clients["127.0.0.1:7072"].asked == [("Poll", {"topic": "t", "offset": 0})]
    # The leader itself answering NOT_LEADER (it moved again): that is the answer, no second hop.
    assert failure_of(calls.call("Poll", {"topic": "t", "offset": 0})).check(errors.NotLeader)
    assert len(clients) == 1 and len(clients["127.0.0.1:7072"].asked) == 2
    result_of(calls.close())
    assert clients["127.0.0.1:7072"].closed


def test_an_error_without_an_address_is_the_answer_and_a_bug_is_internal():
    def describe(params):
        raise errors.NotCoordinator("no", group="g", coordinator=None, coordinator_address=None)

    def broken(params):
        raise KeyError("bug")

    calls = NodeCalls({"DescribeGroup": describe, "ListGroups": broken}, connect=None)
    assert failure_of(calls.call("DescribeGroup", {"group": "g"})).check(errors.NotCoordinator)
    assert failure_of(calls.call("ListGroups", {})).value.code == "INTERNAL"


def test_raw_poll_results_are_decoded():
    calls = NodeCalls({"Poll": lambda p: wire.RawResult([b'{"messages":[', b'{"offset":0}', b"]}"])}, connect=None)
    assert result_of(calls.call("Poll", {})) == {"messages": [{"offset": 0}]}

"""The console API against a real broker (a node alone) on a Clock, and its hint following."""

from __future__ import annotations

import orjson
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
    stale = [{"topic": "orders", "partition": 0, "offset": 0, "previous": 3}]  # a commit moved since
    refused = failure_of(answer(harness, api, "reset_offsets", ["billing"],
                                body={**body, "dry_run": False, "confirm": stale}))
    assert refused.check(PlanChanged) and refused.value.details["plan"] == [{"topic": "orders", "partition": 0,
                                                                             "offset": 0, "previous": 4}]
    assert conn.call("FetchOffsets", {"group": "billing"})["result"]["offsets"][0]["offset"] == 4  # unchanged
    confirm = [{"topic": "orders", "partition": 0, "offset": 0, "previous": 4}]
    done = result_of(answer(harness, api, "reset_offsets", ["billing"],
                            body={**body, "dry_run": False, "confirm": confirm}))
    assert done["dry_run"] is False and done["offsets"] == [{**confirm[0]}]
    assert conn.call("FetchOffsets", {"group": "billing"})["result"]["offsets"][0]["offset"] == 0


def test_a_confirmed_reset_to_latest_commits_the_confirmed_offsets_while_the_log_moves(harness, conn):
    member = _group_with_commits(conn)
    assert "result" in conn.call("LeaveGroup", {"group": "billing", "member_id": member})
    api = make_api(harness)
    body = {"topic": "orders", "to": "latest"}
    plan = result_of(answer(harness, api, "reset_offsets", ["billing"], body=body))
    assert plan["offsets"] == [{"topic": "orders", "partition": 0, "offset": 6, "previous": 4},
                               {"topic": "orders", "partition": 1, "offset": 0, "previous": None}]
    for i in range(3):  # a producer goes on: "latest" is now elsewhere
        assert "result" in conn.call("Send", {"topic": "orders", "partition": 0, "value": i})
    harness.settle()
    done = result_of(answer(harness, api, "reset_offsets", ["billing"],
                            body={**body, "dry_run": False, "confirm": plan["offsets"]}))
    assert done["offsets"] == plan["offsets"]  # what was confirmed, not the new head
    fetched = conn.call("FetchOffsets", {"group": "billing"})["result"]["offsets"]
    assert {(o["partition"], o["offset"]) for o in fetched} == {(0, 6), (1, 0)}


def test_samples_give_throughput_and_lag_over_time(harness, conn):
    _group_with_commits(conn)
    api = make_api(harness, sample_interval=2.0, samples=10)
    sampler = Sampler(api.history, lambda: Deferred.fromCoroutine(api.take_sample()), 2.0, harness.clock)
    sampler.wanted()  # a page asked
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
    assert sample.groups == {} and sample.topics == {"orders": {0: 6, 1: 0}}


def test_sampler_skips_a_tick_while_busy_and_survives_a_failure(clock):
    pending: list[Deferred] = []
    history = SampleHistory(5)
    sampler = Sampler(history, lambda: pending.append(Deferred()) or pending[-1], 1.0, clock)
    sampler.wanted()
    clock.advance(1.0)
    assert len(pending) == 1 and sampler.skipped == 1
    pending[0].errback(RuntimeError("boom"))
    clock.advance(1.0)
    assert len(pending) == 2
    sampler.stop()
    assert len(history) == 0


def test_the_sampler_samples_only_while_a_page_asks(clock):
    taken: list[float] = []
    history = SampleHistory(5)

    def take():
        taken.append(clock.seconds())
        return succeed(None)

    sampler = Sampler(history, take, 1.0, clock, idle=3.0)
    sampler.start()
    clock.pump([1.0] * 10)
    assert taken == [] and not sampler.running  # nobody asked: an idle node does nothing
    sampler.wanted()
    clock.pump([1.0] * 10)
    assert taken == [10.0, 11.0, 12.0, 13.0] and not sampler.running  # stopped 3 s after the last ask
    sampler.wanted()
    assert sampler.running and taken[-1] == 20.0
    sampler.stop()
    sampler.wanted()  # a stopped node does not start again
    assert not sampler.running and clock.getDelayedCalls() == []


def _many_topics(harness, conn, count, partitions=4):
    for i in range(count):
        assert "result" in conn.call("CreateTopic", {"topic": f"t{i:04d}", "partitions": partitions})
    harness.settle()


def test_a_sample_and_the_topic_list_give_the_reactor_turns_between_slices(harness, conn):
    from streamlog.console.api import PARTITIONS_PER_TURN

    _many_topics(harness, conn, 150)  # 600 partitions and orders' 2
    api = make_api(harness, max_topics=500)
    described = []
    handlers = harness.broker.handlers
    api.calls = NodeCalls({**handlers, "DescribeTopic": lambda p: described.append(p) or handlers["DescribeTopic"](p)},
                          connect=None)
    yields: list[int] = []  # topics described when the work gave the reactor a turn

    class Turns:
        def __getattr__(self, name):
            return getattr(harness.clock, name)

        def callLater(self, delay, f, *a, **kw):
            yields.append(len(described))
            return harness.clock.callLater(delay, f, *a, **kw)

    api.clock = Turns()
    for take in (lambda: Deferred.fromCoroutine(api.take_sample()), lambda: answer_unsettled(api, "topics")):
        described.clear()
        yields.clear()
        d = take()
        harness.settle()
        slices = [b - a for a, b in zip([0, *yields], [*yields, len(described)], strict=True)]
        assert len(described) >= 150 and len(slices) >= 602 // PARTITIONS_PER_TURN, slices
        assert max(slices) * 4 <= PARTITIONS_PER_TURN + 4, slices  # each turn about PARTITIONS_PER_TURN
    assert len(result_of(d)["topics"]) == 151


def answer_unsettled(api, name, query=None):
    return Deferred.fromCoroutine(api.answer(name, [], query or {}, None))


def test_the_topic_list_is_paged_and_the_names_route_is_light(harness, conn):
    _many_topics(harness, conn, 5, partitions=1)
    assert "result" in conn.call("FindCoordinator", {"group": "g"})  # __consumer_offsets: internal, listed last
    harness.settle()
    api = make_api(harness, max_topics=4)
    first = result_of(answer(harness, api, "topics"))
    assert [t["topic"] for t in first["topics"]] == ["orders", "t0000", "t0001", "t0002"]
    assert first["next_after"] == "t0002" and first["total"] == 7
    second = result_of(answer(harness, api, "topics", query={"after": "t0002"}))
    assert [t["topic"] for t in second["topics"]] == ["t0003", "t0004", "__consumer_offsets"]
    assert second["next_after"] is None and second["topics"][0]["messages"] == 0
    names = result_of(answer(harness, api, "topic_names"))["topics"]
    assert names[0] == {"topic": "orders", "internal": False, "partitions": 2} and len(names) == 7
    assert names[-1]["topic"] == "__consumer_offsets" and names[-1]["internal"] is True
    assert failure_of(answer(harness, api, "topics", query={"page": "2"})).value.details["field"] == "page"


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


def _has_offsets_topic(harness):
    return "__consumer_offsets" in harness.broker.topics


@pytest.mark.parametrize("to", ["earliest", "latest", {"offset": 3}, {"offset": 99}, {"shift": 2}, {"timestamp": 0}])
def test_looking_at_groups_on_a_fresh_node_creates_no_offsets_topic(harness, conn, to):
    api = make_api(harness)
    assert failure_of(answer(harness, api, "group", ["anything"])).value.code == "UNKNOWN_GROUP"
    body = {"topic": "orders", "to": to}
    plan = result_of(answer(harness, api, "reset_offsets", ["billing"], body=body))
    assert not _has_offsets_topic(harness)  # neither the describe nor the dry run made it
    assert plan["dry_run"] is True and all(o["previous"] is None for o in plan["offsets"])
    # The same plan as the broker's own dry run (which creates nothing either), and once the
    # offsets topic exists.
    assert plan == conn.call("ResetOffsets", {"group": "billing", **body, "dry_run": True})["result"]
    assert not _has_offsets_topic(harness)
    assert "result" in conn.call("FindCoordinator", {"group": "billing"})
    harness.settle()
    assert _has_offsets_topic(harness)
    assert plan == conn.call("ResetOffsets", {"group": "billing", **body, "dry_run": True})["result"]


def test_a_fresh_dry_run_refuses_what_the_broker_refuses(harness, conn):
    api = make_api(harness)
    for body, code in (({"topic": "nope", "to": "earliest"}, "UNKNOWN_TOPIC"),
                       ({"topic": "orders", "partitions": [5], "to": "earliest"}, "UNKNOWN_PARTITION"),
                       ({"topic": "orders", "to": "middle"}, "INVALID_PARAMS")):
        assert failure_of(answer(harness, api, "reset_offsets", ["billing"], body=body)).value.code == code
    assert not _has_offsets_topic(harness)


def test_a_fresh_dry_run_refuses_every_target_of_a_partition_without_a_leader(harness, conn):
    """As the broker's ResetOffsets: not even {"offset": n} is taken as given (PARTITION_UNAVAILABLE)."""
    api = make_api(harness)

    def no_leader(params):
        raise errors.LeaderNotAvailable("electing", topic=params["topic"], partition=params["partition"])

    api.calls = NodeCalls({**harness.broker.handlers, "ListOffsets": no_leader}, connect=None)
    for to in ("earliest", {"offset": 3}):
        refused = failure_of(answer(harness, api, "reset_offsets", ["billing"], body={"topic": "orders", "to": to}))
        assert (refused.value.code, refused.value.details["partition"]) == ("PARTITION_UNAVAILABLE", 0)
    assert not _has_offsets_topic(harness)


def test_from_latest_ends_at_the_head_even_when_the_messages_are_large(harness, conn):
    assert "result" in conn.call("CreateTopic", {"topic": "big"})
    for i in range(60):
        assert "result" in conn.call("Send", {"topic": "big", "value": f"{i:03d}" + "x" * 100_000})
    harness.settle()
    api = make_api(harness)
    page = result_of(answer(harness, api, "messages", ["big", "0"], {"from": "latest", "limit": "50"}))
    offsets = [m["offset"] for m in page["messages"]]
    assert offsets and offsets[-1] == 59 and page["next_offset"] == 60 == page["high_watermark"]
    assert offsets == list(range(60 - len(offsets), 60)) and len(offsets) < 50 and page["truncated"] is True
    small = result_of(answer(harness, api, "messages", ["orders", "0"], {"from": "latest", "limit": "4"}))
    assert [m["offset"] for m in small["messages"]] == [2, 3, 4, 5] and small["truncated"] is False


def test_the_browser_shows_json_as_sent_big_integers_key_order_and_duplicates(harness, conn):
    sent = '{"id": 9007199254740993, "b": 1, "10": 2, "2": 3}'
    values = [orjson.loads(sent), sent, '{"a": 1, "a": 2}', "[1, 2", "plain"]
    assert "result" in conn.call("CreateTopic", {"topic": "j"})
    for v in values:
        assert "result" in conn.call("Send", {"topic": "j", "value": v})
    harness.settle()
    api = make_api(harness)
    page = result_of(answer(harness, api, "messages", ["j", "0"], {"from": "earliest"}))
    shown = [m["value_pretty"] for m in page["messages"]]
    indented = '{\n  "id": 9007199254740993,\n  "b": 1,\n  "10": 2,\n  "2": 3\n}'
    assert shown == [indented, indented, '{"a": 1, "a": 2}', "[1, 2", "plain"]


def test_the_topic_page_asks_the_leaders_of_partitions_elsewhere_at_once(clock):
    metadata = {"topics": [{"topic": "t", "partitions": [
        {"partition": i, "leader": 2, "replicas": [2], "isr": [2]} for i in range(3)]}]}
    pending: list[tuple[dict, Deferred]] = []

    class Leader:
        def call(self, method, params):
            pending.append((params, Deferred()))
            return pending[-1][1]

        def close(self):
            return succeed(None)

    def list_offsets(params):
        raise errors.NotLeader("elsewhere", topic="t", partition=params["partition"], leader=2,
                               leader_address="127.0.0.1:7072", leader_term=1)

    calls = NodeCalls({"Metadata": lambda p: metadata, "DescribeTopic": lambda p: {"topic": "t", "partitions": []},
                       "ListOffsets": list_offsets}, connect=lambda address: Leader())
    api = ConsoleApi(calls, ConsoleConfig(), 1, lambda t: {}, clock)
    d = Deferred.fromCoroutine(api.topic("t"))
    assert len(pending) == 6 and not d.called  # all six asks in flight before any answer
    for params, ask in pending:
        if params["partition"] == 1:
            ask.errback(errors.Timeout("no answer"))
        else:
            ask.callback({"offset": 0 if params["at"] == "earliest" else 5})
    rows = result_of(d)["partitions"]
    assert [(r["log_start_offset"], r["high_watermark"]) for r in rows] == [(0, 5), (None, None), (0, 5)]


def test_a_group_whose_committed_partition_has_no_lag_is_a_gap_not_a_drop():
    from streamlog.console import shape

    offsets = [{"topic": "t", "partition": 0, "offset": 3, "lag": 2}, {"topic": "t", "partition": 1, "offset": None,
                                                                         "lag": None}]
    assert shape.group_lag({"offsets": offsets}) == 2  # nothing committed on 1: nothing to add
    offsets.append({"topic": "t", "partition": 2, "offset": 7, "lag": None})  # its leader did not answer
    assert shape.group_lag({"offsets": offsets}) is None

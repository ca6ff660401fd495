"""Finding 4 of the obs-metrics review: the `group` label was unbounded (any client can JoinGroup
with made-up names, and empty groups stay for ever).  Now a group with no members and no
committed offsets has no series, and per-group series are emitted for at most
--metrics-max-group-series groups (the most lagging first), the rest counted.  A node alone on a
Clock (BrokerHarness), thousands of made-up groups."""

from __future__ import annotations

import pytest
from metrics_support import Scrape

GROUP_SERIES = ("streamlog_group_members", "streamlog_group_rebalances_total", "streamlog_group_topic_lag_records",
                "streamlog_group_lag_records")


def group_series(scrape):
    return sum(len(scrape.samples(name)) for name in GROUP_SERIES)


def join_many(harness, names, session_ms=2000):
    conn = harness.connect()
    rids = [conn.request("JoinGroup", {"group": name, "topics": ["t"], "session_timeout_ms": session_ms})
            for name in names]
    harness.settle()
    answers = {a["id"]: a for a in conn.answers()}
    assert all("result" in answers[r] for r in rids), [answers.get(r) for r in rids[:3]]
    return conn, [answers[r]["result"] for r in rids]


@pytest.fixture
def topic(harness):
    conn = harness.connect()
    conn.call("CreateTopic", {"topic": "t", "partitions": 1})
    for i in range(10):
        conn.call("Send", {"topic": "t", "value": i})
    harness.settle()
    yield
    harness.broker.groups.stop()


def test_made_up_groups_lose_their_series_once_their_members_expire(harness, clock, topic):
    scrape = Scrape(harness.broker, harness.factory, max_group_series=5000)
    join_many(harness, [f"junk-{i:05d}" for i in range(3000)])
    assert len(scrape.samples("streamlog_group_members")) == 3000  # live members: shown
    assert scrape.value("streamlog_groups_coordinated") == 3000
    clock.advance(2.5)  # every session (2 s) ran out; none committed an offset
    harness.settle()
    assert group_series(scrape) == 0
    assert scrape.value("streamlog_metrics_group_series_dropped") == 0
    assert scrape.value("streamlog_groups_coordinated") == 3000  # still known (DeleteGroup removes them)


def test_a_group_with_committed_offsets_keeps_its_lag_series_when_its_members_are_gone(harness, clock, topic):
    scrape = Scrape(harness.broker, harness.factory)
    conn, (member,) = join_many(harness, ["real"])
    rid = conn.request("CommitOffsets", {"group": "real", "member_id": member["member_id"],
                                         "generation": member["generation"],
                                         "offsets": [{"topic": "t", "partition": 0, "offset": 4}]})
    harness.settle()
    assert [a for a in conn.answers() if a["id"] == rid and "result" in a]
    clock.advance(2.5)
    harness.settle()
    assert scrape.value("streamlog_group_members", group="real") == 0  # its consumers are down: what an alert sees
    assert scrape.value("streamlog_group_topic_lag_records", group="real", topic="t") == 6


def test_at_most_the_limit_of_groups_have_series_the_most_lagging_first_the_rest_counted(harness, clock, topic):
    scrape = Scrape(harness.broker, harness.factory, max_group_series=100)
    conn, members = join_many(harness, [f"g-{i:04d}" for i in range(2000)], session_ms=60000)
    lagging = {"g-0007": 1, "g-1999": 3}  # committed offsets: lag 9 and 7
    for name, offset in lagging.items():
        member = members[int(name[2:])]
        conn.request("CommitOffsets", {"group": name, "member_id": member["member_id"],
                                       "generation": member["generation"],
                                       "offsets": [{"topic": "t", "partition": 0, "offset": offset}]})
    harness.settle()
    shown = {dict(labels)["group"] for labels in scrape.samples("streamlog_group_members")}
    assert len(shown) == 100 and {"g-0007", "g-1999"} <= shown
    assert scrape.value("streamlog_group_topic_lag_records", group="g-1999", topic="t") == 7
    assert scrape.value("streamlog_metrics_group_series_dropped") == 1900
    assert scrape.value("streamlog_groups_coordinated") == 2000
    assert len(scrape.samples("streamlog_group_rebalances_total")) == 100

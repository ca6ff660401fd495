"""C{streamlog-consumer --group}: the daemon as a group member, against a Broker on iosim and a Clock."""

from __future__ import annotations

import orjson
import pytest
from client_support import result_of, run_until, settle
from test_daemons import Captured, consumer_options
from twisted.python import usage

from streamlog.tap import consumer as consumer_tap
from streamlog.tap.group_reading import GroupConsumerService
from streamlog.tap.output import LineOutput


@pytest.fixture
def client_options():
    return {"request_timeout": 2.0}  # the daemon's own calls, bounded within these tests' limits


def produce(network, clock, client, values, partitions=2):
    result_of(settle(clock, network, client.create_topic("t", partitions=partitions)))
    for i in values:
        result_of(settle(clock, network, client.send("t", i, partition=i % partitions)))


def more(network, clock, client, values, partitions=2):
    for i in values:
        result_of(settle(clock, network, client.send("t", i, partition=i % partitions)))


def committed(network, clock, client, group="g"):
    answer = result_of(settle(clock, network, client.call("FetchOffsets", {"group": group})))
    return {o["partition"]: o["offset"] for o in answer["offsets"]}


def start(client, clock, *argv, captured=None):
    finished = []
    captured = captured if captured is not None else Captured()
    out = LineOutput(-1, "test output", write=captured.write)
    svc = GroupConsumerService(consumer_options("-t", "t", "--group", "g", "--interval", "0.5",
                                                "--session-timeout-ms", "3000", *argv),
                               client=client, clock=clock, out=out, on_finish=finished.append)
    svc.startService()
    return svc, captured, finished


def stop(network, clock, svc):
    """stopService, as twistd does: it commits, leaves, then closes the (injected) client."""
    d = svc.stopService()
    run_until(clock, network, lambda: d.called, limit=10)
    result_of(d)


def lines(captured):
    return [orjson.loads(line) for line in captured.getvalue().splitlines()]


# --- options --------------------------------------------------------------------------


def test_group_options_defaults_and_the_service_they_make():
    o = consumer_options("-t", "t", "--group", "billing")
    assert (o["group"], o["group-instance-id"], o["session-timeout-ms"], o["commit-interval"],
            o["commit-each-batch"]) == ("billing", None, 10_000, 5.0, False)
    assert isinstance(consumer_tap.makeService(o), GroupConsumerService)
    assert not isinstance(consumer_tap.makeService(consumer_options("-t", "t")), GroupConsumerService)


@pytest.mark.parametrize("argv, says", [
    (["--group", "g", "--partition", "1"], "exclude each other"),
    (["--group-instance-id", "i"], "needs --group"),
    (["--commit-each-batch"], "needs --group"),
    (["--events", "events.jsonl"], "needs --group"),
    (["--group", "g", "--events", "/nonexistent-dir/events.jsonl"], "--events: cannot open"),
    (["--group", ""], "1 to 249 characters"),
    (["--group", "g", "--session-timeout-ms", "0"], "session timeout must be positive"),
    (["--group", "g", "--commit-interval", "0"], "commit interval must be positive"),
])
def test_bad_group_options_are_usage_errors(argv, says):
    with pytest.raises(usage.UsageError, match=says):
        consumer_options("-t", "t", *argv)


# --- behaviour -------------------------------------------------------------------------


def test_two_daemons_share_the_partitions_and_a_restart_resumes_from_the_commit(network, clock, clients):
    admin = clients()
    produce(network, clock, admin, range(20))
    a, out_a, _ = start(clients(), clock, "--commit-interval", "0.5")
    run_until(clock, network, lambda: len(lines(out_a)) == 20)
    b, out_b, _ = start(clients(), clock, "--commit-interval", "0.5")
    run_until(clock, network, lambda: len(a.member.consumers) == 1 and len(b.member.consumers) == 1, limit=30)
    more(network, clock, admin, range(20, 40))
    run_until(clock, network, lambda: {m["value"] for m in lines(out_a) + lines(out_b)} == set(range(40)))
    assert {m["partition"] for m in lines(out_b)} == {p for _, p in b.member.consumers}
    assert set(next(iter(lines(out_a)))) == {"partition", "offset", "timestamp", "key", "value", "headers"}
    stop(network, clock, a)  # commits what it wrote, leaves: b gets both partitions
    run_until(clock, network, lambda: len(b.member.consumers) == 2, limit=30)
    stop(network, clock, b)
    assert committed(network, clock, admin) == {0: 20, 1: 20}
    # A new daemon of the group resumes there: only what came since.
    more(network, clock, admin, range(40, 44))
    c, out_c, finished = start(clients(), clock, "--count", "4")
    run_until(clock, network, lambda: finished)
    assert finished == [0] and sorted(m["value"] for m in lines(out_c)) == [40, 41, 42, 43]
    stop(network, clock, c)
    assert committed(network, clock, admin) == {0: 22, 1: 22}


def test_count_commits_only_what_was_written(network, clock, clients):
    admin = clients()
    produce(network, clock, admin, range(10), partitions=1)
    svc, out, finished = start(clients(), clock, "--count", "3", "--max-messages", "10")
    run_until(clock, network, lambda: finished)
    assert finished == [0] and [m["offset"] for m in lines(out)] == [0, 1, 2]
    stop(network, clock, svc)
    assert committed(network, clock, admin) == {0: 3}  # not 10: the other seven were never written


def test_a_failed_write_stops_with_1_and_commits_up_to_the_first_line_not_written(network, clock, clients):
    admin = clients()
    produce(network, clock, admin, range(10), partitions=1)
    line = len(orjson.dumps({"partition": 0, "offset": 0, "timestamp": 0, "key": None, "value": 0,
                             "headers": {}}))
    captured = Captured(fail_after=4 * line)  # room for about four lines: the fifth is torn
    svc, _, finished = start(clients(), clock, captured=captured)
    run_until(clock, network, lambda: finished)
    assert finished == [1]
    whole = captured.getvalue().count(b"\n")
    stop(network, clock, svc)
    assert committed(network, clock, admin) == {0: whole}


def test_commit_each_batch_commits_before_reading_on(network, clock, clients):
    admin = clients()
    produce(network, clock, admin, range(6), partitions=1)
    commits = []
    original = network.broker.handlers["CommitOffsets"]

    def spy(params):
        commits.append([o["offset"] for o in params["offsets"]])
        return original(params)

    network.replace_handler("CommitOffsets", spy)
    svc, out, _ = start(clients(), clock, "--commit-each-batch", "--max-messages", "2")
    run_until(clock, network, lambda: len(lines(out)) == 6)
    run_until(clock, network, lambda: commits == [[2], [4], [6]], limit=5)
    stop(network, clock, svc)
    assert commits == [[2], [4], [6]]  # nothing left to commit on the stop


def test_a_join_the_server_refuses_for_good_stops_with_1(network, clock, clients):
    admin = clients()
    produce(network, clock, admin, range(2))
    # The server's shortest session is 1 s by default: 500 ms is refused (INVALID_PARAMS).
    svc, _, finished = start(clients(), clock, "--session-timeout-ms", "500")
    run_until(clock, network, lambda: finished, limit=10)
    assert finished == [1]
    stop(network, clock, svc)


def test_an_unreachable_coordinator_is_waited_for_then_read(network, clock, clients):
    admin = clients()
    produce(network, clock, admin, range(4))
    network.up = False
    network.drop()
    svc, out, finished = start(clients(), clock, "--timeout", "1")
    clock.advance(5)
    network.pump()
    assert not finished and lines(out) == []
    network.up = True
    run_until(clock, network, lambda: len(lines(out)) == 4, limit=30)
    assert not finished
    stop(network, clock, svc)


def test_a_static_daemon_restarted_within_its_session_gets_its_partitions_back_without_a_rebalance(
        network, clock, clients):
    admin = clients()
    produce(network, clock, admin, range(8))
    a, out_a, _ = start(clients(), clock, "--group-instance-id", "worker-a", "--commit-interval", "0.5")
    b, out_b, _ = start(clients(), clock, "--commit-interval", "0.5")
    run_until(clock, network, lambda: len(a.member.consumers) == 1 and len(b.member.consumers) == 1, limit=30)
    run_until(clock, network, lambda: len(lines(out_a)) + len(lines(out_b)) == 8)
    held, generation = set(a.member.consumers), a.member.generation
    stop(network, clock, a)  # a static member commits but does not leave
    described = result_of(settle(clock, network, admin.call("DescribeGroup", {"group": "g"})))
    assert len(described["members"]) == 2 and described["generation"] == generation
    again, out_again, _ = start(clients(), clock, "--group-instance-id", "worker-a")
    run_until(clock, network, lambda: set(again.member.consumers) == held, limit=10)
    assert again.member.generation == generation  # no rebalance: b kept its partition throughout
    assert len(b.member.consumers) == 1 and b.member.stats == {**b.member.stats, "assigned": 1, "revoked": 0}
    more(network, clock, admin, range(8, 12))
    (partition,) = [p for _, p in held]
    run_until(clock, network, lambda: len(lines(out_again)) == 2)
    # From a's commit on: only the new messages of its partition.
    assert [m["value"] for m in lines(out_again)] == [v for v in range(8, 12) if v % 2 == partition]
    stop(network, clock, again)
    stop(network, clock, b)


def test_the_events_file_says_what_the_member_was_given_wrote_committed_and_gave_up(network, clock, clients, tmp_path):
    admin = clients()
    produce(network, clock, admin, range(10))
    path = tmp_path / "events.jsonl"
    svc, out, _ = start(clients(), clock, "--commit-interval", "0.5", "--events", str(path))
    run_until(clock, network, lambda: len(lines(out)) == 10)
    run_until(clock, network, lambda: committed(network, clock, admin) == {0: 5, 1: 5}, limit=5)
    stop(network, clock, svc)
    events = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "assigned" and kinds[-1] == "revoked" and "committed" in kinds
    member = svc.member.member_id
    assert all(e["member"] == member and e["generation"] >= 1 for e in events)
    assert events[0]["partitions"] == [["t", 0], ["t", 1]] and events[0]["offsets"] == []  # nothing committed yet
    written = sorted((e["partition"], o) for e in events if e["event"] == "processed" for o in range(e["first"], e["end"]))
    assert written == sorted((m["partition"], m["offset"]) for m in lines(out))  # exactly what the output holds
    commits = [e for e in events if e["event"] == "committed"]
    assert commits[-1]["offsets"] == [["t", 0, 5], ["t", 1, 5]]
    assert all(e["sent"] <= e["monotonic"] for e in commits)
    # In order: each line's monotonic time, and every processed line before the commit covering it.
    assert [e["monotonic"] for e in events] == sorted(e["monotonic"] for e in events)
    for i, e in enumerate(events):
        if e["event"] == "committed":
            for _, partition, offset in e["offsets"]:
                assert offset <= max(x["end"] for x in events[:i] if x["event"] == "processed"
                                     and x["partition"] == partition)

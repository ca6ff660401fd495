"""The runner's pure parts: the seeded fault schedule and the ports and command lines of a run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from streamlog.chaos.runner import RunConfig, plan_nodes, plan_ports
from streamlog.chaos.schedule import (
    KINDS,
    MEMBER_KINDS,
    FaultSchedule,
    ScheduleError,
    Timing,
    parse_kinds,
    parse_steps,
    roll_order,
)
from streamlog.cli_chaos import parse_duration


def test_the_same_seed_draws_the_same_steps_and_another_seed_others():
    a = FaultSchedule(7, ("kill", "stop", "partition"), 3, 3).take(20)
    b = FaultSchedule(7, ("kill", "stop", "partition"), 3, 3).take(20)
    c = FaultSchedule(8, ("kill", "stop", "partition"), 3, 3).take(20)
    assert a == b
    assert a != c


def test_every_kind_comes_once_in_each_cycle_so_short_runs_see_each():
    kinds = ("kill", "stop", "partition", "restart")
    steps = FaultSchedule(3, kinds, 3, 2).take(12)
    for cycle in range(3):
        assert sorted(s.kind for s in steps[cycle * 4:(cycle + 1) * 4]) == sorted(kinds)
    assert [s.number for s in steps] == list(range(1, 13))


def test_steps_stay_in_their_ranges_and_target_a_node_or_a_partition_leader():
    timing = Timing()
    steps = FaultSchedule(11, [k for k in KINDS if k not in MEMBER_KINDS], 5, 4, timing).take(200)
    targets = Counter("leader" if s.partition is not None else "node" for s in steps)
    assert targets["leader"] > targets["node"] > 0
    for s in steps:
        low, high = timing.hold_range(s.kind)
        assert low <= s.hold <= high and timing.gap[0] <= s.gap <= timing.gap[1]
        assert (s.node is None) != (s.partition is None)
        if s.node is not None:
            assert 1 <= s.node <= 5
        else:
            assert 0 <= s.partition < 4  # type: ignore[operator]
        if s.kind == "restart":
            assert s.node is not None
    assert min(s.hold for s in steps if s.kind == "stop") >= 2.5  # past 2 x the default election timeout


def test_fault_kinds_parse_and_unknown_ones_are_refused():
    assert parse_kinds("kill, stop,kill,partition") == ("kill", "stop", "partition")
    with pytest.raises(ScheduleError, match="unknown fault 'nuke'"):
        parse_kinds("kill,nuke")
    with pytest.raises(ScheduleError, match="names no fault"):
        parse_kinds(",")


def test_a_rolling_restart_goes_round_from_its_first_node():
    assert roll_order(2, 3) == [2, 3, 1]
    assert roll_order(1, 5) == [1, 2, 3, 4, 5]


def test_durations():
    assert parse_duration("90") == 90
    assert parse_duration("60s") == 60
    assert parse_duration("2m") == 120
    assert parse_duration("1m30s") == 90
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_every_node_dials_its_peers_through_the_proxy_and_listens_on_its_own_port():
    client, peer, proxy = plan_ports(3, 30000)
    assert client == {1: 30000, 2: 30001, 3: 30002}
    assert peer == {1: 30100, 2: 30101, 3: 30102}
    assert len(proxy) == 6 and len(set(proxy.values())) == 6 and min(proxy.values()) >= 30200
    plans = plan_nodes(RunConfig(nodes=3, data_dir=Path("/tmp/x")), 30000, ["twistd"])
    for plan in plans:
        argv = list(plan.argv)
        peers = dict(item.split("=") for item in argv[argv.index("--peers") + 1].split(","))
        me = plan.node_id
        assert peers[str(me)] == f"127.0.0.1:{peer[me]}"
        assert argv[argv.index("--peer-listen") + 1] == f"tcp:{peer[me]}:interface=127.0.0.1"
        for other in {1, 2, 3} - {me}:
            assert peers[str(other)] == f"127.0.0.1:{proxy[(me, other)]}"


def test_stored_replicas_are_compared_record_by_record():
    from streamlog.chaos.runner import stored_divergence

    a, b, c = b'{"offset":0,"value":"a"}', b'{"offset":1,"value":"b"}', b'{"offset":1,"value":"x"}'
    assert stored_divergence({1: [a, b], 2: [a, b], 3: [a, b]}) is None
    assert stored_divergence({1: [a, b], 2: [a, c]}) == f"record 1: node 1: {b.decode()}; node 2: {c.decode()}"
    assert stored_divergence({1: [a, b], 2: [a]}) == "node 1 2 records, node 2 1 records"


def test_critical_events_of_a_node_log_are_counted_with_their_exception(tmp_path):
    from streamlog.chaos.runner import critical_lines

    log = tmp_path / "node-1.log"
    log.write_text(
        "2026-12-02T05:09:07+0000 [x#info] fine\n"
        "2026-12-02T05:09:07+0000 [d._GroupRunner#critical] group g: callback <bound method C.f of <C object at 0x7fb9>> failed\n"
        "\tTraceback (most recent call last):\n\t  File \"r.py\", line 254, in _wake_ready\n"
        "\tbuiltins.ValueError: too many values to unpack (expected 2)\n\t\n"
        "2026-12-02T05:09:08+0000 [d._GroupRunner#critical] group g: callback <bound method C.f of <C object at 0x7fc0>> failed\n"
        "\tTraceback (most recent call last):\n\tbuiltins.ValueError: too many values to unpack (expected 2)\n"
        "2026-12-02T05:09:09+0000 [s#critical] streamlog stops: disk full\n")
    count, examples = critical_lines(log)
    assert count == 3
    assert examples == ["group g: callback <bound method C.f of <C object>> failed -> builtins.ValueError: too many "
                        "values to unpack (expected 2)", "streamlog stops: disk full"]
    assert critical_lines(tmp_path / "missing.log") == (0, [])


def test_with_group_consumers_member_faults_target_a_member_and_some_node_faults_the_coordinator():
    timing = Timing()
    steps = FaultSchedule(12, ("kill", "stop", "member-kill", "member-stop"), 3, 3, timing, members=3).take(200)
    members = [s for s in steps if s.kind in MEMBER_KINDS]
    assert members and all(1 <= s.member <= 3 and s.node is None and s.partition is None for s in members)
    assert {s.member for s in members} == {1, 2, 3}
    nodes = [s for s in steps if s.kind not in MEMBER_KINDS]
    on_coordinator = [s for s in nodes if s.coordinator]
    assert 0 < len(on_coordinator) < len(nodes) and all(s.node is None and s.partition is None for s in on_coordinator)
    for s in members:
        low, high = timing.hold_range(s.kind)
        assert low <= s.hold <= high
    # Without group consumers the same seed draws what it drew before (no coordinator targets).
    plain = FaultSchedule(12, ("kill", "stop"), 3, 3, timing).take(50)
    assert not any(s.coordinator for s in plain)
    with pytest.raises(ScheduleError, match="needs group consumers"):
        FaultSchedule(12, ("member-kill",), 3, 3, timing)


def test_fixed_steps_name_members_and_the_coordinator():
    steps = parse_steps("member-kill:m2:1.5,kill:g:2,member-stop:m1:4", 3, members=3)
    assert [(s.kind, s.member, s.coordinator, s.hold) for s in steps] == [
        ("member-kill", 2, False, 1.5), ("kill", None, True, 2.0), ("member-stop", 1, False, 4.0)]
    assert steps[1].describe() == "#2 kill on the group's coordinator for 2.0s after 1.0s"
    for bad, says in (("member-kill:m4:1", "m1..m3"), ("member-kill:n1:1", "m1..m3"), ("restart:g:1", "TARGET g"),
                      ("kill:g:1", "TARGET g")):
        with pytest.raises(ScheduleError, match=says):
            parse_steps(bad, 3, members=3 if bad != "kill:g:1" else 0)

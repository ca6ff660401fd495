"""`streamlog cluster status --watch` and `streamlog top`: frames, rates, failures, the terminal."""

from __future__ import annotations

import io

import orjson
import pytest
from threaded_cluster import ThreadedCluster

from streamlog import cli
from streamlog.cli_cluster import NoMetadata, Status, gather_status, rates, watch
from streamlog.client.metadata import MetadataAnswer, NodeInfo, PartitionInfo, ReplicaOffset, TopicInfo


def status_at(ends: dict[int, int | None], leader: int | None = 1) -> Status:
    """One topic 't' whose partition p has its leader's log end at ends[p] (None: not heard)."""
    parts = tuple(PartitionInfo(p, leader, 1, (1, 2), (1, 2)) for p in sorted(ends))
    metadata = MetadataAnswer("c", 1, (NodeInfo(1, "127.0.0.1:1"),), (TopicInfo("t", parts),))
    offsets = {("t", p): (ReplicaOffset(1, end, end),) for p, end in ends.items() if end is not None}
    return Status("127.0.0.1:1", metadata, {}, offsets)


def test_rates_are_the_leaders_log_end_moves_per_second():
    before, after = status_at({0: 100, 1: 50, 2: None}), status_at({0: 300, 1: 50, 2: 7})
    assert rates(before, after, 2.0) == {("t", 0): 100.0, ("t", 1): 0.0, ("t", 2): None}
    assert rates(after, status_at({0: 10, 1: 60, 2: 7}), 1.0) == {("t", 0): None, ("t", 1): 10.0, ("t", 2): 0.0}


class Script:
    """A gather that answers from a list (an exception is raised), on a clock that sleeping moves."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.now = 1000.0
        self.slept = []

    def gather(self, bootstrap, timeout):
        self.now += 0.25  # asking takes a quarter of a second
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


class Tty(io.StringIO):
    def isatty(self):
        return True


def run(script, count, as_json=False, out=None, interval=2.0):
    out = out if out is not None else io.StringIO()
    code = watch([], 1.0, interval, count, as_json, gather=script.gather, out=out,
                 clock=lambda: script.now, sleep=script.sleep, wall=lambda: 1_800_000_000.0)
    return code, out.getvalue()


def test_frames_come_every_interval_with_the_rate_from_the_second_frame_on():
    script = Script([status_at({0: 0}), status_at({0: 400}), status_at({0: 600})])
    code, out = run(script, 3)
    assert code == 0
    assert script.slept == [1.75, 1.75]  # the interval less the time asking took
    first, second, third = (f for f in out.split("every 2 s (Ctrl-C to stop)")[1:])
    assert "MSG/S" in first and "in: - msgs/s" in first
    assert "in: 200 msgs/s" in second  # 400 records in the 2 s between the two asks
    assert "in: 100 msgs/s" in third


def test_a_frame_in_which_no_node_answered_says_so_and_the_next_one_asks_again():
    script = Script([NoMetadata("no node answered"), status_at({0: 5}), status_at({0: 25})])
    code, out = run(script, 3, interval=1.0)
    assert code == 0
    assert "no node answered: no node answered" in out
    assert out.count("TOPIC") == 2 and "in: 20 msgs/s" in out


def test_ctrl_c_ends_the_watch_with_status_0():
    class Interrupted(Script):
        def sleep(self, seconds):
            raise KeyboardInterrupt

    code, out = run(Interrupted([status_at({0: 1})]), None)
    assert code == 0 and out.count("TOPIC") == 1


def test_on_a_terminal_each_frame_is_redrawn_in_place():
    out = Tty()
    run(Script([status_at({0: 1}), status_at({0: 2})]), 2, out=out)
    text = out.getvalue()
    assert text.startswith("\x1b[H") and text.count("\x1b[H") == 2  # back to the top left, twice
    assert text.count("\x1b[J") == 2  # what an old, longer frame left below is cleared
    assert all(line.endswith("\x1b[K") for line in text.split("\n")[:-1] if line)


def test_with_json_each_frame_is_one_document_on_its_own_line_even_on_a_terminal():
    code, out = run(Script([status_at({0: 0}), NoMetadata("down"), status_at({0: 30})]), 3, as_json=True,
                    out=Tty(), interval=1.0)
    docs = [orjson.loads(line) for line in out.splitlines()]
    assert "\x1b" not in out and len(docs) == 3
    assert docs[0]["msgs_per_second"] is None and docs[0]["topics"][0]["topic"] == "t"
    assert docs[1]["error"]["code"] == "CONNECTION_LOST"
    # the rate is against the last frame that answered: 30 records in the 2 s between their asks
    assert docs[2]["msgs_per_second"] == [{"topic": "t", "partition": 0, "value": 15.0}]


@pytest.fixture
def cluster():
    c = ThreadedCluster(nodes=3)
    c.fake.create_topic("orders", 2)
    yield c
    c.close()


def test_top_on_a_cluster_counts_what_each_leader_appended(cluster, monkeypatch, capsys):
    """Through the real CLI and sockets: frames from the fake cluster, whose log ends move between them."""
    asked = []

    def gather(bootstrap, timeout, connect_timeout):
        assert connect_timeout == 10.0  # the CLI's --connect-timeout default, passed on
        with cluster.lock:
            moved = 10 * len(asked)
            cluster.fake.topics["orders"][0].log_ends = {1: moved, 2: moved, 3: moved}
            cluster.fake.topics["orders"][1].log_ends = {1: 0, 2: 0, 3: 0}
        asked.append(1)
        return gather_status(bootstrap, timeout, connect_timeout=connect_timeout)

    monkeypatch.setattr("streamlog.cli_cluster.gather_status", gather)
    code = cli.main(["top", "--connect", cluster.bootstrap, "--timeout", "2", "--interval", "0.1",
                     "--count", "2", "--json"])
    docs = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(docs) == 2
    rates_seen = {(r["topic"], r["partition"]): r["value"] for r in docs[1]["msgs_per_second"]}
    assert rates_seen[("orders", 1)] == 0
    assert 10 / 0.5 < rates_seen[("orders", 0)] <= 10 / 0.1 + 1e-6  # 10 records in one interval or a bit more


@pytest.mark.parametrize("args, message", [
    (["top", "--interval", "0.01"], "--interval: must be between 0.1 and 3600 seconds"),
    (["top", "--interval", "soon"], "not a number of seconds"),
    (["top", "--count", "0"], "--count: must be 1 or more"),
    (["cluster", "status", "--count", "2"], "--interval and --count go with --watch"),
    (["cluster", "status", "--interval", "1"], "--interval and --count go with --watch"),
])
def test_wrong_watch_options_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(args)
    assert exit.value.code == 2 and message in capsys.readouterr().err

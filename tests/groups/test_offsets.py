"""Committed offsets as a state applied from the records of the offsets topic."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamlog import errors
from streamlog.groups.offsets import (
    BadOffsetRecord,
    OffsetCommit,
    OffsetRecord,
    OffsetState,
    decode_record,
    fetch_to_wire,
    reset_target,
)


def commit(group, *entries, kind="commit"):
    return OffsetRecord(kind, group, tuple(OffsetCommit("t", p, o) for p, o in entries))


def test_a_commit_sets_offsets_and_fetch_returns_them():
    state = OffsetState()
    state.apply(commit("g", (0, 5), (1, 7)), timestamp=100)
    assert {tp: c.offset for tp, c in state.fetch("g").items()} == {("t", 0): 5, ("t", 1): 7}
    assert fetch_to_wire(state.fetch("g"))[0] == {"topic": "t", "partition": 0, "offset": 5, "metadata": None,
                                                  "timestamp": 100}
    assert state.fetch("g", topics=["other"]) == {}
    assert state.fetch("nobody") == {}


def test_a_commit_never_goes_backwards_but_a_reset_does():
    state = OffsetState()
    state.apply(commit("g", (0, 5)), 1)
    with pytest.raises(errors.OffsetBehindCommitted) as e:
        state.check_commit("g", [OffsetCommit("t", 0, 4)])
    assert e.value.details == {"group": "g", "topic": "t", "partition": 0, "committed": 5}
    state.check_commit("g", [OffsetCommit("t", 0, 5)])  # the same again is fine (a retry)
    state.apply(commit("g", (0, 3)), 2)  # applied anyway (raced past its check): ignored
    assert state.fetch("g")[("t", 0)].offset == 5
    state.apply(commit("g", (0, 2), kind="reset"), 3)
    assert state.fetch("g")[("t", 0)].offset == 2


def test_a_rewind_entry_moves_a_commit_back_and_round_trips():
    state = OffsetState()
    state.apply(commit("g", (0, 50), (1, 9)), 1)
    record = OffsetRecord("commit", "g", (OffsetCommit("t", 0, 10, rewind=True), OffsetCommit("t", 1, 4)))
    assert state.behind("g", record.offsets) == [(record.offsets[1], 9)]  # a rewind entry is not behind
    stored = orjson.loads(orjson.dumps(record.to_value()))
    assert stored["offsets"][0]["rewind"] is True and "rewind" not in stored["offsets"][1]
    assert decode_record(stored) == record
    state.apply(decode_record(stored), 2)
    assert {tp[1]: c.offset for tp, c in state.fetch("g").items()} == {0: 10, 1: 9}


def test_delete_forgets_the_group():
    state = OffsetState()
    state.apply(commit("g", (0, 5)), 1)
    state.apply(commit("h", (0, 1)), 1)
    state.apply(OffsetRecord("delete", "g"), 2)
    assert not state.has_group("g") and state.has_group("h")


def test_records_round_trip_through_their_json_value():
    for record in (commit("g", (0, 5), (3, 9)), commit("g", (0, 1), kind="reset"), OffsetRecord("delete", "g")):
        assert decode_record(orjson.loads(orjson.dumps(record.to_value()))) == record


@pytest.mark.parametrize("value", [
    None, 5, {"type": "commit"}, {"type": "merge", "group": "g"}, {"type": "commit", "group": "g"},
    {"type": "commit", "group": "g", "offsets": [{"topic": "t", "partition": -1, "offset": 0}]},
    {"type": "commit", "group": "g", "offsets": [{"topic": "t", "partition": 0, "offset": True}]},
    {"type": "commit", "group": "g", "offsets": [{"topic": "t", "partition": 0}]},
    {"type": "commit", "group": "g", "offsets": ["x"]},
    {"type": "commit", "group": "g", "offsets": [{"topic": "t", "partition": 0, "offset": 1, "rewind": 1}]},
])
def test_records_that_are_not_ours_are_refused(value):
    with pytest.raises(BadOffsetRecord):
        decode_record(value)


ops = st.lists(st.tuples(st.sampled_from(["commit", "commit", "reset", "delete"]),
                         st.integers(0, 2), st.integers(0, 50)), max_size=30)


@given(ops)
def test_replaying_the_records_rebuilds_the_same_state_and_commits_only_move_forward(ops):
    state = OffsetState()
    log = []
    model = {}
    for kind, partition, offset in ops:
        record = OffsetRecord("delete", "g") if kind == "delete" else commit("g", (partition, offset), kind=kind)
        before = state.fetch("g").get(("t", partition))
        state.apply(record, len(log))
        log.append(record)
        after = state.fetch("g").get(("t", partition))
        if kind == "commit":
            assert after.offset >= offset and (before is None or after.offset >= before.offset)
            model[partition] = max(model.get(partition, 0), offset) if partition in model else offset
        elif kind == "reset":
            model[partition] = offset
        else:
            model = {}
    replayed = OffsetState()
    for i, record in enumerate(log):
        replayed.apply(record, i)
    assert replayed.groups == state.groups
    assert {p: c.offset for (_, p), c in state.fetch("g").items()} == model


@pytest.mark.parametrize(("to", "committed", "expected"), [
    ("earliest", 50, 10),
    ("latest", 50, 90),
    (("offset", 42), None, 42),
    (("offset", 5), None, 10),  # clamped to the log start
    (("offset", 500), None, 90),  # and to the high watermark
    (("shift", -30), 50, 20),  # from the committed offset
    (("shift", 3), None, 13),  # nothing committed: from the log start
    (("shift", -100), 50, 10),
    (("timestamp", 0), None, 77),  # the first offset at or after the timestamp (found by the caller)
])
def test_reset_target_stays_within_the_log_start_and_the_high_watermark(to, committed, expected):
    assert reset_target(to, (10, 90, 77), committed) == expected


def test_reset_target_to_a_timestamp_past_every_record_is_the_high_watermark():
    assert reset_target(("timestamp", 0), (10, 90, None), None) == 90

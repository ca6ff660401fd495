"""Wire form of Raft messages: JSON round trip and validation of untrusted input."""

import json

import pytest

from streamlog.raft.log import Entry
from streamlog.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    from_dict,
    to_dict,
)

SAMPLES = [
    RequestVote(3, "n1", 10, 2, pre_vote=True),
    RequestVote(3, "n1", 10, 2, transfer=True),
    RequestVoteResponse(3, True, False),
    AppendEntries(4, "n2", 7, 3, (Entry(8, 4, b"\x00\xffdata"), Entry(9, 4, b"")), 6),
    AppendEntries(4, "n2", 7, 3, (), 6),
    AppendEntriesResponse(4, True, match_index=9),
    AppendEntriesResponse(4, False, reject_index=7, conflict_term=2, conflict_index=5),
    InstallSnapshot(5, "n3", 100, 4, b"state"),
    InstallSnapshot(5, "n3", 100, 4, b"", ("n1", "n2", "n3")),
    AppendEntries(4, "n2", 7, 3, (Entry(8, 4, b"", ("n1", "n2")),), 6),
    TimeoutNow(6, "n1"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_json(msg):
    assert from_dict(json.loads(json.dumps(to_dict(msg)))) == msg


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"type": "nope"},
        {"type": []},  # unhashable: was a TypeError, which the driver does not catch
        {"type": {"kind": "x"}},
        {"type": "timeout_now", "term": 1},
        {"type": "timeout_now", "term": True, "leader_id": "n1"},
        {"type": "timeout_now", "term": "1", "leader_id": "n1"},
        {"type": "append_entries", "term": 1, "leader_id": "a", "prev_index": 0, "prev_term": 0,
         "entries": [[1, 1]], "commit": 0},
        {"type": "append_entries", "term": 1, "leader_id": "a", "prev_index": 0, "prev_term": 0,
         "entries": [[1, 1, "!!"]], "commit": 0},
        {"type": "install_snapshot", "term": 1, "leader_id": "a", "last_index": 1, "last_term": 1, "data": 5},
    ],
)
def test_malformed_input_is_a_value_error(bad):
    with pytest.raises(ValueError):
        from_dict(bad)

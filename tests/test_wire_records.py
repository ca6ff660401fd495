"""The stored record bytes (ARCHITECTURE.md decision 3) and the checks a SendBatch's messages pass.

C{wire.encode_records} builds records from templates for speed; whatever path a
message takes, its record must be exactly the JSON object a consumer is promised,
in field order C{offset, timestamp, key, value, headers}.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamlog import errors, wire

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {"value": json_values},
    optional={
        "key": st.none() | st.text(max_size=20),
        "headers": st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        "partition": st.integers(0, 100),
    },
)


@given(base=st.integers(0, 2**62), timestamp=st.integers(0, 2**45), batch=st.lists(messages, min_size=1, max_size=8))
def test_each_record_is_the_promised_json_object_whatever_path_it_takes(base, timestamp, batch):
    records = wire.encode_records(base, timestamp, batch)
    assert len(records) == len(batch)
    for i, (record, m) in enumerate(zip(records, batch)):
        expected = {"offset": base + i, "timestamp": timestamp, "key": m.get("key"), "value": m["value"],
                    "headers": m.get("headers") or {}}
        assert record == orjson.dumps(expected)
        assert b"\n" not in record  # the stored separator never occurs inside a record


def test_a_bad_message_is_named_by_its_index_in_the_batch():
    good = {"value": 1}
    cases = [
        ("x", "'messages[2]' must be an object"),
        ({"value": 1, "colour": "red"}, "unknown fields in messages[2]: colour"),
        ({"key": "k"}, "'messages[2].value' is required"),
        ({"value": 1, "key": 5}, "'messages[2].key' must be a string or null"),
        ({"value": 1, "partition": -1}, "'messages[2].partition' must be a non-negative integer"),
        ({"value": 1, "headers": {"a": 1}}, "'messages[2].headers' must be an object of strings"),
    ]
    for bad, message in cases:
        with pytest.raises(errors.InvalidParams) as e:
            wire.parse_send_batch({"topic": "t", "messages": [good, good, bad, good]})
        assert message in str(e.value), (bad, str(e.value))
    with pytest.raises(errors.InvalidParams) as e:
        wire.parse_send_batch({"topic": "t", "messages": [good, {"value": 1, "partition": "3"}]})
    assert e.value.to_wire()["field"] == "messages[1].partition"


def test_a_bad_single_send_is_named_without_an_index():
    with pytest.raises(errors.InvalidParams, match=r"'key' must be a string or null"):
        wire.parse_send({"topic": "t", "value": 1, "key": 5})

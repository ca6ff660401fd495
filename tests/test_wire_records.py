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


# --- the whole-batch check (wire.plain_batch) against the message-by-message one -------------

any_messages = st.one_of(
    st.fixed_dictionaries(
        {"value": json_values},
        optional={"partition": st.integers(-2, 3) | st.booleans() | st.text(max_size=2) | st.none()},
    ),
    messages,
    st.dictionaries(st.sampled_from(["value", "partition", "key", "colour"]), json_values, max_size=3),
    json_values,
)
deep = st.recursive(st.integers(0, 9), lambda inner: st.lists(inner, min_size=1, max_size=2)
                    | st.dictionaries(st.sampled_from("ab"), inner, min_size=1, max_size=2), max_leaves=6)


def checked_one_by_one(batch: list, limits: wire.Limits) -> str | None:
    """What checking each message in turn says of a batch: None, or the first error."""
    try:
        for i, m in enumerate(batch):
            wire.check_message(m, i, limits)
    except errors.StreamlogError as e:
        return f"{e.code}: {e}"
    return None


partitions = st.integers(-2, 3) | st.booleans() | st.text(max_size=2) | st.none() | st.floats(0, 3)
batches = st.one_of(
    st.lists(any_messages | st.fixed_dictionaries({"value": deep}), min_size=1, max_size=6),
    # one shape for all, a near miss in any field: the batches the whole-batch check takes or nearly does
    st.lists(st.fixed_dictionaries({"value": json_values | deep, "partition": partitions}), min_size=1, max_size=6),
    st.lists(st.fixed_dictionaries({"value": json_values | deep, "partition": st.integers(-1, 3)}),
             min_size=1, max_size=6),
    st.lists(st.fixed_dictionaries({"value": json_values | deep}), min_size=1, max_size=6),
)


@given(batch=batches, max_depth=st.integers(0, 4))
def test_a_batch_checked_whole_says_what_checking_it_message_by_message_says(batch, max_depth):
    limits = wire.Limits(max_depth=max_depth)
    expected = checked_one_by_one(batch, limits)
    try:
        plain = wire.plain_batch(batch, limits)
    except errors.StreamlogError as e:
        # Only a value nested too deep is refused by the whole-batch check itself, as the other says.
        assert e.code == "NESTING_TOO_DEEP" and f"{e.code}: {e}" == expected
        return
    if plain:
        assert expected is None
        shapes = {frozenset(m) for m in batch}
        assert shapes in ({frozenset({"value"})}, {frozenset({"value", "partition"})})
    try:
        parsed = wire.parse_send_batch({"topic": "t", "messages": batch}, limits)
    except errors.StreamlogError as e:
        assert f"{e.code}: {e}" == expected
    else:
        assert expected is None and parsed.messages is batch and parsed.plain is plain


@pytest.mark.parametrize("batch, plain", [
    ([{"value": 1}, {"value": {"a": [1]}}], True),
    ([{"value": "x", "partition": 0}, {"value": [1, "y"], "partition": 7}], True),
    ([{"value": 1}, {"value": 1, "partition": 0}], False),  # mixed shapes: message by message
    ([{"value": 1, "partition": True}], False),  # a bool is no partition: the other check names it
    ([{"value": 1, "partition": 0}, {"value": 1, "partition": -1}], False),
    ([{"value": 1, "partition": 1.0}], False),
    ([{"value": 1, "key": None}], False),
    ([{"partition": 0, "key": "k"}], False),  # two fields, no value
])
def test_the_shapes_a_batch_is_taken_whole_in(batch, plain):
    assert wire.plain_batch(batch, wire.DEFAULT_LIMITS) is plain


def test_a_value_nested_too_deep_in_a_plain_batch_is_refused_with_the_same_error():
    batch = [{"value": {"a": 1}}, {"value": {"a": {"b": {"c": 1}}}}]
    with pytest.raises(errors.NestingTooDeep) as e:
        wire.plain_batch(batch, wire.Limits(max_depth=2))
    assert f"{e.value}" == "message value nested deeper than 2 levels"
    assert wire.plain_batch(batch, wire.Limits(max_depth=3)) is True


@given(base=st.integers(0, 2**62), timestamp=st.integers(0, 2**45),
       batch=st.lists(st.fixed_dictionaries({"value": json_values}, optional={"partition": st.integers(0, 9)}),
                      min_size=1, max_size=8))
def test_a_plain_batch_is_encoded_to_the_same_records(base, timestamp, batch):
    assert wire.encode_records(base, timestamp, batch, plain=True) == wire.encode_records(base, timestamp, batch)

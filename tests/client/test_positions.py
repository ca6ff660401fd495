"""The --from forms shared by the consumer daemon, `streamlog consume` and the Consumer."""

from __future__ import annotations

import datetime as dt

import pytest

from streamlog.client.positions import EARLIEST, LATEST, Start, parse_start


@pytest.mark.parametrize("text, start", [
    ("earliest", EARLIEST),
    ("latest", LATEST),
    ("0", Start("offset", 0)),
    ("42", Start("offset", 42)),
    (42, Start("offset", 42)),
    ("-10", Start("back", 10)),
    ("-0", Start("back", 0)),
    ("@1700000000000", Start("timestamp", 1700000000000)),
    ("2023-11-14T22:13:20Z", Start("timestamp", 1700000000000)),
    ("2023-11-14T23:13:20.5+01:00", Start("timestamp", 1700000000500)),
])
def test_parse_start_forms(text, start):
    assert parse_start(text) == start


def test_a_time_without_a_zone_is_local_time():
    local = dt.datetime(2024, 3, 1, 12, 30).astimezone()
    assert parse_start("2024-03-01 12:30") == Start("timestamp", int(local.timestamp() * 1000))
    assert parse_start("2024-03-01").value == int(dt.datetime(2024, 3, 1).astimezone().timestamp() * 1000)


@pytest.mark.parametrize("text", ["", "soon", "-", "-x", "@", "@-5", "1.5", "1e3", -3, None, True, "1969-01-01T00:00Z"])
def test_parse_start_refuses_with_the_forms_named(text):
    with pytest.raises(ValueError) as e:
        parse_start(text)
    assert "earliest" in str(e.value) or "before 1970" in str(e.value) or "N before the end" in str(e.value)


@pytest.mark.parametrize("start, expected", [
    (EARLIEST, 5), (LATEST, 20), (Start("offset", 7), 7), (Start("back", 3), 17), (Start("back", 100), 5),
    (Start("timestamp", 1), None),
])
def test_offset_in_a_partition_holding_5_to_20(start, expected):
    assert start.offset_in(5, 20) == expected


def test_start_reads_as_people_write_it():
    assert [str(s) for s in (EARLIEST, Start("offset", 3), Start("back", 10), Start("timestamp", 1700000000000))] \
        == ["earliest", "offset 3", "10 before the end", "time 2023-11-14T22:13:20.000Z"]


def test_the_clients_poll_bounds_are_the_servers_defaults():
    from streamlog import wire
    from streamlog.client import requests

    assert requests.MAX_POLL_MESSAGES == wire.DEFAULT_LIMITS.max_poll_messages
    assert requests.MAX_BATCH_MESSAGES == wire.DEFAULT_LIMITS.max_batch_messages
    assert requests.MAX_WAIT_MS == wire.DEFAULT_LIMITS.max_wait_ms

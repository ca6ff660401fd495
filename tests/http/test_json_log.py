"""--log-format json: one JSON object per event, the same envelope on every line."""

from __future__ import annotations

import io
import subprocess

import orjson
import pytest
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python import usage

from streamlog.tap.json_log import JSONLogObserver, SyslogNotSupported, event_as_json, log_file
from streamlog.tap.server import Options
from streamlog.testing import TWISTD, ServerProcess, child_env, wait_for

ENVELOPE = {"time", "timestamp", "level", "namespace", "node_id", "message", "fields"}


def emitted(log_call) -> dict:
    out = io.StringIO()
    observer = JSONLogObserver(out, node_id=3)
    globalLogPublisher.addObserver(observer)
    try:
        log_call(Logger(namespace="streamlog.test"))
    finally:
        globalLogPublisher.removeObserver(observer)
    (line,) = out.getvalue().splitlines()
    return orjson.loads(line)


def test_an_event_is_one_line_with_the_envelope_and_its_own_fields_apart():
    record = emitted(lambda log: log.warn("appended {count} to {topic}", count=3, topic="orders", time="mine"))
    assert set(record) == ENVELOPE
    assert record["level"] == "warn" and record["namespace"] == "streamlog.test" and record["node_id"] == 3
    assert record["message"] == "appended 3 to orders"
    assert record["fields"] == {"count": 3, "topic": "orders", "time": "mine"}  # no clash with the envelope
    assert record["time"].endswith("Z") and isinstance(record["timestamp"], float)


def test_values_json_cannot_hold_are_given_as_their_repr():
    class Thing:
        def __repr__(self):
            return "<a thing>"

    record = emitted(lambda log: log.info("x", thing=Thing(), ratio=float("nan"), raw=b"\x00", nested={"a": [1]}))
    assert record["fields"]["ratio"] == "nan" and record["fields"]["raw"] == "b'\\x00'"
    assert record["fields"]["thing"] == "<a thing>" and record["fields"]["nested"] == {"a": [1]}


def test_a_failure_comes_with_its_type_message_and_traceback():
    def fail(log):
        try:
            raise ValueError("the disk said no")
        except ValueError:
            log.failure("sync failed")

    record = emitted(fail)
    assert record["level"] == "critical" and record["message"] == "sync failed"
    assert record["error"]["type"] == "ValueError" and record["error"]["message"] == "the disk said no"
    assert "Traceback" in record["error"]["traceback"]


def test_a_legacy_event_is_written_with_the_same_envelope():
    line = event_as_json({"message": ("hello", "world"), "isError": 0, "system": "-", "log_time": 1.5,
                          "log_namespace": "log_legacy", "log_level": LogLevel.info,
                          "log_format": "{log_text}", "log_text": "hello world"})
    record = orjson.loads(line)
    assert set(record) == ENVELOPE and record["message"] == "hello world" and record["fields"] == {}
    assert record["time"] == "1970-01-01T00:00:01.500000Z"


def test_where_the_lines_go_follows_twistds_own_choice(tmp_path):
    import sys

    assert log_file({"nodaemon": True, "logfile": ""}) is sys.stdout
    assert log_file({"nodaemon": True, "logfile": "-"}) is sys.stdout
    to_file = log_file({"nodaemon": False, "logfile": str(tmp_path / "n.log")})
    to_file.write("x\n")
    to_file.flush()
    assert (tmp_path / "n.log").read_text() == "x\n"
    with pytest.raises(SyslogNotSupported):
        log_file({"syslog": True})


def test_an_unknown_log_format_is_a_usage_error():
    with pytest.raises(usage.UsageError, match="--log-format must be 'text' or 'json'"):
        Options().parseOptions(["--log-format", "xml"])


def test_a_real_node_writes_every_event_as_json_to_its_logfile(tmp_path):
    server = ServerProcess(tmp_path, ["--storage", "memory", "--log-format", "json"])  # twistd --logfile=...
    try:
        wait_for(lambda: "serving on" in server.log(), 10, "the start-up line")
    finally:
        server.stop()
    records = [orjson.loads(line) for line in server.log().splitlines()]  # every line parses
    assert len(records) >= 3 and all(ENVELOPE <= set(r) for r in records)
    (start,) = [r for r in records if " serving on " in r["message"]]
    assert start["namespace"] == "streamlog.tap.server.Node" and start["fields"]["storage"] == "memory"
    assert start["fields"]["address"] == f"127.0.0.1:{server.port}"
    assert records[-1]["message"] == "Server Shut Down."


def test_under_nodaemon_without_a_logfile_the_json_lines_go_to_stdout(tmp_path):
    out = tmp_path / "out"
    with open(out, "wb") as sink:
        process = subprocess.Popen([TWISTD, "--nodaemon", "--pidfile=", "streamlog-server", "--storage", "memory",
                                    "--listen", "tcp:0:interface=127.0.0.1", "--log-format", "json"],
                                   cwd=tmp_path, env=child_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"serving on" in out.read_bytes(), 15, "the start-up line on stdout")
    finally:
        process.terminate()  # our own child, by its pid
        process.wait(timeout=15)
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert any(" serving on " in r["message"] for r in records) and all(ENVELOPE <= set(r) for r in records)


def test_json_with_twistd_syslog_is_a_one_line_refusal(tmp_path):
    done = subprocess.run([TWISTD, "--nodaemon", "--pidfile=", "--syslog", "streamlog-server", "--storage", "memory",
                           "--listen", "tcp:0:interface=127.0.0.1", "--log-format", "json"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("streamlog-server: --log-format json: --log-format json writes to stdout or the "
                                   "--logfile; it cannot go to twistd --syslog (drop one of them)")


def test_an_event_orjson_refuses_keeps_its_envelope_and_its_own_level():
    # A file name read from the data directory with surrogateescape (non-UTF-8 bytes), and an int past
    # 64 bits: both legal in Python, both refused by orjson as they are.
    out = io.StringIO()
    observer = JSONLogObserver(out, node_id=3)
    observer({"log_format": "ignoring {name}", "name": "bad-\udcff.log", "log_level": LogLevel.warn,
              "log_namespace": "streamlog.storage", "log_time": 1796220000.0})
    observer({"log_format": "offset {o}", "o": 2 ** 70, "log_level": LogLevel.info, "log_namespace": "x",
              "log_time": 1796220000.0})
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert set(first) == set(second) == ENVELOPE
    assert first["level"] == "warn" and first["namespace"] == "streamlog.storage" and first["node_id"] == 3
    assert first["timestamp"] == 1796220000.0 and first["time"].startswith("2026-")
    assert first["message"] == "ignoring bad-\\udcff.log" and first["fields"] == {"name": "bad-\\udcff.log"}
    assert second["level"] == "info" and second["message"] == f"offset {2 ** 70}"
    assert second["fields"] == {"o": str(2 ** 70)}


def test_a_namespace_or_field_name_with_a_lone_surrogate_is_escaped_too():
    line = event_as_json({"log_format": "x", "log_namespace": "n\udc80", "k\udc81": [1, -(2 ** 64)],
                          "log_time": 1.0}, 1)
    record = orjson.loads(line)
    assert record["namespace"] == "n\\udc80" and record["fields"] == {"k\\udc81": [1, str(-(2 ** 64))]}


def test_an_event_no_line_can_hold_is_still_one_line_in_its_envelope_at_its_level(monkeypatch):
    import streamlog.tap.json_log as json_log

    def refuse(event, node_id=None):
        raise ValueError("no")

    monkeypatch.setattr(json_log, "event_as_json", refuse)
    out = io.StringIO()
    JSONLogObserver(out, node_id=2)({"log_format": "x", "log_level": LogLevel.debug, "log_namespace": "ns\udc80",
                                     "log_time": 5.0})
    (line,) = out.getvalue().splitlines()
    record = orjson.loads(line)
    assert set(record) == ENVELOPE and record["level"] == "debug" and record["node_id"] == 2
    assert record["namespace"] == "ns\\udc80" and record["timestamp"] == 5.0
    assert record["message"].startswith("log event not encodable: ValueError")

"""C{--log-format json}: one JSON object per log event, with field names that stay put.

Why not Twisted's C{jsonFileLogObserver}: it writes Twisted's own
serialisation of the event, made to be read back by C{eventsFromJSONLogFile}
(an RS character before each record, the level as
C{{"name": ..., "__class_uuid__": ...}}, the message as its unformatted
template, and every key of the event at the top level, where a field named
C{time} or C{level} of the event itself would collide with the envelope).
A log shipper wants the opposite: a fixed envelope on every line and the
event's own values apart.  So each line here is

    {"time": "2026-12-02T14:05:17.123456Z", "timestamp": 1796220317.123456,
     "level": "info", "namespace": "streamlog.tap.server.Node", "node_id": 1,
     "message": "streamlog 0.1.0 serving on ...", "fields": {...}}

with C{"error": {"type", "message", "traceback"}} added when the event carries
a failure.  C{fields} holds the event's own keys (not Twisted's C{log_*}
ones); a value JSON cannot hold is given as its C{repr}.  The line is written
and flushed at once, as Twisted's text observer does.

Two values Python holds and orjson refuses would otherwise cost the line its
envelope: a str with a lone surrogate (a file name read with
C{surrogateescape}) is written with the surrogate as C{\\udcff}, and an int
outside orjson's 64-bit range as its decimal string.  Only a line that
orjson refused is scrubbed so, so the common line costs nothing more.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Mapping
from typing import IO, Any

import orjson
from twisted.logger import ILogObserver, formatEvent
from twisted.python import logfile
from zope.interface import implementer

#: Keys of a legacy (twisted.python.log) event that are its envelope, not its values.
_LEGACY = frozenset(("message", "isError", "format", "why", "failure", "time", "system"))


def _json_safe(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if depth < 4 and isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    if depth < 4 and isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    return repr(value)


#: The ints orjson encodes (a signed or an unsigned 64-bit int).
_INT_MIN, _INT_MAX = -(2 ** 63), 2 ** 64 - 1


def _scrubbed(value: Any) -> Any:
    """C{value} (a record of L{event_as_json}) with what orjson refuses made text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        return str(value)
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    if isinstance(value, dict):
        return {_scrubbed(k): _scrubbed(v) for k, v in value.items()}
    return value


def _level_name(event: Mapping[str, Any]) -> str:
    return getattr(event.get("log_level"), "name", None) or ("error" if event.get("isError") else "info")


def _time_text(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_as_json(event: Mapping[str, Any], node_id: int | None = None) -> bytes:
    """One log event as one JSON line (ending in a newline)."""
    when = float(event.get("log_time") or 0.0)
    envelope = _LEGACY if "isError" in event else frozenset()  # a twisted.python.log event's own keys
    namespace = event.get("log_namespace") or event.get("system") or ""
    record: dict[str, Any] = {
        "time": _time_text(when),
        "timestamp": when,
        "level": _level_name(event),
        "namespace": str(namespace),
        "node_id": node_id,
        "message": formatEvent(dict(event)),
        "fields": {k: _json_safe(v) for k, v in event.items() if not k.startswith("log_") and k not in envelope},
    }
    failure = event.get("log_failure") or event.get("failure")
    if failure is not None:
        try:
            traceback = failure.getTraceback()
        except Exception:
            traceback = None
        record["error"] = {"type": getattr(getattr(failure, "type", None), "__name__", None),
                           "message": str(getattr(failure, "value", failure)), "traceback": traceback}
    try:
        return orjson.dumps(record) + b"\n"
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(_scrubbed(record)) + b"\n"


@implementer(ILogObserver)
class JSONLogObserver:
    """Writes each event to C{out} (a text file) as one JSON line."""

    def __init__(self, out: IO[str], node_id: int | None = None) -> None:
        self.out = out
        self.node_id = node_id

    def __call__(self, event: Mapping[str, Any]) -> None:
        try:
            line = event_as_json(event, self.node_id).decode()
        except Exception as e:  # never lose the event: say what could not be written, in its envelope
            line = _unencodable(event, self.node_id, e)
        self.out.write(line)
        self.out.flush()


def _unencodable(event: Mapping[str, Any], node_id: int | None, error: Exception) -> str:
    """The line for an event L{event_as_json} could not write: its envelope, its own level, and its C{repr}."""
    try:
        when = float(event.get("log_time") or 0.0)
        time_text = _time_text(when)
    except Exception:
        when, time_text = 0.0, _time_text(0.0)
    record = {"time": time_text, "timestamp": when, "level": _level_name(event),
              "namespace": str(event.get("log_namespace") or event.get("system") or ""),
              "node_id": node_id, "message": f"log event not encodable: {error!r}",
              "fields": {"event": repr(event)[:2000]}}
    return orjson.dumps(_scrubbed(record)).decode() + "\n"


class SyslogNotSupported(ValueError):
    """twistd --syslog was given with --log-format json."""


def log_file(twistd_options: Any) -> IO[str]:
    """Where twistd would write its text log: stdout under C{--nodaemon} without
    C{--logfile} (or with C{--logfile -}), else the file C{--logfile} (default
    C{twistd.log}), which rotates as twistd's does."""
    get = twistd_options.get if twistd_options is not None else (lambda name, default=None: default)
    if get("syslog", False):
        raise SyslogNotSupported("--log-format json writes to stdout or the --logfile; it cannot go to twistd "
                                 "--syslog (drop one of them)")
    name = get("logfile", "") or ""
    nodaemon = get("nodaemon", twistd_options is None)
    if name == "-" or (nodaemon and not name):
        return sys.stdout
    opened: IO[str] = logfile.LogFile.fromFullPath(name or "twistd.log")  # type: ignore[assignment]
    return opened

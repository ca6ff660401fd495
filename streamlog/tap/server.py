"""C{twistd streamlog-server}: a broker on its embedded default, one durable node.

Every limit of L{streamlog.wire.Limits} is an option here (C{--max-line-bytes}
and so on), generated from the class so the two cannot drift apart.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from streamlog import wire
from streamlog.broker.broker import BrokerConfig
from streamlog.gctune import THROUGHPUT_THRESHOLD, tune_for_throughput
from streamlog.protocol import BrokerFactory
from streamlog.storage.base import TopicConfig
from streamlog.storage.descriptors import DEFAULT_READ_FILES
from streamlog.storage.group_commit import DEFAULT_SYNC_WORKERS, FsyncPolicy

DEFAULT_LISTEN = "tcp:7070:interface=127.0.0.1"
_log = Logger()

_LIMIT_HELP = {
    "max_line_bytes": "Longest request line in bytes; longer gets LINE_TOO_LONG and the connection closes.",
    "max_message_bytes": "Largest encoded message (record) in bytes (MESSAGE_TOO_LARGE).",
    "max_key_bytes": "Longest message key in UTF-8 bytes (KEY_TOO_LARGE).",
    "max_batch_messages": "Most messages in one SendBatch (BATCH_TOO_LARGE).",
    "max_depth": "Deepest nesting of containers in a message value (NESTING_TOO_DEEP).",
    "max_poll_messages": "Most messages one Poll may ask for.",
    "max_poll_bytes": "Largest max_bytes one Poll may ask for.",
    "default_poll_bytes": "max_bytes of a Poll that gives none.",
    "max_wait_ms": "Longest long-poll wait a Poll may ask for.",
    "max_partitions": "Most partitions a topic may have.",
    "max_partitions_per_node": "Most partitions on this node, all topics together; a create past it gets "
                               "TOO_MANY_PARTITIONS (lowered at start to what the open-file limit allows).",
    "max_id_length": "Longest string request id.",
    "max_in_flight": "Requests per connection being worked on before the server stops reading more.",
    "max_waiting_polls_per_connection": "Long polls parked at once on one connection; past it a Poll that would wait "
                                        "gets TOO_MANY_WAITING_POLLS.",
    "max_waiting_polls": "Long polls parked at once on the node, all connections together (TOO_MANY_WAITING_POLLS).",
    "max_connections": "Open client connections; past it a new one gets TOO_MANY_CONNECTIONS.",
    "max_connections_per_address": "Open client connections from one IP address; past it a new one gets "
                                   "TOO_MANY_CONNECTIONS (scope address).",
    "listen_backlog": "Connections the kernel queues until the server accepts them (capped by "
                      "net.core.somaxconn); ignored if --listen gives backlog= itself.",
    "max_outbound_bytes": "Answers queued for a client that does not read them before it is disconnected.",
    "idle_timeout": "Seconds without a request (and none in flight) before a connection is closed; 0 = never.",
    "partial_line_timeout": "Seconds a partial request line may wait for its end; 0 = forever.",
}


#: Endpoint types whose description takes a C{backlog=} argument.
_BACKLOG_ENDPOINTS = frozenset(("tcp", "tcp6", "ssl", "unix"))


def with_listen_backlog(description: str, backlog: int) -> str:
    """The endpoint description C{description} listening with C{backlog}.

    C{backlog=} is appended unless the description sets one itself, or its
    endpoint type takes none (e.g. C{systemd:}), in which case it is returned
    as it is.  Fields are split as Twisted splits them: on colons not escaped
    by a backslash.
    """
    fields = _endpoint_fields(description)
    if fields[0].lower() not in _BACKLOG_ENDPOINTS:
        return description
    if any(field.partition("=")[0] == "backlog" for field in fields[1:] if "=" in field):
        return description
    return f"{description}:backlog={backlog}"


def _endpoint_fields(description: str) -> list[str]:
    """The colon-separated fields of an endpoint description, backslash escapes undone."""
    fields = [""]
    chars = iter(description)
    for char in chars:
        if char == "\\":
            fields[-1] += next(chars, "")
        elif char == ":":
            fields.append("")
        else:
            fields[-1] += char
    return fields


def _limit_parameters() -> list[list[Any]]:
    params = []
    for field in attrs.fields(wire.Limits):
        params.append([field.name.replace("_", "-"), None, field.default, _LIMIT_HELP[field.name],
                       float if field.type in ("float", float) else int])
    return params


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run a streamlog broker: one node, durable storage in --data-dir by default."

    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Endpoint to listen on (a Twisted endpoint description)."],
        ["data-dir", "d", "streamlog-data", "Directory of the durable log."],
        ["storage", None, "segmented", "Log implementation: segmented (durable, on disk) or memory."],
        ["fsync", None, "always", "When to fsync: always (before acks=all answers), interval:<ms>, never."],
        ["auto-create-topics", None, "on", "Create a topic on its first Send: on or off."],
        ["default-partitions", None, 1, "Partitions of an auto-created topic.", int],
        ["segment-bytes", None, 128 * 1024 * 1024, "Roll a segment once it holds this many bytes.", int],
        ["segment-ms", None, 7 * 24 * 3600 * 1000, "Roll a segment once it is this old (ms).", int],
        ["read-file-cache", None, DEFAULT_READ_FILES,
         "Segment files kept open for reading, all partitions together (least recently used closed first).", int],
        ["sync-workers", None, DEFAULT_SYNC_WORKERS, "Threads that fsync partition logs at once (group commit).", int],
        ["retention-ms", None, None, "Default retention by age (ms); unset = keep forever.", int],
        ["retention-bytes", None, None, "Default retention by partition size (bytes); unset = unlimited.", int],
        ["retention-check-interval", None, 60.0, "Seconds between retention checks.", float],
        ["port-file", None, None, "Write the listening port number to this file once listening."],
        ["gc-threshold", None, THROUGHPUT_THRESHOLD,
         "Young-generation GC threshold (Python's default: 700; 0 keeps it). See streamlog/gctune.py.", int],
    ] + _limit_parameters()

    def postOptions(self) -> None:
        if self["storage"] not in ("segmented", "memory"):
            raise usage.UsageError("--storage must be 'segmented' or 'memory'")
        if self["auto-create-topics"] not in ("on", "off"):
            raise usage.UsageError("--auto-create-topics must be 'on' or 'off'")
        if self["gc-threshold"] < 0:
            raise usage.UsageError("--gc-threshold must be 0 or more")
        if self["default-partitions"] < 1:
            raise usage.UsageError("--default-partitions must be at least 1")
        if self["read-file-cache"] < 1:
            raise usage.UsageError("--read-file-cache must be at least 1")
        if self["sync-workers"] < 1:
            raise usage.UsageError("--sync-workers must be at least 1")
        for field in attrs.fields(wire.Limits):
            name = field.name.replace("_", "-")
            if self[name] < 0 or (self[name] == 0 and "timeout" not in name):
                raise usage.UsageError(f"--{name} must be positive")
        try:
            self["fsync-policy"] = FsyncPolicy.parse(self["fsync"])
        except ValueError as e:
            raise usage.UsageError(f"--fsync: {e}") from None

    def limits(self) -> wire.Limits:
        return wire.Limits(**{f.name: self[f.name.replace("_", "-")] for f in attrs.fields(wire.Limits)})

    def topic_defaults(self) -> TopicConfig:
        return TopicConfig(
            retention_ms=self["retention-ms"], retention_bytes=self["retention-bytes"],
            segment_bytes=self["segment-bytes"], segment_ms=self["segment-ms"],
        )


class ListenService(service.Service):
    """Listens on an endpoint while running; optionally writes the bound port to a file.

    The port file lets tests and scripts use C{tcp:0} and learn the port
    without sleeping: the file appears (atomically) once the server listens.
    """

    _log = Logger()

    def __init__(self, endpoint: Any, factory: Any, port_file: str | None = None) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port_file = port_file
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.factory)
        d.addCallback(self._listening)
        d.addErrback(self._failed)

    def _listening(self, port: Any) -> None:
        self.port = port
        address = port.getHost()
        self._log.info("streamlog listening on {host}:{port}", host=address.host, port=address.port)
        if self.port_file:
            tmp = self.port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{address.port}\n")
            os.replace(tmp, self.port_file)

    def _failed(self, failure: Any) -> None:
        from twisted.internet import reactor

        self._log.failure("cannot listen", failure)
        reactor.stop()

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    from streamlog.broker.service import BrokerService

    limits = options.limits()
    config = BrokerConfig(
        auto_create_topics=options["auto-create-topics"] == "on",
        default_partitions=options["default-partitions"],
        limits=limits,
        unsynced_durability="memory" if options["storage"] == "memory" else "written",
    )
    top = service.MultiService()
    broker_service = BrokerService(options, config, reactor)
    broker_service.setServiceParent(top)
    factory = broker_service.factory = BrokerFactory(broker_service.broker, limits, reactor)
    endpoint = endpoints.serverFromString(reactor, with_listen_backlog(options["listen"], limits.listen_backlog))
    ListenService(endpoint, factory, options["port-file"]).setServiceParent(top)
    tune_for_throughput(options["gc-threshold"])
    return top

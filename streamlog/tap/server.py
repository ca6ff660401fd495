"""C{twistd streamlog-server}: a broker on its embedded default, one durable node.

Every limit of L{streamlog.wire.Limits} is an option here (C{--max-line-bytes}
and so on), generated from the class so the two cannot drift apart.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from streamlog import __version__, wire
from streamlog.broker.service import DEFAULT_DATA_DIR, DEFAULT_LISTEN, BrokerService, NodeConfig, StartupError
from streamlog.cluster.meta_snapshots import DEFAULT_SNAPSHOT_ENTRIES
from streamlog.console.shape import ConsoleConfig
from streamlog.gctune import THROUGHPUT_THRESHOLD, tune_for_throughput
from streamlog.http.health import DEFAULT_READY_MAX_SYNC_SECONDS
from streamlog.http.metrics import DEFAULT_METRICS_CACHE_SECONDS
from streamlog.http.site import (
    DEFAULT_HTTP_CLOSE_TIMEOUT,
    DEFAULT_HTTP_LISTEN,
    DEFAULT_HTTP_MAX_CONNECTIONS,
    DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_HTTP_REQUEST_TIMEOUT,
    DEFAULT_HTTP_TIMEOUT,
    HTTP_LISTEN_ENV,
    OFF,
)
from streamlog.idempotence.table import (
    DEFAULT_CLIENT_DELIVERY_TIMEOUT_MS,
    DEFAULT_EVICT_MIN_IDLE_MS,
    DEFAULT_EXPIRY_MS,
    DEFAULT_MAX_PRODUCERS,
    DEFAULT_SNAPSHOT_INTERVAL_BATCHES,
    DEFAULT_UNDO_LIMIT,
    DEFAULT_WINDOW,
    ProducerStateConfig,
)
from streamlog.metrics.collector import DEFAULT_MAX_GROUP_SERIES, DEFAULT_MAX_PARTITION_SERIES
from streamlog.protocol import BrokerFactory
from streamlog.raft.transport import TransportLimits

if TYPE_CHECKING:
    from streamlog.console.resource import Console
    from streamlog.http.root import HttpRoot
from streamlog.storage.base import TopicConfig
from streamlog.storage.descriptors import DEFAULT_READ_FILES
from streamlog.storage.group_commit import DEFAULT_SYNC_WORKERS, FsyncPolicy
from streamlog.tap import console_options, group_options

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
    "max_waiting_polls_per_address": "Long polls parked at once by all connections of one client address (IPv6: one "
                                     "/64) (TOO_MANY_WAITING_POLLS, scope address).",
    "max_waiting_polls": "Long polls parked at once on the node, all connections together (TOO_MANY_WAITING_POLLS).",
    "max_connections": "Open client connections; past it a new one gets TOO_MANY_CONNECTIONS.",
    "max_connections_per_address": "Open client connections from one IP address (IPv6: one /64); past it a new "
                                   "one gets TOO_MANY_CONNECTIONS (scope address).",
    "listen_backlog": "Connections the kernel queues until the server accepts them (capped by "
                      "net.core.somaxconn); ignored if --listen gives backlog= itself.",
    "max_outbound_bytes": "Answers queued for a client that does not read them before it is disconnected.",
    "idle_timeout": "Seconds without a request (and none in flight) before a connection is closed; 0 = never.",
    "partial_line_timeout": "Seconds a partial request line may wait for its end; 0 = forever.",
    "close_timeout": "Seconds a connection being closed (idle, half-closed and answered, refused) may take to "
                     "send its last answers before it is aborted.",
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


_PEER_LIMIT_HELP = {
    "max_header_bytes": "Longest JSON header line from a peer node (bytes); past it the peer connection closes.",
    "max_body_bytes": "Largest raw body from a peer node (bytes: a batch of stored frames, a snapshot).",
    "bulk_budget_bytes": "Replication bytes queued towards one slow peer before more are dropped (Raft resends).",
    "handshake_timeout": "Seconds a peer connection has to send a valid hello.",
    "control_line_bytes": "Coalesced control messages are split into lines of about this many bytes.",
    "max_unread_bytes": "Control bytes queued towards a peer that reads nothing before the connection closes.",
    "socket_chunk_bytes": "Bytes one read or write of a peer socket moves at most, and its write buffer holds before replication pauses.",
    "connect_timeout": "Seconds a dial of a peer node may take before it is given up (a peer that drops packets) and "
                       "dialled again after the backoff.",
}


def _peer_limit_parameters() -> list[list[Any]]:
    return [["peer-" + f.name.replace("_", "-"), None, f.default, _PEER_LIMIT_HELP[f.name],
             float if f.type in ("float", float) else int] for f in attrs.fields(TransportLimits)]


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
        ["data-dir", "d", DEFAULT_DATA_DIR, "Directory of the durable log (locked while the node runs)."],
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
        ["node-id", None, 1, "This node's id in its cluster (a positive integer).", int],
        ["peers", None, None, "Every node of the cluster as ID=HOST:PORT,... (their peer addresses, this node "
                              "included); absent: a cluster of one."],
        ["peer-listen", None, None, "Endpoint the peer listener binds (required with --peers; its port must be "
                                    "this node's port in --peers)."],
        ["advertise", None, None, "The client address other nodes tell clients (HOST:PORT); default: the bound "
                                  "--listen address."],
        ["election-timeout-ms", None, 500, "Raft election timeout (ms; randomized in [T, 2T)).", int],
        ["heartbeat-ms", None, 50, "Raft heartbeat interval (ms).", int],
        ["replication-factor", None, None, "Replicas per partition of a new topic (default: min(3, nodes)).", int],
        ["metadata-snapshot-entries", None, DEFAULT_SNAPSHOT_ENTRIES,
         "Metadata entries applied between two snapshots of the cluster state, after which the metadata log's "
         "prefix is dropped (restarts replay at most about twice this); 0: never.", int],
        ["producer-state-batches", None, DEFAULT_WINDOW,
         "Batches each partition remembers per idempotent producer (8 to 64: at least the 8 a streamlog Producer "
         "has unacknowledged per partition; a retry of any of them is recognised).",
         int],
        ["max-producers-per-partition", None, DEFAULT_MAX_PRODUCERS,
         "Idempotent producers a partition remembers; past it the least recently active is evicted.", int],
        ["producer-id-expiry-ms", None, DEFAULT_EXPIRY_MS,
         "An idempotent producer idle this long (ms) is forgotten by each partition.", int],
        ["producer-evict-min-idle-ms", None, DEFAULT_EVICT_MIN_IDLE_MS,
         "A producer active more recently (ms) is never evicted to make room (a new one is refused: "
         "TOO_MANY_PRODUCERS).", int],
        ["client-delivery-timeout-ms", None, DEFAULT_CLIENT_DELIVERY_TIMEOUT_MS,
         "The longest delivery timeout (ms) of the idempotent producers writing to this cluster; "
         "--producer-id-expiry-ms and --producer-evict-min-idle-ms must be above it.", int],
        ["producer-state-undo-limit", None, DEFAULT_UNDO_LIMIT,
         "Undo records each partition keeps above its commit index to restore producer state exactly "
         "when a new leader replaces its uncommitted tail.", int],
        ["producer-snapshot-interval-batches", None, DEFAULT_SNAPSHOT_INTERVAL_BATCHES,
         "Record batches a partition appends between two producer-state snapshot files (besides those at "
         "segment rolls and clean stops): at most what start-up replays after a crash; 0: rolls and stops only.",
         int],
        ["http-listen", None, None,
         f"Endpoint of the HTTP listener (/metrics, /health, /ready); 'none' turns it off. Default: "
         f"${HTTP_LISTEN_ENV} if set, else {DEFAULT_HTTP_LISTEN}."],
        ["http-port-file", None, None, "Write the HTTP listener's port number to this file once listening."],
        ["http-idle-timeout", None, DEFAULT_HTTP_TIMEOUT, "Seconds an idle HTTP connection is kept open.", float],
        ["http-request-timeout", None, DEFAULT_HTTP_REQUEST_TIMEOUT,
         "Seconds a whole HTTP request (line, headers, body) may take to arrive from its first byte; then 408 "
         "and the connection closes (a slow client cannot hold a connection by sending a byte now and then).",
         float],
        ["http-close-timeout", None, DEFAULT_HTTP_CLOSE_TIMEOUT,
         "Seconds an HTTP connection the node closes (idle, to make room, 408, 413) may take to send its last "
         "bytes before it is aborted (a client that does not read them cannot keep its descriptor).", float],
        ["http-max-connections-per-address", None, DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS,
         "Most HTTP connections open at once from one client address (more are closed on accept).", int],
        ["http-max-connections", None, DEFAULT_HTTP_MAX_CONNECTIONS, "Most HTTP connections open at once (more are "
                                                                     "closed on accept).", int],
        ["metrics-max-partition-series", None, DEFAULT_MAX_PARTITION_SERIES,
         "/metrics has series per partition while the node holds at most this many partitions (above: per "
         "topic and per node only); raise it to opt in on bigger nodes.", int],
        ["metrics-max-group-series", None, DEFAULT_MAX_GROUP_SERIES,
         "/metrics has series per consumer group for at most this many groups with members or committed "
         "offsets (the most lagging first; the rest are counted in streamlog_metrics_group_series_dropped).", int],
        ["ready-max-sync-seconds", None, DEFAULT_READY_MAX_SYNC_SECONDS,
         "/ready answers 503 while a sync (fsync) of any kind has been in a worker longer than this many seconds: "
         "a log sync, a Raft hard-state save, a checkpoint or a metadata snapshot write (a hung disk never fails "
         "a sync, it never finishes one).", float],
        ["metrics-cache-seconds", None, DEFAULT_METRICS_CACHE_SECONDS,
         "Seconds one rendering of /metrics is served again to later scrapes, so that scraping faster does not "
         "cost the node more (0: render every scrape).", float],
        ["log-format", None, "text", "The log's format: text (twistd's lines) or json (one JSON object per event, "
                                     "for log shippers; written where twistd writes its log)."],
        ["gc-threshold", None, THROUGHPUT_THRESHOLD,
         "Young-generation GC threshold (Python's default: 700; 0 keeps it). See streamlog/gctune.py.", int],
    ] + _limit_parameters() + _peer_limit_parameters() + group_options.PARAMETERS + console_options.PARAMETERS
    optFlags = console_options.FLAGS

    def postOptions(self) -> None:
        if self["storage"] not in ("segmented", "memory"):
            raise usage.UsageError("--storage must be 'segmented' or 'memory'")
        if self["auto-create-topics"] not in ("on", "off"):
            raise usage.UsageError("--auto-create-topics must be 'on' or 'off'")
        if self["gc-threshold"] < 0:
            raise usage.UsageError("--gc-threshold must be 0 or more")
        if self["read-file-cache"] < 1:
            raise usage.UsageError("--read-file-cache must be at least 1")
        if self["sync-workers"] < 1:
            raise usage.UsageError("--sync-workers must be at least 1")
        if not self["data-dir"]:
            raise usage.UsageError("--data-dir must not be empty")
        for field in attrs.fields(wire.Limits):
            name = field.name.replace("_", "-")
            if self[name] < 0 or (self[name] == 0 and name not in ("idle-timeout", "partial-line-timeout")):
                raise usage.UsageError(f"--{name} must be positive")
        for field in attrs.fields(TransportLimits):
            name = "peer-" + field.name.replace("_", "-")
            value = self[name]
            if not 0 < value < math.inf:  # NaN is refused too
                said = f"positive and finite, not {value:g}" if isinstance(value, float) else f"positive, not {value}"
                raise usage.UsageError(f"--{name} must be {said}")
        if not 1 <= self["default-partitions"] <= self["max-partitions"]:
            raise usage.UsageError(f"--default-partitions must be between 1 and --max-partitions ({self['max-partitions']})")
        # The same floors as a topic's own config in CreateTopic (docs/protocol.md).
        if self["segment-bytes"] < 1024:
            raise usage.UsageError("--segment-bytes must be at least 1024")
        for name in ("segment-ms", "retention-ms", "retention-bytes"):
            if self[name] is not None and self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if not self["retention-check-interval"] > 0:
            raise usage.UsageError("--retention-check-interval must be more than 0 seconds")
        try:
            self["fsync-policy"] = FsyncPolicy.parse(self["fsync"])
        except ValueError as e:
            raise usage.UsageError(f"--fsync: {e}") from None
        _check_endpoint(self["listen"])
        self._check_http()
        self._check_cluster()
        try:
            self["producer-state"] = ProducerStateConfig(
                window=self["producer-state-batches"], max_producers=self["max-producers-per-partition"],
                expiry_ms=self["producer-id-expiry-ms"], evict_min_idle_ms=self["producer-evict-min-idle-ms"],
                undo_limit=self["producer-state-undo-limit"],
                snapshot_interval_batches=self["producer-snapshot-interval-batches"])
        except ValueError as e:
            raise usage.UsageError(f"producer state options: {e} (--producer-state-batches, "
                                   "--max-producers-per-partition, --producer-id-expiry-ms, "
                                   "--producer-evict-min-idle-ms, --producer-state-undo-limit, "
                                   "--producer-snapshot-interval-batches)") from None
        self._check_producer_expiry()
        group_options.check(self)
        self["console"] = console_options.console_config(self)

    def _check_producer_expiry(self) -> None:
        """A partition that forgets a producer still retrying would store its retried batch a
        second time (its sequence numbers unknown again): refuse an expiry or eviction idle time
        that does not outlast the producers' delivery timeout."""
        timeout = self["client-delivery-timeout-ms"]
        if timeout < 1:
            raise usage.UsageError("--client-delivery-timeout-ms must be positive")
        for name in ("producer-id-expiry-ms", "producer-evict-min-idle-ms"):
            if self[name] <= timeout:
                raise usage.UsageError(
                    f"--{name} ({self[name]}) must be more than --client-delivery-timeout-ms ({timeout}): a "
                    "partition that forgets a producer while it may still retry a batch (for its delivery "
                    "timeout) would store that batch twice; raise it (leave a margin for a request still in "
                    "the network), or lower --client-delivery-timeout-ms if every producer's delivery timeout "
                    "is shorter")

    def _check_http(self) -> None:
        if self["http-listen"] is None:
            self["http-listen"] = os.environ.get(HTTP_LISTEN_ENV) or DEFAULT_HTTP_LISTEN
        if self["http-listen"] != OFF:
            _check_endpoint(self["http-listen"], "--http-listen")
        elif self["http-port-file"] is not None:
            raise usage.UsageError("--http-port-file needs an HTTP listener (--http-listen is none)")
        if not self["http-idle-timeout"] > 0:
            raise usage.UsageError("--http-idle-timeout must be more than 0 seconds")
        if self["http-max-connections"] < 1:
            raise usage.UsageError("--http-max-connections must be at least 1")
        if not self["http-request-timeout"] > 0:
            raise usage.UsageError("--http-request-timeout must be more than 0 seconds")
        if not self["http-close-timeout"] > 0:
            raise usage.UsageError("--http-close-timeout must be more than 0 seconds")
        if self["http-max-connections-per-address"] < 1:
            raise usage.UsageError("--http-max-connections-per-address must be at least 1")
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be 'text' or 'json'")
        if self["metrics-max-partition-series"] < 0:
            raise usage.UsageError("--metrics-max-partition-series must be 0 or more")
        if self["metrics-max-group-series"] < 0:
            raise usage.UsageError("--metrics-max-group-series must be 0 or more")
        if not self["ready-max-sync-seconds"] > 0:
            raise usage.UsageError("--ready-max-sync-seconds must be more than 0")
        if not self["metrics-cache-seconds"] >= 0:
            raise usage.UsageError("--metrics-cache-seconds must be 0 or more")

    def _check_cluster(self) -> None:
        node_id = self["node-id"]
        if not 1 <= node_id <= 2**31 - 1:
            raise usage.UsageError("--node-id must be a positive integer")
        for name in ("election-timeout-ms", "heartbeat-ms"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["heartbeat-ms"] * 2 > self["election-timeout-ms"]:
            raise usage.UsageError("--heartbeat-ms must be at most half of --election-timeout-ms")
        peers: dict[int, str] = {}
        if self["peers"] is not None:
            for item in self["peers"].split(","):
                ident, sep, address = item.strip().partition("=")
                host, _, port = address.rpartition(":")
                if not sep or not ident.isdigit() or int(ident) < 1 or not host or not port.isdigit() \
                        or not 0 < int(port) < 65536:
                    raise usage.UsageError(f"--peers: {item.strip()!r} is not ID=HOST:PORT (for example "
                                           "1=10.0.0.1:7171,2=10.0.0.2:7171,3=10.0.0.3:7171)")
                if int(ident) in peers:
                    raise usage.UsageError(f"--peers names node {ident} twice")
                peers[int(ident)] = address
            if node_id not in peers:
                raise usage.UsageError(f"--peers must include this node (--node-id {node_id}): {self['peers']}")
            if self["peer-listen"] is None:
                raise usage.UsageError(f"--peers needs --peer-listen (for example tcp:{peers[node_id].rpartition(':')[2]}"
                                       ":interface=0.0.0.0)")
            _check_endpoint(self["peer-listen"], "--peer-listen")
            fields = dict(f.partition("=")[::2] for f in _endpoint_fields(self["peer-listen"]) if "=" in f)
            port = fields.get("port") or next((f for f in _endpoint_fields(self["peer-listen"])[1:2] if f.isdigit()), None)
            if port is not None and port != peers[node_id].rpartition(":")[2]:
                raise usage.UsageError(f"--peer-listen port {port} is not node {node_id}'s port in --peers "
                                       f"({peers[node_id]})")
        elif self["peer-listen"] is not None:
            raise usage.UsageError("--peer-listen needs --peers (a node alone has no peers)")
        if self["metadata-snapshot-entries"] < 0:
            raise usage.UsageError("--metadata-snapshot-entries must be 0 (never) or more")
        if self["replication-factor"] is not None:
            nodes = max(len(peers), 1)
            if not 1 <= self["replication-factor"] <= nodes:
                raise usage.UsageError(f"--replication-factor must be between 1 and the number of nodes ({nodes})")
        if self["advertise"] is not None:
            host, _, port = self["advertise"].rpartition(":")
            if not host or not port.isdigit():
                raise usage.UsageError(f"--advertise {self['advertise']!r} is not HOST:PORT")
        self["peer-map"] = peers

    def node_config(self) -> NodeConfig:
        """The checked options as the plain configuration the node is built from."""
        return NodeConfig(
            listen=self["listen"],
            data_dir=self["data-dir"],
            storage=self["storage"],
            fsync=self["fsync-policy"],
            auto_create_topics=self["auto-create-topics"] == "on",
            default_partitions=self["default-partitions"],
            topic_defaults=self.topic_defaults(),
            retention_check_interval=self["retention-check-interval"],
            limits=self.limits(),
            port_file=self["port-file"],
            read_file_cache=self["read-file-cache"],
            sync_workers=self["sync-workers"],
            node_id=self["node-id"],
            peers=self["peer-map"],
            peer_listen=self["peer-listen"],
            advertise=self["advertise"],
            election_timeout_ms=self["election-timeout-ms"],
            heartbeat_ms=self["heartbeat-ms"],
            replication_factor=self["replication-factor"],
            metadata_snapshot_entries=self["metadata-snapshot-entries"],
            producer_state=self["producer-state"],
            peer_limits=TransportLimits(**{f.name: self["peer-" + f.name.replace("_", "-")]
                                           for f in attrs.fields(TransportLimits)}),
            groups=group_options.group_config(self),
            http_listen=None if self["http-listen"] == OFF else self["http-listen"],
            http_port_file=self["http-port-file"],
            http_idle_timeout=self["http-idle-timeout"],
            http_max_connections=self["http-max-connections"],
            http_request_timeout=self["http-request-timeout"],
            http_close_timeout=self["http-close-timeout"],
            http_max_connections_per_address=self["http-max-connections-per-address"],
            metrics_max_partition_series=self["metrics-max-partition-series"],
            metrics_cache_seconds=self["metrics-cache-seconds"],
            metrics_max_group_series=self["metrics-max-group-series"],
            ready_max_sync_seconds=self["ready-max-sync-seconds"],
        )

    def console_config(self) -> ConsoleConfig:
        """The web console's settings (checked in postOptions)."""
        config: ConsoleConfig = self["console"]
        return config

    def limits(self) -> wire.Limits:
        return wire.Limits(**{f.name: self[f.name.replace("_", "-")] for f in attrs.fields(wire.Limits)})

    def topic_defaults(self) -> TopicConfig:
        return TopicConfig(
            retention_ms=self["retention-ms"], retention_bytes=self["retention-bytes"],
            segment_bytes=self["segment-bytes"], segment_ms=self["segment-ms"],
        )


def _check_endpoint(description: str, option: str = "--listen") -> None:
    """Refuse a --listen that is not an endpoint description (parsing binds nothing)."""
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise usage.UsageError(
            f"{option} {description!r} is not a server endpoint description ({e}); "
            f"for example tcp:7070:interface=127.0.0.1 or unix:/run/streamlog.sock"
        ) from None


class ListenService(service.Service):
    """Listens on an endpoint while running; optionally writes the bound port to a file.

    L{listen_now} binds at once, before the reactor runs, so that a port in
    use or an address the host does not have is a start-up error (one line,
    exit status 1) and not a log line in a server that keeps running without
    listening.  The port file lets tests and scripts use C{tcp:0} and learn
    the port without sleeping: the file appears (atomically) once the node
    is bound, its storage already recovered.
    """

    _log = Logger()

    def __init__(self, endpoint: Any, factory: Any, port_file: str | None = None, description: str = "") -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port_file = port_file
        self.description = description or repr(endpoint)
        self.port: Any = None

    def listen_now(self) -> str:
        """Bind, write the port file; return the bound address.  Raises L{StartupError}."""
        results: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(results.append)
        if not results:  # every endpoint Twisted ships binds synchronously
            raise StartupError(f"--listen {self.description}: the endpoint did not bind at once")
        if isinstance(results[0], Failure):
            raise StartupError(f"cannot listen on {self.description}: {_reason(results[0].value)}")
        self.port = results[0]
        address = self.port.getHost()
        if self.port_file:
            try:
                self._write_port_file(self.port_file, address)
            except StartupError:
                self.port.stopListening()
                self.port = None
                raise
        return describe_address(address)

    def _write_port_file(self, path: str, address: Any) -> None:
        number = getattr(address, "port", None)
        if number is None:
            raise StartupError(f"--port-file needs an endpoint with a port number, and {self.description} has none")
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{number}\n")
            os.replace(tmp, path)
        except OSError as e:
            raise StartupError(f"cannot write the port file {path}: {e.strerror or e}") from None

    def startService(self) -> None:
        if self.port is None:
            self.listen_now()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            self._remove_port_file(port.getHost())
            return port.stopListening()
        return None

    def _remove_port_file(self, address: Any) -> None:
        """A clean stop takes the port file away, so that a script waiting for it to appear
        does not read the port of a node that no longer listens; only if it still names this
        node's port (another node may have written it since). After a crash it stays: a
        start writes it anew, and tests remove it before they start a node."""
        if not self.port_file:
            return
        try:
            with open(self.port_file) as f:
                written = f.read().strip()
            if written == str(getattr(address, "port", None)):
                os.remove(self.port_file)
        except OSError:
            pass


def _reason(error: BaseException) -> str:
    """The part of a listen failure a person needs (not the repeated address)."""
    socket_error = getattr(error, "socketError", None)
    if isinstance(socket_error, OSError) and socket_error.strerror:
        return socket_error.strerror
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def describe_address(address: Any) -> str:
    """C{127.0.0.1:7070}, C{[::1]:7070} or a UNIX socket path."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return str(name if name is not None else address)


class Node(service.MultiService):
    """One streamlog node: its broker service, then its listener.

    In that order so that the listener stops first (a MultiService stops its
    children in reverse).  L{open} is the start-up step: everything that can
    fail because of the machine or the configuration happens there, before
    the reactor runs, as one L{StartupError}.
    """

    _log = Logger()

    def __init__(self, config: NodeConfig, reactor: Any = None, console: ConsoleConfig | None = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        self.config = config
        #: The web console's settings (served with the HTTP listener), and the console once mounted.
        self.console_config = console if console is not None else ConsoleConfig()
        self.console: Console | None = None
        self.reactor = reactor
        self.broker_service = BrokerService(config, reactor)
        self.broker_service.setServiceParent(self)
        self.listener: ListenService | None = None
        self.address: str | None = None
        #: The HTTP listener's root resource and bound address (None: --http-listen none).
        self.http_root: HttpRoot | None = None
        self.http_address: str | None = None
        #: The node's own Prometheus registry (served at /metrics), once the HTTP listener is made.
        self.metrics_registry: Any = None
        #: The log observer twistd is to use instead of its text one (--log-format json), or None.
        self.log_observer: Any = None

    def setServiceParent(self, parent: Any) -> None:
        """twistd makes the application and then sets it as this service's parent, before it
        starts logging; it logs to the application's C{ILogObserver} component if there is
        one.  That is where --log-format json puts its observer."""
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def open(self) -> None:
        """Lock and recover the storage, then bind the listener.  Raises L{StartupError}.

        Storage first: the lock is what tells a second server on the same data
        directory (usually also on the same port) who is already there.
        """
        if self.listener is not None:
            return
        try:
            endpoint = endpoints.serverFromString(
                self.reactor, with_listen_backlog(self.config.listen, self.config.limits.listen_backlog))
        except Exception as e:
            raise StartupError(f"--listen {self.config.listen!r}: {e}") from None
        broker = self.broker_service.open()
        # The broker's limits: the open-file limit may have lowered --max-connections (BrokerService.open).
        factory = self.broker_service.factory = BrokerFactory(broker, broker.limits, self.reactor)
        listener = ListenService(endpoint, factory, self.config.port_file, self.config.listen)
        try:
            self.address = listener.listen_now()
        except StartupError:
            self.broker_service.close()
            raise
        self.broker_service.listening_on(self.address)
        self.listener = listener
        listener.setServiceParent(self)
        cluster = self.broker_service.cluster
        if cluster is not None and self.config.peer_listen is not None:
            peer_endpoint = endpoints.serverFromString(self.reactor, self.config.peer_listen)
            peers = ListenService(peer_endpoint, cluster.peer_factory(), None, self.config.peer_listen)
            try:
                peers.listen_now()
            except StartupError as e:
                self.broker_service.close()
                raise StartupError(f"--peer-listen: {e}") from None
            peers.setServiceParent(self)
        self._open_http()

    def _open_http(self) -> None:
        """Bind the HTTP listener (last: it stops first) on the root that every part mounts on."""
        if self.config.http_listen is None:
            return
        from streamlog.http.site import QuietSite

        try:
            endpoint = endpoints.serverFromString(self.reactor, self.config.http_listen)
        except Exception as e:
            self.broker_service.close()
            raise StartupError(f"--http-listen {self.config.http_listen!r}: {e}") from None
        self.http_root = self.build_http_root()
        site = QuietSite(self.http_root, timeout=self.config.http_idle_timeout, reactor=self.reactor,
                         max_connections=self.config.http_max_connections,
                         request_timeout=self.config.http_request_timeout,
                         close_timeout=self.config.http_close_timeout,
                         max_connections_per_address=self.config.http_max_connections_per_address,
                         max_body_bytes=self.console_config.max_body_bytes)
        from streamlog.metrics.http_site import HttpSiteCollector

        self.metrics_registry.register(HttpSiteCollector(site))  # its refusals and timeouts in /metrics
        http = ListenService(endpoint, site, self.config.http_port_file, self.config.http_listen)
        try:
            self.http_address = http.listen_now()
        except StartupError as e:
            for child in list(self):
                if isinstance(child, ListenService) and child.port is not None:
                    child.port.stopListening()
                    child.port = None
            self.broker_service.close()
            hint = ""
            if "in use" in str(e):  # most likely another node on this machine has the default
                hint = " (another node on this machine? give each its own --http-listen, or --http-listen none)"
            raise StartupError(f"--http-listen: {e}{hint}") from None
        http.setServiceParent(self)

    def build_http_root(self) -> HttpRoot:
        """The HTTP tree of this node: every part mounts its children here."""
        from streamlog.console.resource import mount as mount_console
        from streamlog.http.health import HealthResource, ReadyResource
        from streamlog.http.metrics import MetricsResource
        from streamlog.http.root import HttpRoot
        from streamlog.metrics.collector import node_registry

        root = HttpRoot()
        self.metrics_registry = node_registry(self.broker_service, self.broker_service.factory,
                                              self.config.metrics_max_partition_series,
                                              max_group_series=self.config.metrics_max_group_series)
        root.mount("metrics", MetricsResource(self.metrics_registry, self.config.metrics_cache_seconds,
                                              self.reactor))
        root.mount("health", HealthResource(self.config.node_id, service=self.broker_service))
        root.mount("ready", ReadyResource(self.broker_service))
        self.console = mount_console(root, self.broker_service.broker, self.config.node_id, self.console_config,
                                     self.reactor)
        return root

    def startService(self) -> None:
        self.open()
        super().startService()
        if self.console is not None:
            self.console.start()
        recovery = self.broker_service.recovery
        assert recovery is not None
        self._log.info(
            "streamlog {version} serving on {address} (--listen {listen}); storage {storage}{where}, "
            "fsync {fsync}; recovered {topics} topics, {partitions} partitions{unavailable} in {recovery_s} s; "
            "HTTP {http}",
            version=__version__, address=self.address, listen=self.config.listen,
            storage=self.config.storage, data_dir=self.broker_service.data_dir,
            where=f" in {self.broker_service.data_dir}" if self.broker_service.data_dir else " (not durable)",
            fsync=self.config.fsync if self.config.storage == "segmented" else "n/a",
            topics=recovery.topics, partitions=recovery.partitions,
            unavailable=f" ({recovery.unavailable} unavailable)" if recovery.unavailable else "",
            unavailable_partitions=recovery.unavailable, recovery_s=f"{recovery.seconds:.3f}",
            recovery_seconds=recovery.seconds,
            http=f"on {self.http_address} (/metrics, /health, /ready)" if self.http_address else "off",
            http_address=self.http_address,
        )


    def stopService(self) -> Any:
        if self.console is not None:
            self.console.stop()
        return super().stopService()


def makeService(options: Options) -> service.IService:
    """Build the node and run its start-up step now, before the reactor runs.

    twistd exits 0 whatever happens once the reactor runs, and an exception
    raised here would print a traceback.  A L{StartupError} becomes
    C{SystemExit("streamlog-server: ...")}: twistd has not redirected stderr
    to its log yet, so the one line goes to the terminal (or the service
    manager's journal), and the exit status is 1.
    """
    from twisted.internet import reactor

    hold_stop_signals(reactor)
    node = Node(options.node_config(), reactor, options.console_config())
    if options["log-format"] == "json":
        from streamlog.tap.json_log import JSONLogObserver, SyslogNotSupported, log_file

        try:
            # Where twistd would write its text log (its options are this one's parent).
            node.log_observer = JSONLogObserver(log_file(getattr(options, "parent", None)), options["node-id"])
        except (SyslogNotSupported, OSError) as e:
            raise SystemExit(f"streamlog-server: --log-format json: {e}") from None
    try:
        node.open()
    except StartupError as e:
        raise SystemExit(f"streamlog-server: {e}") from None
    tune_for_throughput(options["gc-threshold"])
    return node


def hold_stop_signals(reactor: Any) -> list[int]:
    """Take SIGINT and SIGTERM over until the reactor runs; returns what arrived meanwhile.

    The listener is bound while C{makeService} runs (clients may already
    connect) and twistd installs the reactor's signal handlers only in
    C{reactor.run}: a Ctrl-C in between raised C{KeyboardInterrupt} out of
    whatever start-up step was running (a traceback in the middle of recovery),
    and a SIGTERM killed the process without the clean stop.  Meanwhile a
    signal is only remembered; once the reactor runs (its own handlers in
    place) the node stops at once, as it would for the same signal later:
    services stopped, storage closed, and twistd exits by that signal.
    """
    import signal

    arrived: list[int] = []

    def remember(signum: int, frame: Any) -> None:
        arrived.append(signum)  # nothing else here: the start-up step it interrupts goes on

    def starting() -> None:
        # Just before the reactor installs its own handlers ("during" startup), which it does
        # for SIGINT only over Python's default one: the handlers as they were.
        for signum, handler in previous.items():
            if signal.getsignal(signum) is remember:
                signal.signal(signum, handler)
        if arrived:
            reactor.callWhenRunning(stop)

    def stop() -> None:
        signum = arrived[0]
        _log.info("{signal} arrived during start-up: stopping", signal=signal.Signals(signum).name)
        # The reactor's own handling of that signal (a clean stop, then twistd exits by it).
        handle = getattr(reactor, "sigInt" if signum == signal.SIGINT else "sigTerm", None)
        if handle is not None:
            handle(signum, None)
        else:
            reactor.stop()

    # A signal the node was started with ignored (SIGINT of a background job or under nohup) stays
    # ignored: the reactor installs no handler over SIG_IGN, so taking it over here would make
    # it stop the node during start-up only, and lose it when it came a moment later.
    previous = {signum: signal.signal(signum, remember) for signum in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(signum) is not signal.SIG_IGN}
    reactor.addSystemEventTrigger("before", "startup", starting)
    return arrived

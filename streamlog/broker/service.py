"""The broker as a Twisted service: opens storage, runs retention, closes cleanly.

Configuration is a plain L{NodeConfig}, so a test or the cluster node can
build one without twistd.  Construction only stores it; the work that can
fail at start (lift the open-file limit, lock the data directory, open and
recover the storage, build the L{Broker}) is one defined step, L{open},
which raises L{StartupError} with one line for a person and leaves nothing
locked or open behind.  C{twistd streamlog-server} calls it from
C{makeService}, before the reactor runs and before twistd forks into the
background; what must live in the final process (the group committer's sync
thread) starts in L{BrokerService.startService}.

Stopping order matters for durability: the listener stops first (the
MultiService stops children in reverse order), then the committer makes a
final sync, then the logs are closed with their clean-shutdown checkpoint,
and only then is the data directory's lock released.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
import time
import weakref
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from streamlog import __version__, wire
from streamlog.broker.broker import Broker, BrokerConfig
from streamlog.cluster.meta_snapshots import DEFAULT_SNAPSHOT_ENTRIES
from streamlog.groups.config import GroupConfig
from streamlog.idempotence.table import ProducerStateConfig
from streamlog.raft.transport import TransportLimits
from streamlog.storage import sync_failure
from streamlog.storage.base import TopicConfig
from streamlog.storage.descriptors import DEFAULT_READ_FILES, Plan, TooFewDescriptors, plan
from streamlog.storage.errors import StorageError, StorageFailed
from streamlog.storage.group_commit import ALWAYS, DEFAULT_SYNC_WORKERS, FsyncPolicy, GroupCommitter
from streamlog.storage.lock import DataDirLock, DataDirLocked
from streamlog.storage.memory import MemoryStorage
from streamlog.storage.segmented import SegmentedStorage

DEFAULT_LISTEN = "tcp:7070:interface=127.0.0.1"
DEFAULT_DATA_DIR = "streamlog-data"
STORAGES = ("segmented", "memory")


@attrs.frozen(kw_only=True)
class NodeConfig:
    """Everything one node needs to start, as plain values.

    L{streamlog.tap.server.Options.node_config} builds it from the command
    line (where each field is checked with a message naming its option);
    anyone else builds it by hand.  The defaults are the embedded default of
    ARCHITECTURE.md: one durable node on 127.0.0.1:7070.
    """

    #: A Twisted server endpoint description.
    listen: str = DEFAULT_LISTEN
    data_dir: str = DEFAULT_DATA_DIR
    #: "segmented" (durable, in C{data_dir}) or "memory" (C{data_dir} is not used).
    storage: str = attrs.field(default="segmented", validator=attrs.validators.in_(STORAGES))
    fsync: FsyncPolicy = FsyncPolicy(ALWAYS)
    auto_create_topics: bool = True
    default_partitions: int = 1
    #: Server-wide topic settings; a topic's own config overrides them.
    topic_defaults: TopicConfig = TopicConfig()
    retention_check_interval: float = 60.0
    limits: wire.Limits = wire.DEFAULT_LIMITS
    #: Write the bound port here once listening (tests and scripts use it with tcp:0).
    port_file: str | None = None
    #: Descriptors kept open for reading closed segments, node-wide (streamlog.storage.descriptors).
    read_file_cache: int = DEFAULT_READ_FILES
    #: Threads that sync partition logs at once (group commit, streamlog.storage.group_commit).
    sync_workers: int = DEFAULT_SYNC_WORKERS
    # --- the cluster (docs/operations.md, "Running a cluster") ---
    #: This node's id in the cluster (1 for a node alone).
    node_id: int = 1
    #: node id -> peer address (host:port) of every node, this one included; empty: a cluster of one.
    peers: dict[int, str] = attrs.field(factory=dict)
    #: A Twisted server endpoint for the peer listener (required with peers).
    peer_listen: str | None = None
    #: The client address other nodes tell clients (host:port); None: from the bound listener.
    advertise: str | None = None
    election_timeout_ms: int = 500
    heartbeat_ms: int = 50
    #: Replicas per partition of a new topic; None: min(3, nodes).
    replication_factor: int | None = None
    #: Metadata entries applied between two snapshots of the cluster state, after which the
    #: metadata log's prefix is dropped (streamlog.cluster.meta_snapshots); 0: never.
    metadata_snapshot_entries: int = DEFAULT_SNAPSHOT_ENTRIES
    #: The bounds of the peer wire (--peer-max-header-bytes, ...; docs/operations.md "Limits").
    peer_limits: TransportLimits = TransportLimits()
    #: Each partition's idempotent-producer table (--producer-state-batches, --producer-id-expiry-ms, ...).
    producer_state: ProducerStateConfig = ProducerStateConfig()
    #: Consumer groups: the offsets topic, the coordinator's limits (--offsets-partitions, --group-*).
    groups: GroupConfig = GroupConfig()
    # --- the HTTP listener (streamlog.http; docs/operations.md, "Metrics and health") ---
    #: A Twisted server endpoint for /metrics, /health, /ready (and the console); None: no HTTP listener.
    #: None here, unlike the command line's tcp:9644: a node built in a program binds no fixed port unasked.
    http_listen: str | None = None
    #: Write the HTTP listener's bound port here once listening (with tcp:0).
    http_port_file: str | None = None
    #: Seconds an idle HTTP connection is kept open.
    http_idle_timeout: float = 60.0
    #: Most HTTP connections open at once (--http-max-connections); more are closed on accept.
    http_max_connections: int = 64
    #: Seconds a whole HTTP request may take to arrive (--http-request-timeout).
    http_request_timeout: float = 30.0
    #: Seconds an HTTP connection the node closes may take to send its last bytes before it is aborted
    #: (--http-close-timeout).
    http_close_timeout: float = 15.0
    #: Most HTTP connections open at once from one client address (--http-max-connections-per-address).
    http_max_connections_per_address: int = 16
    #: /metrics has per-partition series while the node holds at most this many partitions.
    metrics_max_partition_series: int = 256
    #: /metrics has per-group series for at most this many groups (--metrics-max-group-series).
    metrics_max_group_series: int = 1000
    #: /ready fails while a sync of any kind (log, hard-state save, checkpoint, metadata snapshot write) has
    #: been in a worker longer than this (--ready-max-sync-seconds).
    ready_max_sync_seconds: float = 10.0
    #: Seconds one rendering of /metrics is served again to later scrapes (--metrics-cache-seconds; 0: none).
    metrics_cache_seconds: float = 1.0

    @property
    def clustered(self) -> bool:
        return bool(self.peers)

    def broker_config(self) -> BrokerConfig:
        return BrokerConfig(
            auto_create_topics=self.auto_create_topics,
            default_partitions=self.default_partitions,
            limits=self.limits,
            unsynced_durability="memory" if self.storage == "memory" else "written",
            # A request meeting an election waits up to two election timeouts (at least 1 s) for it.
            election_wait=max(1.0, 2 * self.election_timeout_ms / 1000.0),
            producer_state=self.producer_state,
            groups=self.groups,
        )


class StartupError(Exception):
    """The node cannot start.  Its text is one line a person can act on;
    C{makeService} exits with it (status 1, no traceback)."""


@attrs.frozen
class Recovery:
    """What L{BrokerService.open} found: logged in the start-up line."""

    topics: int
    partitions: int
    #: Partitions that found damaged synced data and refuse to serve (docs/storage.md).
    unavailable: int
    seconds: float


def fail_stop(error: Any) -> None:
    """A storage fault: stop at once, never answer another write as durable.

    C{os._exit}, not C{reactor.stop}: a clean shutdown would run the final
    sync and checkpoint on a disk that just failed, and answer waiting sends.
    Called on whatever thread found the fault: a failed sync in a worker
    stops the process there (L{streamlog.storage.sync_failure}, which the
    running service points here), and so does a failed write to a log's files
    on the reactor thread.  The line names the file and the errno of a failed
    sync or log write (C{path}, C{errno} in the event, for JSON logs too).
    """
    value = getattr(error, "value", error)  # a Failure's exception
    Logger().critical("streamlog stops because storage failed: {error}", error=value,
                      path=getattr(value, "path", None), errno=getattr(value, "errno", None))
    os._exit(70)


def _sync_failed(failure: StorageFailed) -> None:
    """The running node's handler of a failed durability sync or log write: fail-stop, exit 70
    (looked up at each call, so a test that replaces C{fail_stop} sees it called)."""
    fail_stop(failure)


# The services of this process that run with fail-stop installed (a program or a test may run
# several): installed by the first to start, the handler before it put back once the last stopped,
# whatever the order of their stops.
_fail_stop_lock = threading.Lock()
_fail_stop_holders: weakref.WeakSet[Any] = weakref.WeakSet()
_handler_before_fail_stop: sync_failure.Handler | None = None


def hold_fail_stop(holder: Any) -> None:
    """From now until L{release_fail_stop}C{(holder)}, a failed durability sync or log write is fail-stop."""
    global _handler_before_fail_stop
    with _fail_stop_lock:
        if sync_failure.installed() is not _sync_failed:
            _handler_before_fail_stop = sync_failure.install(_sync_failed)
        _fail_stop_holders.add(holder)


def release_fail_stop(holder: Any) -> None:
    """C{holder} no longer runs: the last one to go puts back the handler from before the first
    (unless another was installed since, which stays)."""
    with _fail_stop_lock:
        if holder not in _fail_stop_holders:
            return
        _fail_stop_holders.discard(holder)
        if not _fail_stop_holders and sync_failure.installed() is _sync_failed:
            sync_failure.install(_handler_before_fail_stop)


def refuse_to_run(line: str) -> None:
    """This node must not run (its peers belong to another cluster): one line, exit 1."""
    import sys

    Logger().critical("streamlog stops: {line}", line=line)
    try:
        sys.__stderr__.write(f"streamlog-server: {line}\n")
        sys.__stderr__.flush()
    except Exception:
        pass
    os._exit(1)


class PeerEndpoint:
    """The client endpoint a node dials peer C{host:port} with (an C{IStreamClientEndpoint}).

    Its attempts are bounded by the peer transport on the node's clock (C{--peer-connect-timeout},
    L{streamlog.raft.driver.RaftHost.dial}), not by the endpoint's own 30 s.

    A host name is looked up with the reactor's resolver, which by default runs
    C{gethostbyname} on the reactor's thread pool (10 threads), where the Raft hard state
    (term, vote) is written too. Against a DNS server that does not answer a lookup can take
    10-20 s, while a dark peer is dialled every 4-5 s; so at most one lookup per peer is in
    flight: a dial that finds one pending waits for it instead of starting another, and a dial
    given up at the connect timeout only stops waiting (the lookup goes on, and the next dial
    waits for the same one). A dark peer thus holds at most one thread. An address literal
    (IPv4, IPv6) is not looked up. Each dial looks the name up afresh (no cache) once the
    previous lookup has ended, so a peer whose address changes is found at its new one.
    """

    def __init__(self, reactor: Any, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._reactor = reactor
        self._host = host.strip("[]")
        self._port = int(port)
        self._lookup: Any = None  # the pending lookup's Deferred, if any
        self._waiting: list[Deferred[str]] = []  # dials waiting for it
        #: Lookups started (a test's view).
        self.lookups = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        from twisted.internet import abstract

        if abstract.isIPAddress(self._host) or abstract.isIPv6Address(self._host):
            return self._dial(self._host, factory)
        return self._address().addCallback(self._dial, factory)

    def _dial(self, ip: str, factory: Any) -> Deferred[Any]:
        from twisted.internet import endpoints

        endpoint = endpoints.TCP4ClientEndpoint(self._reactor, ip, self._port)  # IPv6 literals too
        return endpoint.connect(factory)  # type: ignore[no-any-return]

    def _address(self) -> Deferred[str]:
        # Cancelled (the dial's timeout): it stops waiting; Twisted fails it with CancelledError.
        waiter: Deferred[str] = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        if self._lookup is None:
            self.lookups += 1
            lookup = self._reactor.resolve(self._host)
            self._lookup = lookup
            lookup.addBoth(self._looked_up)
        return waiter

    def _looked_up(self, result: Any) -> None:
        self._lookup = None
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def __repr__(self) -> str:
        return f"PeerEndpoint({self._host}:{self._port})"


def peer_endpoint(clock: Any, address: str) -> PeerEndpoint:
    """The endpoint a node dials peer C{address} (C{host:port}) with: a L{PeerEndpoint} on the
    reactor C{clock}."""
    return PeerEndpoint(clock, address)


def raise_open_file_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard limit; return (before, after).

    Each partition keeps three files open (segment, index, time index), so
    the common soft default of 1024 would stop a node at a few hundred
    partitions.  The hard limit is the operator's to set.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return soft, wanted
        except (ValueError, OSError):
            pass
    return soft, soft


def fit_partitions(config: BrokerConfig, open_file_limit: int, read_files: int) -> BrokerConfig:
    """The broker config with the partition cap (and, if need be, the connection cap) the
    open-file limit holds; see L{fit_descriptors}."""
    return fit_descriptors(config, open_file_limit, read_files)[0]


def fit_descriptors(config: BrokerConfig, open_file_limit: int, read_files: int) -> tuple[BrokerConfig, Plan]:
    """Divide the open-file limit between partitions, connections, the read cache and rolled
    segments (L{streamlog.storage.descriptors.plan}); say what was lowered.

    Each partition holds three descriptors, a rolled segment three until its
    sync, connections and the read cache one each.  A node that reached a cap
    the limit cannot hold would fail its next segment roll, or its next
    start.  Raises L{StartupError} if the limit cannot hold a useful node.
    """
    limits = config.limits
    try:
        fitted = plan(open_file_limit, limits.max_connections, read_files, limits.max_partitions_per_node)
    except TooFewDescriptors as e:
        raise StartupError(str(e)) from None
    if fitted.partitions == limits.max_partitions_per_node and not fitted.shrunk:
        return config, fitted
    if fitted.shrunk:
        Logger().warn(
            "the open-file limit ({limit}) cannot hold --max-connections {connections} and --read-file-cache "
            "{read_files} with a useful number of partitions: this node takes at most {room} partitions (not "
            "{cap}), {fit_connections} connections and {fit_read_files} cached read files; raise the hard limit "
            "(ulimit -Hn, LimitNOFILE=) to allow more",
            limit=open_file_limit, connections=limits.max_connections, read_files=read_files, room=fitted.partitions,
            cap=limits.max_partitions_per_node, fit_connections=fitted.connections, fit_read_files=fitted.read_files,
        )
    else:
        Logger().warn(
            "the open-file limit ({limit}) holds {room} partitions with --max-connections {connections} and "
            "--read-file-cache {read_files}: this node takes at most {room}, not {cap} (--max-partitions-per-node); "
            "raise the hard limit (ulimit -Hn, LimitNOFILE=) to allow more",
            limit=open_file_limit, room=fitted.partitions, connections=limits.max_connections, read_files=read_files,
            cap=limits.max_partitions_per_node,
        )
    fitted_limits = attrs.evolve(limits, max_partitions_per_node=fitted.partitions, max_connections=fitted.connections)
    return attrs.evolve(config, limits=fitted_limits), fitted


def prepare_data_dir(path: str) -> None:
    """Make sure C{path} is a directory this process can write, or say why not."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise StartupError(f"the data dir {path} is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create the data dir {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"the data dir {path} is not writable by this user (uid {os.getuid()})")


class BrokerService(service.Service):
    """The broker of one node, its storage, retention and the data directory's lock."""

    _log = Logger()

    def __init__(self, config: NodeConfig, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        self.clock = clock
        self.broker: Broker | None = None
        self.committer: Any = None
        self.lock: DataDirLock | None = None
        self.recovery: Recovery | None = None
        #: The address actually bound (the node's listener says it), for the lock file.
        self.listen_address = config.listen
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._retention = LoopingCall(self._apply_retention)
        self._retention.clock = clock
        #: The connection factory, set by whoever listens; its connections are drained at stop.
        self.factory: Any = None
        #: The node's ClusterNode (a node with --peers), or None.
        self.cluster: Any = None
        self.drain_timeout = 5.0
        #: What L{open} records of the failed syncs and log writes while it runs (either refuses the start).
        self._startup_syncs = sync_failure.Recorder()
        #: Seconds a stopping cluster node waits for its led groups to move to other nodes.
        self.transfer_timeout = 5.0

    @property
    def data_dir(self) -> str | None:
        """The absolute data directory, or None for memory storage."""
        return None if self.config.storage == "memory" else os.path.abspath(self.config.data_dir)

    # --- the start-up step -------------------------------------------------------

    def open(self) -> Broker:
        """Lock the data directory, open and recover the storage, build the broker.

        Raises L{StartupError} for what a person must fix (not a directory,
        not writable, locked by another server, unreadable topic metadata, a
        failed fsync: even one the step that asked for it went on from),
        after undoing what was done.  Idempotent: a second call returns the
        same broker.
        """
        if self.broker is not None:
            return self.broker
        # A sync (or a log write) that fails while the storage opens is recorded, whoever catches
        # its error, and refuses the start (exit 1, one line): nothing was served or acknowledged yet.
        syncs = self._startup_syncs = sync_failure.Recorder()
        previous = sync_failure.install(syncs)
        try:
            broker = self._open()
        except StartupError:
            if not syncs.failures:
                raise
            broker = None  # undone already (without a sync: _abandon); the failed sync is what to say
        finally:
            sync_failure.install(previous)
        if syncs.failures:
            if broker is not None:
                self.broker = self.cluster = None
                self._abandon(broker.storage, sync=False)
            raise StartupError(f"cannot start on the data dir {self.data_dir}: {syncs.failures[0]} "
                               "(a disk fault: nothing written there since can be trusted)") from None
        return broker

    def _open(self) -> Broker:
        if self.data_dir is not None:
            self._check_data_dir_kind(self.data_dir)
        before, after = raise_open_file_limit()
        if after != before:
            self._log.info("open file limit raised from {before} to {after}", before=before, after=after)
        began = time.monotonic()
        storage: Any
        broker_config = self.config.broker_config()
        if self.data_dir is None:
            storage = MemoryStorage(self.config.topic_defaults)
        else:
            broker_config, fitted = fit_descriptors(broker_config, after, self.config.read_file_cache)
            storage = self._open_segmented(self.data_dir, fitted)
        try:
            if self.config.clustered:
                broker = self._open_cluster(storage, broker_config)
            else:
                broker = Broker(storage, broker_config, clock=self.clock, on_fatal=fail_stop)
                broker.alone.node_id = self.config.node_id
        except StartupError:
            self._abandon_at_start(storage)
            raise
        except (OSError, ValueError, StorageError) as e:
            self._abandon_at_start(storage)
            raise StartupError(f"cannot recover the data dir {self.data_dir}: {e}") from None
        if self.cluster is not None:  # one storage log per Raft group, the metadata group's included
            partitions = [log for name, (_, logs) in self.cluster.loaded.items() if name != "__meta" for log in logs]
        else:
            partitions = list(broker.directory.replicas())
        self.recovery = Recovery(
            topics=len(broker.topics), partitions=len(partitions),
            unavailable=sum(1 for p in partitions if p.failed is not None),
            seconds=time.monotonic() - began,
        )
        self.broker = broker
        return broker

    def _check_data_dir_kind(self, data_dir: str) -> None:
        """A node alone and a cluster node lay out their data dirs differently (topics by name;
        one log per Raft group and node.json): neither can read the other's, so neither may
        start on the other's as if it were empty."""
        from streamlog.cluster.identity import NODE_FILE

        try:
            names = os.listdir(data_dir)
        except OSError:
            return  # not there yet (made below), or refused by the usual checks
        if self.config.clustered and NODE_FILE not in names:
            topics = sorted(n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(data_dir, n)))
            if topics:
                shown = ", ".join(topics[:5]) + (", ..." if len(topics) > 5 else "")
                raise StartupError(
                    f"the data dir {data_dir} holds the topics of a node run alone ({shown}); a cluster node "
                    f"cannot adopt them: start it without --peers, or give the cluster node an empty --data-dir")
        if not self.config.clustered and NODE_FILE in names:
            raise StartupError(
                f"the data dir {data_dir} belongs to a cluster node ({NODE_FILE}); a node alone cannot read it: "
                f"start it with its --node-id, --peers and --peer-listen, or give the node alone another --data-dir")

    def _open_cluster(self, storage: Any, broker_config: BrokerConfig) -> Broker:
        """A node with peers: its storage holds one log per Raft group; the ClusterNode runs them."""
        from streamlog.cluster.identity import IdentityError, IdentityStore
        from streamlog.cluster.node import ClusterNode

        loaded = storage.load()
        try:
            identity = IdentityStore(self.data_dir)
            identity.load(self.config.node_id)
        except (IdentityError, OSError) as e:
            raise StartupError(str(e)) from None
        node = ClusterNode(
            self.config, storage, clock=self.clock,
            connect=lambda address: peer_endpoint(self.clock, address),
            identity=identity, client_address=self.config.advertise or "", on_fatal=refuse_to_run,
            on_storage_failure=fail_stop,
        )
        node.loaded = loaded
        broker = Broker(storage, broker_config, clock=self.clock, on_fatal=fail_stop, directory=node.directory)
        broker.cluster = node
        self.cluster = node
        return broker

    def _open_segmented(self, data_dir: str, fitted: Plan) -> Any:
        prepare_data_dir(data_dir)
        try:
            self.lock = DataDirLock.acquire(data_dir, self.holder())
        except DataDirLocked as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"cannot lock the data dir {data_dir}: {e.strerror or e}") from None
        try:
            return SegmentedStorage(data_dir, self.config.topic_defaults, read_files=fitted.read_files,
                                    retired_segments=fitted.retired, recovery_workers=self.config.sync_workers)
        except OSError as e:
            self._release_lock()
            raise StartupError(f"cannot open the data dir {data_dir}: {e.strerror or e}") from None

    def holder(self) -> dict[str, Any]:
        """What the lock file says about this node (docs/operations.md, "Starting a node")."""
        return {
            "pid": os.getpid(), "host": socket.gethostname(), "started": self.started,
            "listen": self.listen_address, "version": __version__,
        }

    def listening_on(self, address: str) -> None:
        """The listener is bound: record where, so a second server can say who holds the lock."""
        self.listen_address = address
        if self.cluster is not None and not self.cluster.client_address:
            self.cluster.client_address = address  # what other nodes tell clients (no --advertise)
        if self.broker is not None and self.cluster is None:
            self.broker.alone.client_address = self.config.advertise or address  # for Metadata
        if self.lock is not None:
            self.lock.update(self.holder())

    def close(self) -> None:
        """Undo L{open} for a node that will not start (its listener failed).

        The logs are let go without a sync or a clean-shutdown checkpoint: nothing was
        served, what start-up wrote it synced then, and the next start recovers them as
        after a crash.  (A sync here would run after start-up's recording of failed syncs
        and before fail-stop: its failure could only be logged.)
        """
        if self.broker is not None:
            broker, self.broker = self.broker, None
            self.cluster = None
            self._abandon(broker.storage, sync=False)
        else:
            self._release_lock()

    def _abandon_at_start(self, storage: Any) -> None:
        """Undo what L{_open} opened when a start-up step failed: with the clean-shutdown sync,
        unless a sync already failed during this start (nothing more is written on that disk)."""
        self.cluster = None
        self._abandon(storage, sync=not self._startup_syncs.failures)

    def _abandon(self, storage: Any, sync: bool = True) -> None:
        try:
            storage.close(sync=sync)
        except Exception:
            self._log.failure("closing the storage of a node that did not start failed")
        self._release_lock()

    def _release_lock(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.release()

    # --- running -----------------------------------------------------------------

    def _apply_retention(self) -> None:
        try:
            assert self.broker is not None
            self.broker.apply_retention()
        except Exception:
            self._log.failure("retention check failed")

    def startService(self) -> None:
        broker = self.open()
        # Start-up is over: from now on a failed durability sync or log write anywhere, on any
        # thread, stops the process (exit 70) before its caller sees the error
        # (streamlog.storage.sync_failure).
        hold_fail_stop(self)
        super().startService()
        if self.lock is not None:
            self.lock.update(self.holder())  # after twistd's fork into the background the pid is new
        if self.data_dir is not None and self.committer is None:
            # Here, not in open(): its sync thread must start in the process that runs
            # (a thread started before twistd forks into the background would not exist in it).
            self.committer = GroupCommitter(self.config.fsync, clock=self.clock, on_fatal=fail_stop,
                                            sync_workers=self.config.sync_workers)
            broker.committer = self.committer
            store = getattr(broker.storage, "hard_state", None)
            if store is not None:  # its term-and-vote saves count in /ready's disk check too
                store.bind(self.clock, in_flight=self.committer.in_flight)
        self._retention.start(self.config.retention_check_interval, now=False)
        if self.cluster is not None:
            self.cluster.start()

    def stopService(self) -> Any:
        """Stop taking writes, answer every send already appended once the
        final sync covers it, let those answers reach the clients, then close
        the logs with their clean-shutdown checkpoint and release the lock."""
        super().stopService()
        if self._retention.running:
            self._retention.stop()
        broker = self.broker
        if broker is None:
            return None
        if self.cluster is not None:
            # Leadership first, to caught-up followers: their clients move on at once.
            d = self.cluster.hand_over(self.transfer_timeout)
        else:
            d = maybeDeferred(lambda: None)

        def stop_writes(_: Any) -> Any:
            broker.stopping = True
            return self.committer.stop() if self.committer is not None else None

        d.addCallback(stop_writes)
        d.addErrback(lambda f: self._log.failure("final sync failed", f))
        if self.factory is not None:
            d.addCallback(lambda _: self.factory.close_connections(self.drain_timeout))
        if self.cluster is not None:
            d.addBoth(lambda _: self.cluster.stop())
        d.addBoth(lambda _: broker.close())

        def release(result: Any) -> Any:
            self._release_lock()  # last: the next server may open the logs once they are closed
            release_fail_stop(self)  # the final syncs were fail-stop too
            return result

        return d.addBoth(release)

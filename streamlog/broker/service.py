"""The broker as a Twisted service: opens storage, runs retention, closes cleanly.

Stopping order matters for durability: the listener stops first (the
MultiService stops children in reverse order), then the committer makes a
final sync, then the logs are closed with their clean-shutdown checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from streamlog.broker.broker import Broker, BrokerConfig
from streamlog.storage.errors import CannotLoad
from streamlog.storage.memory import MemoryStorage


def fail_stop(error: Any) -> None:
    """A storage fault: stop at once, never answer another write as durable.

    C{os._exit}, not C{reactor.stop}: a clean shutdown would run the final
    sync and checkpoint on a disk that just failed, and answer waiting sends.
    """
    Logger().critical("streamlog stops because storage failed: {error}", error=error)
    os._exit(70)


def raise_open_file_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard limit; return (before, after).

    Each partition keeps about three files open (segment, index, time index),
    so the common soft default of 1024 would stop a node at a few hundred
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
    """Lower the per-node partition cap to what the open-file limit can hold (and say so).

    Each partition holds three descriptors; connections and the read cache
    come on top (streamlog.storage.descriptors).  A node that reached a cap
    the limit cannot hold would fail its next segment roll, or its next start.
    """
    import attrs

    from streamlog.storage.descriptors import partitions_within

    limits = config.limits
    if open_file_limit < 0:  # RLIM_INFINITY
        return config
    room = partitions_within(open_file_limit, limits.max_connections, read_files)
    if room >= limits.max_partitions_per_node:
        return config
    Logger().warn(
        "the open-file limit ({limit}) holds {room} partitions with --max-connections {connections} and "
        "--read-file-cache {read_files}: this node takes at most {room}, not {cap} (--max-partitions-per-node); "
        "raise the hard limit (ulimit -Hn, LimitNOFILE=) to allow more",
        limit=open_file_limit, room=room, connections=limits.max_connections, read_files=read_files,
        cap=limits.max_partitions_per_node,
    )
    return attrs.evolve(config, limits=attrs.evolve(limits, max_partitions_per_node=room))


class BrokerService(service.Service):
    _log = Logger()

    def __init__(self, options: Any, config: BrokerConfig, clock: Any) -> None:
        self.clock = clock
        self.committer = None
        before, after = raise_open_file_limit()
        if after != before:
            self._log.info("open file limit raised from {before} to {after}", before=before, after=after)
        if options["storage"] != "memory":
            config = fit_partitions(config, after, options["read-file-cache"])
        try:
            if options["storage"] == "memory":
                storage: Any = MemoryStorage(options.topic_defaults())
            else:
                storage = self._segmented(options)
            self.broker = Broker(storage, config, clock=clock, committer=self.committer, on_fatal=fail_stop)
        except CannotLoad as e:  # damage the node must not serve around: one line, no traceback
            raise SystemExit(f"streamlog-server: cannot start: {e}") from None
        self._retention = LoopingCall(self._apply_retention)
        self._retention.clock = clock
        self._retention_interval = options["retention-check-interval"]
        #: The connection factory, set by makeService; its connections are drained at stop.
        self.factory: Any = None
        self.drain_timeout = 5.0

    def _segmented(self, options: Any) -> Any:
        from streamlog.storage.group_commit import GroupCommitter
        from streamlog.storage.segmented import SegmentedStorage

        os.makedirs(options["data-dir"], exist_ok=True)
        storage = SegmentedStorage(options["data-dir"], options.topic_defaults(), read_files=options["read-file-cache"])
        self.committer = GroupCommitter(options["fsync-policy"], clock=self.clock, on_fatal=fail_stop,
                                        sync_workers=options["sync-workers"])
        return storage

    def _apply_retention(self) -> None:
        try:
            self.broker.apply_retention()
        except Exception:
            self._log.failure("retention check failed")

    def startService(self) -> None:
        super().startService()
        self._retention.start(self._retention_interval, now=False)

    def stopService(self) -> Any:
        """Stop taking writes, answer every send already appended once the
        final sync covers it, let those answers reach the clients, then close
        the logs with their clean-shutdown checkpoint."""
        super().stopService()
        if self._retention.running:
            self._retention.stop()
        self.broker.stopping = True
        d = maybeDeferred(self.committer.stop) if self.committer is not None else maybeDeferred(lambda: None)
        d.addErrback(lambda f: self._log.failure("final sync failed", f))
        if self.factory is not None:
            d.addCallback(lambda _: self.factory.close_connections(self.drain_timeout))
        d.addBoth(lambda _: self.broker.close())
        return d

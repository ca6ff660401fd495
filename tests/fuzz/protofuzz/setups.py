"""The two fuzzing set-ups, shared by the tests and run_fuzz.py.

Limits are set low (a 64 KiB line, 8 KB messages, 32-message batches, 16
partitions, 8 connections, 4 requests in flight) so that every bound is
reached with small requests and a step costs little; the real server gets the same limits as command-line options,
which also proves those options reach the edge.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import attrs

from streamlog import wire
from streamlog.broker.broker import BrokerConfig
from streamlog.testing import ServerProcess

from .targets import HarnessTarget, RawConnection, SocketTarget

FUZZ_LIMITS = dict(
    max_line_bytes=64 * 1024,
    max_message_bytes=8_000,
    max_batch_messages=32,
    max_poll_messages=200,
    max_poll_bytes=256 * 1024,
    default_poll_bytes=16 * 1024,
    max_partitions=16,
    max_connections=8,
    max_in_flight=4,  # parked polls pause reading: flow control under fuzz
)
#: Limits other branches add; set where this Limits has them (the long-key
#: mutation expects KEY_TOO_LARGE or MESSAGE_TOO_LARGE past them).
OPTIONAL_LIMITS = dict(max_key_bytes=2048)
FUZZ_LIMITS.update({k: v for k, v in OPTIONAL_LIMITS.items() if k in attrs.fields_dict(wire.Limits)})


def harness_setup() -> tuple[HarnessTarget, wire.Limits, BrokerConfig, dict[str, Any]]:
    limits = wire.Limits(max_wait_ms=1000, **FUZZ_LIMITS)
    config = BrokerConfig(limits=limits, default_partitions=2)
    return HarnessTarget(limits, config), limits, config, {}


def server_setup(workdir: Path, extra: list[str] | None = None) -> tuple[SocketTarget, wire.Limits, BrokerConfig,
                                                                         dict[str, Any]]:
    """A segmented-storage server (fsync never: the disk is shared, and fsync
    policy is not what a fuzzer tests) with the fuzz limits as options."""
    limits = wire.Limits(max_wait_ms=100, **FUZZ_LIMITS)
    options = [f"--{name.replace('_', '-')}={value}" for name, value in FUZZ_LIMITS.items()]
    options += ["--max-wait-ms=100", "--fsync=never", "--default-partitions=2", "--segment-bytes=4096",
                "--retention-check-interval=86400"]
    options += list(extra or [])
    server = ServerProcess(workdir, options)
    config = BrokerConfig(limits=limits, default_partitions=2)
    try:
        target = SocketTarget(server, limits, config)
    except BaseException:
        server.stop()
        raise
    target.options = options
    return target, limits, config, {"allow_small_retention": False}


def kill_and_restart(target: SocketTarget, workdir: Path) -> None:
    """SIGKILL the target's server (its own pid) and start it again on the same data directory."""
    target.server.signal(signal.SIGKILL)
    target.server.wait(10)
    target.server.stop()
    target.close()
    target.server = ServerProcess(workdir, target.options, name="restarted")
    target.conn = RawConnection(target.server.port)
    target.admin_conn = RawConnection(target.server.port)

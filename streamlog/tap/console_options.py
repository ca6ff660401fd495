"""The server's web console options (docs/console.md), kept apart from streamlog.tap.server's
long list as the group options are."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from streamlog.console.shape import ConsoleConfig

_DEFAULTS = ConsoleConfig()

FLAGS: list[list[Any]] = [
    ["console-admin", None, "Let the web console create and delete topics and reset group offsets "
                            "(off: it is read-only and those requests answer 403 CONSOLE_READ_ONLY)."],
]

PARAMETERS: list[list[Any]] = [
    ["console-max-messages", None, _DEFAULTS.max_messages, "Most messages one console message-browser request "
                                                           "returns.", int],
    ["console-sample-interval", None, _DEFAULTS.sample_interval,
     "Seconds between the console's throughput and lag samples (0: no sampling).", float],
    ["console-samples", None, _DEFAULTS.samples, "Samples the console keeps for its charts.", int],
    ["console-sample-max-groups", None, _DEFAULTS.sample_max_groups,
     "Consumer groups whose lag each console sample records (the first by name).", int],
    ["console-max-body-bytes", None, _DEFAULTS.max_body_bytes, "Largest body of a console admin request (bytes).",
     int],
]


def console_config(options: Any) -> ConsoleConfig:
    """The checked console options; a bad one is a UsageError naming it."""
    try:
        return ConsoleConfig(admin=bool(options["console-admin"]), max_messages=options["console-max-messages"],
                             sample_interval=options["console-sample-interval"], samples=options["console-samples"],
                             sample_max_groups=options["console-sample-max-groups"],
                             max_body_bytes=options["console-max-body-bytes"])
    except ValueError as e:
        raise usage.UsageError(str(e)) from None

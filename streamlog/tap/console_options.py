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
    ["console-max-topics", None, _DEFAULTS.max_topics, "Most topics one console topic-list request describes "
                                                       "(the page pages on).", int],
    ["console-sample-idle", None, _DEFAULTS.sample_idle, "Seconds the console keeps sampling after a page last "
                                                         "asked for samples.", float],
    ["console-allowed-hosts", None, "", "Comma-separated host names (name or name:port) the console answers for "
                                        "besides its own address and localhost (DNS rebinding defence).", str],
]


def console_config(options: Any) -> ConsoleConfig:
    """The checked console options; a bad one is a UsageError naming it."""
    try:
        return ConsoleConfig(admin=bool(options["console-admin"]), max_messages=options["console-max-messages"],
                             sample_interval=options["console-sample-interval"], samples=options["console-samples"],
                             sample_max_groups=options["console-sample-max-groups"],
                             max_body_bytes=options["console-max-body-bytes"],
                             max_topics=options["console-max-topics"], sample_idle=options["console-sample-idle"],
                             allowed_hosts=allowed_hosts(options["console-allowed-hosts"]))
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def allowed_hosts(raw: str) -> tuple[str, ...]:
    """C{--console-allowed-hosts}: comma-separated names; one with a slash, a scheme or
    spaces is a mistake (a URL pasted instead of a name), named in the error."""
    names = tuple(n.strip().lower() for n in (raw or "").split(",") if n.strip())
    for name in names:
        if "/" in name or " " in name or "@" in name:
            raise usage.UsageError(f"--console-allowed-hosts: {name!r} is not a host name (give name or name:port)")
    return names

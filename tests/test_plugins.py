"""twistd finds the three daemons, and the server's options make sense."""

from __future__ import annotations

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from streamlog import wire
from streamlog.tap import server


def test_twistd_finds_all_three_plugins():
    names = {p.tapname for p in getPlugins(IServiceMaker)}
    assert {"streamlog-server", "streamlog-producer", "streamlog-consumer"} <= names


def test_server_defaults_are_the_embedded_single_node():
    options = server.Options()
    options.parseOptions([])
    assert options["listen"] == "tcp:7070:interface=127.0.0.1"
    assert options["data-dir"] == "streamlog-data"
    assert options["storage"] == "segmented"
    assert options["fsync"] == "always"
    assert options.limits() == wire.Limits()


def test_every_limit_is_an_option():
    options = server.Options()
    options.parseOptions(["--max-line-bytes", "2048", "--max-in-flight", "7", "--idle-timeout", "1.5"])
    limits = options.limits()
    assert limits.max_line_bytes == 2048 and limits.max_in_flight == 7 and limits.idle_timeout == 1.5


@pytest.mark.parametrize(
    "argv",
    [
        ["--storage", "floppy"],
        ["--auto-create-topics", "maybe"],
        ["--default-partitions", "0"],
        ["--max-line-bytes", "0"],
        ["--max-line-bytes", "lots"],
        ["--fsync", "sometimes"],
        ["--fsync", "interval:-5"],
    ],
)
def test_bad_server_options_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        server.Options().parseOptions(argv)


def test_open_file_limit_is_raised_to_the_hard_limit():
    import resource

    from streamlog.broker.service import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
            assert raise_open_file_limit() == (64, hard)
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        else:
            before, after = raise_open_file_limit()
            assert after >= before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

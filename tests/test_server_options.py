"""streamlog-server options that are more than a number: the listen backlog."""

from __future__ import annotations

import pytest
from twisted.internet import endpoints, reactor

from streamlog.tap.server import DEFAULT_LISTEN, Options, with_listen_backlog


@pytest.mark.parametrize("description,expected", [
    ("tcp:7070:interface=127.0.0.1", "tcp:7070:interface=127.0.0.1:backlog=1024"),
    ("tcp:0", "tcp:0:backlog=1024"),
    ("TCP6:7070:interface=\\:\\:1", "TCP6:7070:interface=\\:\\:1:backlog=1024"),
    ("unix:/tmp/s.sock", "unix:/tmp/s.sock:backlog=1024"),
    ("ssl:7443:privateKey=k.pem", "ssl:7443:privateKey=k.pem:backlog=1024"),
    # The description's own backlog wins; types without one are left alone.
    ("tcp:7070:backlog=10:interface=127.0.0.1", "tcp:7070:backlog=10:interface=127.0.0.1"),
    ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    # An escaped colon is part of a value, not a field separator.
    ("unix:/tmp/back\\:log=1", "unix:/tmp/back\\:log=1:backlog=1024"),
])
def test_the_backlog_is_added_unless_the_endpoint_sets_one(description, expected):
    assert with_listen_backlog(description, 1024) == expected


def test_the_rewritten_default_endpoint_parses_with_its_backlog():
    endpoint = endpoints.serverFromString(reactor, with_listen_backlog(DEFAULT_LISTEN, 777))
    assert endpoint._backlog == 777 and endpoint._interface == "127.0.0.1"


def test_the_backlog_and_per_address_cap_are_server_options():
    options = Options()
    options.parseOptions(["--listen-backlog", "4096", "--max-connections-per-address", "8"])
    limits = options.limits()
    assert limits.listen_backlog == 4096 and limits.max_connections_per_address == 8
    defaults = Options()
    defaults.parseOptions([])
    assert defaults.limits().listen_backlog == 1024 and defaults.limits().max_connections_per_address == 256

"""--http-listen: the option, where the node binds it, and a real node's listener on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import subprocess

import attrs
import pytest
from http_support import http_get
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from streamlog.broker.service import NodeConfig
from streamlog.http.site import DEFAULT_HTTP_LISTEN, HTTP_LISTEN_ENV
from streamlog.tap.server import Node, Options
from streamlog.testing import TWISTD, ServerProcess, child_env, wait_for

FREE_PORT = "tcp:0:interface=127.0.0.1"


def http_listen(args, monkeypatch, env=None):
    if env is None:
        monkeypatch.delenv(HTTP_LISTEN_ENV, raising=False)
    else:
        monkeypatch.setenv(HTTP_LISTEN_ENV, env)
    options = Options()
    options.parseOptions(args)
    return options.node_config().http_listen


def test_the_default_is_9644_on_loopback_and_none_turns_it_off(monkeypatch):
    assert DEFAULT_HTTP_LISTEN == "tcp:9644:interface=127.0.0.1"
    assert http_listen([], monkeypatch) == DEFAULT_HTTP_LISTEN
    assert http_listen(["--http-listen", "none"], monkeypatch) is None
    assert http_listen(["--http-listen", "tcp:9000"], monkeypatch) == "tcp:9000"


def test_the_environment_variable_sets_the_default_and_the_option_wins(monkeypatch):
    assert http_listen([], monkeypatch, env="none") is None
    assert http_listen([], monkeypatch, env="tcp:9100:interface=127.0.0.1") == "tcp:9100:interface=127.0.0.1"
    assert http_listen(["--http-listen", "tcp:9200"], monkeypatch, env="none") == "tcp:9200"


def test_the_test_suite_runs_with_the_http_listener_off_by_default():
    # tests/conftest.py: a node a test starts never binds the shared machine's port 9644 unasked.
    options = Options()
    options.parseOptions([])
    assert options.node_config().http_listen is None


@pytest.mark.parametrize("args, message", [
    (["--http-listen", "9644"], "--http-listen '9644' is not a server endpoint description"),
    (["--http-listen", "none", "--http-port-file", "p"], "--http-port-file needs an HTTP listener"),
    (["--http-idle-timeout", "0"], "--http-idle-timeout must be more than 0 seconds"),
    (["--http-request-timeout", "0"], "--http-request-timeout must be more than 0 seconds"),
    (["--http-close-timeout", "0"], "--http-close-timeout must be more than 0 seconds"),
    (["--http-close-timeout", "nan"], "--http-close-timeout must be more than 0 seconds"),
    (["--http-max-connections-per-address", "0"], "--http-max-connections-per-address must be at least 1"),
    (["--metrics-cache-seconds", "-1"], "--metrics-cache-seconds must be 0 or more"),
    (["--ready-max-sync-seconds", "0"], "--ready-max-sync-seconds must be more than 0"),
    (["--metrics-max-group-series", "-1"], "--metrics-max-group-series must be 0 or more"),
    (["--metrics-cache-seconds", "nan"], "--metrics-cache-seconds must be 0 or more"),
])
def test_http_option_mistakes_are_usage_errors(args, message):
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        Options().parseOptions(args)


def test_the_slow_client_bounds_reach_the_site(tmp_path):
    options = Options()
    options.parseOptions(["--http-request-timeout", "7.5", "--http-max-connections-per-address", "3",
                          "--http-close-timeout", "4"])
    config = options.node_config()
    assert (config.http_request_timeout, config.http_max_connections_per_address, config.http_close_timeout) == (
        7.5, 3, 4.0)
    defaults = Options()
    defaults.parseOptions([])
    default = defaults.node_config()
    assert (default.http_request_timeout, default.http_max_connections_per_address, default.http_close_timeout) == (
        30.0, 16, 15.0) == (NodeConfig().http_request_timeout, NodeConfig().http_max_connections_per_address,
                            NodeConfig().http_close_timeout)
    reactor = MemoryReactorClock()
    node = Node(attrs.evolve(config, listen="tcp:7070:interface=127.0.0.1", data_dir=str(tmp_path),
                             http_listen="tcp:9644:interface=127.0.0.1"), reactor)
    node.open()
    site = reactor.tcpServers[1][1]
    assert (site.request_timeout, site.max_connections_per_address, site.close_timeout) == (7.5, 3, 4.0)
    site.slow_requests, site.refused_per_address = 2, 1  # the node's /metrics reads this site's counters
    assert node.metrics_registry.get_sample_value("streamlog_http_request_timeouts_total") == 2
    assert node.metrics_registry.get_sample_value("streamlog_http_connections_refused_total",
                                                  {"limit": "per_address"}) == 1
    node.broker_service.close()


def test_the_node_binds_its_http_listener_after_its_client_listener(tmp_path):
    reactor = MemoryReactorClock()
    node = Node(NodeConfig(listen="tcp:7070:interface=127.0.0.1", data_dir=str(tmp_path),
                           http_listen="tcp:9644:interface=127.0.0.1"), reactor)
    node.open()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(7070, "127.0.0.1"),
                                                                                   (9644, "127.0.0.1")]
    assert node.http_root is not None
    node.broker_service.close()


def test_a_node_built_in_a_program_has_no_http_listener_unless_asked(tmp_path):
    reactor = MemoryReactorClock()
    node = Node(NodeConfig(listen="tcp:7070:interface=127.0.0.1", data_dir=str(tmp_path)), reactor)
    node.open()
    assert [port for port, _, _, _ in reactor.tcpServers] == [7070]
    assert node.http_root is None and node.http_address is None
    node.broker_service.close()


def test_a_real_node_serves_http_on_its_own_port_and_says_so(tmp_path):
    server = ServerProcess(tmp_path, ["--storage", "memory"], http=True)
    try:
        assert server.http_port not in (None, server.port, 9644)
        answer = http_get(server.http_port, "/")  # the web console's page (streamlog.console)
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/html")
        assert b"streamlog console" in answer.body
        missing = http_get(server.http_port, "/no/such/thing")
        assert missing.status == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
        line = wait_for(lambda: next((x for x in server.log().splitlines() if " serving on " in x), None), 10,
                        "the start-up line")
        assert line.endswith(f"; HTTP on 127.0.0.1:{server.http_port} (/metrics, /health, /ready)"), line
        assert "GET /" not in server.log()  # no access-log line per request
    finally:
        server.stop()


def test_a_taken_http_port_is_a_one_line_refusal(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = f"tcp:{holder.getsockname()[1]}:interface=127.0.0.1"
    try:
        done = subprocess.run([TWISTD, "--nodaemon", "--pidfile=", "streamlog-server", "--listen", FREE_PORT,
                               "--storage", "memory", "--http-listen", taken],
                              cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=30)
    finally:
        holder.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"streamlog-server: --http-listen: cannot listen on {taken}: "
                                        "Address already in use (another node on this machine? give each "
                                        "its own --http-listen, or --http-listen none)"]


def test_the_metrics_cache_option_reaches_the_metrics_resource(tmp_path):
    options = Options()
    options.parseOptions(["--metrics-cache-seconds", "2.5", "--ready-max-sync-seconds", "4",
                          "--metrics-max-group-series", "7"])
    assert options.node_config().metrics_cache_seconds == 2.5
    assert options.node_config().ready_max_sync_seconds == 4.0
    assert defaults_ready_max_sync() == NodeConfig().ready_max_sync_seconds == 10.0
    defaults = Options()
    defaults.parseOptions([])
    assert defaults.node_config().metrics_cache_seconds == NodeConfig().metrics_cache_seconds == 1.0
    reactor = MemoryReactorClock()
    node = Node(attrs.evolve(options.node_config(), listen="tcp:7070:interface=127.0.0.1", data_dir=str(tmp_path),
                             http_listen="tcp:9644:interface=127.0.0.1"), reactor)
    node.open()
    resource = node.http_root.children[b"metrics"]
    assert resource.cache_seconds == 2.5 and resource.clock is reactor
    (collector,) = [c for c in resource.registry._collector_to_names if hasattr(c, "max_group_series")]
    assert collector.max_group_series == 7 and NodeConfig().metrics_max_group_series == 1000
    node.broker_service.close()


def defaults_ready_max_sync():
    options = Options()
    options.parseOptions([])
    return options.node_config().ready_max_sync_seconds

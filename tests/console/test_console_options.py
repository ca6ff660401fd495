"""The server's --console-* options: defaults, each one reaching the console, bad values refused."""

from __future__ import annotations

import pytest
from twisted.python import usage

from streamlog.console.shape import ConsoleConfig
from streamlog.tap import server


def test_the_console_is_read_only_by_default():
    options = server.Options()
    options.parseOptions([])
    assert options.console_config() == ConsoleConfig() and ConsoleConfig().admin is False


def test_every_console_option_reaches_its_config():
    options = server.Options()
    options.parseOptions(["--console-admin", "--console-max-messages", "7", "--console-sample-interval", "0",
                          "--console-samples", "9", "--console-sample-max-groups", "3",
                          "--console-max-body-bytes", "2048"])
    assert options.console_config() == ConsoleConfig(admin=True, max_messages=7, sample_interval=0.0, samples=9,
                                                     sample_max_groups=3, max_body_bytes=2048)


@pytest.mark.parametrize("argv, says", [
    (["--console-max-messages", "0"], "--console-max-messages"),
    (["--console-sample-interval", "-1"], "--console-sample-interval"),
    (["--console-samples", "1"], "--console-samples"),
    (["--console-sample-max-groups", "-2"], "--console-sample-max-groups"),
    (["--console-max-body-bytes", "100"], "--console-max-body-bytes"),
    (["--console-samples", "many"], "invalid literal for int()"),
])
def test_bad_console_options_are_usage_errors_naming_the_option(argv, says):
    with pytest.raises(usage.UsageError) as e:
        server.Options().parseOptions(argv)
    assert says in str(e.value)


def test_a_node_with_an_http_listener_mounts_the_console_with_its_config(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from streamlog.broker.service import NodeConfig

    reactor = MemoryReactorClock()
    node = server.Node(NodeConfig(listen="tcp:0:interface=127.0.0.1", data_dir=str(tmp_path), storage="memory",
                                  http_listen="tcp:0:interface=127.0.0.1"), reactor,
                       ConsoleConfig(admin=True, sample_interval=0))
    node.open()
    try:
        assert node.console is not None and node.console.api.config.admin is True
        assert {"", "api", "static"} <= set(node.http_root.mounted())
    finally:
        node.broker_service.close()


def test_without_an_http_listener_there_is_no_console(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from streamlog.broker.service import NodeConfig

    node = server.Node(NodeConfig(listen="tcp:0:interface=127.0.0.1", data_dir=str(tmp_path), storage="memory"),
                       MemoryReactorClock())
    node.open()
    try:
        assert node.console is None and node.http_root is None
    finally:
        node.broker_service.close()

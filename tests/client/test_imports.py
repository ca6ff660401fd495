"""What importing the client loads: never the server (ARCHITECTURE.md decision 13), and for the CLI no Twisted."""

from __future__ import annotations

import subprocess
import sys

import orjson

from streamlog.testing import child_env

SERVER_SIDE = ("streamlog.broker", "streamlog.storage", "streamlog.protocol", "streamlog.raft", "streamlog.cluster")


def loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running C{code}."""
    probe = code + "\nimport sys, orjson; sys.stdout.write(orjson.dumps(sorted(sys.modules)).decode())"
    out = subprocess.run([sys.executable, "-c", probe], env=child_env(), capture_output=True, timeout=60, check=True)
    return orjson.loads(out.stdout)


def server_side(modules: list[str]) -> list[str]:
    return [m for m in modules if m == "streamlog.protocol" or m.startswith(SERVER_SIDE)]


def test_importing_the_client_loads_no_broker_storage_protocol_or_raft():
    modules = loaded_after("import streamlog.client")
    assert "streamlog.client" in modules
    assert server_side(modules) == []


def test_using_every_public_name_of_the_client_loads_no_server_module():
    modules = loaded_after(
        "import streamlog.client as c\n"
        "for name in c.__all__: getattr(c, name)\n"
        "import streamlog.client.positions, streamlog.client.requests, streamlog.wire")
    assert "streamlog.client.connection" in modules and "streamlog.wire" in modules
    assert server_side(modules) == []


def test_the_blocking_client_and_the_cli_load_no_twisted():
    modules = loaded_after("from streamlog.client import BlockingClient\nimport streamlog.cli\n"
                           "streamlog.cli.build_parser()")
    assert "streamlog.client.blocking" in modules
    assert [m for m in modules if m == "twisted" or m.startswith("twisted.")] == []
    assert server_side(modules) == []

"""The real `twistd -n streamlog-server` process."""

from __future__ import annotations

import signal

from streamlog.testing import LineClient, ServerProcess


def test_server_process_serves_send_and_poll_and_stops_cleanly(tmp_path, daemons):
    server = ServerProcess(tmp_path, ["--storage", "memory"])
    daemons.append(server)
    client = LineClient(server.port)
    ack = client.call("Send", {"topic": "t", "value": {"hello": "world"}})["result"]
    assert ack["offset"] == 0 and ack["durability"] == "memory"
    polled = client.call("Poll", {"topic": "t", "offset": 0})["result"]
    assert polled["messages"][0]["value"] == {"hello": "world"}
    client.close()
    server.signal(signal.SIGTERM)
    # twistd stops the reactor, then re-raises the signal so the exit status tells why.
    assert server.wait(10) == -signal.SIGTERM
    assert "Main loop terminated" in server.log()
    assert "Traceback" not in server.log()

"""SIGTERM while a client pipelines acks=all sends: every appended send is answered."""

from __future__ import annotations

import signal
import socket
import threading

import orjson

from streamlog.testing import LineClient, ServerProcess


def test_sigterm_answers_every_appended_send_and_refuses_the_rest(tmp_path, daemons):
    server = ServerProcess(tmp_path)  # segmented storage, fsync always
    daemons.append(server)
    setup = LineClient(server.port)
    setup.call("CreateTopic", {"topic": "t"})
    setup.close()

    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    total = 20_000

    def write() -> None:
        try:
            for i in range(total):
                sock.sendall(orjson.dumps({"id": i, "method": "Send", "params": {"topic": "t", "value": i}}) + b"\n")
        except OSError:
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    answers: dict[int, dict] = {}
    buffer = b""
    sock.settimeout(20)
    stopped = False
    while True:
        if not stopped and len(answers) >= 2000:
            server.signal(signal.SIGTERM)
            stopped = True
        try:
            data = sock.recv(1 << 20)
        except OSError:
            break
        if not data:
            break
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            answer = orjson.loads(line)
            answers[answer["id"]] = answer
    sock.close()
    writer.join(10)
    assert stopped and server.wait(30) == -signal.SIGTERM

    ok = {i: a["result"]["offset"] for i, a in answers.items() if "result" in a}
    refused = {i for i, a in answers.items() if "error" in a}
    assert all(answers[i]["error"]["code"] == "SHUTTING_DOWN" for i in refused)
    assert all(a["result"]["durability"] == "fsync" for a in answers.values() if "result" in a)

    restarted = ServerProcess(tmp_path, name="restarted")
    daemons.append(restarted)
    client = LineClient(restarted.port)
    end = client.call("ListOffsets", {"topic": "t", "at": "latest"})["result"]["offset"]
    client.close()
    # The log holds exactly the sends answered OK: none appended without an answer.
    assert end == len(ok)
    assert sorted(ok.values()) == list(range(end))

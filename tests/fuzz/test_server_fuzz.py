"""The protocol fuzzer against a real `twistd streamlog-server` process on 127.0.0.1.

Raw bytes over TCP, lines split across writes, pipelined chunks, long lines
that close the connection, connection floods; the same oracle as in memory.
At the end the server is killed (SIGKILL) and restarted on its data: every
record the run stored, answered or acks=none, must still be there.
"""

from __future__ import annotations

from fuzz_support import REACHED, SEED, SERVER_REQUESTS, SERVER_SECONDS, known_issue
from protofuzz.model import OK
from protofuzz.session import Line, Session
from protofuzz.setups import kill_and_restart, server_setup

from streamlog import wire


def test_seeded_fuzz_against_a_real_server_and_nothing_stored_is_lost_on_kill(tmp_path):
    target, limits, config, extra = server_setup(tmp_path)
    try:
        session = Session(target, SEED, limits=limits, config=config, **extra)
        session.setup()
        session.run(SERVER_REQUESTS, SERVER_SECONDS)
        assert session.requests >= min(SERVER_REQUESTS, 300), session.summary()
        if session.requests >= SERVER_REQUESTS:  # not cut short by the time bound on a slow machine
            missing = [name for name in REACHED if not session.counts[name]]
            assert not missing, f"the run no longer reaches {missing}:\n{session.summary()}"
        assert target.server.alive()

        # Crash it, start it again on the same data: the model must still hold.
        session.flush()
        kill_and_restart(target, tmp_path)
        session.full_check()
        session.check_alive()
    finally:
        target.close()
        target.server.stop()


@known_issue("half-close")
def test_a_half_closed_connection_gets_every_answer_it_is_owed(tmp_path):
    target, limits, config, extra = server_setup(tmp_path)
    try:
        session = Session(target, SEED, limits=limits, config=config, known={}, **extra)
        session.setup()
        lines = [
            Line(wire.encode_request(1, "Ping", {})[:-1], OK),
            Line(wire.encode_request(2, "Send", {"topic": "t0", "value": "half"})[:-1], OK),
            Line(wire.encode_request(3, "Poll", {"topic": "t0", "offset": 0})[:-1], OK),
        ]
        session.exchange(lines, half_close=True)
    finally:
        target.close()
        target.server.stop()

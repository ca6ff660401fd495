"""A real server under a resource-exhaustion attack stays bounded and responsive, and recovers.

The attack, all from 127.0.0.1: 40 connections with 1,000 long polls parked on each
(the node's limit of waiting polls nearly reached), and 8 clients that never read,
each with 64 polls that one 1 MiB Send turns into 64 MiB of answers owed.  While it
lasts, the server's memory (from /proc/<pid>/status) stays within a bound derived
from the limits, and a fresh client's Ping is answered within a generous deadline.
Then the attackers are reset in reverse order (what was quadratic), and the server
is promptly back to normal: answering, with its waiting-poll slots free again.
"""

from __future__ import annotations

import socket
import struct
import time

import orjson
from edge_support import MIB, drain_until_closed, memory_kib, park_polls

from streamlog.testing import LineClient, ServerProcess, wait_for

PARKERS, POLLS_EACH = 40, 1000
READERLESS, READERLESS_POLLS = 8, 64
OUTBOUND_LIMIT = 4 * MIB
NODE_POLL_LIMIT = PARKERS * POLLS_EACH + READERLESS * READERLESS_POLLS

#: Generous bounds: the machine is shared, and these catch seconds-long stalls, not jitter.
PING_DEADLINE = 2.0
#: RSS of one parked poll, measured at ~2.1 KiB; the bound allows twice that.
POLL_BYTES = 4 * 1024


def timed_ping(port: int) -> float:
    start = time.monotonic()
    client = LineClient(port, timeout=30)
    try:
        assert client.call("Ping")["result"]["pong"] is True
    finally:
        client.close()
    return time.monotonic() - start


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the server learns of it at once."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_the_server_stays_bounded_and_responsive_under_attack_and_recovers(tmp_path, daemons):
    server = ServerProcess(tmp_path, [
        "--storage", "memory",
        "--max-outbound-bytes", str(OUTBOUND_LIMIT),
        "--max-line-bytes", str(2 * MIB), "--max-message-bytes", str(2 * MIB),
        "--max-connections-per-address", "1000",
        # The attack comes from one address: let it reach the node's quota (what is measured here).
        "--max-waiting-polls-per-address", str(NODE_POLL_LIMIT + 1),
        "--max-waiting-polls", str(NODE_POLL_LIMIT),
    ])
    daemons.append(server)
    admin = LineClient(server.port, timeout=30)
    admin.call("CreateTopic", {"topic": "idle"})
    admin.call("CreateTopic", {"topic": "big"})
    started = time.monotonic()
    base = memory_kib(server.pid, "VmRSS")

    parkers = [park_polls(server.port, POLLS_EACH, topic="idle") for _ in range(PARKERS)]
    readerless = [park_polls(server.port, READERLESS_POLLS, topic="big") for _ in range(READERLESS)]
    parked = memory_kib(server.pid, "VmRSS")
    pings = [timed_ping(server.port)]
    # The node is full of waiting polls: one more that would wait is refused, at once.
    error = admin.call("Poll", {"topic": "idle", "offset": 0, "max_wait_ms": 1000})["error"]
    assert error["code"] == "TOO_MANY_WAITING_POLLS" and error["scope"] == "node"

    # One 1 MiB message wakes the readerless clients' polls: 512 MiB of answers owed.
    assert admin.call("Send", {"topic": "big", "value": "x" * MIB})["result"]["offset"] == 0
    pings.append(timed_ping(server.port))
    for sock in readerless:
        got, closed = drain_until_closed(sock, timeout=20)
        assert closed and got < OUTBOUND_LIMIT + 16 * MIB, (got, closed)
        sock.close()
    pings.append(timed_ping(server.port))
    peak = memory_kib(server.pid, "VmHWM")
    assert max(pings) < PING_DEADLINE, pings

    # The bound: every parked poll, and per readerless client the limit, one more answer
    # and Twisted's 64 KiB buffer, twice (the transport joins its buffer once), plus the
    # stored message and 32 MiB for the interpreter's own churn.
    bound = (NODE_POLL_LIMIT * POLL_BYTES + READERLESS * 2 * (OUTBOUND_LIMIT + MIB + 64 * 1024)
             + 2 * MIB + 32 * MIB)
    assert (peak - base) * 1024 < bound, f"RSS grew {(peak - base) // 1024} MiB, bound {bound // MIB} MiB"

    # Reset the parkers in reverse order of connection (list.remove's worst case once).
    closing = time.monotonic()
    for sock in reversed(parkers):
        reset(sock)
    recovered_ping = timed_ping(server.port)
    assert recovered_ping < PING_DEADLINE, recovered_ping

    def can_wait_again() -> bool:
        answer = admin.call("Poll", {"topic": "idle", "offset": 0, "max_wait_ms": 1})
        return "result" in answer

    wait_for(can_wait_again, 10, "the parked polls' slots to be free again")
    recovered = time.monotonic() - closing
    assert server.alive()
    assert "Traceback" not in server.log()
    after = memory_kib(server.pid, "VmRSS")
    print(orjson.dumps({
        "rss_base_mib": base // 1024, "rss_parked_mib": parked // 1024, "rss_peak_mib": peak // 1024,
        "rss_after_mib": after // 1024, "bound_mib": bound // MIB, "pings_s": [round(p, 4) for p in pings],
        "ping_after_reset_s": round(recovered_ping, 4), "recovered_s": round(recovered, 3),
        "total_s": round(time.monotonic() - started, 2),
    }).decode())
    admin.close()

"""One consumer-group member as a process, for tests/integration/test_group_process.py.

    python group_member.py HOST:PORT GROUP TOPIC OUT

Writes one line "partition offset value" per message it is handed to OUT
(flushed per batch: what a kill -9 leaves there was processed), commits
automatically every 0.2 s, and runs until SIGTERM (then closes: commits and
leaves) or SIGKILL.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor

from streamlog.client import ClusterClient, GroupConsumer


def main(address: str, group: str, topic: str, out_path: str) -> None:
    out = open(out_path, "a", buffering=1)
    client = ClusterClient(address, reactor=reactor, request_timeout=5.0)
    member = GroupConsumer(client, group, [topic], session_timeout_ms=2000, auto_commit_interval=0.2,
                           max_messages=20, max_wait_ms=200)

    def handle(batch: list) -> None:
        out.write("".join(f"{m['partition']} {m['offset']} {m['value']}\n" for m in batch))
        out.flush()

    member.run(handle).addErrback(lambda f: print("member stopped:", f.value, flush=True))
    reactor.addSystemEventTrigger("before", "shutdown", member.close)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:5])

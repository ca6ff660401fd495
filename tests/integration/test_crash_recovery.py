"""SIGKILL the real server while it acknowledges sends; every ack survives every restart."""

from __future__ import annotations

import random
import signal
import socket
import threading
import time

import orjson

from streamlog.testing import LineClient, ServerProcess, wait_for


class PipelinedProducer:
    """Keeps up to C{window} SendBatch requests in flight on one connection; records every ack."""

    def __init__(self, port: int, run: int, window: int = 16, batch: int = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.run = run
        self.window = threading.Semaphore(window)
        self.batch = batch
        self.requests: dict[int, list[dict]] = {}
        self.acked: dict[int, dict] = {}  # offset -> value, from acks alone
        self.stop = threading.Event()
        self.errors: list[object] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._reader.start()
        self._writer.start()

    def _write(self) -> None:
        rid = 0
        try:
            while not self.stop.is_set() and rid < 100_000:
                if not self.window.acquire(timeout=0.1):
                    continue
                rid += 1
                values = [{"run": self.run, "req": rid, "i": i} for i in range(self.batch)]
                self.requests[rid] = values
                line = orjson.dumps({"id": rid, "method": "SendBatch",
                                     "params": {"topic": "crash", "messages": [{"value": v} for v in values]}})
                self.sock.sendall(line + b"\n")
        except OSError:
            pass

    def _read(self) -> None:
        reader = self.sock.makefile("rb")
        try:
            for line in reader:
                answer = orjson.loads(line)
                if "error" in answer:
                    self.errors.append(answer)
                    continue
                placed = answer["result"]["partitions"][0]
                assert answer["result"]["durability"] == "fsync"
                for i, value in enumerate(self.requests[answer["id"]]):
                    self.acked[placed["base_offset"] + i] = value
                self.window.release()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self._writer.join(5)
        self._reader.join(5)


def read_all(port: int) -> list[dict]:
    client = LineClient(port)
    records: list[dict] = []
    offset = 0
    answer = client.call("ListOffsets", {"topic": "crash", "at": "latest"})
    if answer.get("error", {}).get("code") == "UNKNOWN_TOPIC":  # before the first send
        client.close()
        return []
    end = answer["result"]["offset"]
    while offset < end:
        result = client.call("Poll", {"topic": "crash", "offset": offset})["result"]
        records.extend(result["messages"])
        offset = result["next_offset"]
    client.close()
    return records


def test_kill_9_while_producing_loses_no_acknowledged_message(tmp_path, daemons):
    rng = random.Random(20261127)
    all_acked: dict[int, dict] = {}
    for run in range(5):
        server = ServerProcess(tmp_path, ["--fsync", "always", "--segment-bytes", "65536"])
        daemons.append(server)

        # After each restart: every acknowledged message is at its acknowledged offset,
        # and the log's offsets are dense from 0.
        records = read_all(server.port)
        assert [r["offset"] for r in records] == list(range(len(records)))
        by_offset = {r["offset"]: r["value"] for r in records}
        for offset, value in all_acked.items():
            assert by_offset.get(offset) == value, f"run {run}: acked offset {offset} lost or changed"
        start_end = len(records)

        producer = PipelinedProducer(server.port, run)
        # Let some acks arrive, then kill at a random moment with sends in flight.
        wait_for(lambda producer=producer: len(producer.acked) >= 50, 30, "first acks")
        time.sleep(rng.uniform(0.0, 0.3))
        server.signal(signal.SIGKILL)
        server.wait(10)
        producer.close()
        assert not producer.errors, producer.errors
        assert producer.acked, "the producer got acks before the kill"
        assert min(producer.acked) >= start_end  # offsets continue after the recovered end
        all_acked.update(producer.acked)

    server = ServerProcess(tmp_path, ["--fsync", "always"])
    daemons.append(server)
    records = read_all(server.port)
    by_offset = {r["offset"]: r["value"] for r in records}
    assert [r["offset"] for r in records] == list(range(len(records)))
    assert all(by_offset.get(o) == v for o, v in all_acked.items())
    # And the log continues densely after the last recovery.
    client = LineClient(server.port)
    ack = client.call("Send", {"topic": "crash", "value": "after"})["result"]
    assert ack["offset"] == len(records)
    client.close()

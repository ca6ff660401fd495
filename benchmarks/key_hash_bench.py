"""Key hashing cost: murmur2 word by word vs the lane version, and a keyed Send's server time.

Not a test: run it by hand (the figures are in the commit and the report).

    .venv/bin/python benchmarks/key_hash_bench.py

Prints, per key size, the best of several runs of: the word-by-word murmur2
(Kafka's loop transcribed, as streamlog had it), the current
L{streamlog.partitioner.murmur2}, and the time the broker spends answering one
Send (C{BrokerProtocol.dataReceived} of the request line, memory storage) with
the bytes as its key and with the same bytes as its value.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from streamlog import wire  # noqa: E402
from streamlog.partitioner import murmur2  # noqa: E402
from streamlog.testing import BrokerHarness  # noqa: E402


def word_by_word(data: bytes) -> int:
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    end = length & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def best(f, arg, runs: int) -> float:
    """Milliseconds of the fastest of C{runs} calls of C{f(arg)}."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f(arg)
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    limits = wire.Limits(max_line_bytes=2 * 1024 * 1024, max_message_bytes=2_000_000, max_key_bytes=1_000_000)
    harness = BrokerHarness(limits=limits)
    conn = harness.connect()
    print(f"{'bytes':>8} {'word-by-word':>13} {'murmur2 now':>12} {'Send, as key':>13} {'Send, as value':>15}")
    for size in (16, 256, 4096, 16384, 65536, 900_000):
        text = "k" * size
        data = text.encode()
        assert murmur2(data) == word_by_word(data)
        runs = 5 if size > 100_000 else 30
        keyed = wire.encode_request(1, "Send", {"topic": "bench", "key": text, "value": 1, "acks": "none"})
        valued = wire.encode_request(1, "Send", {"topic": "bench", "value": text, "acks": "none"})
        receive = conn.protocol.dataReceived
        print(f"{size:>8} {best(word_by_word, data, runs):>10.3f} ms {best(murmur2, data, runs):>9.3f} ms"
              f" {best(receive, keyed, runs):>10.3f} ms {best(receive, valued, runs):>12.3f} ms")
    harness.stop()


if __name__ == "__main__":
    main()

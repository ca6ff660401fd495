"""Counters of the client edge: requests by method, errors by code, latency, traffic per topic.

The protocol (L{streamlog.protocol}) and the broker bump these as they work;
nothing here knows Prometheus.  Label values stay bounded: a method not in
the handler table is counted as C{unknown}, a line that is not a request as
C{invalid}, and only known C{acks} values get a latency histogram.
"""

from __future__ import annotations

import collections
from typing import Any

from streamlog.metrics.histogram import LATENCY_BUCKETS, Histogram

#: The method label of a line that could not be decoded as a request.
INVALID = "invalid"
#: The method label of a request for a method the node does not have.
UNKNOWN = "unknown"
ACKS = ("all", "leader", "none")
SENDS = ("Send", "SendBatch")
#: The indexes of a topic's counts in L{TopicTraffic.by_topic}.
MESSAGES_IN, BYTES_IN, MESSAGES_OUT, BYTES_OUT = range(4)


class RequestStats:
    """Requests answered, by method; error answers, by method and code; Send and Poll latency."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        #: (method, acks) -> latency of Send and SendBatch.
        self.send_latency = {(method, acks): Histogram(LATENCY_BUCKETS) for method in SENDS for acks in ACKS}
        self.poll_latency = Histogram(LATENCY_BUCKETS)

    def latency_of(self, method: str, params: Any) -> Histogram | None:
        """The histogram a request's latency goes to, or None (not a Send or Poll, odd acks)."""
        if method == "Poll":
            return self.poll_latency
        if method in SENDS:
            acks = params.get("acks", "all") if isinstance(params, dict) else None
            return self.send_latency.get((method, acks)) if isinstance(acks, str) else None
        return None


class TopicTraffic:
    """Messages and bytes in (appended by Send/SendBatch at this node) and out (served by Poll), per topic.

    Bytes are the stored JSON records, as appended and as served.
    """

    __slots__ = ("by_topic",)

    def __init__(self) -> None:
        #: topic -> [messages in, bytes in, messages out, bytes out]
        self.by_topic: dict[str, list[int]] = {}

    def add(self, topic: str) -> list[int]:
        """The counts of C{topic}, made at its first traffic.

        The broker bumps them in place (C{counts[0] += messages}; indexes
        L{MESSAGES_IN}, ...) rather than through a method per request.
        """
        counts = self.by_topic.get(topic)
        if counts is None:
            counts = self.by_topic[topic] = [0, 0, 0, 0]
        return counts

    def received(self, topic: str, messages: int, size: int) -> None:
        counts = self.add(topic)
        counts[MESSAGES_IN] += messages
        counts[BYTES_IN] += size

    def served(self, topic: str, messages: int, size: int) -> None:
        counts = self.add(topic)
        counts[MESSAGES_OUT] += messages
        counts[BYTES_OUT] += size

    def forget_except(self, topics: Any) -> None:
        """Drop the counts of topics not in C{topics} (deleted ones), so their series end."""
        for name in [t for t in self.by_topic if t not in topics]:
            del self.by_topic[name]

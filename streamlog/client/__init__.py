"""The streamlog client library (docs/clients.md).

- L{ClusterClient}: Twisted; takes a bootstrap list, caches the cluster's
  metadata, keeps one connection per node and sends each request to the node
  that leads its partition, retrying where leadership moved.
- L{Producer}: chooses each message's partition (murmur2 for keys), batches
  per partition, retries within a delivery timeout, keeps order per partition.
- L{Consumer}: reads one partition in order from its leader, with long poll
  and prefetch; L{TopicConsumer} reads several (or all) partitions of a topic.
- L{GroupConsumer}: a member of a consumer group: reads what the group's
  coordinator assigns it, commits what the application processed.
- L{BlockingClient}: a plain-socket client for scripts, tests and the CLI.
- L{StreamlogClient}: one node's connection (pipelined, timeouts, reconnects).

All of them raise the typed errors of L{streamlog.errors}.

The names are imported on first use: C{from streamlog.client import
BlockingClient} loads no Twisted (the CLI starts faster), and nothing here
imports the broker, the storage or the server's protocol.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: name -> the module that defines it.
_WHERE = {
    "BlockingClient": "streamlog.client.blocking",
    "ClientProtocol": "streamlog.client.connection",
    "StreamlogClient": "streamlog.client.connection",
    "ClusterClient": "streamlog.client.cluster",
    "Consumer": "streamlog.client.consumer",
    "GroupConsumer": "streamlog.client.group",
    "TopicConsumer": "streamlog.client.consumer",
    "Producer": "streamlog.client.producer",
}

__all__ = ["BlockingClient", "ClientProtocol", "ClusterClient", "Consumer", "GroupConsumer", "Producer",
           "StreamlogClient", "TopicConsumer"]

if TYPE_CHECKING:
    from streamlog.client.blocking import BlockingClient
    from streamlog.client.cluster import ClusterClient
    from streamlog.client.connection import ClientProtocol, StreamlogClient
    from streamlog.client.consumer import Consumer, TopicConsumer
    from streamlog.client.group import GroupConsumer
    from streamlog.client.producer import Producer


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'streamlog.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))

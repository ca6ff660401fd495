"""The streamlog client library (docs/clients.md).

- L{StreamlogClient}: Twisted, pipelined, with timeouts and reconnects.
- L{Producer}: batches many sends into few SendBatch requests.
- L{Consumer}: reads one partition in order, with long poll and prefetch.
- L{BlockingClient}: a plain-socket client for scripts and tests.

All of them raise the typed errors of L{streamlog.errors}.
"""

from streamlog.client.blocking import BlockingClient
from streamlog.client.connection import ClientProtocol, StreamlogClient
from streamlog.client.consumer import Consumer
from streamlog.client.producer import Producer

__all__ = ["BlockingClient", "ClientProtocol", "Consumer", "Producer", "StreamlogClient"]

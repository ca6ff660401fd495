"""twistd dropin: the three streamlog daemons.

Kept lazy (ServiceMaker imports the tap module only when it is used), so
C{twistd --help} imports nothing heavy.
"""

from twisted.application.service import ServiceMaker

streamlog_server = ServiceMaker(
    "streamlog server", "streamlog.tap.server", "Run a streamlog broker.", "streamlog-server"
)
streamlog_producer = ServiceMaker(
    "streamlog producer", "streamlog.tap.producer",
    "Send messages to a streamlog topic periodically.", "streamlog-producer",
)
streamlog_consumer = ServiceMaker(
    "streamlog consumer", "streamlog.tap.consumer",
    "Poll a streamlog topic periodically and print each message as a JSON line.", "streamlog-consumer",
)

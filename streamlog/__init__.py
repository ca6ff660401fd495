"""streamlog: a distributed event streaming log in Python on Twisted.

Producers send JSON messages to a broker over TCP (JSON-lines RPC); the broker
assigns each an offset in an append-only, partitioned log; consumers poll by
offset.  See README.md and docs/ for the whole story.
"""

__version__ = "0.1.0"

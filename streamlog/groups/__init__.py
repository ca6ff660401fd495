"""Consumer groups: the coordinator's state machine, its assignors and the committed offsets.

Everything in this package is sans-io: plain objects, time passed in as an
argument (seconds, a float), no reactor, no storage.  The broker's
L{streamlog.broker.groups} drives them from the RPCs and from the internal
offsets topic.  docs/groups.md describes the member-facing protocol.
"""

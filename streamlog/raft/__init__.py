"""Raft consensus for streamlog.

A sans-io core (`core.RaftNode`) that turns inputs (messages, ticks, proposals) into
effects (sends, fsyncs, commits), the `log.RaftLog` interface it reads and writes, the wire
messages (`messages`), a seeded deterministic simulator that checks safety after every step
(`sim`), the peer transport (one connection per node pair, stored frames as raw bodies:
`transport`), and a Twisted driver that runs many groups over it (`driver`). See docs/raft.md.
"""

"""The idempotent producer: the pure cores of the partition's side (issue 10).

Plain objects, no I/O, no reactor, no clock reads (time is passed in):

* L{streamlog.idempotence.table.ProducerStateTable}: a partition's dedupe
  state, kept by every replica and rebuilt from the batch headers of its log
  (or from a producer-state snapshot plus the log after it).
* L{streamlog.idempotence.registry}: who a named producer is (InitProducerId).

L{streamlog.idempotence.rules} holds what both sides share (sequence
arithmetic, the in-flight window, the outcomes and their wire codes), so that
C{import streamlog.client} can use it without loading the server side; the
client's numbering itself is in L{streamlog.client.producer}.  The rules,
bounds and their defaults are written down in docs/storage.md, "Idempotent
producers".
"""

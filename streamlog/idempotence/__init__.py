"""The idempotent producer: the pure cores of both sides (issue 10).

Two plain objects, no I/O, no reactor, no clock reads (time is passed in):

* L{streamlog.idempotence.table.ProducerStateTable}: a partition's dedupe
  state, kept by every replica and rebuilt from the batch headers of its log.
* L{streamlog.idempotence.sequencer.Sequencer}: the client's numbering of
  batches per partition, and what to do with each answer.

L{streamlog.idempotence.rules} holds what both sides share (sequence
arithmetic, the outcomes and their wire codes), so that C{import
streamlog.client} can use the sequencer without loading the server side.
The rules, bounds and their defaults are written down in docs/storage.md,
"Idempotent producers".
"""

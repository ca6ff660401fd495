"""The chaos test's pure parts: the history of a run and the checker that judges it.

A run (real processes, injected faults) records what every producer and consumer asked
and what it was answered, one JSON line per operation (L{streamlog.chaos.history}); the
checker (L{streamlog.chaos.checker}) reads that history alone and reports the anomalies of
the Jepsen queue workload, adapted to a partitioned log with offsets.  Neither imports
Twisted, the broker or the client: a history recorded anywhere can be checked anywhere.
"""

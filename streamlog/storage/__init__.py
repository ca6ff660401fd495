"""Partition logs: the in-memory reference log and the durable segmented log.

Both implement L{streamlog.storage.base.PartitionLog}; the broker talks only to
that interface and to L{streamlog.storage.base.Storage}, which owns the logs of
all topics.
"""

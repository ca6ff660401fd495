"""Partition logs (storage format 2): the durable segmented log and the memory log.

Both are a partition's Raft log and its record log at once
(L{streamlog.storage.base.ReplicatedLog}); today's single-node broker sees
them through L{streamlog.storage.local.LocalLog}
(L{streamlog.storage.base.PartitionLog}) and L{streamlog.storage.base.Storage},
which owns the logs of all topics.  docs/storage.md describes the files.
"""

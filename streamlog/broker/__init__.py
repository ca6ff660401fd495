"""The broker: topics, partitions and the RPC handlers, above the storage contract."""

"""The cluster's brain, as pure functions: metadata, placement, reconciliation.

`metadata` is the state machine the metadata Raft group (`"__meta"`) replicates: the nodes
and their incarnations, the topics and where their partitions live, the producer id counter.
`placement` decides where a new topic's replicas go. `reconcile` is the planner every node
runs periodically: it compares the metadata with the Raft groups this node holds and returns
the actions (create a replica, add a learner, promote it, remove a dead member, hand
leadership to the preferred replica) that move the cluster towards what the metadata says.

Nothing here does I/O, reads a clock or draws random numbers: time comes in as an argument,
so the node's wiring stays thin and a deterministic simulator can drive it. See
docs/cluster.md.
"""

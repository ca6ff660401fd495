"""The whole-cluster deterministic simulator (docs/cluster.md, "The cluster simulator").

Real nodes -- the broker's handlers and client protocol, the partition
replicas, the metadata group and planner, C{ClusterNode}, the Raft driver and
peer transport -- run in one process on one virtual clock, over a simulated
network and simulated disks, with seeded faults; a checker judges every run.

- L{streamlog.cluster.sim.clock}: a node's view of the shared clock (kill, pause);
- L{streamlog.cluster.sim.network}: in-memory TCP links (latency, partitions, resets);
- L{streamlog.cluster.sim.disk}: logs and votes that survive a crash only once fsynced;
- L{streamlog.cluster.sim.clients}: producers and consumers over the client protocol;
- L{streamlog.cluster.sim.checker}: the replica-level invariants (the ledger);
- L{streamlog.cluster.sim.world}: one seed's run (L{run_seed});
- C{python -m streamlog.cluster.sim}: the CLI.
"""

from streamlog.cluster.sim.world import SimConfig, SimResult, run_seed

__all__ = ["SimConfig", "SimResult", "run_seed"]

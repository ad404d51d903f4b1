"""Where reads and cached data come from: primary/replica routing (writer by default,
replicas for reads declared replica-safe), the replica router and health, the two-level
cache, and the process's Redis clients."""

"""`make bench`: throughput, latency and contention of Mercato against their baselines."""

"""What operators see: structured logs, Prometheus metrics, traces, and the dependency
checks behind the readiness probe."""

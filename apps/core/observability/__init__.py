"""What operators see: structured logs, Prometheus metrics, traces, and the liveness and
readiness endpoints with their dependency checks."""

"""Payment provider metrics (prometheus_client, default registry; the edge issue serves
them at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

from apps.core.resilience import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreakerListener

provider_calls = Counter(
    "mercato_payment_provider_calls_total",
    "Logical calls to the payment provider (after retries), by outcome.",
    ["provider", "operation", "outcome"],
)
provider_call_seconds = Histogram(
    "mercato_payment_provider_call_seconds",
    "Duration of a logical provider call, retries included.",
    ["provider", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
provider_retries = Counter(
    "mercato_payment_provider_retries_total",
    "Retries of a provider call after a transient error.",
    ["provider", "operation"],
)
breaker_state = Gauge(
    "mercato_payment_provider_breaker_state",
    "Circuit breaker state as this process last saw it: 0 closed, 1 half-open, 2 open.",
    ["provider"],
)
BREAKER_STATE_VALUES = {STATE_CLOSED: 0, STATE_HALF_OPEN: 1, STATE_OPEN: 2}


class BreakerStateMetric(CircuitBreakerListener):
    def state_change(self, cb, old_state, new_state) -> None:
        breaker_state.labels(provider=cb.name.removeprefix("payments.")).set(
            BREAKER_STATE_VALUES[new_state.name]
        )

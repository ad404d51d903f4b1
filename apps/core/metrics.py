"""Prometheus metrics of the shared kernel, and the /metrics exposition.

Request, latency, status, database and cache metrics come from django-prometheus; the
contexts define their business metrics beside their code (apps/orders/metrics.py,
apps/payments/metrics.py) with prometheus_client. Some values are read at scrape time
instead of counted: the outbox backlog, each event consumer's lag and the replica lag
(a collector).

Multiprocess: with PROMETHEUS_MULTIPROC_DIR set (gunicorn with several workers, a Celery
prefork pool), each process writes its samples to files there and a scrape aggregates
them (prometheus_client's multiprocess mode). The directory is wiped when gunicorn or
the worker starts (config/gunicorn.py, config/celery.py) and dead processes are marked.
"""

import ipaddress
import os
import secrets

import structlog
from django.conf import settings
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = structlog.get_logger(__name__)

ratelimited_requests = Counter(
    "mercato_ratelimited_requests_total",
    "Requests refused with 429 by the rate limiter, by scope.",
    ["scope"],
)
ratelimit_backend_errors = Counter(
    "mercato_ratelimit_backend_errors_total",
    "Rate limit checks that could not reach Redis (failed open, or the auth scope's "
    "per-process fallback), by scope.",
    ["scope"],
)
webhook_deliveries = Counter(
    "mercato_webhook_deliveries_total",
    "Webhook delivery outcomes: every attempt counts as succeeded or failed_attempt; "
    "gave_up counts a delivery whose last attempt failed and that will not be retried "
    "(its retry window is over, or that failure disabled its subscription).",
    ["outcome"],
)
webhook_delivery_seconds = Histogram(
    "mercato_webhook_delivery_seconds",
    "Duration of one webhook delivery attempt (POST until the response status, or the "
    "error), whatever its outcome.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
saga_duration = Histogram(
    "mercato_saga_duration_seconds",
    "From start to a terminal state (succeeded or compensated), by saga type and state.",
    ["saga_type", "state"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
saga_step_failures = Counter(
    "mercato_saga_step_failures_total",
    "Saga steps that failed: retried (step_retry, compensation_retry) or compensated "
    "(compensating), by saga type, step and kind.",
    ["saga_type", "step", "kind"],
)

event_consumer_events = Counter(
    "mercato_event_consumer_events_total",
    "Events delivered to a consumer, by consumer and outcome: processed, duplicate "
    "(handled before, skipped through the inbox), failed (to be retried), gave_up.",
    ["consumer", "outcome"],
)


class PlatformStateCollector(Collector):
    """Outbox backlog, consumer lag and replica lag, measured when Prometheus scrapes."""

    def collect(self):
        from apps.core.selectors import consumer_lag, outbox_backlog
        from config.db_router import replica_health

        pending, oldest_age = outbox_backlog()
        yield GaugeMetricFamily(
            "mercato_outbox_pending_messages", "Outbox messages not yet relayed.", value=pending
        )
        yield GaugeMetricFamily(
            "mercato_outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox message not yet relayed (0 when none).",
            value=oldest_age,
        )
        lag_by_consumer = GaugeMetricFamily(
            "mercato_event_consumer_lag_seconds",
            "Age of the oldest relayed event a consumer has not handled yet (0 when none).",
            labels=["consumer"],
        )
        for consumer, seconds in sorted(consumer_lag().items()):
            lag_by_consumer.add_metric([consumer], seconds)
        yield lag_by_consumer
        lag = GaugeMetricFamily(
            "mercato_replica_lag_seconds",
            "Replication lag of each read replica, as this process last measured it.",
            labels=["alias"],
        )
        up = GaugeMetricFamily(
            "mercato_replica_up",
            "1 when the replica is used for reads (reachable and within the lag limit).",
            labels=["alias"],
        )
        for alias in settings.DATABASE_REPLICAS:
            try:
                healthy = replica_health.is_healthy(alias)  # re-measured when stale
            except Exception:  # a scrape must not fail because one measurement did
                logger.warning("replica_lag_measure_failed", alias=alias, exc_info=True)
                healthy = False
            up.add_metric([alias], 1.0 if healthy else 0.0)
            seconds = replica_health.lag_seconds.get(alias)
            if seconds is not None:
                lag.add_metric([alias], seconds)
        yield lag
        yield up


_platform_state = PlatformStateCollector()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition_registry() -> CollectorRegistry:
    """What a scrape of this process shows: every process's samples in multiprocess mode,
    this process's own otherwise."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def render(*, with_platform_state: bool) -> bytes:
    output = generate_latest(exposition_registry())
    if with_platform_state:
        state = CollectorRegistry(auto_describe=False)
        state.register(_platform_state)
        output += generate_latest(state)
    return output


def _client_allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if offered and secrets.compare_digest(offered.encode(), token.encode()):
            return True
    networks = settings.METRICS_ALLOWED_NETWORKS
    if not networks:
        return not token  # neither configured: open (development, tests)
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network) for network in networks)


def metrics_view(request):
    """Prometheus text exposition; restricted by network or bearer token when configured."""
    if not _client_allowed(request):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(render(with_platform_state=True), content_type=CONTENT_TYPE_LATEST)


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104
    """Serve a Celery worker's metrics (all pool processes) on `port`."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr, registry=exposition_registry())

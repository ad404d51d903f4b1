"""Prometheus metrics of the shared kernel, and the /metrics exposition.

Request, latency, status, database and cache metrics come from django-prometheus (its
metric families; the request ones are counted by `request_metrics`, below); the
contexts define their business metrics beside their code (apps/orders/metrics.py,
apps/payments/metrics.py) with prometheus_client. Some values are read at scrape time
instead of counted: the outbox backlog, each event consumer's lag and the replica lag
(a collector).

Multiprocess: with PROMETHEUS_MULTIPROC_DIR set (gunicorn with several workers, a Celery
prefork pool), each process writes its samples to files there and a scrape aggregates
them (prometheus_client's multiprocess mode). The directory is wiped when gunicorn or
the worker starts (config/gunicorn.py, config/celery.py) and dead processes are marked.
"""

import atexit
import ipaddress
import os
import secrets
import threading
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

import structlog
from django.conf import settings
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
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

    def collect(self) -> Iterator[Metric]:
        from apps.core.data.replicas import replica_health
        from apps.core.selectors import consumer_lag, outbox_backlog

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
            lag_seconds = replica_health.lag_seconds.get(alias)
            if lag_seconds is not None:
                lag.add_metric([alias], lag_seconds)
        yield lag
        yield up


_platform_state = PlatformStateCollector()


_KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH")
)


_charsets: dict[str, str] = {}


def _charset(response: Any) -> str | None:
    """response.charset (django-prometheus's label), which parses the Content-Type and
    reads DEFAULT_CHARSET each time: remembered per Content-Type."""
    if not isinstance(response, HttpResponseBase):
        return getattr(response, "charset", None)
    if response._charset is not None:  # type: ignore[attr-defined]  # given explicitly
        return str(response._charset)  # type: ignore[attr-defined]
    stored = response.headers._store.get("content-type")  # (name, value), as stored
    content_type = stored[1] if stored is not None else ""
    charset = _charsets.get(content_type)
    if charset is None:
        if len(_charsets) > 256:
            _charsets.clear()
        charset = _charsets[content_type] = response.charset
    return charset


def _forget_charsets(setting: str, **kwargs: object) -> None:
    if setting == "DEFAULT_CHARSET":
        _charsets.clear()


setting_changed.connect(_forget_charsets)


class RequestMetrics:
    """django-prometheus's request metrics (the same families, names and labels as its
    middleware), counted in process memory and added to the families every
    METRICS_FLUSH_SECONDS by a thread, and before this process renders /metrics.

    Its middleware writes ~16 samples per request, each a write to the multiprocess
    files under gunicorn; here a request is one entry per label set, found with one dict
    look-up, and a flush writes each label set once. A scrape may see another process's
    requests up to METRICS_FLUSH_SECONDS late; a process killed with SIGKILL loses at
    most that much of its counts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        # (method as sent, secure, view, status, charset, streaming, ajax) -> _Pending
        self._pending: dict[tuple[Any, ...], _Pending] = {}
        self._counts: dict[tuple[Any, ...], int] = {}  # (family name, labels): rarer counters
        self._families: Any = None
        # Upper bounds of the four histograms a request observes: the latency including
        # the middleware, by view, and the request's and the response's body sizes.
        self._bounds: tuple[list[float], ...] = ()

    def families(self) -> Any:  # django-prometheus's Metrics (untyped)
        if self._families is None:
            from django_prometheus.middleware import Metrics

            families = Metrics.get_instance()
            self._bounds = tuple(
                list(histogram._upper_bounds)
                for histogram in (
                    families.requests_latency_before,
                    families.requests_latency_by_view_method,
                    families.requests_body_bytes,
                    families.responses_body_bytes,
                )
            )
            self._families = families
        return self._families

    def record(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        *,
        total: float,
        view_seconds: float,
        secure: bool | None = None,
    ) -> None:
        """One request answered: `total` seconds since it arrived, `view_seconds` since
        the middleware handed it on; `secure`: request.is_secure(), when known."""
        if self._families is None:
            self.families()
        if secure is None:
            secure = request.is_secure()
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or "<unnamed view>") if match is not None else None
        streaming = response.streaming
        meta = request.META
        key = (
            request.method,
            secure,
            view,
            response.status_code,
            _charset(response),
            streaming,
            meta.get("HTTP_X_REQUESTED_WITH") == "XMLHttpRequest",
        )
        request_bytes = int(meta.get("CONTENT_LENGTH") or 0)
        before_bounds, view_bounds, request_bounds, response_bounds = self._bounds
        # Each value's bucket, as Histogram.observe finds it; without a body, the first
        # (no size bound is negative).
        total_bucket = bisect_left(before_bounds, total)
        view_bucket = bisect_left(view_bounds, view_seconds)
        request_bucket = bisect_left(request_bounds, request_bytes) if request_bytes else 0
        if not streaming:
            response_bytes = len(getattr(response, "content", b""))
            response_bucket = bisect_left(response_bounds, response_bytes)
        with self._lock:
            entry = self._pending.get(key)
            if entry is None:
                if self._flusher is None:
                    self._start_flusher()
                entry = self._pending[key] = _Pending(self._bounds)
            entry.count += 1
            entry.total_sum += total
            entry.total_buckets[total_bucket] += 1
            entry.view_sum += view_seconds
            entry.view_buckets[view_bucket] += 1
            entry.request_bytes_sum += request_bytes
            entry.request_bytes_buckets[request_bucket] += 1
            if not streaming:
                entry.response_bytes_sum += response_bytes
                entry.response_bytes_buckets[response_bucket] += 1

    def count(self, family: str, *labels: str) -> None:
        """One more on a django-prometheus counter (exceptions, template responses)."""
        with self._lock:
            key = (family, labels)
            self._counts[key] = self._counts.get(key, 0) + 1

    def forked(self) -> None:
        """In a forked child: nothing counted yet, and no flusher thread (threads do not
        survive a fork); the first request starts one."""
        RequestMetrics.__init__(self)

    def _start_flusher(self) -> None:
        self._flusher = threading.Thread(target=self._flush_forever, daemon=True)
        self._flusher.start()

    def _flush_forever(self) -> None:
        from django.conf import settings

        while True:
            threading.Event().wait(settings.METRICS_FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # the next round tries again; requests never notice
                logger.warning("request_metrics_flush_failed", exc_info=True)

    def flush(self) -> None:
        """Add what this process counted since the last flush to the metric families."""
        with self._lock:
            pending, self._pending = self._pending, {}
            counts, self._counts = self._counts, {}
        f = self.families()
        if not (pending or counts):
            return
        by: dict[tuple[Any, ...], int] = {}

        def add(family: Any, labels: tuple[Any, ...], n: int) -> None:
            by[family, labels] = by.get((family, labels), 0) + n

        total = 0
        before, view_bounds, request_bounds, response_bounds = self._bounds
        latency = _Histogram(len(before))
        request_bytes = _Histogram(len(request_bounds))
        response_bytes = _Histogram(len(response_bounds))
        latency_by_view: dict[tuple[str, str], _Histogram] = {}
        for (sent, secure, view, status, charset, streaming, ajax), entry in pending.items():
            n = entry.count
            total += n
            method = sent if sent in _KNOWN_METHODS else "<invalid method>"
            transport = "https" if secure else "http"
            status = str(status)
            add(f.requests_by_method, (method,), n)
            add(f.requests_by_transport, (transport,), n)
            add(f.responses_by_status, (status,), n)
            add(f.responses_by_status_view_method, (status, view or "<unnamed view>", method), n)
            if view is not None:
                add(f.requests_by_view_transport_method, (view, transport, method), n)
            if charset is not None:
                add(f.responses_by_charset, (str(charset),), n)
            if streaming:
                add(f.responses_streaming, (), n)
            if ajax:
                add(f.requests_ajax, (), n)
            latency.add(entry.total_sum, entry.total_buckets)
            request_bytes.add(entry.request_bytes_sum, entry.request_bytes_buckets)
            if not streaming:
                response_bytes.add(entry.response_bytes_sum, entry.response_bytes_buckets)
            labels = (view or "<unnamed view>", sent)
            by_view = latency_by_view.get(labels)
            if by_view is None:
                by_view = latency_by_view[labels] = _Histogram(len(view_bounds))
            by_view.add(entry.view_sum, entry.view_buckets)
        f.requests_total.inc(total)
        f.responses_total.inc(total)
        for (family, labels), n in by.items():
            (family.labels(*labels) if labels else family).inc(n)
        for (name, labels), n in counts.items():
            family = getattr(f, name)
            (family.labels(*labels) if labels else family).inc(n)
        latency.add_to(f.requests_latency_before)
        request_bytes.add_to(f.requests_body_bytes)
        response_bytes.add_to(f.responses_body_bytes)
        for labels, observed in latency_by_view.items():
            observed.add_to(f.requests_latency_by_view_method.labels(*labels))


class _Pending:
    """What the requests of one label set observed since the last flush: their count, and
    per histogram the sum of the values and the count per bucket (not cumulative)."""

    __slots__ = (
        "count",
        "request_bytes_buckets",
        "request_bytes_sum",
        "response_bytes_buckets",
        "response_bytes_sum",
        "total_buckets",
        "total_sum",
        "view_buckets",
        "view_sum",
    )

    def __init__(self, bounds: tuple[list[float], ...]) -> None:
        before, view, request_bytes, response_bytes = bounds
        self.count = 0
        self.total_sum = 0.0
        self.total_buckets = [0] * len(before)
        self.view_sum = 0.0
        self.view_buckets = [0] * len(view)
        self.request_bytes_sum = 0
        self.request_bytes_buckets = [0] * len(request_bytes)
        self.response_bytes_sum = 0
        self.response_bytes_buckets = [0] * len(response_bytes)


class _Histogram:
    """Observations summed over label sets, added to a prometheus_client histogram once."""

    __slots__ = ("buckets", "observed", "sum")

    def __init__(self, buckets: int) -> None:
        self.observed = False
        self.sum: float = 0
        self.buckets = [0] * buckets

    def add(self, total: float, buckets: list[int]) -> None:
        self.observed = True
        self.sum += total
        for index, n in enumerate(buckets):
            self.buckets[index] += n

    def add_to(self, histogram: Any) -> None:
        # What observe() does per value, once per bucket (prometheus_client's own
        # per-bucket values; the cumulative counts are computed when it is collected).
        if not self.observed:
            return
        histogram._sum.inc(self.sum)
        for index, n in enumerate(self.buckets):
            if n:
                histogram._buckets[index].inc(n)


request_metrics = RequestMetrics()
atexit.register(request_metrics.flush)
os.register_at_fork(after_in_child=request_metrics.forked)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition_registry() -> CollectorRegistry:
    """What a scrape of this process shows: every process's samples in multiprocess mode,
    this process's own otherwise."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def render_metrics(*, with_platform_state: bool) -> bytes:
    request_metrics.flush()
    output = generate_latest(exposition_registry())
    if with_platform_state:
        state = CollectorRegistry(auto_describe=False)
        state.register(_platform_state)
        output += generate_latest(state)
    return output


def _client_allowed(request: HttpRequest) -> bool:
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


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition; restricted by network or bearer token when configured."""
    if not _client_allowed(request):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(render_metrics(with_platform_state=True), content_type=CONTENT_TYPE_LATEST)


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104
    """Serve a Celery worker's metrics (all pool processes) on `port`."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr, registry=exposition_registry())

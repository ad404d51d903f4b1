"""Webhook delivery: the fan-out consumer, one signed attempt, retries, auto-disable.

A delivery row holds its state (`next_attempt_at`), so tasks are only a prompt: an
attempt first claims the row (due, pending, under a row lock) and pushes
`next_attempt_at` past the longest an attempt may take, so a duplicate task finds it
not due; the POST runs outside any transaction; the outcome is recorded under the
subscription's lock, then the delivery's (the order every writer takes).
"""

import functools
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from celery import shared_task
from django.conf import settings
from django.db import router, transaction
from django.utils import timezone

from apps.core.messaging.event_registry import published_event_types, schema_version_of
from apps.core.messaging.inbox import EventEnvelope, event_handler
from apps.core.messaging.webhooks.selectors import webhook_subscribed_event_types
from apps.core.messaging.webhooks.signing import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)
from apps.core.models import WebhookDelivery, WebhookSubscription
from apps.core.observability.metrics import webhook_deliveries, webhook_delivery_seconds
from apps.core.resilience import backoff_delay

logger = structlog.get_logger(__name__)

FAN_OUT_CONSUMER = "webhooks.fan_out"
EVENTS_QUEUE = "events"
USER_AGENT = "Mercato-Webhooks/1"
LAST_ERROR_MAX_CHARS = 2000
# Tolerated clock difference between the worker that scheduled a retry and the one
# that runs it: a task this early still counts as due.
CLOCK_SKEW = timedelta(seconds=1)
# The sweep handles this many overdue deliveries per run; the next run goes on.
SWEEP_BATCH = 500


# --- Which event types are subscribed (asked at publish and relay time) ----------


class _SubscribedTypes:
    types: frozenset[str] = frozenset()
    loaded_at: float | None = None


def subscribed_event_types() -> frozenset[str]:
    """This process's view of the subscribed types, at most
    WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS old."""
    now = time.monotonic()
    loaded_at = _SubscribedTypes.loaded_at
    if loaded_at is None or now - loaded_at >= settings.WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS:
        _SubscribedTypes.types = frozenset(webhook_subscribed_event_types())
        _SubscribedTypes.loaded_at = now
    return _SubscribedTypes.types


def subscribed_event_types_forget() -> None:
    """Reload on the next ask (this process; the others within the refresh period)."""
    _SubscribedTypes.loaded_at = None


def wanted_by_a_subscription(event_type: str) -> bool:
    return event_type in subscribed_event_types()


def register_fan_out() -> None:
    """Make `webhooks.fan_out` a consumer of every published type (idempotent; a module
    that registers a type after start-up calls it again)."""
    for event_type in published_event_types():
        event_handler(event_type, consumer=FAN_OUT_CONSUMER, when=wanted_by_a_subscription)(fan_out)


# --- Fan-out: one delivery row per matching subscription --------------------------


def delivery_body(event: EventEnvelope) -> str:
    """The JSON a subscriber receives; stored once, sent byte for byte on every attempt."""
    return json.dumps(
        {
            "id": str(event.id),
            "type": event.type,
            "schema_version": event.headers.get("schema_version") or schema_version_of(event.type),
            "created_at": event.created_at.isoformat() if event.created_at else None,
            "aggregate": {"type": event.aggregate_type, "id": event.aggregate_id},
            "payload": event.payload,
        },
        separators=(",", ":"),
    )


def fan_out(event: EventEnvelope) -> None:
    """Record a delivery per active subscription to this type (in the inbox transaction)
    and queue them once it commits."""
    alias = router.db_for_write(WebhookDelivery)
    subscription_ids = [
        subscription.pk
        for subscription in WebhookSubscription.objects.using(alias)
        .filter(is_active=True)
        .only("pk", "event_types")
        if event.type in subscription.event_types
    ]
    if not subscription_ids:
        return
    now = timezone.now()
    body = delivery_body(event)
    retry_until = now + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS)
    WebhookDelivery.objects.using(alias).bulk_create(
        [
            WebhookDelivery(
                subscription_id=subscription_id,
                event_id=event.id,
                event_type=event.type,
                body=body,
                next_attempt_at=now,
                retry_until=retry_until,
                created_at=now,
            )
            for subscription_id in subscription_ids
        ],
        # A fan-out that runs twice (the inbox row purged, the event resent) adds nothing.
        ignore_conflicts=True,
    )
    delivery_ids = list(
        WebhookDelivery.objects.using(alias)
        .filter(
            event_id=event.id,
            subscription_id__in=subscription_ids,
            status=WebhookDelivery.Status.PENDING,
            attempts=0,
        )
        .values_list("pk", flat=True)
    )
    transaction.on_commit(lambda: queue_deliveries(delivery_ids), using=alias, robust=True)
    logger.info("webhook_deliveries_created", count=len(delivery_ids))


def queue_deliveries(delivery_ids: list[int], *, countdown: float | None = None) -> None:
    """One `deliver_webhook` task per delivery. Best effort: the sweep re-queues a
    delivery whose task never ran."""
    for delivery_id in delivery_ids:
        try:
            options: dict[str, Any] = {} if countdown is None else {"countdown": countdown}
            deliver_webhook.apply_async(
                kwargs={"delivery_id": delivery_id}, queue=EVENTS_QUEUE, **options
            )
        except Exception:
            logger.warning("webhook_delivery_queue_failed", delivery_id=delivery_id, exc_info=True)


# --- One attempt ---------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    subscription_id: int
    target_url: str
    secret: str
    event_id: str
    event_type: str
    body: bytes


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def attempt_lease() -> timedelta:
    # No attempt outlives its task: a claim older than the task time limit was lost.
    return timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)


def _claim(delivery_id: int) -> Attempt | None:
    alias = router.db_for_write(WebhookDelivery)
    now = timezone.now()
    with transaction.atomic(using=alias):
        delivery = (
            WebhookDelivery.objects.using(alias)
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("subscription")
            .filter(
                pk=delivery_id,
                status=WebhookDelivery.Status.PENDING,
                next_attempt_at__lte=now + CLOCK_SKEW,
                subscription__is_active=True,
            )
            .first()
        )
        if delivery is None:  # done, not due, being attempted, or its subscription stopped
            return None
        delivery.attempts += 1
        delivery.next_attempt_at = now + attempt_lease()
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    subscription = delivery.subscription
    return Attempt(
        delivery_id=delivery.pk,
        subscription_id=subscription.pk,
        target_url=subscription.target_url,
        secret=subscription.secret,
        event_id=str(delivery.event_id),
        event_type=delivery.event_type,
        body=delivery.body.encode(),
    )


@functools.cache
def http_client() -> httpx.Client:
    """One client per process, created on first use (in the pool process, after the
    fork): building one costs ~0.1 s (its TLS context), and it keeps connections alive
    to busy subscribers. Redirects are not followed."""
    return httpx.Client(limits=httpx.Limits(max_connections=50, max_keepalive_connections=10))


def _post(attempt: Attempt) -> AttemptResult:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature_header(attempt.secret, attempt.body),
        EVENT_ID_HEADER: attempt.event_id,
        EVENT_TYPE_HEADER: attempt.event_type,
    }
    started = time.monotonic()
    try:
        # Streamed and closed unread: only the status matters, whatever the body's size.
        with http_client().stream(
            "POST",
            attempt.target_url,
            content=attempt.body,
            headers=headers,
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
        ) as response:
            status_code = response.status_code
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        seconds = time.monotonic() - started
        return AttemptResult(None, f"{type(exc).__name__}: {exc}"[:LAST_ERROR_MAX_CHARS], seconds)
    seconds = time.monotonic() - started
    error = "" if 200 <= status_code < 300 else f"HTTP {status_code}"
    return AttemptResult(status_code, error, seconds)


def webhook_delivery_attempt(delivery_id: int) -> str | None:
    """Make one attempt if the delivery is due; return its outcome (None: not attempted)."""
    attempt = _claim(delivery_id)
    if attempt is None:
        return None
    with structlog.contextvars.bound_contextvars(
        webhook_delivery_id=delivery_id,
        event_id=attempt.event_id,
        event_type=attempt.event_type,
        webhook_subscription_id=attempt.subscription_id,
    ):
        result = _post(attempt)
        webhook_delivery_seconds.observe(result.seconds)
        outcome, retry_in = _record(attempt, result)
        attempt_outcome = "succeeded" if result.succeeded else "failed_attempt"
        webhook_deliveries.labels(outcome=attempt_outcome).inc()
        if outcome == "gave_up":
            webhook_deliveries.labels(outcome="gave_up").inc()
        logger.info(
            "webhook_delivery_attempted",
            outcome=outcome,
            status_code=result.status_code,
            error=result.error or None,
            latency_ms=round(result.seconds * 1000),
        )
        if retry_in is not None:
            queue_deliveries([delivery_id], countdown=retry_in)
    return outcome


def _record(attempt: Attempt, result: AttemptResult) -> tuple[str, float | None]:
    """Store the attempt's outcome; return it and the delay before the next attempt."""
    alias = router.db_for_write(WebhookDelivery)
    now = timezone.now()
    with transaction.atomic(using=alias):
        subscription = (
            WebhookSubscription.objects.using(alias)
            .select_for_update()
            .filter(pk=attempt.subscription_id)
            .first()
        )
        delivery = (
            WebhookDelivery.objects.using(alias)
            .select_for_update()
            .filter(pk=attempt.delivery_id)
            .first()
        )
        if subscription is None or delivery is None:  # deleted meanwhile
            return "discarded", None
        delivery.last_status_code = result.status_code
        delivery.last_error = result.error
        delivery.last_latency_ms = round(result.seconds * 1000)
        retry_in = None
        if result.succeeded:
            outcome = "succeeded"
            delivery.status = WebhookDelivery.Status.SUCCEEDED
            delivery.delivered_at = now
            if subscription.failing_since is not None:
                subscription.failing_since = None
                subscription.save(update_fields=["failing_since"])
        else:
            if subscription.failing_since is None:
                subscription.failing_since = now
                subscription.save(update_fields=["failing_since"])
            if not subscription.is_active or now >= delivery.retry_until:
                outcome = "gave_up"
                delivery.status = WebhookDelivery.Status.FAILED
            else:
                outcome = "retrying"
                retry_in = backoff_delay(
                    delivery.attempts - 1,
                    base_seconds=settings.WEBHOOK_RETRY_BASE_SECONDS,
                    max_seconds=settings.WEBHOOK_RETRY_MAX_SECONDS,
                )
                delivery.next_attempt_at = now + timedelta(seconds=retry_in)
        delivery.save(
            update_fields=[
                "status", "delivered_at", "next_attempt_at", "last_status_code", "last_error",
                "last_latency_ms",
            ]
        )  # fmt: skip
        if subscription.is_active and failing_too_long(subscription, now=now):
            disable_subscription(subscription, reason=failing_reason(subscription, result.error))
            if retry_in is not None:  # this delivery stops with the others
                outcome, retry_in = "gave_up", None
    return outcome, retry_in


# --- Disabling -----------------------------------------------------------------------


def failing_too_long(subscription: WebhookSubscription, *, now: datetime) -> bool:
    limit = timedelta(seconds=settings.WEBHOOK_DISABLE_AFTER_SECONDS)
    return subscription.failing_since is not None and now - subscription.failing_since >= limit


def failing_reason(subscription: WebhookSubscription, last_error: str) -> str:
    return (
        f"no delivery succeeded for {settings.WEBHOOK_DISABLE_AFTER_SECONDS:g} s "
        f"(failing since {subscription.failing_since:%Y-%m-%d %H:%M:%S} UTC); "
        f"last: {last_error or 'unknown'}"
    )


def disable_subscription(subscription: WebhookSubscription, *, reason: str) -> int:
    """Disable a subscription (locked by the caller) and stop its pending deliveries;
    return how many were stopped."""
    alias = router.db_for_write(WebhookSubscription)
    now = timezone.now()
    subscription.is_active = False
    subscription.disabled_at = now
    subscription.disabled_reason = reason[:500]
    subscription.updated_at = now
    subscription.save(update_fields=["is_active", "disabled_at", "disabled_reason", "updated_at"])
    pending = WebhookDelivery.objects.using(alias).filter(
        subscription=subscription, status=WebhookDelivery.Status.PENDING
    )
    pending.filter(last_error="").update(last_error="not sent: the subscription was disabled")
    stopped = pending.update(status=WebhookDelivery.Status.FAILED)
    transaction.on_commit(subscribed_event_types_forget, using=alias)
    logger.warning(
        "webhook_subscription_disabled",
        webhook_subscription_id=subscription.pk,
        reason=reason,
        deliveries_stopped=stopped,
    )
    return stopped


# --- The sweep -----------------------------------------------------------------------


def webhook_deliveries_sweep() -> dict[str, int]:
    """Re-queue deliveries overdue by a sweep period (their task was lost) and disable
    subscriptions failing for too long (even with no delivery left to try)."""
    alias = router.db_for_write(WebhookDelivery)
    now = timezone.now()
    overdue = list(
        WebhookDelivery.objects.using(alias)
        .filter(
            status=WebhookDelivery.Status.PENDING,
            next_attempt_at__lt=now - timedelta(seconds=settings.WEBHOOK_SWEEP_SECONDS),
            subscription__is_active=True,
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    queue_deliveries(overdue)
    disabled = 0
    failing = WebhookSubscription.objects.using(alias).filter(
        is_active=True,
        failing_since__lte=now - timedelta(seconds=settings.WEBHOOK_DISABLE_AFTER_SECONDS),
    )
    for subscription_id in failing.values_list("pk", flat=True):
        with transaction.atomic(using=alias):
            subscription = (
                WebhookSubscription.objects.using(alias)
                .select_for_update()
                .filter(pk=subscription_id, is_active=True)
                .first()
            )
            if subscription is None or not failing_too_long(subscription, now=timezone.now()):
                continue
            last_error = (
                WebhookDelivery.objects.using(alias)
                .filter(subscription=subscription)
                .exclude(last_error="")
                .order_by("-id")
                .values_list("last_error", flat=True)
                .first()
            )
            disable_subscription(
                subscription, reason=failing_reason(subscription, last_error or "")
            )
            disabled += 1
    if overdue or disabled:
        logger.info("webhook_sweep", requeued=len(overdue), disabled=disabled)
    return {"requeued": len(overdue), "disabled": disabled}


def webhook_deliveries_purge_finished() -> int:
    """Delete succeeded and failed deliveries created more than
    WEBHOOK_DELIVERY_RETENTION_DAYS ago; return how many. Pending ones stay."""
    cutoff = timezone.now() - timedelta(days=settings.WEBHOOK_DELIVERY_RETENTION_DAYS)
    deleted, _ = (
        WebhookDelivery.objects.using(router.db_for_write(WebhookDelivery))
        .filter(created_at__lt=cutoff)
        .exclude(status=WebhookDelivery.Status.PENDING)
        .delete()
    )
    return deleted


# --- Tasks (queue `events`, CELERY_TASK_ROUTES) --------------------------------------


@shared_task(name="core.deliver_webhook")
def deliver_webhook(*, delivery_id: int) -> str | None:
    """One attempt of one delivery, if it is due; a failed attempt queues the next one
    itself (the row holds the state, the task is only a prompt)."""
    return webhook_delivery_attempt(delivery_id)


@shared_task(name="core.sweep_webhook_deliveries")
def sweep_webhook_deliveries() -> dict[str, int]:
    """Beat, every WEBHOOK_SWEEP_SECONDS: re-queue overdue deliveries, disable
    subscriptions failing for too long."""
    return webhook_deliveries_sweep()


@shared_task(name="core.purge_webhook_deliveries")
def purge_webhook_deliveries() -> int:
    """Queue `default`, daily by beat: finished deliveries past
    WEBHOOK_DELIVERY_RETENTION_DAYS."""
    return webhook_deliveries_purge_finished()

"""Celery entry points of the shared kernel (all routed by CELERY_TASK_ROUTES).

- `relay_outbox` (queue `events`): relay pending outbox messages; kicked after each
  commit that published events, and swept every OUTBOX_SWEEP_SECONDS by beat.
- `deliver_event` (queue `events`): one event to one consumer, through the inbox; binds
  the event's request_id / correlation_id into the task's log context; retries a
  failing handler with jittered exponential backoff.
- `drain_sagas` (queue `sagas`): run due sagas in claimed batches; kicked after each
  commit that started a saga (kicks coalesce), by a saga's retry, and by `sweep_sagas`.
- `purge_expired_idempotency_records` (queue `default`): hourly by beat.
- `purge_processed_messages` (queue `default`): daily by beat; published outbox rows
  and inbox rows past their retention.
"""

import random
from datetime import datetime
from uuid import UUID

import structlog
from celery import shared_task
from django.conf import settings

from apps.core.http.idempotency import idempotency_records_purge_expired
from apps.core.messaging.inbox import (
    EventEnvelope,
    UnknownConsumer,
    consume_event,
    event_log_context,
    inbox_purge_processed,
)
from apps.core.messaging.outbox import outbox_purge_published, relay_pending_messages
from apps.core.observability import metrics, tracing
from apps.core.workflows.sagas import saga_sweep, sagas_drain

logger = structlog.get_logger(__name__)


@shared_task(name="apps.core.tasks.relay_outbox")
def relay_outbox() -> int:
    return relay_pending_messages()


def retry_countdown(
    retries: int, *, base_seconds: float | None = None, max_seconds: float | None = None
) -> float:
    """Jittered exponential backoff, capped below the broker's visibility timeout.

    Base and cap default to the event handlers' (EVENT_HANDLER_RETRY_*_SECONDS).
    """
    base = settings.EVENT_HANDLER_RETRY_BASE_SECONDS if base_seconds is None else base_seconds
    cap = settings.EVENT_HANDLER_RETRY_MAX_SECONDS if max_seconds is None else max_seconds
    ceiling = min(cap, base * 2**retries)
    return random.uniform(ceiling / 2, ceiling)


@shared_task(
    bind=True,
    name="apps.core.tasks.deliver_event",
    max_retries=None,  # bounded below by EVENT_HANDLER_MAX_RETRIES, with a log line
)
def deliver_event(
    self,
    *,
    event_id: str,
    event_type: str,
    payload: dict,
    headers: dict,
    consumer: str,
    aggregate_type: str = "",
    aggregate_id: str = "",
    created_at: str | None = None,
) -> bool:
    event = EventEnvelope(
        id=UUID(event_id),
        type=event_type,
        payload=payload,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        headers=headers,
        created_at=datetime.fromisoformat(created_at) if created_at else None,
    )
    context = event_log_context(event_id=event_id, event_type=event_type, headers=headers)
    with (
        structlog.contextvars.bound_contextvars(**context, consumer=consumer),
        tracing.continue_trace(
            headers.get("traceparent"), f"handle {event_type}", consumer=consumer
        ),
    ):
        outcomes = metrics.event_consumer_events
        try:
            handled = consume_event(event, consumer=consumer)
        except UnknownConsumer:
            logger.warning("event_consumer_unknown")
            return False
        except Exception as exc:
            retries = self.request.retries
            if retries >= settings.EVENT_HANDLER_MAX_RETRIES:
                outcomes.labels(consumer=consumer, outcome="gave_up").inc()
                logger.error("event_handler_gave_up", retries=retries, exc_info=True)
                raise
            outcomes.labels(consumer=consumer, outcome="failed").inc()
            countdown = retry_countdown(retries)
            logger.warning(
                "event_handler_failed", retries=retries, retry_in=round(countdown, 2), exc_info=True
            )
            raise self.retry(exc=exc, countdown=countdown) from exc
        outcomes.labels(consumer=consumer, outcome="processed" if handled else "duplicate").inc()
        return handled


@shared_task(name="apps.core.tasks.purge_expired_idempotency_records")
def purge_expired_idempotency_records() -> int:
    return idempotency_records_purge_expired()


@shared_task(name="apps.core.tasks.purge_processed_messages")
def purge_processed_messages() -> dict[str, int]:
    return {"outbox": outbox_purge_published(), "inbox": inbox_purge_processed()}


# Inside the sagas' lease (settings): a task killed at its limit leaves leases that are
# still valid, and the sweeper resumes the sagas once they end.
@shared_task(
    name="apps.core.tasks.drain_sagas",
    time_limit=settings.SAGA_TASK_TIME_LIMIT_SECONDS,
    soft_time_limit=settings.SAGA_TASK_SOFT_TIME_LIMIT_SECONDS,
)
def drain_sagas() -> int:
    return sagas_drain()


@shared_task(name="apps.core.tasks.sweep_sagas")
def sweep_sagas() -> int:
    return saga_sweep()

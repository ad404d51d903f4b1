"""Event consumers: the handler registry and the inbox that makes them idempotent.

Public API (for every context's `handlers.py`):

    @event_handler("OrderPlaced", consumer="catalog.reserve_stock")
    def reserve_stock(event: EventEnvelope) -> None: ...

`consumer` names the reaction, unique per event type ("<context>.<what it does>"); it is
the inbox key, so renaming it makes already handled events look new. Stack decorators
to react to several types. `handlers.py` modules are imported at start-up by
`CoreConfig.ready()`.

Each (event, consumer) pair is delivered by a `deliver_event` task, or in a batch for
that consumer by `deliver_events` (below): `consume_event` runs the handler inside
`transaction.atomic` together with the insert of an `InboxMessage(consumer, event_id)`.
A redelivered event finds the row and is skipped; a concurrent duplicate waits on the
unique index and is skipped once the first commits; a failing handler rolls back its
inbox row with its effect, and its task retries with backoff without touching the other
consumers of that event, nor the other events of its batch.

Handlers receive an `EventEnvelope`: id, type, payload (plain JSON), aggregate type/id,
headers (correlation_id, causation_id, request_id) and created_at. Whatever a handler
publishes through `apps.core.messaging.outbox` gets the handled event as its causation id and
keeps its correlation id.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

import structlog
from celery import Task, shared_task
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.models import Field
from django.utils import timezone

from apps.core.models import InboxMessage
from apps.core.observability import metrics, tracing
from apps.core.resilience import backoff_delay

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EventEnvelope:
    id: UUID
    type: str
    payload: dict[str, Any]
    aggregate_type: str = ""
    aggregate_id: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get("correlation_id")

    @property
    def causation_id(self) -> str | None:
        return self.headers.get("causation_id")

    @property
    def request_id(self) -> str | None:
        return self.headers.get("request_id")


def event_log_context(
    *, event_id: UUID | str, event_type: str, headers: dict[str, Any]
) -> dict[str, Any]:
    """What every log line about handling this event carries (None values left out)."""
    context = {
        "request_id": headers.get("request_id"),
        "correlation_id": headers.get("correlation_id"),
        "event_id": str(event_id),
        "event_type": event_type,
    }
    return {k: v for k, v in context.items() if v is not None}


Handler = Callable[[EventEnvelope], None]
# Asked with the event type at publish and relay time: does this consumer want it now?
Condition = Callable[[str], bool]

# event type -> consumer name -> handler
_handlers: dict[str, dict[str, Handler]] = {}
# (event type, consumer name) -> condition, for consumers that want events only sometimes
_conditions: dict[tuple[str, str], Condition] = {}


def _qualified_name(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def event_handler(
    event_type: str, *, consumer: str, when: Condition | None = None
) -> Callable[[Handler], Handler]:
    """Register `func` as the reaction `consumer` to events of `event_type`.

    With `when`, the consumer gets an event only while `when(event_type)` is true (at
    publish and relay time), e.g. only while a webhook subscriber wants that type.
    """

    def register(func: Handler) -> Handler:
        registered = _handlers.setdefault(event_type, {})
        existing = registered.get(consumer)
        if existing is not None and _qualified_name(existing) != _qualified_name(func):
            raise ImproperlyConfigured(
                f"consumer {consumer!r} of {event_type} is already "
                f"{_qualified_name(existing)}; consumer names must be unique per event type"
            )
        registered[consumer] = func
        if when is not None:
            _conditions[(event_type, consumer)] = when
        return func

    return register


def consumers_of(event_type: str) -> list[str]:
    """The consumers that want events of this type now."""
    return sorted(
        consumer
        for consumer in _handlers.get(event_type, {})
        if (condition := _conditions.get((event_type, consumer))) is None or condition(event_type)
    )


def handled_event_types() -> dict[str, list[str]]:
    """Every event type with a registered consumer, and all its consumers."""
    return {event_type: sorted(consumers) for event_type, consumers in _handlers.items()}


class UnknownConsumer(LookupError):
    """No handler of that name for that event type (removed since the event was sent)."""


def consume_event(event: EventEnvelope, *, consumer: str) -> bool:
    """Run `consumer`'s handler once per event; False if it had already handled it."""
    handler = _handlers.get(event.type, {}).get(consumer)
    if handler is None:
        raise UnknownConsumer(f"no consumer {consumer!r} of {event.type}")
    alias = router.db_for_write(InboxMessage)
    with transaction.atomic(using=alias):
        if not _inbox_claim(alias, consumer=consumer, event_id=event.id):
            logger.info("event_already_handled")
            return False
        handler(event)
    return True


def _inbox_claim(alias: str, *, consumer: str, event_id: UUID) -> bool:
    """Insert the inbox row; False if it exists. Insert first: the unique index, not a
    lookup, decides between duplicates (a concurrent one waits for the first to commit).
    One statement, no savepoint: `ON CONFLICT DO NOTHING` (PostgreSQL, SQLite >= 3.35)."""
    db = connections[alias]
    meta = InboxMessage._meta
    values = [
        cast("Field[Any, Any]", meta.get_field(name)).get_db_prep_save(value, db)
        for name, value in (
            ("consumer", consumer),
            ("event_id", event_id),
            ("processed_at", timezone.now()),
        )
    ]
    # Only the table's name is formatted in; every value is a parameter.
    sql = (
        f"INSERT INTO {db.ops.quote_name(meta.db_table)} (consumer, event_id, processed_at)"  # noqa: S608
        " VALUES (%s, %s, %s) ON CONFLICT (consumer, event_id) DO NOTHING RETURNING id"
    )
    with db.cursor() as cursor:
        cursor.execute(sql, values)
        return cursor.fetchone() is not None


def inbox_purge_processed() -> int:
    """Forget events handled more than INBOX_RETENTION_DAYS ago; return how many.

    Safe because no redelivery comes that late: the broker's visibility timeout and the
    handler retries end within hours.
    """
    cutoff = timezone.now() - timedelta(days=settings.INBOX_RETENTION_DAYS)
    deleted, _ = (
        InboxMessage.objects.using(router.db_for_write(InboxMessage))
        .filter(processed_at__lt=cutoff)
        .delete()
    )
    return deleted


# --- Tasks (queue `events`) ------------------------------------------------------------


class _RetryLater(Exception):
    """A handler failed and gets another try after `countdown` seconds."""

    def __init__(self, exc: Exception, countdown: float) -> None:
        super().__init__(str(exc))
        self.exc, self.countdown = exc, countdown


def _deliver(
    *,
    consumer: str,
    retries: int,
    event_id: str,
    event_type: str,
    payload: dict[str, Any],
    headers: dict[str, Any],
    aggregate_type: str = "",
    aggregate_id: str = "",
    created_at: str | None = None,
) -> bool:
    """Hand one event to one consumer through its inbox, under the event's log context
    and trace; `_RetryLater` when the handler failed and may be retried."""
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
            if retries >= settings.EVENT_HANDLER_MAX_RETRIES:
                outcomes.labels(consumer=consumer, outcome="gave_up").inc()
                logger.error("event_handler_gave_up", retries=retries, exc_info=True)
                raise
            outcomes.labels(consumer=consumer, outcome="failed").inc()
            countdown = backoff_delay(
                retries,
                base_seconds=settings.EVENT_HANDLER_RETRY_BASE_SECONDS,
                max_seconds=settings.EVENT_HANDLER_RETRY_MAX_SECONDS,
            )
            logger.warning(
                "event_handler_failed", retries=retries, retry_in=round(countdown, 2), exc_info=True
            )
            raise _RetryLater(exc, countdown) from exc
        outcomes.labels(consumer=consumer, outcome="processed" if handled else "duplicate").inc()
        return handled


@shared_task(
    bind=True,
    name="core.deliver_event",
    max_retries=None,  # bounded by EVENT_HANDLER_MAX_RETRIES, with a log line
)
def deliver_event(self: Task[..., bool], *, consumer: str, **event: Any) -> bool:
    """One event to one consumer, through the inbox. Binds the event's request_id /
    correlation_id into the task's log context; a failing handler is retried with
    jittered exponential backoff."""
    try:
        return _deliver(consumer=consumer, retries=self.request.retries, **event)
    except _RetryLater as later:
        raise self.retry(exc=later.exc, countdown=later.countdown) from later.exc


@shared_task(name="core.deliver_events")
def deliver_events(*, consumer: str, events: list[dict[str, Any]]) -> int:
    """Several events to one consumer, oldest first, each in its own inbox transaction.
    One whose handler fails goes on alone as a `deliver_event` retry with backoff; the
    others are not held up. Returns how many were handled now."""
    handled = 0
    for event in events:
        try:
            handled += _deliver(consumer=consumer, retries=0, **event)
        except _RetryLater as later:
            deliver_event.apply_async(
                kwargs={**event, "consumer": consumer},
                countdown=later.countdown,
                retries=1,  # type: ignore[call-arg]  # a message option the stubs leave out
            )
        except Exception:  # noqa: S112 (given up and logged by _deliver; the others go on)
            continue
    return handled

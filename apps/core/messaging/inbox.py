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

A consumer that is cheap (milliseconds, no waits on locks or slow services, rarely
fails) can be declared `in_relay=True`: the relay then handles the events of its claim
in its own transaction (`consume_in_relay`: the inbox rows in one statement, each event
in a savepoint) instead of sending a task. Its first failing event goes on as a
`deliver_event` retry with backoff and the events after it as a `deliver_events` task.
With `batch`, the consumer reads what a batch needs at once (see `BatchHandler`).

Handlers receive an `EventEnvelope`: id, type, payload (plain JSON), aggregate type/id,
headers (correlation_id, causation_id, request_id) and created_at. Whatever a handler
publishes through `apps.core.messaging.outbox` gets the handled event as its causation id and
keeps its correlation id.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
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


@contextlib.contextmanager
def event_log_alone(
    *, event_id: UUID | str, event_type: str, headers: dict[str, Any]
) -> Iterator[None]:
    """The event's log context alone, in place of the current one, for the duration: what
    a handler publishes takes its ids from there (provenance), not from whatever task or
    request runs it."""
    saved = structlog.contextvars.get_contextvars()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        **event_log_context(event_id=event_id, event_type=event_type, headers=headers)
    )
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved)


Handler = Callable[[EventEnvelope], None]
# Asked with the event type at publish and relay time: does this consumer want it now?
Condition = Callable[[str], bool]
# Entered by the relay around the events of one claim that an in-relay consumer has not
# handled yet (of any of its types); yields the handler for each of them, e.g. one that
# uses rows read once for all and one connection to a service.
BatchHandler = Callable[[list[EventEnvelope]], AbstractContextManager[Handler]]


@dataclass(frozen=True)
class _InRelay:
    batch: BatchHandler | None


# event type -> consumer name -> handler
_handlers: dict[str, dict[str, Handler]] = {}
# (event type, consumer name) -> condition, for consumers that want events only sometimes
_conditions: dict[tuple[str, str], Condition] = {}
# consumer name -> how the relay runs it (None: its events go to tasks)
_delivery: dict[str, _InRelay | None] = {}


def _qualified_name(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def event_handler(
    event_type: str,
    *,
    consumer: str,
    when: Condition | None = None,
    in_relay: bool = False,
    batch: BatchHandler | None = None,
) -> Callable[[Handler], Handler]:
    """Register `func` as the reaction `consumer` to events of `event_type`.

    With `when`, the consumer gets an event only while `when(event_type)` is true (at
    publish and relay time), e.g. only while a webhook subscriber wants that type.
    `in_relay` (the same for every type of the consumer): the relay handles its events in
    its own transaction instead of sending it tasks; `batch` (with `in_relay`) gives the
    handler for a batch of them there.
    """
    if batch is not None and not in_relay:
        raise ImproperlyConfigured(f"consumer {consumer!r}: `batch` is for in_relay consumers")
    delivery = _InRelay(batch) if in_relay else None

    def register(func: Handler) -> Handler:
        existing = _handlers.get(event_type, {}).get(consumer)
        if existing is not None and _qualified_name(existing) != _qualified_name(func):
            raise ImproperlyConfigured(
                f"consumer {consumer!r} of {event_type} is already "
                f"{_qualified_name(existing)}; consumer names must be unique per event type"
            )
        if consumer in _delivery and _delivery_name(_delivery[consumer]) != _delivery_name(
            delivery
        ):
            raise ImproperlyConfigured(
                f"consumer {consumer!r} is registered with another `in_relay` or `batch`"
            )
        _handlers.setdefault(event_type, {})[consumer] = func
        _delivery[consumer] = delivery
        if when is not None:
            _conditions[(event_type, consumer)] = when
        return func

    return register


def _delivery_name(delivery: _InRelay | None) -> str | None:
    if delivery is None:
        return None
    return _qualified_name(delivery.batch) if delivery.batch is not None else "in relay"


# in_relay consumer -> when (time.monotonic()) its handler last failed in this process's relay
_failed_in_relay_at: dict[str, float] = {}


def handled_in_relay(consumer: str) -> bool:
    """Whether the relay handles this consumer's events itself (`in_relay`). Not for
    OUTBOX_IN_RELAY_PAUSE_SECONDS after its handler failed there: its events go to tasks
    meanwhile, so a mail server that hangs costs the relay one timeout, not one per claim."""
    if _delivery.get(consumer) is None:
        return False
    failed_at = _failed_in_relay_at.get(consumer)
    return failed_at is None or (
        time.monotonic() - failed_at >= settings.OUTBOX_IN_RELAY_PAUSE_SECONDS
    )


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
    """Insert the inbox row; False if it exists."""
    return bool(_inbox_claim_many(alias, consumer=consumer, event_ids=[event_id]))


def _inbox_claim_many(alias: str, *, consumer: str, event_ids: list[UUID]) -> set[UUID]:
    """Insert the inbox rows of these events; return the ids that had none. Insert first:
    the unique index, not a lookup, decides between duplicates (a concurrent one waits for
    the first to commit). One statement, no savepoint: `ON CONFLICT DO NOTHING`
    (PostgreSQL, SQLite >= 3.35)."""
    db = connections[alias]
    meta = InboxMessage._meta
    event_field = cast("Field[Any, Any]", meta.get_field("event_id"))
    consumer_value = cast("Field[Any, Any]", meta.get_field("consumer")).get_db_prep_save(
        consumer, db
    )
    processed_at = cast("Field[Any, Any]", meta.get_field("processed_at")).get_db_prep_save(
        timezone.now(), db
    )
    values: list[Any] = []
    for event_id in event_ids:
        values += [consumer_value, event_field.get_db_prep_save(event_id, db), processed_at]
    rows = ", ".join(["(%s, %s, %s)"] * len(event_ids))
    # Only the table's name is formatted in; every value is a parameter.
    sql = (
        f"INSERT INTO {db.ops.quote_name(meta.db_table)} (consumer, event_id, processed_at)"  # noqa: S608
        f" VALUES {rows} ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
    )
    with db.cursor() as cursor:
        cursor.execute(sql, values)
        return {event_field.to_python(event_id) for (event_id,) in cursor.fetchall()}


@dataclass
class InRelayOutcome:
    """What `consume_in_relay` did with one consumer's events."""

    processed: int = 0
    duplicates: int = 0
    # Handled by no one yet (no inbox row): for the caller to send as tasks. `failed`
    # raised in its handler (retry it with backoff); `not_tried` came after it, or are
    # all the events when the batch itself failed.
    failed: EventEnvelope | None = None
    not_tried: list[EventEnvelope] = field(default_factory=list)


def consume_in_relay(events: list[EventEnvelope], *, consumer: str) -> InRelayOutcome:
    """Handle `events` for an `in_relay` consumer in the caller's transaction (the relay's):
    their inbox rows in one statement, then each event not handled before in a savepoint
    of its own, under its own log context. Stops at the first failing event: it and those
    after it keep no inbox row and no effect, and are the caller's to send as tasks.
    Metrics and one log line with the counts follow the caller's commit."""
    delivery = _delivery.get(consumer)
    if delivery is None:
        raise ImproperlyConfigured(f"consumer {consumer!r} is not handled in the relay")
    alias = router.db_for_write(InboxMessage)
    outcome = InRelayOutcome()
    try:
        # A savepoint: a batch handler that fails leaves the relay's transaction usable.
        with transaction.atomic(using=alias):
            new_ids = _inbox_claim_many(alias, consumer=consumer, event_ids=[e.id for e in events])
            new = [event for event in events if event.id in new_ids]
            outcome.duplicates = len(events) - len(new)
            batch = delivery.batch(new) if delivery.batch else _each_to_its_handler(consumer)
            with batch as handle:
                for index, event in enumerate(new):
                    if not _handled_in_savepoint(alias, event, consumer=consumer, handle=handle):
                        outcome.failed, outcome.not_tried = event, new[index + 1 :]
                        break
                    outcome.processed += 1
            if outcome.failed is not None:
                unhandled = [outcome.failed.id, *(e.id for e in outcome.not_tried)]
                InboxMessage.objects.using(alias).filter(
                    consumer=consumer, event_id__in=unhandled
                ).delete()
    except Exception:
        logger.warning("event_batch_failed", consumer=consumer, events=len(events), exc_info=True)
        outcome = InRelayOutcome(not_tried=events)
        _failed_in_relay_at[consumer] = time.monotonic()
    if outcome.failed is not None:
        _failed_in_relay_at[consumer] = time.monotonic()
    transaction.on_commit(lambda: _record_in_relay(consumer, outcome), using=alias)
    return outcome


def _each_to_its_handler(consumer: str) -> AbstractContextManager[Handler]:
    """The batch of a consumer declared without one: each event to its type's handler."""
    return contextlib.nullcontext(lambda event: _handlers[event.type][consumer](event))


def _handled_in_savepoint(
    alias: str, event: EventEnvelope, *, consumer: str, handle: Handler
) -> bool:
    with (
        event_log_alone(event_id=event.id, event_type=event.type, headers=event.headers),
        structlog.contextvars.bound_contextvars(consumer=consumer),
        tracing.continue_trace(
            event.headers.get("traceparent"), f"handle {event.type}", consumer=consumer
        ),
    ):
        try:
            with transaction.atomic(using=alias):
                handle(event)
        except Exception:
            # Retried in a task, with its own log lines.
            logger.warning("event_handler_failed", retries=0, exc_info=True)
            return False
    return True


def _record_in_relay(consumer: str, outcome: InRelayOutcome) -> None:
    outcomes = metrics.event_consumer_events
    for name, count in (
        ("processed", outcome.processed),
        ("duplicate", outcome.duplicates),
        ("failed", int(outcome.failed is not None)),
    ):
        if count:
            outcomes.labels(consumer=consumer, outcome=name).inc(count)
    logger.info(
        "events_handled_in_relay",
        consumer=consumer,
        processed=outcome.processed,
        duplicate=outcome.duplicates,
        failed=int(outcome.failed is not None),
        to_tasks=len(outcome.not_tried),
    )


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


def retry_countdown(retries: int) -> float:
    """Seconds until the next attempt of a handler that failed `retries + 1` times."""
    return backoff_delay(
        retries,
        base_seconds=settings.EVENT_HANDLER_RETRY_BASE_SECONDS,
        max_seconds=settings.EVENT_HANDLER_RETRY_MAX_SECONDS,
    )


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
            countdown = retry_countdown(retries)
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

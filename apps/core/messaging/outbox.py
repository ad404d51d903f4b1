"""The transactional outbox: an event is written in the transaction of the state change
that caused it, so it is published if and only if that change commits.

`publish_event` / `publish(dataclass)` (inside `transaction.atomic`) write the row, with
the flow's ids as headers (`provenance`, else the logging context); after commit the
relay is kicked (kicks coalesce; beat sweeps too). The relay (`relay_outbox`) claims
pending rows with SKIP LOCKED and sends one `deliver_event` task per consumer, at least
once; consumers deduplicate through the inbox and must not rely on the order of events.
`outbox_message` builds the row unsaved, for a caller that inserts it with its other rows
in one statement (`apps.core.data.atomic_inserts`). docs/architecture.md ("Outbox → relay →
consumers") has the whole picture.
"""

import contextlib
import dataclasses
import enum
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any

import structlog
from celery import current_app, shared_task
from django.conf import settings
from django.db import connections, router, transaction
from django.db.models import F
from django.utils import timezone
from kombu import Producer
from kombu.exceptions import OperationalError as BrokerUnavailable

from apps.core.data.caching import clear_pending, send_unless_pending
from apps.core.messaging.event_registry import schema_version_of
from apps.core.messaging.inbox import (
    consumers_of,
    deliver_event,
    event_log_context,
    inbox_purge_processed,
)
from apps.core.messaging.provenance import Provenance
from apps.core.models import OutboxMessage
from apps.core.observability import tracing

logger = structlog.get_logger(__name__)

EVENTS_QUEUE = "events"
LAST_ERROR_MAX_CHARS = 2000
# Set while a relay kick is queued and has not started; the relay clears it before it
# claims. Expires on its own, in case the queued kick is lost with the broker.
RELAY_KICK_PENDING_KEY = "outbox:relay-kick-pending"


class NotInTransaction(RuntimeError):
    """An outbox write or claim outside `transaction.atomic`: it would not be atomic."""


def json_safe(value: Any) -> Any:
    """`value` with Decimals, UUIDs, dates and enums as strings, ready for a JSON column.

    Decimals keep their exact digits (money is never a float); datetimes keep microseconds.
    """
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(json_safe(v) for v in value)
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date | time_of_day):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    raise TypeError(f"{type(value).__name__} cannot be part of an event payload")


def event_message(event: Any) -> tuple[str, dict[str, Any]]:
    """A dataclass event as (event type = class name, JSON-safe payload)."""
    if not dataclasses.is_dataclass(event) or isinstance(event, type):
        raise TypeError(f"expected a dataclass instance, got {type(event).__name__}")
    return type(event).__name__, json_safe(dataclasses.asdict(event))


def _require_transaction(alias: str) -> None:
    if not connections[alias].in_atomic_block:
        raise NotInTransaction(
            "the outbox is written in the transaction of the state change: "
            "call this inside transaction.atomic()"
        )


def publish_event(
    *,
    event_type: str,
    payload: dict[str, Any],
    aggregate_type: str = "",
    aggregate_id: str = "",
    causation_id: str | None = None,
    provenance: Provenance | None = None,
) -> uuid.UUID:
    """Write an event to the outbox, in the caller's transaction; return its id."""
    alias = router.db_for_write(OutboxMessage)
    _require_transaction(alias)
    message = outbox_message(
        event_type=event_type,
        payload=payload,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        causation_id=causation_id,
        provenance=provenance,
    )
    message.save(using=alias, force_insert=True)
    if message.published_at is None:
        # Several events of one transaction each ask; kick_relay sends one kick at most.
        transaction.on_commit(kick_relay, using=alias, robust=True)
    return message.id


def outbox_message(
    *,
    event_type: str,
    payload: dict[str, Any],
    aggregate_type: str = "",
    aggregate_id: str = "",
    causation_id: str | None = None,
    provenance: Provenance | None = None,
) -> OutboxMessage:
    """The unsaved outbox row `publish_event` writes, for a caller that inserts it with its
    other rows in one statement (`apps.core.data.atomic_inserts`); after they commit, a row
    still to relay (`published_at` None) needs `kick_relay`."""
    event_id = uuid.uuid4()
    if provenance is None:
        log_context = structlog.contextvars.get_contextvars()
        provenance = Provenance(
            request_id=log_context.get("request_id"),
            correlation_id=log_context.get("correlation_id"),
            causation_id=log_context.get("event_id"),
        )
    request_id = provenance.request_id
    cause = causation_id or provenance.causation_id
    headers: dict[str, Any] = {
        "correlation_id": str(provenance.correlation_id or request_id or event_id),
        "causation_id": str(cause) if cause else None,
        "request_id": request_id,
    }
    traceparent = tracing.current_traceparent()
    if traceparent:  # the consumers' spans continue the publisher's trace
        headers["traceparent"] = traceparent
    schema_version = schema_version_of(event_type)
    if schema_version is not None:
        headers["schema_version"] = schema_version
    now = timezone.now()
    # An event no consumer wants is kept as a record but costs the relay nothing: it is
    # written as relayed already.
    wanted = bool(consumers_of(event_type))
    return OutboxMessage(
        id=event_id,
        event_type=event_type,
        aggregate_type=aggregate_type,
        aggregate_id=str(aggregate_id),
        payload=json_safe(payload),
        headers=headers,
        created_at=now,
        published_at=None if wanted else now,
    )


def publish(
    event: Any,
    *,
    aggregate_type: str = "",
    aggregate_id: str = "",
    causation_id: str | None = None,
    provenance: Provenance | None = None,
) -> uuid.UUID:
    """`publish_event` for a dataclass event: its class name is the event type."""
    event_type, payload = event_message(event)
    return publish_event(
        event_type=event_type,
        payload=payload,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        causation_id=causation_id,
        provenance=provenance,
    )


def kick_relay() -> None:
    """Ask a worker to relay now, unless a kick is queued already and has not started (it
    claims after this commit, so it sees these rows). Best effort: the periodic sweep is
    the guarantee."""
    send_unless_pending(
        RELAY_KICK_PENDING_KEY,
        timeout=settings.OUTBOX_SWEEP_SECONDS,
        send=_send_relay,
        log_as="outbox_relay_kick",
    )


def _send_relay() -> None:
    relay_outbox.apply_async(queue=EVENTS_QUEUE, retry=False)


# --- The relay ----------------------------------------------------------------------


def claim_pending_messages(*, limit: int) -> list[OutboxMessage]:
    """Lock up to `limit` oldest pending messages that no other relay holds.

    Call inside `transaction.atomic`; the locks last until it ends. SQLite has no row
    locks (nor SKIP LOCKED): there the IMMEDIATE transaction already serialises relays.
    """
    alias = router.db_for_write(OutboxMessage)
    _require_transaction(alias)
    pending = (
        OutboxMessage.objects.using(alias).filter(published_at__isnull=True).order_by("created_at")
    )
    if connections[alias].features.has_select_for_update_skip_locked:
        pending = pending.select_for_update(skip_locked=True)
    return list(pending[:limit])


@contextlib.contextmanager
def _log_context_of(message: OutboxMessage) -> Iterator[None]:
    """The event's log context alone, in place of the relay's, for the duration.

    django_structlog copies the context at publish time into the task's headers, so the
    consumer task's every log line (started, succeeded, retried) names the event's flow.
    """
    saved = structlog.contextvars.get_contextvars()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        **event_log_context(
            event_id=message.id, event_type=message.event_type, headers=message.headers
        )
    )
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved)


def send_message(message: OutboxMessage, *, producer: Producer | None = None) -> list[str]:
    """Send one `deliver_event` task per consumer that wants it; return the consumers."""
    consumers = consumers_of(message.event_type)
    for consumer in consumers:
        with _log_context_of(message):
            _send_delivery(message, consumer, producer)
    return consumers


def _send_delivery(message: OutboxMessage, consumer: str, producer: Producer | None) -> None:
    deliver_event.apply_async(
        kwargs={
            "event_id": str(message.id),
            "event_type": message.event_type,
            "aggregate_type": message.aggregate_type,
            "aggregate_id": message.aggregate_id,
            "payload": message.payload,
            "headers": message.headers,
            "created_at": message.created_at.isoformat(),
            "consumer": consumer,
        },
        queue=EVENTS_QUEUE,
        producer=producer,
    )


def relay_batch(*, limit: int) -> list[uuid.UUID]:
    """Claim, send and stamp one batch in one transaction; return the ids sent."""
    alias = router.db_for_write(OutboxMessage)
    sent: list[uuid.UUID] = []
    # consumers sent to -> the ids sent to them: one UPDATE per distinct set
    sent_to: dict[tuple[str, ...], list[uuid.UUID]] = {}
    with transaction.atomic(using=alias):
        messages = claim_pending_messages(limit=limit)
        if not messages:
            return sent
        with current_app.producer_or_acquire() as producer:
            for message in messages:
                try:
                    consumers = send_message(message, producer=producer)
                except BrokerUnavailable as exc:
                    # The broker is down: the rest of the batch would fail the same way.
                    _record_failure(alias, message, exc)
                    break
                except Exception as exc:
                    # This message alone is unsendable: keep it pending, send the others.
                    _record_failure(alias, message, exc)
                else:
                    sent.append(message.id)
                    sent_to.setdefault(tuple(consumers), []).append(message.id)
        now = timezone.now()
        for sent_consumers, ids in sent_to.items():
            OutboxMessage.objects.using(alias).filter(pk__in=ids).update(
                published_at=now, attempts=F("attempts") + 1, consumers=list(sent_consumers)
            )
    return sent


def _record_failure(alias: str, message: OutboxMessage, exc: Exception) -> None:
    logger.warning(
        "outbox_send_failed", event_id=str(message.id), event_type=message.event_type, exc_info=exc
    )
    OutboxMessage.objects.using(alias).filter(pk=message.pk).update(
        attempts=F("attempts") + 1,
        last_error=f"{type(exc).__name__}: {exc}"[:LAST_ERROR_MAX_CHARS],
    )


def relay_pending_messages(
    *, batch_size: int | None = None, time_budget: float | None = None
) -> int:
    """Relay batches until none is full or the time budget is spent; return the count."""
    # Before claiming: a commit from now on sends a new kick, one before it is seen here.
    clear_pending(RELAY_KICK_PENDING_KEY, log_as="outbox_relay_kick")
    batch_size = batch_size or settings.OUTBOX_RELAY_BATCH_SIZE
    time_budget = settings.OUTBOX_RELAY_TIME_BUDGET_SECONDS if time_budget is None else time_budget
    deadline = time.monotonic() + time_budget
    total = 0
    while True:
        sent = relay_batch(limit=batch_size)
        total += len(sent)
        if len(sent) < batch_size or time.monotonic() >= deadline:
            break
    if total:
        logger.info("outbox_relayed", count=total)
    return total


def outbox_messages_resend(*, ids: list[Any]) -> int:
    """Make messages pending again: the relay re-sends them to every consumer.

    For an event a consumer gave up on (EVENT_HANDLER_MAX_RETRIES): the consumers that
    already handled it skip it, through the inbox.
    """
    alias = router.db_for_write(OutboxMessage)
    with transaction.atomic(using=alias):
        count = (
            OutboxMessage.objects.using(alias)
            .filter(pk__in=ids)
            .update(published_at=None, last_error="")
        )
        transaction.on_commit(kick_relay, using=alias, robust=True)
    return count


def outbox_purge_published() -> int:
    """Delete messages published more than OUTBOX_RETENTION_DAYS ago; return how many."""
    cutoff = timezone.now() - timedelta(days=settings.OUTBOX_RETENTION_DAYS)
    deleted, _ = (
        OutboxMessage.objects.using(router.db_for_write(OutboxMessage))
        .filter(published_at__lt=cutoff)
        .delete()
    )
    return deleted


# --- Tasks -------------------------------------------------------------------------------


@shared_task(name="core.relay_outbox")
def relay_outbox() -> int:
    """Queue `events`: kicked after each commit that published events, and swept every
    OUTBOX_SWEEP_SECONDS by beat."""
    return relay_pending_messages()


@shared_task(name="core.purge_processed_messages")
def purge_processed_messages() -> dict[str, int]:
    """Queue `default`, daily by beat: published outbox rows and inbox rows past their
    retention."""
    return {"outbox": outbox_purge_published(), "inbox": inbox_purge_processed()}

"""The transactional outbox: an event is written in the transaction of the state change
that caused it, so it is published if and only if that change commits.

`publish_event` / `publish(dataclass)` (inside `transaction.atomic`) write the row, with
the flow's ids as headers (`provenance`, else the logging context). Consumers that take
an event inline (`consumed_inline`) handle it in the publisher's transaction, with their
inbox row; an event no other consumer wants is stored as relayed already. After commit
the relay is kicked (kicks coalesce; beat sweeps too). The relay (`relay_outbox`) claims
pending rows with SKIP LOCKED; a consumer declared `in_relay` handles the claimed events
it wants in the relay's transaction, every other one gets them as tasks, one
`deliver_event` task for one, `deliver_events` for up to OUTBOX_DELIVERY_BATCH_SIZE; at
least once either way: consumers deduplicate through the inbox and must not rely on the
order of events. `outbox_message` builds the row unsaved, for a caller that inserts it with its
other rows in one statement (`apps.core.data.atomic_inserts`). docs/architecture.md
("Outbox → relay → consumers") has the whole picture.
"""

import contextlib
import dataclasses
import enum
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
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

from apps.core.data.atomic_inserts import InsertStatement, one_statement_inserts
from apps.core.data.caching import clear_pending, send_unless_pending
from apps.core.messaging.event_registry import schema_version_of
from apps.core.messaging.inbox import (
    EventEnvelope,
    consume_event,
    consume_in_relay,
    consumers_of,
    deliver_event,
    deliver_events,
    event_log_alone,
    event_log_context,
    handled_in_relay,
    inbox_purge_processed,
    retry_countdown,
)
from apps.core.messaging.provenance import Provenance
from apps.core.models import OutboxMessage
from apps.core.observability import metrics, tracing

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
    handled, wanted = _consume_inline(message, alias=alias)
    if handled and len(handled) == len(wanted):
        # No other consumer wants it: kept as a record, relayed already, with the
        # consumers that handled it (else the relay sends it to all; those find their
        # inbox row).
        message.published_at = message.created_at
        message.consumers = handled
    if one_statement_inserts(alias):
        # A prepared insert: every saga step publishes (stock, payments).
        statement = InsertStatement(using=alias)
        statement.add(message)
        statement.execute(savepoint=False)
    else:
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


@dataclasses.dataclass(frozen=True)
class _InlineScope:
    consumers: frozenset[str]
    handled: list[uuid.UUID]


_inline: ContextVar[_InlineScope | None] = ContextVar("outbox_inline", default=None)


@contextlib.contextmanager
def consumed_inline(*consumers: str) -> Iterator[list[uuid.UUID]]:
    """Events published inside the block are handled by these consumers at once, in the
    publishing transaction, instead of through the relay: the consumer's inbox row and
    effect commit with the event, and it gets no message. For a caller that needs the
    consumer's effect right after anyway (a saga recording a capture it caused). Yields
    the ids of the events handled so; a handler that fails is left to the relay."""
    scope = _InlineScope(consumers=frozenset(consumers), handled=[])
    token = _inline.set(scope)
    try:
        yield scope.handled
    finally:
        _inline.reset(token)


def consumes_inline(event_type: str) -> bool:
    """Whether the `consumed_inline` scope around this call names a consumer of
    `event_type`: then `publish_event` writes it (and runs that consumer), not a caller
    inserting `outbox_message` rows itself."""
    scope = _inline.get()
    return scope is not None and not scope.consumers.isdisjoint(consumers_of(event_type))


def _consume_inline(message: OutboxMessage, *, alias: str) -> tuple[list[str], list[str]]:
    """Run the consumers of `message` that the current `consumed_inline` scope names, now,
    each in a savepoint; return (those that handled it, all that want it)."""
    scope = _inline.get()
    if scope is None:
        return [], []
    wanted = consumers_of(message.event_type)
    event = event_envelope(message)
    handled = []
    context = event_log_context(event_id=event.id, event_type=event.type, headers=event.headers)
    with structlog.contextvars.bound_contextvars(**context):
        for consumer in wanted:
            if consumer not in scope.consumers:
                continue
            try:
                consume_event(event, consumer=consumer)
            except Exception:
                logger.warning("event_handler_failed_inline", consumer=consumer, exc_info=True)
                continue
            handled.append(consumer)
            transaction.on_commit(
                metrics.event_consumer_events.labels(consumer=consumer, outcome="processed").inc,
                using=alias,
            )
    if handled:
        scope.handled.append(event.id)
    return handled, wanted


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


def publish_all(
    published: list[tuple[Any, str, Provenance | None]], *, aggregate_type: str = ""
) -> None:
    """`publish` for several (event, aggregate id, provenance): one insert on PostgreSQL
    (a saga step run for a batch of sagas), else one each, as inside a `consumed_inline`
    scope that names a consumer of one of them."""
    alias = router.db_for_write(OutboxMessage)
    _require_transaction(alias)
    messages = []
    for event, aggregate_id, provenance in published:
        event_type, payload = event_message(event)
        messages.append(
            outbox_message(
                event_type=event_type,
                payload=payload,
                aggregate_type=aggregate_type,
                aggregate_id=aggregate_id,
                provenance=provenance,
            )
        )
    if not one_statement_inserts(alias) or any(
        consumes_inline(message.event_type) for message in messages
    ):
        for event, aggregate_id, provenance in published:
            publish(event, aggregate_type=aggregate_type, aggregate_id=aggregate_id,
                    provenance=provenance)  # fmt: skip
        return
    statement = InsertStatement(using=alias)
    statement.add(*messages)
    statement.execute(savepoint=False)
    if any(message.published_at is None for message in messages):
        transaction.on_commit(kick_relay, using=alias, robust=True)


def kick_relay() -> None:
    """Ask a worker to relay in OUTBOX_RELAY_LINGER_SECONDS, unless a kick is queued
    already and has not started (it claims after this commit, so it sees these rows).
    Best effort: the periodic sweep is the guarantee. The linger lets the events committed
    meanwhile join one claim instead of each costing a relay task of its own."""
    send_unless_pending(
        RELAY_KICK_PENDING_KEY,
        timeout=settings.OUTBOX_SWEEP_SECONDS,
        send=_send_relay,
        log_as="outbox_relay_kick",
    )


def _send_relay() -> None:
    # A countdown waits in the worker's timer, not in a pool process (0: none).
    relay_outbox.apply_async(
        queue=EVENTS_QUEUE, retry=False, countdown=settings.OUTBOX_RELAY_LINGER_SECONDS
    )


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


def _log_context_of(message: OutboxMessage) -> contextlib.AbstractContextManager[None]:
    """The event's log context alone, in place of the relay's, for the duration.

    django_structlog copies the context at publish time into the task's headers, so the
    consumer task's every log line (started, succeeded, retried) names the event's flow.
    """
    return event_log_alone(
        event_id=message.id, event_type=message.event_type, headers=message.headers
    )


def send_message(message: OutboxMessage, *, producer: Producer | None = None) -> list[str]:
    """Send one `deliver_event` task per consumer that wants it; return the consumers."""
    consumers = consumers_of(message.event_type)
    for consumer in consumers:
        _send_delivery([message], consumer, producer)
    return consumers


def delivery_fields(message: OutboxMessage) -> dict[str, Any]:
    """One event as the delivery tasks take it (JSON-safe)."""
    return {
        "event_id": str(message.id),
        "event_type": message.event_type,
        "aggregate_type": message.aggregate_type,
        "aggregate_id": message.aggregate_id,
        "payload": message.payload,
        "headers": message.headers,
        "created_at": message.created_at.isoformat(),
    }


def _send_delivery(messages: list[OutboxMessage], consumer: str, producer: Producer | None) -> None:
    """One task for `consumer`: `deliver_event` for one event (its task's log lines name
    the event's flow), `deliver_events` for several (each handled in its own inbox
    transaction, in order; one that fails is retried alone)."""
    if len(messages) == 1:
        with _log_context_of(messages[0]):
            deliver_event.apply_async(
                kwargs={**delivery_fields(messages[0]), "consumer": consumer},
                queue=EVENTS_QUEUE,
                producer=producer,
            )
        return
    deliver_events.apply_async(
        kwargs={"consumer": consumer, "events": [delivery_fields(m) for m in messages]},
        queue=EVENTS_QUEUE,
        producer=producer,
    )


def _by_consumer(
    messages: list[OutboxMessage], wanted: dict[uuid.UUID, list[str]]
) -> dict[str, list[OutboxMessage]]:
    """Each consumer's messages, oldest first."""
    by_consumer: dict[str, list[OutboxMessage]] = {}
    for message in messages:
        for consumer in wanted[message.id]:
            by_consumer.setdefault(consumer, []).append(message)
    return by_consumer


def _chunks(messages: list[OutboxMessage]) -> Iterator[list[OutboxMessage]]:
    size = settings.OUTBOX_DELIVERY_BATCH_SIZE
    for start in range(0, len(messages), size):
        yield messages[start : start + size]


def event_envelope(message: OutboxMessage) -> EventEnvelope:
    """The event of an outbox row, as its consumers get it."""
    return EventEnvelope(
        id=message.id,
        type=message.event_type,
        payload=message.payload,
        aggregate_type=message.aggregate_type,
        aggregate_id=message.aggregate_id,
        headers=message.headers,
        created_at=message.created_at,
    )


class _Sends:
    """The relay's sends for one claim, and the messages that could not be sent."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.failed: dict[uuid.UUID, Exception] = {}  # recorded on the row
        self.unsent: set[uuid.UUID] = set()  # left pending (failed, or not tried: broker down)
        self.broker_down = False

    def deliveries(self, messages: list[OutboxMessage], consumer: str) -> None:
        """`messages` to `consumer` in tasks of up to OUTBOX_DELIVERY_BATCH_SIZE."""
        for batch in _chunks(messages):
            self._send(batch, consumer)

    def retry(self, message: OutboxMessage, consumer: str) -> None:
        """`message` to `consumer` after a failed first attempt in the relay."""
        self._send([message], consumer, retry=True)

    def _send(self, batch: list[OutboxMessage], consumer: str, *, retry: bool = False) -> None:
        if self.broker_down:
            self.unsent.update(m.id for m in batch)
            return
        try:
            if retry:
                _send_retry(batch[0], consumer, self.producer)
            else:
                _send_delivery(batch, consumer, self.producer)
        except BrokerUnavailable as exc:
            # The broker is down: the rest would fail the same way.
            self.broker_down = True
            self.failed.update((m.id, exc) for m in batch)
            self.unsent.update(m.id for m in batch)
        except Exception as exc:
            if len(batch) == 1:
                self.failed[batch[0].id] = exc
                self.unsent.add(batch[0].id)
                return
            # One of them is unsendable: send them one by one to find which.
            for message in batch:
                self._send([message], consumer)


def _send_retry(message: OutboxMessage, consumer: str, producer: Producer) -> None:
    """A `deliver_event` retry with backoff, as if a task had made the first attempt."""
    with _log_context_of(message):
        deliver_event.apply_async(
            kwargs={**delivery_fields(message), "consumer": consumer},
            countdown=retry_countdown(0),
            retries=1,  # type: ignore[call-arg]  # a message option the stubs leave out
            queue=EVENTS_QUEUE,
            producer=producer,
        )


def relay_batch(*, limit: int) -> list[uuid.UUID]:
    """Claim, hand over and stamp one batch in one transaction; return the ids relayed.

    A consumer declared `in_relay` handles the claimed events it wants here, in this
    transaction (`consume_in_relay`); its first failing event goes on as a retry task and
    the events after it as a task. Every other consumer gets the claimed events it wants
    in tasks of up to OUTBOX_DELIVERY_BATCH_SIZE (one Celery message per consumer and
    batch, not per event and consumer). A message one of whose tasks was not sent stays
    pending and is relayed again in full: the consumers that got it skip it through their
    inbox."""
    alias = router.db_for_write(OutboxMessage)
    with transaction.atomic(using=alias):
        messages = claim_pending_messages(limit=limit)
        if not messages:
            return []
        wanted = {m.id: consumers_of(m.event_type) for m in messages}
        by_consumer = _by_consumer(messages, wanted)
        with current_app.producer_or_acquire() as producer:
            sends = _Sends(producer)
            here = {consumer for consumer in by_consumer if handled_in_relay(consumer)}
            # Tasks first: their consumers need not wait for the ones handled here.
            for consumer, consumer_messages in by_consumer.items():
                if consumer not in here:
                    sends.deliveries(consumer_messages, consumer)
            for consumer, consumer_messages in by_consumer.items():
                if consumer in here:
                    _consume_here(consumer, consumer_messages, sends)
        for message in messages:
            if message.id in sends.failed:
                _record_failure(alias, message, sends.failed[message.id])
        # consumers relayed to -> the ids relayed to them: one UPDATE per distinct set
        relayed_to: dict[tuple[str, ...], list[uuid.UUID]] = {}
        for message in messages:
            if message.id not in sends.unsent:
                relayed_to.setdefault(tuple(wanted[message.id]), []).append(message.id)
        now = timezone.now()
        for consumers, ids in relayed_to.items():
            OutboxMessage.objects.using(alias).filter(pk__in=ids).update(
                published_at=now, attempts=F("attempts") + 1, consumers=list(consumers)
            )
    return [m.id for m in messages if m.id not in sends.unsent]


def _consume_here(consumer: str, messages: list[OutboxMessage], sends: _Sends) -> None:
    """An in-relay consumer's events, handled in the relay's transaction; what it did not
    handle goes on to tasks."""
    outcome = consume_in_relay([event_envelope(m) for m in messages], consumer=consumer)
    by_id = {m.id: m for m in messages}
    if outcome.failed is not None:
        sends.retry(by_id[outcome.failed.id], consumer)
    if outcome.not_tried:
        sends.deliveries([by_id[e.id] for e in outcome.not_tried], consumer)


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

"""Shared-kernel queries.

Public API:

    outbox_backlog() -> (pending_count, oldest_pending_age_seconds)
    overdue_sagas(grace_seconds=...) -> readable lines, one per saga still running or
        compensating longer than `grace_seconds` past its deadline
    unconsumed_events(...) -> readable lines, one per (consumer, relayed event) pair with
        no inbox row after a grace period
    consumer_lag() -> {consumer: age in seconds of its oldest relayed, unhandled event}
    sagas_about(key=..., value=...) -> the sagas whose context names a thing (staff pages)

for metrics, readiness and the integrity check: how many outbox messages wait for the
relay, and for how long the oldest has waited (0.0 when none). Read from the primary:
a replica's lag would show a backlog the relay has already cleared.
"""

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Exists, Min, OuterRef, QuerySet
from django.utils import timezone

from apps.core.messaging.inbox import handled_event_types
from apps.core.models import InboxMessage, OutboxMessage, SagaInstance


def outbox_backlog() -> tuple[int, float]:
    backlog = OutboxMessage.objects.filter(published_at__isnull=True).aggregate(
        count=Count("id"), oldest=Min("created_at")
    )
    if not backlog["count"]:
        return 0, 0.0
    age = (timezone.now() - backlog["oldest"]).total_seconds()
    return backlog["count"], max(age, 0.0)


def overdue_sagas(*, grace_seconds: float) -> list[str]:
    overdue_since = timezone.now() - timedelta(seconds=grace_seconds)
    sagas = list(
        SagaInstance.objects.filter(
            state__in=[SagaInstance.State.RUNNING, SagaInstance.State.COMPENSATING],
            deadline__lt=overdue_since,
        ).order_by("deadline")
    )
    return [
        f"saga {saga.saga_type} {saga.id}: still {saga.state} at step {saga.current_step}, "
        f"deadline was {saga.deadline.isoformat()}"
        for saga in sagas
    ]


def _unhandled(
    consumer: str, event_types: list[str], *, older_than: float, window: float
) -> Iterator[tuple[uuid.UUID, str, datetime]]:
    """Relayed events of these types sent to `consumer` that it has no inbox row for,
    published between `window` and `older_than` seconds ago, oldest first."""
    now = timezone.now()
    candidates = (
        OutboxMessage.objects.filter(
            event_type__in=event_types,
            published_at__isnull=False,
            created_at__lte=now - timedelta(seconds=older_than),
            created_at__gt=now - timedelta(seconds=window),
        )
        .annotate(
            handled=Exists(InboxMessage.objects.filter(consumer=consumer, event_id=OuterRef("pk")))
        )
        .filter(handled=False)
        .order_by("created_at")
        .values_list("pk", "event_type", "created_at", "consumers")
    )
    # The relay records whom it sent each event to: only those must have handled it.
    for pk, event_type, created_at, consumers in candidates.iterator(chunk_size=500):
        if consumer in consumers:
            yield pk, event_type, created_at


def _types_by_consumer() -> dict[str, list[str]]:
    by_consumer: dict[str, list[str]] = {}
    for event_type, consumers in handled_event_types().items():
        for consumer in consumers:
            by_consumer.setdefault(consumer, []).append(event_type)
    return by_consumer


def unconsumed_events(*, grace_seconds: float, limit: int = 20) -> list[str]:
    """Events a consumer was sent and has not handled `grace_seconds` after they were
    published (it gave up, or its task was lost), one readable line each. Looks back as
    far as outbox and inbox keep their rows."""
    window = timedelta(
        days=min(settings.OUTBOX_RETENTION_DAYS, settings.INBOX_RETENTION_DAYS)
    ).total_seconds()
    problems = []
    for consumer, event_types in sorted(_types_by_consumer().items()):
        missed = list(_unhandled(consumer, event_types, older_than=grace_seconds, window=window))
        if missed:
            listed = ", ".join(f"{event_type} {pk}" for pk, event_type, _ in missed[:limit])
            problems.append(f"{consumer}: {len(missed)} event(s) not handled: {listed}")
    return problems


def consumer_lag() -> dict[str, float]:
    """Per consumer: how long its oldest relayed, unhandled event of the last
    EVENT_CONSUMER_LAG_WINDOW_SECONDS has waited (0 if none)."""
    now = timezone.now()
    lag: dict[str, float] = {}
    for consumer, event_types in _types_by_consumer().items():
        oldest = next(
            _unhandled(
                consumer,
                event_types,
                older_than=0,
                window=settings.EVENT_CONSUMER_LAG_WINDOW_SECONDS,
            ),
            None,
        )
        lag[consumer] = max((now - oldest[2]).total_seconds(), 0.0) if oldest else 0.0
    return lag


def sagas_about(*, key: str, value: str) -> QuerySet[SagaInstance]:
    """The sagas whose context holds `value` under `key` (e.g. one order's sagas)."""
    return SagaInstance.objects.filter(**{f"context__{key}": value}).order_by("created_at")


def sagas_in_trouble(*, since: datetime) -> dict[str, int]:
    """Sagas compensating now, and those that gave up (compensated) since `since`."""
    return {
        SagaInstance.State.COMPENSATING: SagaInstance.objects.filter(
            state=SagaInstance.State.COMPENSATING
        ).count(),
        SagaInstance.State.COMPENSATED: SagaInstance.objects.filter(
            state=SagaInstance.State.COMPENSATED, updated_at__gte=since
        ).count(),
    }

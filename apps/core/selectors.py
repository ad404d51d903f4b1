"""Shared-kernel queries.

Public API:

    outbox_backlog() -> (pending_count, oldest_pending_age_seconds)
    overdue_sagas(grace_seconds=...) -> readable lines, one per saga still running or
        compensating longer than `grace_seconds` past its deadline

for metrics, readiness and the integrity check: how many outbox messages wait for the
relay, and for how long the oldest has waited (0.0 when none). Read from the primary:
a replica's lag would show a backlog the relay has already cleared.
"""

from datetime import timedelta

from django.db.models import Count, Min
from django.utils import timezone

from apps.core.models import OutboxMessage, SagaInstance
from apps.core.routing import primary_reads


def outbox_backlog() -> tuple[int, float]:
    with primary_reads():
        backlog = OutboxMessage.objects.filter(published_at__isnull=True).aggregate(
            count=Count("id"), oldest=Min("created_at")
        )
    if not backlog["count"]:
        return 0, 0.0
    age = (timezone.now() - backlog["oldest"]).total_seconds()
    return backlog["count"], max(age, 0.0)


def overdue_sagas(*, grace_seconds: float) -> list[str]:
    overdue_since = timezone.now() - timedelta(seconds=grace_seconds)
    with primary_reads():
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

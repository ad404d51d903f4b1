"""Shared-kernel queries.

Public API:

    outbox_backlog() -> (pending_count, oldest_pending_age_seconds)

for metrics and readiness: how many outbox messages wait for the relay, and for how long
the oldest has waited (0.0 when none). Read from the primary: a replica's lag would
show a backlog the relay has already cleared.
"""

from django.db.models import Count, Min
from django.utils import timezone

from apps.core.models import OutboxMessage
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

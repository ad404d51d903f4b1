"""Celery entry points of webhooks (queue `events`, CELERY_TASK_ROUTES).

- `deliver_webhook`: one attempt of one delivery, if it is due; a failed attempt
  queues the next one itself (the row holds the state, the task is only a prompt).
- `sweep_webhook_deliveries`: every WEBHOOK_SWEEP_SECONDS by beat; re-queues overdue
  deliveries and disables subscriptions failing for too long.
- `purge_webhook_deliveries` (queue `default`): daily by beat; finished deliveries past
  WEBHOOK_DELIVERY_RETENTION_DAYS.
"""

from celery import shared_task

from apps.core.messaging.webhooks.delivery import (
    webhook_deliveries_purge_finished,
    webhook_deliveries_sweep,
    webhook_delivery_attempt,
)


@shared_task(name="apps.core.messaging.webhooks.tasks.deliver_webhook")
def deliver_webhook(*, delivery_id: int) -> str | None:
    return webhook_delivery_attempt(delivery_id)


@shared_task(name="apps.core.messaging.webhooks.tasks.sweep_webhook_deliveries")
def sweep_webhook_deliveries() -> dict[str, int]:
    return webhook_deliveries_sweep()


@shared_task(name="apps.core.messaging.webhooks.tasks.purge_webhook_deliveries")
def purge_webhook_deliveries() -> int:
    return webhook_deliveries_purge_finished()

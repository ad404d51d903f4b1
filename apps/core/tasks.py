"""The shared kernel's Celery tasks, for Celery's autodiscovery (`<app>.tasks`).

Each task is defined next to the work it runs, and code sends it as an object
(`task.apply_async(...)`); queues are in CELERY_TASK_ROUTES, schedules in
CELERY_BEAT_SCHEDULE.
"""

from apps.core.http.idempotency import purge_expired_idempotency_records
from apps.core.messaging.inbox import deliver_event, deliver_events
from apps.core.messaging.outbox import purge_processed_messages, relay_outbox
from apps.core.messaging.webhooks.delivery import (
    deliver_webhook,
    purge_webhook_deliveries,
    sweep_webhook_deliveries,
)
from apps.core.workflows.sagas import drain_sagas, sweep_sagas

__all__ = [
    "deliver_event",
    "deliver_events",
    "deliver_webhook",
    "drain_sagas",
    "purge_expired_idempotency_records",
    "purge_processed_messages",
    "purge_webhook_deliveries",
    "relay_outbox",
    "sweep_sagas",
    "sweep_webhook_deliveries",
]

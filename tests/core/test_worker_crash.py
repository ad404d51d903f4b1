"""A worker SIGKILLed while handling an event: the event is handled once after a restart."""

import time

import pytest
from django.core.cache import cache
from django.db import transaction

from apps.core.models import InboxMessage, OutboxMessage
from apps.core.outbox import publish_event
from tests.core.event_probes import ECHOED, SLOW
from tests.support.celery_worker import VISIBILITY_TIMEOUT_SECONDS, wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.usefixtures("assertions_read_the_primary"),
]


def echoes_of(event_id) -> list[OutboxMessage]:
    return list(OutboxMessage.objects.filter(event_type=ECHOED, payload__of=str(event_id)))


def test_worker_killed_mid_delivery_redelivers_the_event_after_restart(start_celery_worker):
    worker = start_celery_worker(include=["tests.core.event_probes"])
    with transaction.atomic():
        event_id = publish_event(event_type=SLOW, payload={"seconds": 30})
    started_at = wait_until(
        lambda: cache.get(f"probe-started:{event_id}"), timeout=15, what="the handler to start"
    )

    worker.kill()
    assert echoes_of(event_id) == []
    assert not InboxMessage.objects.filter(event_id=event_id).exists()
    # The unacknowledged task goes back to the queue once its visibility timeout has passed.
    time.sleep(max(0.0, started_at + VISIBILITY_TIMEOUT_SECONDS + 0.2 - time.time()))
    worker.start()

    wait_until(lambda: echoes_of(event_id), timeout=15, what="the redelivered event's effect")
    assert len(echoes_of(event_id)) == 1
    assert InboxMessage.objects.filter(event_id=event_id).count() == 1

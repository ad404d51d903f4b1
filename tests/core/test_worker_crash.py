"""Workers SIGKILLed mid-delivery or mid-relay: after a restart every event is handled once."""

import time

import pytest
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from apps.core.models import InboxMessage, OutboxMessage
from apps.core.outbox import kick_relay, publish_event
from apps.core.selectors import outbox_backlog
from tests.core.event_probes import ECHOED, QUIET, SLOW
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


def test_relay_killed_mid_run_still_delivers_every_event_once(start_celery_worker):
    worker = start_celery_worker(
        include=["tests.core.event_probes"], env={"OUTBOX_RELAY_BATCH_SIZE": "10"}
    )
    messages = OutboxMessage.objects.bulk_create(
        OutboxMessage(event_type=QUIET, payload={"n": n}, created_at=timezone.now())
        for n in range(150)
    )
    ids = [m.id for m in messages]
    published = OutboxMessage.objects.filter(pk__in=ids, published_at__isnull=False)

    kick_relay()
    wait_until(lambda: published.count() >= 10, timeout=15, interval=0.01, what="a batch")
    worker.kill()
    killed_at = time.time()
    published_at_kill = published.count()
    assert 0 < published_at_kill < len(ids), "the relay was not killed mid-run"

    # The relay task was not acknowledged: it comes back once its visibility timeout passed.
    time.sleep(max(0.0, killed_at + VISIBILITY_TIMEOUT_SECONDS + 0.2 - time.time()))
    worker.start()
    wait_until(
        lambda: InboxMessage.objects.filter(event_id__in=ids).count() == len(ids),
        timeout=60,
        interval=0.2,
        what="every event handled",
    )
    assert outbox_backlog() == (0, 0.0)
    print(f"relay killed after {published_at_kill}/{len(ids)} published; all handled once")

"""Workers SIGKILLed mid-delivery or mid-relay: after a restart every event is handled once."""

import time

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from apps.core.messaging.outbox import kick_relay, publish_event
from apps.core.models import InboxMessage, OutboxMessage
from apps.core.selectors import outbox_backlog
from tests.core.event_probes import ECHOED, IN_RELAY, QUIET, SLOW
from tests.support.celery_worker import VISIBILITY_TIMEOUT_SECONDS, wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
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


def relay_blocked_stamping_its_batch() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # fresh activity, mid-transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ' AND query LIKE \'UPDATE "core_outboxmessage" SET "published_at"%%\''
        )
        return cursor.fetchone()[0] > 0


def test_relay_killed_mid_batch_still_delivers_every_event_once(start_celery_worker):
    worker = start_celery_worker(
        include=["tests.core.event_probes"], env={"OUTBOX_RELAY_BATCH_SIZE": "10"}
    )
    messages = OutboxMessage.objects.bulk_create(
        OutboxMessage(event_type=QUIET, payload={"n": n}, created_at=timezone.now())
        for n in range(60)
    )
    ids = [m.id for m in messages]

    with transaction.atomic():
        # SHARE mode lets the relay claim (FOR UPDATE) and send its first batch, then
        # holds it at the UPDATE that stamps the batch: killed there, it dies mid-batch.
        with connection.cursor() as cursor:
            cursor.execute("LOCK TABLE core_outboxmessage IN SHARE MODE")
        kick_relay()
        wait_until(relay_blocked_stamping_its_batch, timeout=15, what="the relay mid-batch")
        worker.kill()
        killed_at = time.time()
    assert OutboxMessage.objects.filter(pk__in=ids, published_at__isnull=True).count() == 60

    # The relay task was not acknowledged: it comes back once its visibility timeout passed
    # and sends everything, the first batch a second time.
    time.sleep(max(0.0, killed_at + VISIBILITY_TIMEOUT_SECONDS + 0.2 - time.time()))
    worker.start()
    wait_until(
        lambda: InboxMessage.objects.filter(event_id__in=ids).count() == len(ids),
        timeout=60,
        interval=0.2,
        what="every event handled",
    )
    assert outbox_backlog() == (0, 0.0)


def backends_blocked_writing_an_echo() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'INSERT INTO \"core_outboxmessage\"%%'"
        )
        return int(cursor.fetchone()[0])


def test_relay_killed_while_it_handles_an_in_relay_consumer_still_handles_every_event_once(
    start_celery_worker,
):
    worker = start_celery_worker(include=["tests.core.event_probes"])
    messages = OutboxMessage.objects.bulk_create(
        OutboxMessage(event_type=IN_RELAY, payload={"n": n}, created_at=timezone.now())
        for n in range(5)
    )
    ids = [m.id for m in messages]

    with transaction.atomic():
        # SHARE mode lets the relay claim and send tests.by_task its task, then holds the
        # relay in the in-relay handler's first write (and that task in its own).
        with connection.cursor() as cursor:
            cursor.execute("LOCK TABLE core_outboxmessage IN SHARE MODE")
        kick_relay()
        wait_until(
            lambda: backends_blocked_writing_an_echo() == 2,
            timeout=15,
            what="the relay inside its in-relay handler",
        )
        worker.kill()
        killed_at = time.time()
    assert OutboxMessage.objects.filter(pk__in=ids, published_at__isnull=True).count() == 5
    assert not InboxMessage.objects.filter(event_id__in=ids).exists()

    time.sleep(max(0.0, killed_at + VISIBILITY_TIMEOUT_SECONDS + 0.2 - time.time()))
    worker.start()
    wait_until(
        lambda: InboxMessage.objects.filter(event_id__in=ids).count() == 2 * len(ids),
        timeout=60,
        interval=0.2,
        what="every event handled by both consumers",
    )
    echoes = OutboxMessage.objects.filter(event_type=ECHOED, payload__of__in=[str(i) for i in ids])
    assert sorted(e.payload["by"] for e in echoes) == ["tests.by_task"] * 5 + ["tests.in_relay"] * 5
    wait_until(lambda: outbox_backlog() == (0, 0.0), timeout=15, what="an empty backlog")

"""The event pipeline on the embedded defaults of `make run` (SQLite, filesystem broker).

SQLite has neither row locks nor SKIP LOCKED: the relay's claim degrades to a plain
select, serialised by SQLite's IMMEDIATE write transactions.
"""

from pathlib import Path

import pytest
from django.db import transaction

from apps.core.messaging.outbox import publish_event, relay_pending_messages
from apps.core.models import InboxMessage, OutboxMessage
from apps.core.selectors import outbox_backlog
from apps.core.tasks import deliver_event
from tests.core.event_probes import ECHOED, IN_RELAY, PROBED

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]


@pytest.fixture
def broker_folders(settings):
    # `make run` creates them (scripts/run_stack.py); a filesystem broker needs them.
    for option in ("data_folder_in", "data_folder_out", "processed_folder"):
        folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get(option)
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)


def test_events_are_published_relayed_and_consumed_once_on_the_embedded_defaults(
    broker_folders,
):
    with transaction.atomic():
        event_id = publish_event(event_type=PROBED, payload={"n": 1})
    assert outbox_backlog()[0] == 1

    assert relay_pending_messages() == 1
    assert OutboxMessage.objects.get(pk=event_id).published_at is not None

    message = OutboxMessage.objects.get(pk=event_id)
    delivery = {
        "event_id": str(event_id),
        "event_type": PROBED,
        "payload": message.payload,
        "headers": message.headers,
        "consumer": "tests.echo",
    }
    assert deliver_event.apply(kwargs=delivery).get() is True
    assert deliver_event.apply(kwargs=delivery).get() is False
    assert OutboxMessage.objects.filter(event_type=ECHOED, payload__of=str(event_id)).count() == 1
    assert InboxMessage.objects.filter(event_id=event_id).count() == 1


def test_an_in_relay_consumer_handles_its_events_once_in_the_relay_on_the_embedded_defaults(
    broker_folders,
):
    with transaction.atomic():
        ids = [publish_event(event_type=IN_RELAY, payload={"n": n}) for n in range(3)]

    assert relay_pending_messages() == 3
    # Again, as after a crash: the inbox rows, written in one statement, skip them.
    OutboxMessage.objects.filter(pk__in=ids).update(published_at=None)
    assert relay_pending_messages() == 3

    echoes = OutboxMessage.objects.filter(event_type=ECHOED, payload__by="tests.in_relay")
    assert sorted(e.payload["of"] for e in echoes) == sorted(str(i) for i in ids)
    assert {e.payload["batch_size"] for e in echoes} == {3}

    # A batch whose statement breaks leaves its events to a task, and the relay goes on.
    with transaction.atomic():
        broken = publish_event(event_type=IN_RELAY, payload={"break_batch": True})
    assert relay_pending_messages() == 1
    assert not InboxMessage.objects.filter(consumer="tests.in_relay", event_id=broken).exists()
    assert outbox_backlog() == (0, 0.0)

"""Webhooks on the embedded defaults of `make run` (SQLite, filesystem broker): no row
locks there, SQLite's write transactions serialise the claim."""

from pathlib import Path

import pytest
from django.db import transaction

from apps.core.messaging.outbox import publish, relay_pending_messages
from apps.core.messaging.webhooks.delivery import FAN_OUT_CONSUMER, deliver_webhook
from apps.core.messaging.webhooks.services import webhook_subscription_create
from apps.core.models import OutboxMessage, WebhookDelivery
from apps.core.tasks import deliver_event
from tests.core.webhook_probes import WebhookProbeHappened
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]
SECRET = "whsec_test-secret-of-the-receiver"


@pytest.fixture
def broker_folders(settings):
    for option in ("data_folder_in", "data_folder_out", "processed_folder"):
        folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get(option)
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)


def test_a_subscribed_event_is_fanned_out_and_delivered_signed_on_the_embedded_defaults(
    broker_folders,
):
    with WebhookReceiver(secret=SECRET, fail_first=1) as receiver:
        webhook_subscription_create(
            target_url=receiver.url, event_types=["WebhookProbeHappened"], secret=SECRET
        )
        with transaction.atomic():
            event_id = publish(WebhookProbeHappened(n=1))
        assert relay_pending_messages() == 1
        message = OutboxMessage.objects.get(pk=event_id)
        fan_out = {
            "event_id": str(event_id),
            "event_type": message.event_type,
            "payload": message.payload,
            "headers": message.headers,
            "created_at": message.created_at.isoformat(),
            "consumer": FAN_OUT_CONSUMER,
        }
        assert deliver_event.apply(kwargs=fan_out).get() is True
        assert deliver_event.apply(kwargs=fan_out).get() is False  # the inbox stops a rerun
        (delivery,) = WebhookDelivery.objects.all()

        assert deliver_webhook.apply(kwargs={"delivery_id": delivery.pk}).get() == "retrying"
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=message.created_at)
        assert deliver_webhook.apply(kwargs={"delivery_id": delivery.pk}).get() == "succeeded"

        assert [r.status for r in receiver.requests] == [500, 204]
        assert all(r.signature_valid for r in receiver.requests)

"""A webhook subscription with one delivery, for tests that need real ids to address."""

import uuid

from django.db import transaction
from django.utils import timezone

from apps.core.messaging.inbox import EventEnvelope
from apps.core.messaging.webhooks.delivery import fan_out
from apps.core.messaging.webhooks.services import webhook_subscription_create
from apps.core.models import WebhookDelivery, WebhookSubscription


def seed_webhook() -> tuple[WebhookSubscription, WebhookDelivery]:
    subscription = webhook_subscription_create(
        target_url="https://shop.example/hooks", event_types=["OrderConfirmed"]
    )
    with transaction.atomic():
        fan_out(
            EventEnvelope(
                id=uuid.uuid4(),
                type="OrderConfirmed",
                payload={"order_id": str(uuid.uuid4())},
                created_at=timezone.now(),
            )
        )
    return subscription, WebhookDelivery.objects.get(subscription=subscription)

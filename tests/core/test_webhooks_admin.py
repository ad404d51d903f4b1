"""Staff manage webhook subscriptions in the admin: create (the secret shown once),
see why one was disabled, re-enable it, and send a delivery again."""

import uuid

import pytest
from django.db import transaction
from django.utils import timezone

from apps.core.messaging.inbox import EventEnvelope
from apps.core.messaging.webhooks.delivery import fan_out
from apps.core.messaging.webhooks.services import webhook_subscription_create
from apps.core.models import WebhookDelivery, WebhookSubscription
from tests.core.webhook_probes import WebhookProbeHappened  # noqa: F401 (registers the type)

pytestmark = pytest.mark.django_db
SUBSCRIPTIONS = "/admin/core/webhooksubscription/"
DELIVERIES = "/admin/core/webhookdelivery/"
PROBE = "WebhookProbeHappened"


def test_staff_create_a_subscription_and_see_its_secret_once(admin_client):
    response = admin_client.post(
        f"{SUBSCRIPTIONS}add/",
        {"target_url": "https://shop.example/h", "event_types": [PROBE], "description": "ERP"},
        follow=True,
    )
    assert response.status_code == 200
    (subscription,) = WebhookSubscription.objects.all()
    assert subscription.event_types == [PROBE] and subscription.secret.startswith("whsec_")
    assert subscription.secret in response.content.decode()
    change_page = admin_client.get(f"{SUBSCRIPTIONS}{subscription.pk}/change/").content.decode()
    assert subscription.secret not in change_page


def test_invalid_target_is_refused_by_the_form(admin_client):
    response = admin_client.post(
        f"{SUBSCRIPTIONS}add/",
        {"target_url": "https://user:pw@shop.example/h", "event_types": [PROBE]},
    )
    assert response.status_code == 200
    assert "Credentials in the URL are not allowed." in response.content.decode()
    assert not WebhookSubscription.objects.exists()


def test_staff_see_why_a_subscription_was_disabled_and_enable_it(admin_client):
    subscription = webhook_subscription_create(target_url="https://a.example/", event_types=[PROBE])
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        is_active=False,
        failing_since=timezone.now(),
        disabled_at=timezone.now(),
        disabled_reason="no delivery succeeded for 259200 s; last: HTTP 500",
    )
    assert "last: HTTP 500" in admin_client.get(SUBSCRIPTIONS).content.decode()

    admin_client.post(
        SUBSCRIPTIONS, {"action": "enable", "_selected_action": [subscription.pk]}, follow=True
    )

    subscription.refresh_from_db()
    assert subscription.is_active and subscription.failing_since is None
    assert subscription.disabled_reason == ""


def test_staff_send_a_delivery_again_from_the_log(admin_client):
    subscription = webhook_subscription_create(target_url="https://a.example/", event_types=[PROBE])
    with transaction.atomic():
        fan_out(EventEnvelope(id=uuid.uuid4(), type=PROBE, payload={"n": 1}))
    delivery = WebhookDelivery.objects.get(subscription=subscription)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status="failed", last_status_code=500, last_error="HTTP 500", attempts=9
    )
    log = admin_client.get(DELIVERIES).content.decode()
    assert "HTTP 500" in log

    admin_client.post(
        DELIVERIES, {"action": "send_again", "_selected_action": [delivery.pk]}, follow=True
    )

    delivery.refresh_from_db()
    assert delivery.status == "pending"

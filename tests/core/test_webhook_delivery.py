"""Webhooks end to end: outbox -> relay -> `webhooks.fan_out` -> signed POSTs to a real
receiver on loopback, through a real Celery worker (and beat), PostgreSQL and Redis."""

import time
import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apps.core.messaging.inbox import EventEnvelope
from apps.core.messaging.outbox import event_message, publish, publish_event
from apps.core.messaging.webhooks.delivery import delivery_body
from apps.core.messaging.webhooks.services import (
    webhook_delivery_redeliver,
    webhook_subscription_create,
)
from apps.core.models import OutboxMessage, WebhookDelivery, WebhookSubscription
from tests.core.event_probes import ECHOED, PROBED
from tests.core.webhook_probes import UnsubscribedProbeHappened, WebhookProbeHappened
from tests.support.celery_worker import wait_until
from tests.support.webhook_receiver import WebhookReceiver, closed_port_url

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
]
PROBES = ["tests.core.webhook_probes", "tests.core.event_probes"]
SECRET = "whsec_test-secret-of-the-receiver"
TIMEOUT = 30
# Retries in tenths of a second, so that tests see them.
FAST_RETRIES = {"WEBHOOK_RETRY_BASE_SECONDS": "0.1", "WEBHOOK_RETRY_MAX_SECONDS": "0.4"}


def subscribe(url: str, event_types=("WebhookProbeHappened",)) -> WebhookSubscription:
    return webhook_subscription_create(target_url=url, event_types=list(event_types), secret=SECRET)


def publish_probe(event) -> str:
    with transaction.atomic():
        return str(publish(event, aggregate_type="probe", aggregate_id=str(event.n)))


def deliveries_of(subscription: WebhookSubscription, status: str | None = None):
    deliveries = WebhookDelivery.objects.filter(subscription=subscription)
    return list(deliveries.filter(status=status) if status else deliveries)


def test_each_subscribed_event_is_received_once_despite_two_failed_attempts(start_celery_worker):
    with WebhookReceiver(secret=SECRET, fail_first=2) as receiver:
        subscription = subscribe(receiver.url)
        start_celery_worker(include=PROBES, env=FAST_RETRIES)
        unsubscribed = publish_probe(UnsubscribedProbeHappened(n=0))
        event_ids = [publish_probe(WebhookProbeHappened(n=n, note="hi")) for n in (1, 2, 3)]

        wait_until(
            lambda: len(deliveries_of(subscription, "succeeded")) == 3,
            timeout=TIMEOUT,
            what="three deliveries to succeed",
        )
        assert sorted(receiver.accepted_event_ids()) == sorted(event_ids)
        for event_id in event_ids:
            requests = receiver.requests_for(event_id)
            assert [r.status for r in requests] == [500, 500, 204]
            assert all(r.signature_valid for r in requests)
            # Every attempt sends the same document.
            assert len({r.body for r in requests}) == 1
        document = receiver.requests_for(event_ids[0])[0].document
        assert document == {
            "id": event_ids[0],
            "type": "WebhookProbeHappened",
            "schema_version": 2,
            "created_at": OutboxMessage.objects.get(pk=event_ids[0]).created_at.isoformat(),
            "aggregate": {"type": "probe", "id": "1"},
            "payload": {"n": 1, "note": "hi"},
        }
        headers = receiver.requests_for(event_ids[0])[0].headers
        assert headers["Mercato-Event-Type"] == "WebhookProbeHappened"
        assert headers["Content-Type"] == "application/json"
        for delivery in deliveries_of(subscription):
            assert delivery.attempts == 3
            assert delivery.last_status_code == 204
            assert delivery.last_latency_ms is not None
        # The type nobody subscribed to was never sent, nor even relayed.
        assert receiver.requests_for(unsubscribed) == []
        message = OutboxMessage.objects.get(pk=unsubscribed)
        assert message.published_at == message.created_at
        subscription.refresh_from_db()
        assert subscription.is_active and subscription.failing_since is None


def test_staff_redelivery_sends_the_same_event_again(start_celery_worker):
    with WebhookReceiver(secret=SECRET) as receiver:
        subscription = subscribe(receiver.url)
        start_celery_worker(include=PROBES, env=FAST_RETRIES)
        started = time.monotonic()
        event_id = publish_probe(WebhookProbeHappened(n=1))
        wait_until(lambda: receiver.accepted_event_ids(), timeout=TIMEOUT, what="delivery")
        print(f"commit -> subscriber received: {(time.monotonic() - started) * 1000:.0f} ms")
        wait_until(
            lambda: deliveries_of(subscription, "succeeded"), timeout=TIMEOUT, what="recording"
        )
        (delivery,) = deliveries_of(subscription)

        webhook_delivery_redeliver(subscription_id=subscription.pk, delivery_id=delivery.pk)

        wait_until(
            lambda: receiver.accepted_event_ids() == [event_id, event_id],
            timeout=TIMEOUT,
            what="the redelivery",
        )
        wait_until(lambda: deliveries_of(subscription, "succeeded"), timeout=TIMEOUT)
        delivery.refresh_from_db()
        assert delivery.attempts == 2
        first, second = receiver.requests_for(event_id)
        assert first.body == second.body and second.signature_valid


def test_subscriber_down_past_the_retry_window_fails_then_is_disabled_and_nothing_else_stops(
    start_celery_worker, start_celery_beat
):
    windows = {
        **FAST_RETRIES,
        "WEBHOOK_RETRY_WINDOW_SECONDS": "1.5",
        "WEBHOOK_DISABLE_AFTER_SECONDS": "5",
        "WEBHOOK_SWEEP_SECONDS": "0.5",
    }
    with WebhookReceiver(secret=SECRET) as receiver:
        down = subscribe(closed_port_url())
        healthy = subscribe(receiver.url)
        start_celery_worker(include=PROBES, env=windows)
        start_celery_beat(env=windows)
        first = publish_probe(WebhookProbeHappened(n=1))

        (failed,) = wait_until(
            lambda: deliveries_of(down, "failed"), timeout=TIMEOUT, what="the delivery to fail"
        )
        assert "ConnectError" in failed.last_error
        wait_until(
            lambda: not WebhookSubscription.objects.get(pk=down.pk).is_active,
            timeout=TIMEOUT,
            what="the failing subscription to be disabled",
        )
        down.refresh_from_db()
        # Failed at the end of its window, then disabled: not stopped by the disabling.
        assert failed.retry_until <= down.disabled_at
        assert down.disabled_reason.startswith("no delivery succeeded for 5 s")
        assert "ConnectError" in down.disabled_reason

        # The other subscription and the other consumers go on.
        second = publish_probe(WebhookProbeHappened(n=2))
        with transaction.atomic():
            probe = str(publish_event(event_type=PROBED, payload={"n": 1}))
        wait_until(
            lambda: sorted(receiver.accepted_event_ids()) == sorted([first, second]),
            timeout=TIMEOUT,
            what="the healthy subscriber to receive both events",
        )
        wait_until(
            lambda: OutboxMessage.objects.filter(event_type=ECHOED, payload__of=probe).exists(),
            timeout=TIMEOUT,
            what="the other consumer to handle its event",
        )
        assert not WebhookDelivery.objects.filter(subscription=down, event_id=second).exists()
        healthy.refresh_from_db()
        assert healthy.is_active


def test_a_delivery_whose_task_was_lost_is_sent_by_the_sweep(
    start_celery_worker, start_celery_beat
):
    sweep = {**FAST_RETRIES, "WEBHOOK_SWEEP_SECONDS": "0.5"}
    with WebhookReceiver(secret=SECRET) as receiver:
        subscription = subscribe(receiver.url)
        start_celery_worker(include=PROBES, env=sweep)
        event = envelope_of(WebhookProbeHappened(n=1))
        # Written by a fan-out whose queued task never reached a worker.
        WebhookDelivery.objects.create(
            subscription=subscription,
            event_id=event.id,
            event_type=event.type,
            body=delivery_body(event),
            next_attempt_at=timezone.now() - timedelta(seconds=5),
            retry_until=timezone.now() + timedelta(hours=1),
        )
        start_celery_beat(env=sweep)

        wait_until(
            lambda: deliveries_of(subscription, "succeeded"), timeout=TIMEOUT, what="the sweep"
        )
        assert receiver.accepted_event_ids() == [str(event.id)]


def envelope_of(event) -> EventEnvelope:
    event_type, payload = event_message(event)
    return EventEnvelope(
        id=uuid.uuid4(), type=event_type, payload=payload, created_at=timezone.now()
    )

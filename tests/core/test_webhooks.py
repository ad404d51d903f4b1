"""Webhook fan-out, attempts, auto-disable and the subscribed-types cache, in process
(attempts POST to a real receiver on loopback; no worker: attempts are called here)."""

import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apps.core.messaging.inbox import EventEnvelope, consumers_of
from apps.core.messaging.webhooks.delivery import (
    FAN_OUT_CONSUMER,
    fan_out,
    subscribed_event_types_forget,
    wanted_by_a_subscription,
    webhook_deliveries_purge_finished,
    webhook_deliveries_sweep,
    webhook_delivery_attempt,
)
from apps.core.messaging.webhooks.services import (
    webhook_subscription_create,
    webhook_subscription_update,
)
from apps.core.models import WebhookDelivery, WebhookSubscription
from apps.core.observability.metrics import render_metrics
from tests.core.webhook_probes import WebhookProbeHappened  # noqa: F401 (registers the type)
from tests.support.metrics import sample_value
from tests.support.webhook_receiver import WebhookReceiver, closed_port_url

pytestmark = [
    pytest.mark.django_db(transaction=True),
]
SECRET = "whsec_test-secret-of-the-receiver"
PROBE = "WebhookProbeHappened"


def subscribe(url: str, event_types=(PROBE,)) -> WebhookSubscription:
    return webhook_subscription_create(target_url=url, event_types=list(event_types), secret=SECRET)


def envelope(n: int = 1) -> EventEnvelope:
    return EventEnvelope(
        id=uuid.uuid4(),
        type=PROBE,
        payload={"n": n, "note": ""},
        aggregate_type="probe",
        aggregate_id=str(n),
        headers={"schema_version": 2},
        created_at=timezone.now(),
    )


def fan_out_committed(event: EventEnvelope) -> list[WebhookDelivery]:
    with transaction.atomic():
        fan_out(event)
    return list(WebhookDelivery.objects.filter(event_id=event.id).order_by("subscription_id"))


def metric(name: str, **labels: str) -> float:
    return sample_value(render_metrics(with_platform_state=False).decode(), name, **labels) or 0.0


def test_fan_out_writes_one_delivery_per_active_matching_subscription_even_when_run_twice():
    wanted = subscribe("http://127.0.0.1:9/a")
    subscribe("http://127.0.0.1:9/b", event_types=["UnsubscribedProbeHappened"])
    stopped = subscribe("http://127.0.0.1:9/c")
    webhook_subscription_update(subscription_id=stopped.pk, is_active=False)
    event = envelope()

    first = fan_out_committed(event)
    again = fan_out_committed(event)

    assert [d.subscription_id for d in first] == [wanted.pk]
    assert [d.pk for d in again] == [first[0].pk]
    assert first[0].status == "pending" and first[0].event_type == PROBE


def test_fan_out_consumer_wants_a_type_only_while_an_active_subscription_does(settings):
    settings.WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS = 3600
    subscribed_event_types_forget()
    assert FAN_OUT_CONSUMER not in consumers_of(PROBE)

    subscription = subscribe("http://127.0.0.1:9/a")
    assert FAN_OUT_CONSUMER in consumers_of(PROBE)  # this process sees its own change at once

    webhook_subscription_update(subscription_id=subscription.pk, is_active=False)
    assert not wanted_by_a_subscription(PROBE)


def test_a_change_made_by_another_process_is_seen_after_the_refresh_period(settings):
    settings.WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS = 3600
    subscribed_event_types_forget()
    assert not wanted_by_a_subscription(PROBE)
    # Written as another process would: this process's cached set is not dropped.
    WebhookSubscription.objects.create(target_url="http://127.0.0.1:9/", event_types=[PROBE])
    assert not wanted_by_a_subscription(PROBE)

    settings.WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS = 0
    assert wanted_by_a_subscription(PROBE)


def test_a_successful_attempt_is_signed_recorded_and_counted():
    succeeded_before = metric("mercato_webhook_deliveries_total", outcome="succeeded")
    timed_before = metric("mercato_webhook_delivery_seconds_count")
    with WebhookReceiver(secret=SECRET) as receiver:
        subscription = subscribe(receiver.url)
        WebhookSubscription.objects.filter(pk=subscription.pk).update(
            failing_since=timezone.now() - timedelta(minutes=5)
        )
        (delivery,) = fan_out_committed(envelope())

        assert webhook_delivery_attempt(delivery.pk) == "succeeded"

        (request,) = receiver.requests
        assert request.signature_valid and request.status == 204
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 204)
    assert delivery.delivered_at is not None and delivery.last_error == ""
    subscription.refresh_from_db()
    assert subscription.failing_since is None  # a success ends the failure streak
    assert metric("mercato_webhook_deliveries_total", outcome="succeeded") == succeeded_before + 1
    assert metric("mercato_webhook_delivery_seconds_count") == timed_before + 1


def test_a_delivery_is_attempted_once_at_a_time_and_only_when_due():
    with WebhookReceiver(secret=SECRET, fail_first=1) as receiver:
        subscribe(receiver.url)
        (delivery,) = fan_out_committed(envelope())

        assert webhook_delivery_attempt(delivery.pk) == "retrying"
        # A duplicate task before the retry is due makes no request.
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            next_attempt_at=timezone.now() + timedelta(minutes=1)
        )
        assert webhook_delivery_attempt(delivery.pk) is None
        assert len(receiver.requests) == 1
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts, delivery.last_error) == (
            "pending",
            1,
            "HTTP 500",
        )


def test_a_failed_attempt_past_the_window_gives_up(settings):
    gave_up_before = metric("mercato_webhook_deliveries_total", outcome="gave_up")
    subscription = subscribe(closed_port_url())
    (delivery,) = fan_out_committed(envelope())
    WebhookDelivery.objects.filter(pk=delivery.pk).update(retry_until=timezone.now())

    assert webhook_delivery_attempt(delivery.pk) == "gave_up"

    delivery.refresh_from_db()
    assert delivery.status == "failed" and "ConnectError" in delivery.last_error
    subscription.refresh_from_db()
    assert subscription.is_active and subscription.failing_since is not None
    assert metric("mercato_webhook_deliveries_total", outcome="gave_up") == gave_up_before + 1


def test_a_subscription_failing_for_too_long_is_disabled_and_its_pending_deliveries_stop(
    settings,
):
    settings.WEBHOOK_DISABLE_AFTER_SECONDS = 60
    subscription = subscribe(closed_port_url())
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        failing_since=timezone.now() - timedelta(seconds=61)
    )
    attempted, waiting = fan_out_committed(envelope(1)) + fan_out_committed(envelope(2))

    webhook_delivery_attempt(attempted.pk)

    subscription.refresh_from_db()
    assert not subscription.is_active and subscription.disabled_at is not None
    assert subscription.disabled_reason.startswith("no delivery succeeded for 60 s")
    assert "ConnectError" in subscription.disabled_reason
    attempted.refresh_from_db()
    waiting.refresh_from_db()
    assert attempted.status == waiting.status == "failed"
    assert waiting.attempts == 0
    assert waiting.last_error == "not sent: the subscription was disabled"
    assert not wanted_by_a_subscription(PROBE)


def test_the_sweep_disables_a_subscription_with_nothing_left_to_try(settings):
    settings.WEBHOOK_DISABLE_AFTER_SECONDS = 60
    failing = subscribe(closed_port_url())
    healthy = subscribe("http://127.0.0.1:9/healthy")
    (delivery,) = [d for d in fan_out_committed(envelope()) if d.subscription_id == failing.pk]
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status="failed", last_error="HTTP 503", attempts=7
    )
    WebhookSubscription.objects.filter(pk__in=[failing.pk, healthy.pk]).update(
        failing_since=timezone.now() - timedelta(seconds=30)
    )
    assert webhook_deliveries_sweep()["disabled"] == 0

    WebhookSubscription.objects.filter(pk=failing.pk).update(
        failing_since=timezone.now() - timedelta(seconds=61)
    )
    assert webhook_deliveries_sweep()["disabled"] == 1

    failing.refresh_from_db()
    healthy.refresh_from_db()
    assert not failing.is_active and failing.disabled_reason.endswith("last: HTTP 503")
    assert healthy.is_active


def test_the_sweep_requeues_only_deliveries_overdue_by_a_sweep_period(settings):
    settings.WEBHOOK_SWEEP_SECONDS = 30
    subscribe("http://127.0.0.1:9/")
    (overdue,) = fan_out_committed(envelope(1))
    fan_out_committed(envelope(2))  # due now: its task is queued, not lost
    WebhookDelivery.objects.filter(pk=overdue.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=31)
    )
    assert webhook_deliveries_sweep()["requeued"] == 1


def test_finished_deliveries_past_their_retention_are_purged_pending_ones_stay(settings):
    settings.WEBHOOK_DELIVERY_RETENTION_DAYS = 30
    subscribe("http://127.0.0.1:9/")
    deliveries = {
        name: fan_out_committed(envelope(n))[0]
        for n, name in enumerate(["old succeeded", "old failed", "old pending", "recent"])
    }
    long_ago = timezone.now() - timedelta(days=31)
    for name, status in [("old succeeded", "succeeded"), ("old failed", "failed")]:
        WebhookDelivery.objects.filter(pk=deliveries[name].pk).update(
            status=status, created_at=long_ago
        )
    WebhookDelivery.objects.filter(pk=deliveries["old pending"].pk).update(created_at=long_ago)
    WebhookDelivery.objects.filter(pk=deliveries["recent"].pk).update(status="succeeded")

    assert webhook_deliveries_purge_finished() == 2

    remaining = set(WebhookDelivery.objects.values_list("pk", flat=True))
    assert remaining == {deliveries["old pending"].pk, deliveries["recent"].pk}

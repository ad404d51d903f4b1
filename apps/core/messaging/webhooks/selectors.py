"""Reads of webhook subscriptions and their delivery log."""

from django.db.models import QuerySet

from apps.core.errors import NotFound
from apps.core.models import WebhookDelivery, WebhookSubscription


class WebhookSubscriptionNotFound(NotFound):
    problem_type = "webhook-subscription-not-found"
    title = "Webhook subscription not found"


class WebhookDeliveryNotFound(NotFound):
    problem_type = "webhook-delivery-not-found"
    title = "Webhook delivery not found"


def webhook_subscription_list() -> QuerySet[WebhookSubscription]:
    return WebhookSubscription.objects.all()


def webhook_subscription_get(*, subscription_id: int) -> WebhookSubscription:
    subscription = WebhookSubscription.objects.filter(pk=subscription_id).first()
    if subscription is None:
        raise WebhookSubscriptionNotFound(f"No webhook subscription {subscription_id}.")
    return subscription


def webhook_delivery_list(
    *, subscription_id: int, status: str | None = None
) -> QuerySet[WebhookDelivery]:
    webhook_subscription_get(subscription_id=subscription_id)
    deliveries = WebhookDelivery.objects.filter(subscription_id=subscription_id)
    if status:
        deliveries = deliveries.filter(status=status)
    return deliveries


def webhook_delivery_get(*, subscription_id: int, delivery_id: int) -> WebhookDelivery:
    delivery = WebhookDelivery.objects.filter(
        pk=delivery_id, subscription_id=subscription_id
    ).first()
    if delivery is None:
        raise WebhookDeliveryNotFound(
            f"No delivery {delivery_id} of webhook subscription {subscription_id}."
        )
    return delivery


def webhook_subscribed_event_types() -> set[str]:
    """Every event type at least one active subscription wants (from the primary: a
    replica's lag would hide a new subscription longer)."""
    lists = WebhookSubscription.objects.filter(is_active=True).values_list("event_types", flat=True)
    return {event_type for event_types in lists for event_type in event_types}

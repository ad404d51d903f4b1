"""Writes of webhook subscriptions and deliveries, for the staff API and the admin."""

import urllib.parse
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from django.db import router, transaction
from django.utils import timezone

from apps.core.errors import InvalidState, ValidationFailed
from apps.core.messaging.event_registry import published_event_types
from apps.core.messaging.webhooks.delivery import (
    disable_subscription,
    queue_deliveries,
    subscribed_event_types_forget,
)
from apps.core.messaging.webhooks.selectors import webhook_delivery_get, webhook_subscription_get
from apps.core.messaging.webhooks.signing import generate_secret
from apps.core.models import WebhookDelivery, WebhookSubscription

TARGET_URL_MAX_CHARS = 2000
SECRET_MIN_CHARS = 16
SECRET_MAX_CHARS = 200
DISABLED_BY_STAFF = "disabled by staff"


def target_url_errors(url: str) -> list[str]:
    """Why `url` cannot be a webhook target (empty: it can)."""
    schemes = ["https"] if settings.WEBHOOK_REQUIRE_HTTPS else ["http", "https"]
    if len(url) > TARGET_URL_MAX_CHARS:
        return [f"At most {TARGET_URL_MAX_CHARS} characters."]
    try:
        URLValidator(schemes=schemes)(url)
    except DjangoValidationError:
        return [f"Enter a valid {' or '.join(schemes)} URL."]
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # They would be stored and logged in clear; the signature authenticates us.
        return ["Credentials in the URL are not allowed."]
    return []


def event_types_errors(event_types: list[str]) -> list[str]:
    """Why this list cannot be subscribed to (empty: it can)."""
    if not event_types:
        return ["Subscribe to at least one event type."]
    known = published_event_types()
    unknown = sorted({name for name in event_types if name not in known})
    if unknown:
        return [f"Unknown event type: {name}." for name in unknown]
    return []


def _validate(*, target_url: str | None = None, event_types: list[str] | None = None) -> None:
    errors: dict[str, list[str]] = {}
    if target_url is not None and (problems := target_url_errors(target_url)):
        errors["target_url"] = problems
    if event_types is not None and (problems := event_types_errors(event_types)):
        errors["event_types"] = problems
    if errors:
        raise ValidationFailed(errors)


def _changed(alias: str) -> None:
    # This process sees the change at once; the others within the refresh period.
    transaction.on_commit(subscribed_event_types_forget, using=alias)


def webhook_subscription_create(
    *,
    target_url: str,
    event_types: list[str],
    secret: str | None = None,
    description: str = "",
) -> WebhookSubscription:
    """A new active subscription; without a secret, one is generated."""
    _validate(target_url=target_url, event_types=event_types)
    if secret is not None and not SECRET_MIN_CHARS <= len(secret) <= SECRET_MAX_CHARS:
        raise ValidationFailed(
            {"secret": [f"Between {SECRET_MIN_CHARS} and {SECRET_MAX_CHARS} characters."]}
        )
    alias = router.db_for_write(WebhookSubscription)
    with transaction.atomic(using=alias):
        subscription = WebhookSubscription.objects.using(alias).create(
            target_url=target_url,
            event_types=sorted(set(event_types)),
            secret=secret or generate_secret(),
            description=description,
        )
        _changed(alias)
    return subscription


def webhook_subscription_update(
    *,
    subscription_id: int,
    target_url: str | None = None,
    event_types: list[str] | None = None,
    description: str | None = None,
    is_active: bool | None = None,
) -> WebhookSubscription:
    """Change what is given. `is_active=True` re-enables (the failure record is cleared);
    `False` disables and stops the pending deliveries."""
    _validate(target_url=target_url, event_types=event_types)
    alias = router.db_for_write(WebhookSubscription)
    with transaction.atomic(using=alias):
        webhook_subscription_get(subscription_id=subscription_id)  # 404 before the lock
        subscription = (
            WebhookSubscription.objects.using(alias).select_for_update().get(pk=subscription_id)
        )
        if target_url is not None:
            subscription.target_url = target_url
        if event_types is not None:
            subscription.event_types = sorted(set(event_types))
        if description is not None:
            subscription.description = description
        if is_active and not subscription.is_active:
            subscription.is_active = True
            subscription.failing_since = None
            subscription.disabled_at = None
            subscription.disabled_reason = ""
        subscription.updated_at = timezone.now()
        subscription.save()
        if is_active is False and subscription.is_active:
            disable_subscription(subscription, reason=DISABLED_BY_STAFF)
        _changed(alias)
    return subscription


def webhook_subscription_enable(*, subscription_id: int) -> WebhookSubscription:
    return webhook_subscription_update(subscription_id=subscription_id, is_active=True)


def webhook_subscription_delete(*, subscription_id: int) -> None:
    """Delete the subscription and its delivery log; queued attempts find nothing."""
    alias = router.db_for_write(WebhookSubscription)
    with transaction.atomic(using=alias):
        webhook_subscription_get(subscription_id=subscription_id).delete()
        _changed(alias)


def webhook_delivery_redeliver(*, subscription_id: int, delivery_id: int) -> WebhookDelivery:
    """Send a finished delivery again (same event id and body), with a new retry window.

    Refused while it is still pending, or while its subscription is disabled.
    """
    alias = router.db_for_write(WebhookDelivery)
    with transaction.atomic(using=alias):
        webhook_delivery_get(subscription_id=subscription_id, delivery_id=delivery_id)
        subscription = (
            WebhookSubscription.objects.using(alias).select_for_update().get(pk=subscription_id)
        )
        if not subscription.is_active:
            raise InvalidState("The subscription is disabled: enable it first.")
        delivery = WebhookDelivery.objects.using(alias).select_for_update().get(pk=delivery_id)
        if delivery.status == WebhookDelivery.Status.PENDING:
            raise InvalidState("The delivery is still pending: it will be attempted again.")
        now = timezone.now()
        delivery.status = WebhookDelivery.Status.PENDING
        delivery.next_attempt_at = now
        delivery.retry_until = now + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS)
        delivery.delivered_at = None
        delivery.save(update_fields=["status", "next_attempt_at", "retry_until", "delivered_at"])
        transaction.on_commit(lambda: queue_deliveries([delivery_id]), using=alias)
    return delivery

"""Serializers of the staff webhook endpoints (subscriptions, deliveries, event types)."""

import json
from typing import Any

from rest_framework import serializers

from apps.core.http.api.serializers import StrictSerializer
from apps.core.models import WebhookDelivery, WebhookSubscription


class WebhookSubscriptionSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookSubscription
        fields = [
            "id", "target_url", "event_types", "description", "is_active", "created_at",
            "updated_at", "failing_since", "disabled_at", "disabled_reason",
        ]  # fmt: skip
        read_only_fields = fields


class WebhookSubscriptionCreatedSerializer(WebhookSubscriptionSerializer):
    """The created subscription, with its signing secret: the only time it is shown."""

    class Meta(WebhookSubscriptionSerializer.Meta):
        fields = [*WebhookSubscriptionSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class WebhookSubscriptionCreateSerializer(StrictSerializer):
    # Checked by the service (scheme, credentials, known event types): one set of rules
    # for the API and the admin.
    target_url = serializers.CharField(max_length=2000)
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=200), allow_empty=False, max_length=200
    )
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)
    secret = serializers.CharField(
        required=False, write_only=True, help_text="Generated when not given."
    )


class WebhookSubscriptionUpdateSerializer(StrictSerializer):
    target_url = serializers.CharField(max_length=2000, required=False)
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=200),
        allow_empty=False,
        max_length=200,
        required=False,
    )
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)
    is_active = serializers.BooleanField(
        required=False, help_text="true re-enables a disabled subscription; false disables it."
    )


class WebhookDeliverySerializer(serializers.ModelSerializer):
    body = serializers.SerializerMethodField(help_text="The JSON document sent.")

    class Meta:
        model = WebhookDelivery
        fields = [
            "id", "event_id", "event_type", "status", "attempts", "next_attempt_at",
            "retry_until", "last_status_code", "last_error", "last_latency_ms", "created_at",
            "delivered_at", "body",
        ]  # fmt: skip
        read_only_fields = fields

    def get_body(self, delivery: WebhookDelivery) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(delivery.body)
        return body


class WebhookDeliveryListParamsSerializer(StrictSerializer):
    status = serializers.ChoiceField(required=False, choices=WebhookDelivery.Status.choices)


class PublishedEventTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    # DRF's metaclass takes declared fields off the class: these name output keys only.
    context = serializers.CharField()  # type: ignore[assignment]
    version = serializers.IntegerField()
    fields = serializers.ListField(child=serializers.CharField())  # type: ignore[assignment]
    description = serializers.CharField()

import decimal
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from apps.core.http.api.serializers import SharedFieldsMixin, StrictSerializer
from apps.orders.domain import OrderStatus
from apps.orders.models import OrderSummary, StoredEvent


class OrderItemInputSerializer(StrictSerializer):
    product_id = serializers.IntegerField(min_value=1)
    quantity = serializers.IntegerField(min_value=1, max_value=settings.ORDER_MAX_QUANTITY_PER_LINE)


class AddressInputSerializer(StrictSerializer):
    full_name = serializers.CharField(max_length=200)
    line1 = serializers.CharField(max_length=200)
    line2 = serializers.CharField(max_length=200, required=False, allow_blank=True)
    city = serializers.CharField(max_length=100)
    region = serializers.CharField(max_length=100, required=False, allow_blank=True)
    postal_code = serializers.CharField(max_length=20)
    country = serializers.RegexField(r"^[A-Z]{2}$", max_length=2)
    phone = serializers.CharField(max_length=32, required=False, allow_blank=True)


class PaymentInputSerializer(StrictSerializer):
    token = serializers.CharField(max_length=100)


class OrderCreateSerializer(StrictSerializer):
    items = OrderItemInputSerializer(
        many=True, allow_empty=False, max_length=settings.ORDER_MAX_LINES
    )
    shipping_address_id = serializers.IntegerField(min_value=1, required=False)
    shipping_address = AddressInputSerializer(required=False)
    payment = PaymentInputSerializer()

    def validate(self, attrs):
        if ("shipping_address_id" in attrs) == ("shipping_address" in attrs):
            raise serializers.ValidationError(
                {"shipping_address": ["Give either shipping_address_id or shipping_address."]}
            )
        return attrs


class OrderSerializer(SharedFieldsMixin, serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=[s.value for s in OrderStatus])

    class Meta:
        model = OrderSummary
        fields = [
            "id",
            "status",
            "currency",
            "subtotal",
            "total",
            "items",
            "item_count",
            "shipping_address",
            "refunded_amount",
            "tracking_number",
            "carrier",
            "cancellation_reason",
            "cancellation_details",
            "version",
            "placed_at",
            "updated_at",
        ]
        read_only_fields = fields


# Amounts as DRF's DecimalField renders `OrderSummary`'s (max_digits=12, decimal_places=2).
MONEY_CONTEXT = decimal.Context(prec=12)
CENTS = decimal.Decimal("0.01")


def order_representation(summary: OrderSummary) -> dict[str, Any]:
    """`OrderSerializer(summary).data`, built directly: the order POST answers with it on
    every placement, where the serializer's field machinery cost more than the rest of the
    answer (tests/orders/test_order_representation.py holds the two equal)."""
    return {
        "id": str(summary.id),
        "status": str(summary.status),
        "currency": summary.currency,
        "subtotal": _money(summary.subtotal),
        "total": _money(summary.total),
        "items": summary.items,
        "item_count": int(summary.item_count),
        "shipping_address": summary.shipping_address,
        "refunded_amount": _money(summary.refunded_amount),
        "tracking_number": summary.tracking_number,
        "carrier": summary.carrier,
        "cancellation_reason": summary.cancellation_reason,
        "cancellation_details": summary.cancellation_details,
        "version": int(summary.version),
        "placed_at": _datetime(summary.placed_at),
        "updated_at": _datetime(summary.updated_at),
    }


def _money(value: decimal.Decimal | int) -> str:
    if not isinstance(value, decimal.Decimal):
        value = decimal.Decimal(str(value).strip())
    return f"{value.quantize(CENTS, context=MONEY_CONTEXT):f}"


def _datetime(value: datetime) -> str:
    """As DRF's DateTimeField: ISO 8601 in the current time zone, "Z" for UTC."""
    text = value.astimezone(timezone.get_current_timezone()).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class OrderEventSerializer(serializers.ModelSerializer):
    type = serializers.CharField(source="event_type")

    class Meta:
        model = StoredEvent
        fields = ["version", "type", "schema_version", "data", "recorded_at"]
        read_only_fields = fields


class OrderStateSerializer(serializers.Serializer):
    """An order rebuilt from its events (time travel)."""

    id = serializers.CharField()
    version = serializers.IntegerField()
    status = serializers.CharField()
    currency = serializers.CharField()
    total = serializers.DecimalField(max_digits=12, decimal_places=2)
    items = serializers.ListField(child=serializers.DictField())
    tracking_number = serializers.CharField()
    cancellation_reason = serializers.CharField()
    updated_at = serializers.DateTimeField()


class TimeTravelQuerySerializer(StrictSerializer):
    version = serializers.IntegerField(min_value=1, required=False)
    at = serializers.DateTimeField(required=False)


class ShipSerializer(StrictSerializer):
    tracking_number = serializers.CharField(max_length=100)
    carrier = serializers.CharField(max_length=50, required=False, default="unknown")


class CancelSerializer(StrictSerializer):
    note = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class OrderListQuerySerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=[s.value for s in OrderStatus], required=False)

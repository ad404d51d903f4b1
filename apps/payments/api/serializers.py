from decimal import Decimal

from rest_framework import serializers

from apps.core.http.api.serializers import StrictSerializer
from apps.payments.models import Payment, Refund


class RefundSerializer(serializers.ModelSerializer):
    class Meta:
        model = Refund
        fields = [
            "id",
            "amount",
            "currency",
            "reason",
            "status",
            "provider_refund_id",
            "failure_code",
            "created_at",
        ]
        read_only_fields = fields


class PaymentSerializer(serializers.ModelSerializer):
    refunds = RefundSerializer(many=True, read_only=True)

    class Meta:
        model = Payment
        fields = [
            "id",
            "order_id",
            "user_id",
            "amount",
            "currency",
            "amount_refunded",
            "status",
            "provider",
            "provider_charge_id",
            "failure_code",
            "failure_message",
            "created_at",
            "updated_at",
            "refunds",
        ]
        read_only_fields = fields


class PaymentListQuerySerializer(StrictSerializer):
    order_id = serializers.UUIDField(required=False)


class RefundCreateSerializer(StrictSerializer):
    amount = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=Decimal("0.01"), required=False
    )
    reason = serializers.CharField(max_length=200)


class RefundResultSerializer(serializers.Serializer):
    refund_id = serializers.IntegerField()
    payment_id = serializers.IntegerField()
    status = serializers.CharField()
    amount = serializers.DecimalField(max_digits=12, decimal_places=2)
    currency = serializers.CharField()
    provider_refund_id = serializers.CharField()
    payment_status = serializers.CharField()
    amount_refunded = serializers.DecimalField(max_digits=12, decimal_places=2)

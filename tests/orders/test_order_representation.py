"""The order POST's answer is built without `OrderSerializer` (`order_representation`);
it must be the serializer's to the byte, key order included, whatever the summary holds."""

import zoneinfo
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.utils import timezone as django_timezone
from rest_framework.renderers import JSONRenderer

from apps.orders.api.serializers import OrderSerializer, order_representation
from apps.orders.models import OrderSummary
from tests.orders.conftest import ADDRESS, place_order
from tests.users.factories import UserFactory


def rendered(data) -> bytes:
    return JSONRenderer().render(data)


def assert_as_serialized(summary: OrderSummary) -> None:
    expected = OrderSerializer(summary).data
    built = order_representation(summary)
    assert list(built.items()) == list(expected.items())
    assert rendered(built) == rendered(expected)


@pytest.mark.django_db
def test_a_placed_order_as_answered_and_as_stored():
    placed = place_order(UserFactory())
    assert_as_serialized(placed)
    assert_as_serialized(OrderSummary.objects.get(pk=placed.pk))


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris"])
def test_every_field_at_its_edges(zone):
    summary = OrderSummary(
        user_id=7,
        status="cancelled",
        currency="EUR",
        subtotal=Decimal("1234567890.5"),
        total=Decimal("7"),
        items=[{"product_id": 1, "name": "Mug \u2615", "unit_price": "3.50", "quantity": 2}],
        item_count=2,
        shipping_address={**ADDRESS, "line2": ""},
        refunded_amount=0,
        tracking_number="1Z999",
        carrier="ups",
        cancellation_reason="out_of_stock",
        cancellation_details={"short": [1, 2], "note": "\u00e9"},
        version=3,
        placed_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        updated_at=datetime(2026, 6, 1, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=-5))),
    )
    with django_timezone.override(zoneinfo.ZoneInfo(zone)):
        assert_as_serialized(summary)

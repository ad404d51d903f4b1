"""The orders context's reactions to payments' events, called as the inbox calls them."""

import uuid

import pytest

from apps.core.messaging.inbox import EventEnvelope
from apps.orders import services
from apps.orders.handlers import record_payment_captured
from apps.orders.models import StoredEvent
from tests.orders.conftest import place_order

pytestmark = pytest.mark.django_db


def captured(order, payment_id: str) -> EventEnvelope:
    return EventEnvelope(
        id=uuid.uuid4(),
        type="PaymentCaptured",
        payload={
            "order_id": str(order.pk),
            "payment_id": payment_id,
            "amount": str(order.total),
            "currency": order.currency,
        },
    )


def events_of(order) -> list[str]:
    return list(
        StoredEvent.objects.filter(aggregate_id=order.pk)
        .order_by("version")
        .values_list("event_type", flat=True)
    )


def test_a_capture_the_saga_recorded_already_costs_one_read(customer, django_assert_num_queries):
    order = place_order(customer)
    services.order_record_stock_reserved(order_id=order.pk, reservation_reference=order.pk)
    services.order_record_payment_captured(
        order_id=order.pk, payment_id="pay-1", amount=order.total
    )

    with django_assert_num_queries(1):
        record_payment_captured(captured(order, "pay-1"))

    assert events_of(order) == ["OrderPlaced", "StockReserved", "PaymentCaptured"]


def test_a_capture_the_order_has_not_heard_of_is_recorded(customer):
    order = place_order(customer)
    services.order_record_stock_reserved(order_id=order.pk, reservation_reference=order.pk)

    record_payment_captured(captured(order, "pay-2"))

    assert events_of(order) == ["OrderPlaced", "StockReserved", "PaymentCaptured"]
    assert services.event_store.load_order(order.pk).payment_id == "pay-2"

"""The request, correlation and causation ids of an order's events come in as arguments
(`Provenance`), from the request, the handled event or the saga's context, never from
whatever the logging context holds."""

import uuid

import pytest
import structlog
from django.db import transaction

from apps.core.messaging.inbox import EventEnvelope
from apps.core.messaging.provenance import Provenance
from apps.core.models import OutboxMessage, SagaInstance
from apps.orders import services
from apps.orders.handlers import record_payment_captured
from apps.orders.models import StoredEvent
from tests.catalog.factories import ProductFactory
from tests.orders.conftest import place_order
from tests.orders.test_orders_api import ORDERS, order_body

pytestmark = pytest.mark.django_db

REQUEST_ID = "a" * 32
CORRELATION_ID = "c" * 32


def stored(order_id: str, event_type: str) -> StoredEvent:
    return StoredEvent.objects.get(aggregate_id=order_id, event_type=event_type)


def test_an_order_placed_through_the_api_records_its_request_and_starts_its_saga_with_it(
    customer_client,
):
    response = customer_client.post(
        ORDERS,
        order_body([ProductFactory()]),
        format="json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
        HTTP_X_REQUEST_ID=REQUEST_ID,
        HTTP_X_CORRELATION_ID=CORRELATION_ID,
    )
    assert response.status_code == 202
    order_id = response.json()["id"]

    placed = stored(order_id, "OrderPlaced")
    assert placed.metadata == {
        "request_id": REQUEST_ID,
        "correlation_id": CORRELATION_ID,
        "user_id": placed.metadata["user_id"],
    }
    published = OutboxMessage.objects.get(aggregate_id=order_id, event_type="OrderPlaced")
    assert (published.headers["request_id"], published.headers["correlation_id"]) == (
        REQUEST_ID,
        CORRELATION_ID,
    )
    # The saga's steps record their events with the same flow.
    saga = SagaInstance.objects.get(pk=order_id)
    assert (saga.context["request_id"], saga.context["correlation_id"]) == (
        REQUEST_ID,
        CORRELATION_ID,
    )


def test_the_logging_context_does_not_leak_into_the_events(customer):
    order_id = str(place_order(customer).pk)
    # What a worker that served another flow just before might still have bound.
    with structlog.contextvars.bound_contextvars(
        request_id="stray-request", correlation_id="stray-flow", event_id="stray-event"
    ):
        services.order_record_stock_reserved(
            order_id=order_id,
            reservation_reference="r-1",
            provenance=Provenance(correlation_id=CORRELATION_ID),
        )
    reserved = stored(order_id, "StockReserved")
    assert reserved.metadata == {"correlation_id": CORRELATION_ID}


def test_a_handled_event_is_the_cause_of_the_events_it_leads_to(customer):
    order_id = str(place_order(customer).pk)
    services.order_record_stock_reserved(order_id=order_id, reservation_reference="r-1")
    payment_event_id = uuid.uuid4()
    event = EventEnvelope(
        id=payment_event_id,
        type="PaymentCaptured",
        payload={"order_id": order_id, "payment_id": "pay-1", "amount": "12.50"},
        headers={"request_id": REQUEST_ID, "correlation_id": CORRELATION_ID},
    )
    with transaction.atomic():
        record_payment_captured(event)

    captured = stored(order_id, "PaymentCaptured")
    assert captured.metadata == {
        "request_id": REQUEST_ID,
        "correlation_id": CORRELATION_ID,
        "causation_id": str(payment_event_id),
    }

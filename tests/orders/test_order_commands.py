"""Rules the order services own, whoever calls them (API, admin, sagas)."""

from decimal import Decimal

import pytest
import structlog

from apps.orders import services
from apps.orders.models import OrderSummary, StoredEvent
from tests.catalog.factories import ProductFactory
from tests.orders.conftest import ADDRESS, confirm, place_order
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db


def place_with_key(user, product, key: str) -> OrderSummary:
    return services.order_place(
        user_id=user.pk,
        items=[(product.pk, 1)],
        shipping_address=ADDRESS,
        payment_token="tok_visa",
        idempotency_key=key,
    )


def test_placing_again_with_the_same_idempotency_key_returns_the_same_order():
    customer, someone_else = UserFactory(), UserFactory()
    product = ProductFactory(price=Decimal("5.00"))

    first = place_with_key(customer, product, "key-1")
    retried = place_with_key(customer, product, "key-1")
    other_key = place_with_key(customer, product, "key-2")
    other_customer = place_with_key(someone_else, product, "key-1")

    assert str(retried.pk) == str(first.pk)
    assert len({str(first.pk), str(other_key.pk), str(other_customer.pk)}) == 3
    assert OrderSummary.objects.count() == 3


@pytest.mark.parametrize(
    ("who", "reason"),
    [("owner", "customer_request"), ("staff", "staff_request")],
)
def test_who_cancels_decides_the_reason(who, reason):
    customer = UserFactory()
    order = place_order(customer)
    actor = customer if who == "owner" else UserFactory(is_staff=True)

    cancelled = services.order_cancel(order_id=str(order.pk), actor_id=actor.pk)

    assert cancelled.cancellation_reason == reason


def test_the_system_names_its_own_reason():
    order = place_order(UserFactory())
    cancelled = services.order_cancel(order_id=str(order.pk), reason="out_of_stock")
    assert cancelled.cancellation_reason == "out_of_stock"


def recorded_actors(order_id: str) -> list[tuple[str, int | None]]:
    return [
        (event.event_type, event.metadata.get("user_id"))
        for event in StoredEvent.objects.filter(aggregate_id=order_id).order_by("version")
    ]


def test_the_actor_recorded_with_the_events_is_the_one_passed_not_the_log_context():
    customer, manager = UserFactory(), UserFactory(is_staff=True)
    order_id = str(place_order(customer).pk)
    # A log context left over from elsewhere names someone who did none of this.
    with structlog.contextvars.bound_contextvars(actor_id=UserFactory().pk):
        confirm(order_id)  # the system's steps
        services.order_ship(order_id=order_id, tracking_number="T-1", actor_id=manager.pk)

    assert recorded_actors(order_id) == [
        ("OrderPlaced", customer.pk),
        ("StockReserved", None),
        ("PaymentCaptured", None),
        ("OrderConfirmed", None),
        ("OrderShipped", manager.pk),
    ]

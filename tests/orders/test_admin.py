"""The orders admin: order managers ship and cancel through the services; support only
reads."""

import pytest

from apps.orders.models import OrderSummary, StoredEvent
from apps.users.roles import ORDER_MANAGERS, SUPPORT
from tests.orders.conftest import confirm, place_order, staff_member
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/orders/ordersummary/"


@pytest.fixture
def confirmed_order(db):
    summary = place_order(UserFactory())
    confirm(str(summary.pk))
    return str(summary.pk)


def ship(client, order_ids: list[str], tracking_number: str = "TRK-42"):
    return client.post(
        CHANGELIST,
        {
            "action": "ship_order",
            "_selected_action": order_ids,
            "tracking_number": tracking_number,
            "carrier": "DHL",
        },
        follow=True,
    )


def test_order_manager_ships_an_order_from_the_changelist(client, confirmed_order):
    client.force_login(staff_member(ORDER_MANAGERS))
    response = ship(client, [confirmed_order])
    assert "shipped (DHL TRK-42)" in response.content.decode()
    summary = OrderSummary.objects.get(pk=confirmed_order)
    assert (summary.status, summary.tracking_number, summary.carrier) == (
        "shipped",
        "TRK-42",
        "DHL",
    )
    last = StoredEvent.objects.filter(aggregate_id=confirmed_order).order_by("version").last()
    assert last.event_type == "OrderShipped"


def test_shipping_needs_a_tracking_number_and_one_order(client, confirmed_order):
    client.force_login(staff_member(ORDER_MANAGERS))
    other = place_order(UserFactory())
    confirm(str(other.pk))
    assert "Enter the tracking number" in ship(client, [confirmed_order], "").content.decode()
    both = ship(client, [confirmed_order, str(other.pk)]).content.decode()
    assert "Ship one order at a time" in both
    assert set(OrderSummary.objects.values_list("status", flat=True)) == {"confirmed"}


def test_an_order_that_cannot_ship_is_reported_not_shipped(client):
    client.force_login(staff_member(ORDER_MANAGERS))
    pending = str(place_order(UserFactory()).pk)
    assert "Cannot ship an order that is pending" in ship(client, [pending]).content.decode()
    assert OrderSummary.objects.get(pk=pending).status == "pending"


def test_support_sees_orders_but_has_no_actions(client, confirmed_order):
    client.force_login(staff_member(SUPPORT))
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert confirmed_order in page.content.decode()
    assert "ship_order" not in page.content.decode()
    assert "cancel_orders" not in page.content.decode()
    ship(client, [confirmed_order])
    client.post(CHANGELIST, {"action": "cancel_orders", "_selected_action": [confirmed_order]})
    assert OrderSummary.objects.get(pk=confirmed_order).status == "confirmed"


@pytest.fixture
def superuser_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_orders_are_found_by_customer_email_and_by_id(superuser_client):
    alice = UserFactory(email="alice@shop.example")
    mine = place_order(alice)
    other = place_order(UserFactory(email="bob@shop.example"))
    by_email = superuser_client.get(CHANGELIST, {"q": "alice@shop"}).content.decode()
    by_id = superuser_client.get(CHANGELIST, {"q": str(other.pk)}).content.decode()
    garbage = superuser_client.get(CHANGELIST, {"q": "not-an-id"})
    assert str(mine.pk) in by_email and str(other.pk) not in by_email
    assert str(other.pk) in by_id and str(mine.pk) not in by_id
    assert garbage.status_code == 200


def test_order_page_shows_the_event_timeline_and_cancel_action_uses_the_service(superuser_client):
    order = place_order(UserFactory())
    page = superuser_client.get(f"{CHANGELIST}{order.pk}/change/").content.decode()
    assert "OrderPlaced" in page
    superuser_client.post(
        CHANGELIST, {"action": "cancel_orders", "_selected_action": [str(order.pk)]}
    )
    order.refresh_from_db()
    assert (order.status, order.cancellation_reason) == ("cancelled", "staff_request")
    assert (
        "OrderCancelled" in superuser_client.get(f"{CHANGELIST}{order.pk}/change/").content.decode()
    )


def test_event_store_is_read_only_in_the_admin(superuser_client):
    order = place_order(UserFactory())
    events = "/admin/orders/storedevent/"
    listing = superuser_client.get(events, {"q": str(order.pk)})
    assert listing.status_code == 200 and b"OrderPlaced" in listing.content
    assert superuser_client.get(f"{events}add/").status_code == 403

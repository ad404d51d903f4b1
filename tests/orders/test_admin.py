import pytest

from tests.orders.conftest import place_order
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/orders/ordersummary/"


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_orders_are_found_by_customer_email_and_by_id(admin_client):
    alice = UserFactory(email="alice@shop.example")
    mine = place_order(alice)
    other = place_order(UserFactory(email="bob@shop.example"))
    by_email = admin_client.get(CHANGELIST, {"q": "alice@shop"}).content.decode()
    by_id = admin_client.get(CHANGELIST, {"q": str(other.pk)}).content.decode()
    garbage = admin_client.get(CHANGELIST, {"q": "not-an-id"})
    assert str(mine.pk) in by_email and str(other.pk) not in by_email
    assert str(other.pk) in by_id and str(mine.pk) not in by_id
    assert garbage.status_code == 200


def test_order_page_shows_the_event_timeline_and_cancel_action_uses_the_service(admin_client):
    order = place_order(UserFactory())
    page = admin_client.get(f"{CHANGELIST}{order.pk}/change/").content.decode()
    assert "OrderPlaced" in page
    admin_client.post(CHANGELIST, {"action": "cancel_orders", "_selected_action": [str(order.pk)]})
    order.refresh_from_db()
    assert (order.status, order.cancellation_reason) == ("cancelled", "staff_request")
    assert "OrderCancelled" in admin_client.get(f"{CHANGELIST}{order.pk}/change/").content.decode()


def test_event_store_is_read_only_in_the_admin(admin_client):
    order = place_order(UserFactory())
    events = "/admin/orders/storedevent/"
    listing = admin_client.get(events, {"q": str(order.pk)})
    assert listing.status_code == 200 and b"OrderPlaced" in listing.content
    assert admin_client.get(f"{events}add/").status_code == 403

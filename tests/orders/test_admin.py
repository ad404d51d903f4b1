"""The orders admin: order managers ship and cancel through the services; support only
reads."""

import uuid
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from pytest_django.asserts import assertInHTML

from apps.orders import services
from apps.orders.models import OrderSummary, StoredEvent
from apps.payments.models import Payment
from apps.payments.services import payment_charge_for_order
from apps.users.roles import ORDER_MANAGERS, SUPPORT
from tests.catalog.factories import ProductFactory
from tests.orders.conftest import confirm, place_order, staff_member
from tests.support.sandbox import fast_payment_settings
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


def test_bulk_cancel_tells_in_one_message_what_was_cancelled_and_what_was_not(
    superuser_client, confirmed_order
):
    pending = str(place_order(UserFactory()).pk)
    services.order_ship(order_id=confirmed_order, tracking_number="T-1")
    response = superuser_client.post(
        CHANGELIST,
        {"action": "cancel_orders", "_selected_action": [pending, confirmed_order]},
        follow=True,
    )
    [message] = messages_of(response)
    assert message.level_tag == "error"
    assert f"Cancelled: {pending}." in str(message)
    assert f"Not cancelled: {confirmed_order} (" in str(message)
    assert OrderSummary.objects.get(pk=pending).cancellation_reason == "staff_request"


def messages_of(response) -> list:
    return list(get_messages(response.wsgi_request))


def order_page(client, order_id: str) -> str:
    response = client.get(f"{CHANGELIST}{order_id}/change/")
    assert response.status_code == 200
    return response.content.decode()


def test_the_order_page_shows_items_address_customer_money_and_the_timeline_in_words(
    superuser_client,
):
    customer = UserFactory(email="ada@shop.example")
    lamp = ProductFactory(sku="LAMP-1", name="Brass lamp", price=Decimal("12.50"))
    order_id = str(place_order(customer, products=[lamp], quantity=2).pk)
    confirm(order_id)
    services.order_cancel(order_id=order_id, reason="customer_request", note="changed my mind")

    page = order_page(superuser_client, order_id)
    assertInHTML(
        '<tr><td>LAMP-1</td><td>Brass lamp</td><td class="money">12.50 EUR</td>'
        '<td class="money">2</td><td class="money">25.00 EUR</td></tr>',
        page,
    )
    assertInHTML(
        '<td id="shipping-address">Ada Lovelace<br>12 St James&#x27;s Square<br>'
        "SW1Y 4JH London<br>GB<br></td>",
        page,
    )
    assertInHTML(
        f'<a id="customer-link" href="/admin/users/user/{customer.pk}/change/">'
        "ada@shop.example</a>",
        page,
    )
    assertInHTML(
        f'<a id="events-link" href="/admin/orders/storedevent/?q={order_id}">Stored events</a>',
        page,
    )
    timeline = page[page.index('id="order-timeline"') :]
    words = [
        "<td>Placed: 1 line(s), 25.00 EUR</td>",
        f"<td>Stock reserved (res-{order_id})</td>",
        "<td>Payment of 25.00 EUR captured</td>",
        "<td>Confirmed</td>",
        "<td>Cancelled by the customer: changed my mind</td>",
    ]
    positions = [timeline.find(text) for text in words]
    assert -1 not in positions and positions == sorted(positions), positions  # newest last
    assert "{&#x27;" not in page  # no dict reprs


def test_why_it_failed_names_the_products_out_of_stock_and_the_decline_code(superuser_client):
    lamp = ProductFactory(name="Brass lamp")
    short = str(place_order(UserFactory(), products=[lamp]).pk)
    services.order_cancel(
        order_id=short,
        reason="out_of_stock",
        details={"products": [{"product_id": lamp.pk, "available": 1}]},
    )
    declined = str(place_order(UserFactory()).pk)
    services.order_cancel(
        order_id=declined,
        reason="payment_declined",
        details={"decline_code": "card_declined", "payment_id": "7"},
    )

    assertInHTML(
        "<li>Cancelled: out of stock — Brass lamp: 1 available</li>",
        order_page(superuser_client, short),
    )
    assertInHTML(
        "<li>Cancelled: payment declined (card_declined)</li>",
        order_page(superuser_client, declined),
    )


def page_action(client, order_id: str, name: str, data: dict):
    return client.post(f"{CHANGELIST}{order_id}/{name}/", data, follow=True)


def test_shipping_from_the_order_page_runs_the_service_and_names_the_staff_member(
    client, confirmed_order
):
    manager = staff_member(ORDER_MANAGERS)
    client.force_login(manager)
    response = page_action(
        client, confirmed_order, "ship", {"tracking_number": "TRK-9", "carrier": "DHL"}
    )
    [message] = messages_of(response)
    assert (message.level_tag, str(message)) == (
        "success",
        "Shipped with DHL, tracking number TRK-9.",
    )
    assert OrderSummary.objects.get(pk=confirmed_order).status == "shipped"
    last = StoredEvent.objects.filter(aggregate_id=confirmed_order).order_by("version").last()
    assert (last.event_type, last.metadata["user_id"]) == ("OrderShipped", manager.pk)
    assert (
        f"<td>Shipped with DHL, tracking number TRK-9</td><td>{manager.email}</td>"
        in response.content.decode()
    )


def test_a_refused_or_malformed_page_action_is_one_error_and_changes_nothing(client):
    client.force_login(staff_member(ORDER_MANAGERS))
    pending = str(place_order(UserFactory()).pk)
    versions = StoredEvent.objects.filter(aggregate_id=pending).count()

    refused = page_action(client, pending, "ship", {"tracking_number": "TRK-1"})
    malformed = page_action(client, pending, "ship", {"tracking_number": ""})
    no_payment = page_action(
        client, pending, "refund", {"amount": "1.00", "reason": "x", "refund_key": uuid.uuid4()}
    )

    for response, text in (
        (refused, "Cannot ship an order that is pending"),
        (malformed, "tracking_number: This field is required."),
        (no_payment, "The order has no payment to refund."),
    ):
        [message] = messages_of(response)
        assert message.level_tag == "error" and text in str(message), str(message)
    assert StoredEvent.objects.filter(aggregate_id=pending).count() == versions


def test_cancelling_from_the_order_page_records_the_reason(superuser_client):
    order_id = str(place_order(UserFactory()).pk)
    response = page_action(superuser_client, order_id, "cancel", {"note": "duplicate order"})
    assert [str(m) for m in messages_of(response)] == ["Cancelled."]
    summary = OrderSummary.objects.get(pk=order_id)
    assert (summary.status, summary.cancellation_reason) == ("cancelled", "staff_request")
    assert "Cancelled by staff: duplicate order" in response.content.decode()


def test_refunding_part_of_the_payment_from_the_order_page_refunds_once_per_form(
    superuser_client, sandbox, settings
):
    for name, value in fast_payment_settings(sandbox).items():
        setattr(settings, name, value)
    refunds_before = sandbox.state()["refunds"]
    order_id = str(place_order(UserFactory()).pk)
    payment = payment_charge_for_order(
        order_id=order_id, user_id=1, amount=Decimal("12.50"), currency="EUR", token="tok_visa"
    )
    services.order_record_stock_reserved(order_id=order_id, reservation_reference="r-1")
    services.order_record_payment_captured(
        order_id=order_id, payment_id=str(payment.payment_id), amount=Decimal("12.50")
    )
    services.order_confirm(order_id=order_id)
    form = {"amount": "10.00", "reason": "scratched", "refund_key": uuid.uuid4()}

    first = page_action(superuser_client, order_id, "refund", form)
    again = page_action(superuser_client, order_id, "refund", form)  # the same form twice
    too_much = page_action(
        superuser_client,
        order_id,
        "refund",
        {**form, "amount": "5.00", "refund_key": uuid.uuid4()},
    )

    [message] = messages_of(first)
    assert message.level_tag == "success" and str(message).startswith("Refunded 10.00 EUR")
    assert len(messages_of(again)) == 1
    [refused] = messages_of(too_much)
    assert refused.level_tag == "error"
    assert Payment.objects.get(pk=payment.payment_id).amount_refunded == Decimal("10.00")
    assert sandbox.state()["refunds"] == refunds_before + 1


def test_support_reads_the_order_page_but_cannot_act_on_it(client, confirmed_order):
    client.force_login(staff_member(SUPPORT))
    page = order_page(client, confirmed_order)
    assert "Timeline" in page and 'id="ship-form"' not in page
    refused = client.post(f"{CHANGELIST}{confirmed_order}/ship/", {"tracking_number": "T"})
    assert refused.status_code == 403
    assert OrderSummary.objects.get(pk=confirmed_order).status == "confirmed"


def test_the_read_model_is_never_saved_from_the_change_form(superuser_client, confirmed_order):
    response = superuser_client.post(
        f"{CHANGELIST}{confirmed_order}/change/", {"status": "delivered"}
    )
    assert response.status_code == 403
    assert OrderSummary.objects.get(pk=confirmed_order).status == "confirmed"


def test_event_store_is_read_only_in_the_admin(superuser_client):
    order = place_order(UserFactory())
    events = "/admin/orders/storedevent/"
    listing = superuser_client.get(events, {"q": str(order.pk)})
    assert listing.status_code == 200 and b"OrderPlaced" in listing.content
    assert superuser_client.get(f"{events}add/").status_code == 403

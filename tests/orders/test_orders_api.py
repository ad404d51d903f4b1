import uuid
from decimal import Decimal

import pytest
from django.db import connection

from apps.core.messaging.webhooks.delivery import subscribed_event_types
from apps.orders.models import OrderSummary, StoredEvent
from tests.catalog.factories import ProductFactory
from tests.orders.conftest import ADDRESS, confirm, place_order
from tests.users.factories import AddressFactory, UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

ORDERS = "/api/v1/orders"


def order_body(products, quantity: int = 1, **overrides) -> dict:
    return {
        "items": [{"product_id": p.pk, "quantity": quantity} for p in products],
        "shipping_address": ADDRESS,
        "payment": {"token": "tok_visa"},
        **overrides,
    }


def post_order(client, body, key: str | None = None):
    return client.post(ORDERS, body, format="json", HTTP_IDEMPOTENCY_KEY=key or str(uuid.uuid4()))


def test_placing_an_order_answers_202_pending_with_location(customer_client, customer):
    products = [ProductFactory(price=Decimal("3.10")), ProductFactory(price=Decimal("5.00"))]
    response = post_order(customer_client, order_body(products, quantity=2))
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert body["total"] == "16.20" and body["currency"] == "EUR"
    assert response["Location"] == f"{ORDERS}/{body['id']}"
    assert [i["name"] for i in body["items"]] == [p.name for p in products]
    summary = OrderSummary.objects.get(pk=body["id"])
    assert summary.user_id == customer.pk and summary.item_count == 4


def test_placing_with_a_saved_address_snapshots_it(customer_client, customer):
    address = AddressFactory(user=customer, city="Bath")
    body = order_body([ProductFactory()], shipping_address_id=address.pk)
    del body["shipping_address"]
    response = post_order(customer_client, body)
    assert response.status_code == 202, response.content
    assert response.json()["shipping_address"]["city"] == "Bath"


def test_someone_elses_address_is_not_found(customer_client):
    body = order_body([ProductFactory()], shipping_address_id=AddressFactory().pk)
    del body["shipping_address"]
    assert_problem(post_order(customer_client, body), 404, "not-found")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b, p: b.update(items=[]), "items"),
        (lambda b, p: b["items"][0].update(quantity=0), "items.0.quantity"),
        (lambda b, p: b["items"][0].update(product_id=999999), "items.0.product_id"),
        (lambda b, p: b["items"].append(dict(b["items"][0])), "items.1.product_id"),
        (lambda b, p: b.update(items=b["items"] * 51), "items"),
        (lambda b, p: b.pop("payment"), "payment"),
        (lambda b, p: b.update(shipping_address_id=1), "shipping_address"),
        (lambda b, p: b.update(coupon="FREE"), "coupon"),
        (lambda b, p: b["items"][0].update(product_id=9223372036854775808), "items.0.product_id"),
        (lambda b, p: b["items"][0].update(product_id=10**30), "items.0.product_id"),
        (lambda b, p: b["payment"].update(token=42), "payment.token"),
        (
            lambda b, p: b.update(shipping_address={**b["shipping_address"], "city": ["Bath"]}),
            "shipping_address.city",
        ),
    ],
)
def test_invalid_orders_are_400_with_field_errors(customer_client, mutate, field):
    product = ProductFactory()
    body = order_body([product])
    mutate(body, product)
    response = post_order(customer_client, body)
    problem = assert_problem(response, 400, "validation-error")
    assert field in problem["errors"], problem
    assert not StoredEvent.objects.exists()


def test_inactive_product_cannot_be_ordered(customer_client):
    response = post_order(customer_client, order_body([ProductFactory(is_active=False)]))
    assert "items.0.product_id" in assert_problem(response, 400, "validation-error")["errors"]


def test_placing_a_five_line_order_runs_few_queries(customer_client, django_assert_max_num_queries):
    products = ProductFactory.create_batch(5)
    subscribed_event_types()  # steady state: read once per refresh period, not per request
    # The products' prices, then one statement writing the order, its saga and the stored
    # answer; the test's transaction adds a savepoint around the write.
    with django_assert_max_num_queries(4) as captured:
        response = post_order(customer_client, order_body(products))
    assert response.status_code == 202
    statements = [
        query["sql"]
        for query in captured.captured_queries
        if not query["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))
    ]
    assert len(statements) == 2, statements


def test_customers_list_only_their_own_orders_filtered_by_status(customer_client, customer):
    mine = [place_order(customer) for _ in range(3)]
    confirm(str(mine[0].pk))
    place_order(UserFactory())
    listed = customer_client.get(ORDERS).json()["results"]
    assert {o["id"] for o in listed} == {str(o.pk) for o in mine}
    confirmed = customer_client.get(ORDERS, {"status": "confirmed"}).json()["results"]
    assert [o["id"] for o in confirmed] == [str(mine[0].pk)]
    assert_problem(customer_client.get(ORDERS, {"status": "bogus"}), 400, "validation-error")


def test_the_placement_statements_are_prepared_once_per_connection(customer_client):
    products = ProductFactory.create_batch(2)
    for _ in range(2):
        assert post_order(customer_client, order_body(products)).status_code == 202
    with connection.cursor() as cursor:
        cursor.execute("SELECT left(statement, 13) FROM pg_prepared_statements ORDER BY 1")
        prepared = [row[0] for row in cursor.fetchall()]
    assert prepared == ['SELECT "id", ', "WITH taken_no"]


def test_order_list_query_count_does_not_grow(customer_client, customer,
                                              django_assert_max_num_queries):  # fmt: skip
    for _ in range(15):
        place_order(customer)
    with django_assert_max_num_queries(3):
        assert len(customer_client.get(ORDERS).json()["results"]) == 15


def test_other_customers_cannot_see_or_cancel_an_order(customer, customer_client):
    order_id = place_order(UserFactory()).pk
    for response in (
        customer_client.get(f"{ORDERS}/{order_id}"),
        customer_client.get(f"{ORDERS}/{order_id}/events"),
        customer_client.post(f"{ORDERS}/{order_id}/cancel", {}, format="json"),
    ):
        assert_problem(response, 404, "not-found")
    assert OrderSummary.objects.get(pk=order_id).status == "pending"


def test_owner_and_order_staff_see_the_order_and_its_events(
    customer, customer_client, support_client
):
    order_id = place_order(customer).pk
    for client in (customer_client, support_client):
        assert client.get(f"{ORDERS}/{order_id}").json()["status"] == "pending"
        events = client.get(f"{ORDERS}/{order_id}/events").json()
        assert [e["type"] for e in events] == ["OrderPlaced"]


def test_owner_is_never_told_404_when_the_projection_is_missing(customer, customer_client):
    order_id = place_order(customer).pk
    OrderSummary.objects.filter(pk=order_id).delete()
    response = customer_client.get(f"{ORDERS}/{order_id}")
    assert response.status_code == 200 and response.json()["status"] == "pending"


def test_owner_cancels_until_shipped(customer, customer_client):
    order_id = place_order(customer).pk
    response = customer_client.post(f"{ORDERS}/{order_id}/cancel", {"note": "changed mind"},
                                    format="json")  # fmt: skip
    assert response.status_code == 200
    assert response.json()["cancellation_reason"] == "customer_request"
    again = customer_client.post(f"{ORDERS}/{order_id}/cancel", {}, format="json")
    assert_problem(again, 409, "invalid-state")


def test_staff_ship_and_deliver_and_customers_cannot(customer, customer_client, manager_client,
                                                     support_client):  # fmt: skip
    order_id = place_order(customer).pk
    confirm(str(order_id))
    ship = f"{ORDERS}/{order_id}/ship"
    assert_problem(customer_client.post(ship, {"tracking_number": "T1"}, format="json"), 403,
                   "permission-denied")  # fmt: skip
    assert_problem(support_client.post(ship, {"tracking_number": "T1"}, format="json"), 403,
                   "permission-denied")  # fmt: skip
    shipped = manager_client.post(ship, {"tracking_number": "T1", "carrier": "DHL"}, format="json")
    assert shipped.json()["status"] == "shipped" and shipped.json()["tracking_number"] == "T1"
    assert manager_client.post(f"{ORDERS}/{order_id}/deliver").json()["status"] == "delivered"
    late_cancel = manager_client.post(f"{ORDERS}/{order_id}/cancel", {}, format="json")
    assert_problem(late_cancel, 409, "invalid-state")


def test_shipping_a_cancelled_order_is_a_409_invalid_state(customer, manager_client):
    order_id = place_order(customer).pk
    manager_client.post(f"{ORDERS}/{order_id}/cancel", {}, format="json")
    response = manager_client.post(f"{ORDERS}/{order_id}/ship", {"tracking_number": "T"},
                                   format="json")  # fmt: skip
    assert_problem(response, 409, "invalid-state")


def test_staff_time_travel_by_version(customer, support_client, customer_client):
    order_id = place_order(customer).pk
    confirm(str(order_id))
    state = f"{ORDERS}/{order_id}/state"
    assert support_client.get(state, {"version": 1}).json()["status"] == "pending"
    assert support_client.get(state, {"version": 4}).json()["status"] == "confirmed"
    assert support_client.get(state).json()["version"] == 4
    assert_problem(customer_client.get(state, {"version": 1}), 403, "permission-denied")


def test_placing_needs_an_idempotency_key(customer_client):
    response = customer_client.post(ORDERS, order_body([ProductFactory()]), format="json")
    assert_problem(response, 400, "idempotency-key-missing")
    assert not StoredEvent.objects.exists()


def test_same_key_and_body_replays_and_another_body_is_422(customer_client):
    products = [ProductFactory()]
    first = post_order(customer_client, order_body(products), key="order-key-1")
    again = post_order(customer_client, order_body(products), key="order-key-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again["Location"] == first["Location"]
    assert again["Idempotent-Replayed"] == "true"
    other = post_order(customer_client, order_body(products, quantity=2), key="order-key-1")
    assert_problem(other, 422, "idempotency-key-reused")
    assert OrderSummary.objects.count() == 1

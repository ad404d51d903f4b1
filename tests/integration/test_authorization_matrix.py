"""Who may do what: every API endpoint and method, called by each kind of caller, answers
the status in MATRIX. The endpoint list is taken from the URL resolver, so a new endpoint
without a row here fails `test_every_endpoint_has_a_row_in_the_matrix`.

Objects in paths belong to customer A; customer B and staff without the right group must
neither see nor change them (no IDOR).
"""

import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from apps.catalog import services as catalog_services
from apps.core.models import WebhookDelivery, WebhookSubscription
from apps.orders import services as order_services
from apps.orders.models import OrderSummary
from apps.payments.models import Payment
from apps.users.models import Address
from apps.users.roles import CATALOG_MANAGERS, ORDER_MANAGERS, SUPPORT
from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS, confirm, place_order, staff_member
from tests.payments.factories import PaymentFactory
from tests.support.api_routes import api_routes
from tests.users.factories import DEFAULT_PASSWORD, AddressFactory, UserFactory

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "customer_a", "customer_b", CATALOG_MANAGERS, ORDER_MANAGERS, SUPPORT)


def expect(default: int, **overrides: int) -> dict[str, int]:
    """Statuses per role: `default` for all, with overrides (`anonymous=401`, `a=200`, ...)."""
    names = {
        "a": "customer_a",
        "b": "customer_b",
        "catalog": CATALOG_MANAGERS,
        "orders": ORDER_MANAGERS,
        "support": SUPPORT,
    }
    statuses = dict.fromkeys(ROLES, default)
    for key, status in overrides.items():
        statuses[names.get(key, key)] = status
    return statuses


@dataclass(frozen=True)
class Call:
    body: dict | None = None
    headers: dict = field(default_factory=dict)
    # Which of A's objects fills the path: order (confirmed), shipped, address, payment, product
    target: str = ""


SIGNED_IN = expect(200, anonymous=401)
OWNER_ONLY = expect(404, anonymous=401, a=200)
ORDER_READERS = expect(404, anonymous=401, a=200, orders=200, support=200)
CATALOG_WRITE = expect(403, anonymous=401, catalog=200)
ORDER_MANAGER_ONLY = expect(403, anonymous=401, orders=200)
STAFF_STRANGERS = expect(403, anonymous=401)

# (url name, method) -> (call, expected status per role)
MATRIX: dict[tuple[str, str], tuple[Call, dict[str, int]]] = {
    # users
    ("auth-register", "POST"): (
        Call(body={"email": "{unique}@example.com", "password": "a-much-longer-secret-42"}),
        expect(201),
    ),
    ("auth-token", "POST"): (
        Call(body={"email": "{a_email}", "password": "{password}"}),
        expect(200),
    ),
    ("auth-token-refresh", "POST"): (Call(body={"refresh": "{a_refresh}"}), expect(200)),
    ("ping", "GET"): (Call(), expect(200)),
    ("users-me", "GET"): (Call(), SIGNED_IN),
    ("users-me", "PATCH"): (Call(body={"full_name": "New Name"}), SIGNED_IN),
    ("users-me-password", "POST"): (
        Call(body={"current_password": "{password}", "new_password": "a-much-longer-secret-42"}),
        expect(204, anonymous=401),
    ),
    ("users-me-addresses", "GET"): (Call(), SIGNED_IN),
    ("users-me-addresses", "POST"): (Call(body=ADDRESS), expect(201, anonymous=401)),
    ("users-me-address", "GET"): (Call(target="address"), OWNER_ONLY),
    ("users-me-address", "PATCH"): (Call(body={"city": "Paris"}, target="address"), OWNER_ONLY),
    ("users-me-address", "DELETE"): (
        Call(target="address"),
        expect(404, anonymous=401, a=204),
    ),
    # catalog
    ("catalog-categories", "GET"): (Call(), expect(200)),
    ("catalog-products", "GET"): (Call(), expect(200)),
    ("catalog-products", "POST"): (
        Call(body={"sku": "NEW-1", "name": "New", "price": "1.00"}),
        expect(403, anonymous=401, catalog=201),
    ),
    ("catalog-popular", "GET"): (Call(), expect(200)),
    ("catalog-product", "GET"): (Call(target="product"), expect(200)),
    ("catalog-product", "PATCH"): (Call(body={"price": "2.00"}, target="product"), CATALOG_WRITE),
    ("catalog-product", "DELETE"): (
        Call(target="product"),
        expect(403, anonymous=401, catalog=204),
    ),
    ("catalog-stock-adjustments", "POST"): (
        Call(body={"delta": 5, "reason": "recount"}, target="product"),
        expect(403, anonymous=401, catalog=201),
    ),
    # orders
    ("order-list", "GET"): (Call(), SIGNED_IN),
    ("order-list", "POST"): (
        Call(
            body={
                "items": [{"product_id": "{product}", "quantity": 1}],
                "shipping_address": ADDRESS,
                "payment": {"token": "tok_visa"},
            },
            headers={"Idempotency-Key": "{unique}"},
        ),
        expect(202, anonymous=401),
    ),
    ("order-detail", "GET"): (Call(target="order"), ORDER_READERS),
    ("order-events", "GET"): (Call(target="order"), ORDER_READERS),
    ("order-state", "GET"): (
        Call(target="order"),
        expect(403, anonymous=401, orders=200, support=200),
    ),
    ("order-cancel", "POST"): (
        Call(body={}, target="order"),
        expect(404, anonymous=401, a=200, orders=200),
    ),
    ("order-ship", "POST"): (
        Call(body={"tracking_number": "TRK-9"}, target="order"),
        ORDER_MANAGER_ONLY,
    ),
    ("order-deliver", "POST"): (Call(target="shipped"), ORDER_MANAGER_ONLY),
    # payments
    ("payments", "GET"): (Call(), SIGNED_IN),
    # Authenticated by its signature, not by a user: an unsigned call is refused alike.
    ("payments-webhook-sandbox", "POST"): (Call(body={}), expect(400)),
    ("payment", "GET"): (Call(target="payment"), ORDER_READERS | {"support": 200}),
    # Staff pass the permission and then miss the required Idempotency-Key (400): the
    # refund itself would call the provider.
    ("payment-refunds", "POST"): (
        Call(body={"reason": "test"}, target="payment"),
        expect(403, anonymous=401, orders=400, support=400),
    ),
    # webhooks: staff holding core.change_webhooksubscription (no role here has it)
    ("webhook-event-types", "GET"): (Call(), STAFF_STRANGERS),
    ("webhook-subscriptions", "GET"): (Call(), STAFF_STRANGERS),
    ("webhook-subscriptions", "POST"): (
        Call(body={"target_url": "https://shop.example/h", "event_types": ["OrderPlaced"]}),
        STAFF_STRANGERS,
    ),
    ("webhook-subscription", "GET"): (Call(target="subscription"), STAFF_STRANGERS),
    ("webhook-subscription", "PATCH"): (
        Call(body={"is_active": False}, target="subscription"),
        STAFF_STRANGERS,
    ),
    ("webhook-subscription", "DELETE"): (Call(target="subscription"), STAFF_STRANGERS),
    ("webhook-deliveries", "GET"): (Call(target="subscription"), STAFF_STRANGERS),
    ("webhook-delivery-redeliver", "POST"): (Call(target="delivery"), STAFF_STRANGERS),
}


def api_endpoints() -> set[tuple[str, str]]:
    """(url name, METHOD) of every API view method, from the URL resolver."""
    return {(route.name, method) for route in api_routes() for method in route.methods}


def test_every_endpoint_has_a_row_in_the_matrix():
    endpoints = api_endpoints()
    assert len(endpoints) >= 30
    assert endpoints - set(MATRIX) == set(), "add these endpoints to MATRIX"
    assert set(MATRIX) - endpoints == set(), "these MATRIX rows match no endpoint"


@pytest.fixture
def world(db):
    """Customer A's objects, and a client for each role."""
    customer_a, customer_b = UserFactory(), UserFactory()
    product = catalog_services.product_create(
        sku="MTX-1", name="Matrix mug", price=Decimal("8.00"), currency="EUR", initial_stock=40
    )
    order = place_order(customer_a, products=[product])
    confirm(str(order.pk))
    shipped = place_order(customer_a, products=[product])
    confirm(str(shipped.pk))
    order_services.order_ship(order_id=str(shipped.pk), tracking_number="TRK-1")
    subscription = WebhookSubscription.objects.create(
        target_url="https://shop.example/h", event_types=["OrderPlaced"], secret="s" * 32
    )
    delivery = WebhookDelivery.objects.create(
        subscription=subscription,
        event_id=uuid.uuid4(),
        event_type="OrderPlaced",
        body="{}",
        status="failed",
        retry_until=timezone.now(),
    )
    users = {
        "customer_a": customer_a,
        "customer_b": customer_b,
        **{role: staff_member(role) for role in (CATALOG_MANAGERS, ORDER_MANAGERS, SUPPORT)},
    }
    return {
        "users": users,
        "targets": {
            "order": str(order.pk),
            "shipped": str(shipped.pk),
            "address": AddressFactory(user=customer_a).pk,
            "payment": PaymentFactory(
                order_id=str(order.pk), user_id=customer_a.pk, amount=order.total
            ).pk,
            "product": product.pk,
            "subscription": subscription.pk,
            "delivery": delivery.pk,
        },
        "values": {
            "a_email": customer_a.email,
            "password": DEFAULT_PASSWORD,
            "a_refresh": str(RefreshToken.for_user(customer_a)),
            "product": product.pk,
        },
    }


def client_for(world, role: str) -> APIClient:
    return APIClient() if role == "anonymous" else bearer_client(world["users"][role])


def _fill(value, values: dict):
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if value == "{product}":
        return values["product"]
    if isinstance(value, str) and "{" in value:
        return value.format(unique=uuid.uuid4().hex, **values)
    return value


def url_for(name: str, target: str, world) -> str:
    kwargs = {}
    if target == "delivery":
        delivery = WebhookDelivery.objects.get(pk=world["targets"]["delivery"])
        kwargs = {"subscription_id": delivery.subscription_id, "delivery_id": delivery.pk}
    elif target:
        parameter = {
            "order": "order_id",
            "shipped": "order_id",
            "address": "address_id",
            "payment": "payment_id",
            "product": "id_or_slug",
            "subscription": "subscription_id",
        }[target]
        kwargs[parameter] = world["targets"][target]
    return reverse(name, kwargs=kwargs)


def call(world, role: str, name: str, method: str):
    spec, _ = MATRIX[(name, method)]
    client = client_for(world, role)
    values = world["values"]
    headers = {k: _fill(v, values) for k, v in spec.headers.items()}
    kwargs = {"format": "json", "headers": headers}
    if spec.body is not None:
        kwargs["data"] = _fill(spec.body, values)
    return getattr(client, method.lower())(url_for(name, spec.target, world), **kwargs)


@pytest.mark.parametrize("role", ROLES)
def test_each_caller_gets_the_expected_status_everywhere(world, role):
    mismatches = []
    for name, method in sorted(MATRIX):
        # Each call starts from the same world: its changes are rolled back.
        with transaction.atomic():
            response = call(world, role, name, method)
            transaction.set_rollback(True)
        expected = MATRIX[(name, method)][1][role]
        if response.status_code != expected:
            mismatches.append(f"{method} {name}: {response.status_code}, expected {expected}")
        elif expected >= 400 and response["Content-Type"] != "application/problem+json":
            mismatches.append(f"{method} {name}: {expected} is not a problem")
    assert not mismatches, "\n".join(mismatches)


def _state_of_a(world) -> dict:
    targets = world["targets"]
    return {
        "address": Address.objects.filter(pk=targets["address"]).values().first(),
        "order": OrderSummary.objects.filter(pk=targets["order"]).values().first(),
        "shipped": OrderSummary.objects.filter(pk=targets["shipped"]).values().first(),
        "payment": Payment.objects.filter(pk=targets["payment"]).values().first(),
    }


UNSAFE_ON_A_OBJECTS = sorted(
    key
    for key, (spec, _) in MATRIX.items()
    if key[1] != "GET" and spec.target in ("order", "shipped", "address", "payment")
)


@pytest.mark.parametrize("role", ["customer_b", CATALOG_MANAGERS, SUPPORT])
def test_nobody_without_the_right_changes_objects_of_customer_a(world, role):
    before = _state_of_a(world)
    for name, method in UNSAFE_ON_A_OBJECTS:
        if MATRIX[(name, method)][1][role] < 400:
            continue  # this role may (support reads payments; nobody here writes)
        call(world, role, name, method)
    assert _state_of_a(world) == before


@pytest.mark.parametrize(
    ("name", "key"),
    [("order-list", "order"), ("payments", "payment"), ("users-me-addresses", "address")],
)
def test_lists_of_customer_b_hold_nothing_of_customer_a(world, name, key):
    body = call(world, "customer_b", name, "GET").json()
    items = body["results"] if isinstance(body, dict) else body
    assert str(world["targets"][key]) not in {str(item["id"]) for item in items}
    own = call(world, "customer_a", name, "GET").json()
    own_items = own["results"] if isinstance(own, dict) else own
    assert str(world["targets"][key]) in {str(item["id"]) for item in own_items}

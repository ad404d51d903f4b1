from decimal import Decimal

import pytest
from django.contrib.auth.models import Group

from apps.orders import services
from apps.users.roles import ORDER_MANAGERS, SUPPORT
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.support.sandbox import fast_saga_settings
from tests.users.factories import UserFactory

ADDRESS = {
    "full_name": "Ada Lovelace",
    "line1": "12 St James's Square",
    "city": "London",
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}


def place_order(user, *, products=None, quantity: int = 1):
    products = products or [ProductFactory(price=Decimal("12.50"))]
    return services.order_place(
        user_id=user.pk,
        items=[(p.pk, quantity) for p in products],
        shipping_address=ADDRESS,
        payment_token="tok_visa",
    )


def confirm(order_id: str) -> None:
    order = services.order_record_stock_reserved(
        order_id=order_id, reservation_reference=f"res-{order_id}"
    )
    services.order_record_payment_captured(
        order_id=order_id, payment_id=f"pay-{order_id}", amount=order.total
    )
    services.order_confirm(order_id=order_id)


def staff_member(role: str):
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def customer(db):
    return UserFactory()


@pytest.fixture
def customer_client(customer):
    return bearer_client(customer)


@pytest.fixture
def manager_client(db):
    return bearer_client(staff_member(ORDER_MANAGERS))


@pytest.fixture
def support_client(db):
    return bearer_client(staff_member(SUPPORT))


@pytest.fixture
def saga_settings(settings, sandbox):
    """The same payment and saga settings in this process and in the worker's."""
    values = fast_saga_settings(sandbox)
    for name, value in values.items():
        setattr(settings, name, value)
    yield {name: str(value) for name, value in values.items()}
    sandbox.chaos(failure_rate=0, latency_ms=0, down=False)

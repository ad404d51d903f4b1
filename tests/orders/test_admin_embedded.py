"""The staff admin in `make run`'s embedded mode (SQLite, file cache): the index's
figures and an order's page, as on PostgreSQL."""

from decimal import Decimal

import pytest
from pytest_django.asserts import assertInHTML

from apps.orders import services
from tests.catalog.factories import ProductFactory
from tests.orders.conftest import place_order
from tests.users.factories import UserFactory

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]


def test_the_index_and_an_order_page_work_on_sqlite(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    lamp = ProductFactory(name="Brass lamp", price=Decimal("10.10"))
    kept = place_order(UserFactory(), products=[lamp], quantity=2)
    dropped = place_order(UserFactory(), products=[lamp])
    services.order_cancel(order_id=str(dropped.pk), reason="customer_request", note="too dear")

    index = client.get("/admin/")
    page = client.get(f"/admin/orders/ordersummary/{dropped.pk}/change/").content.decode()

    figures = {figure.label: figure.value for figure in index.context["figures"]}
    assert figures["Orders today"] == "2 (30.30 EUR)"  # cents, though SQLite sums floats
    assert figures["Orders waiting in their placement saga"].startswith("1, ")
    assertInHTML("<td>Cancelled by the customer: too dear</td>", page)
    assert str(kept.pk) not in page

"""Staff writes: catalog managers only; bad input is a problem and writes nothing."""

from decimal import Decimal

import pytest

from apps.catalog.models import Product, StockAdjustment
from apps.catalog.services import stock_reserve
from tests.catalog.factories import CategoryFactory, ProductFactory
from tests.conftest import bearer_client
from tests.users.factories import UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products"
NEW_PRODUCT = {"sku": "MUG-001", "name": "Blue mug", "price": "12.50", "currency": "EUR"}


def test_manager_creates_a_product_with_initial_stock(manager_client, manager):
    category = CategoryFactory()
    response = manager_client.post(
        PRODUCTS,
        {**NEW_PRODUCT, "category_id": category.pk, "initial_stock": 7},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["price"] == "12.50" and body["available"] == 7
    assert body["slug"] == "blue-mug-mug-001"
    adjustment = StockAdjustment.objects.get(product_id=body["id"])
    assert (adjustment.delta, adjustment.actor_id) == (7, manager.pk)


def test_invalid_product_is_a_validation_problem_and_nothing_is_written(manager_client):
    broken_rules = manager_client.post(
        PRODUCTS, {**NEW_PRODUCT, "price": "-1", "currency": "XXX"}, format="json"
    )
    wrong_shape = manager_client.post(PRODUCTS, {**NEW_PRODUCT, "colour": "blue"}, format="json")
    assert set(assert_problem(broken_rules, 400, "validation-error")["errors"]) == {
        "price",
        "currency",
    }
    assert set(assert_problem(wrong_shape, 400, "validation-error")["errors"]) == {"colour"}
    assert not Product.objects.exists()


def test_unknown_category_is_a_field_error(manager_client):
    response = manager_client.post(PRODUCTS, {**NEW_PRODUCT, "category_id": 999}, format="json")
    assert assert_problem(response, 400, "validation-error")["errors"] == {
        "category_id": ["No such category."]
    }


def test_duplicate_sku_is_a_conflict(manager_client):
    ProductFactory(sku="MUG-001")
    response = manager_client.post(PRODUCTS, NEW_PRODUCT, format="json")
    assert_problem(response, 409, "product-exists")


def test_manager_updates_and_deactivates(manager_client, api_client):
    product = ProductFactory(price=Decimal("10.00"))
    updated = manager_client.patch(
        f"{PRODUCTS}/{product.slug}", {"price": "11.00", "name": "Renamed"}, format="json"
    )
    assert updated.status_code == 200, updated.content
    assert updated.json()["price"] == "11.00" and updated.json()["name"] == "Renamed"

    assert manager_client.delete(f"{PRODUCTS}/{product.pk}").status_code == 204
    assert Product.objects.get(pk=product.pk).is_active is False
    assert api_client.get(PRODUCTS).json()["results"] == []
    # The editor can still reach (and reactivate) it.
    again = manager_client.patch(f"{PRODUCTS}/{product.slug}", {"is_active": True}, format="json")
    assert again.status_code == 200 and again.json()["is_active"] is True


def test_stock_adjustment_records_who_when_delta_and_reason(manager_client, manager):
    product = ProductFactory(stock__on_hand=5)
    response = manager_client.post(
        f"{PRODUCTS}/{product.pk}/stock-adjustments",
        {"delta": -2, "reason": "damaged in storage"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["delta"], body["on_hand_after"], body["actor_id"]) == (-2, 3, manager.pk)
    assert body["reason"] == "damaged in storage" and body["created_at"]


def test_stock_cannot_drop_below_reserved_units(manager_client):
    product = ProductFactory(stock__on_hand=5)
    stock_reserve(reference="order-1", items=[(product.pk, 4)])
    response = manager_client.post(
        f"{PRODUCTS}/{product.pk}/stock-adjustments",
        {"delta": -2, "reason": "count correction"},
        format="json",
    )
    assert_problem(response, 409, "stock-below-reserved")
    assert not StockAdjustment.objects.exists()


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("post", PRODUCTS, NEW_PRODUCT),
        ("patch", f"{PRODUCTS}/{{id}}", {"price": "1.00"}),
        ("delete", f"{PRODUCTS}/{{id}}", None),
        ("post", f"{PRODUCTS}/{{id}}/stock-adjustments", {"delta": 1, "reason": "x"}),
    ],
)
def test_customers_get_403_and_anonymous_401(api_client, method, path, data):
    product = ProductFactory(price=Decimal("10.00"))
    url = path.format(id=product.pk)
    customer = bearer_client(UserFactory())
    staff_without_role = bearer_client(UserFactory(is_staff=True))

    assert_problem(getattr(api_client, method)(url, data, format="json"), 401, "not-authenticated")
    for client in (customer, staff_without_role):
        response = getattr(client, method)(url, data, format="json")
        assert_problem(response, 403, "permission-denied")
    assert Product.objects.get(pk=product.pk).price == Decimal("10.00")

"""The catalog in `make run`'s embedded mode (SQLite, file cache); `make test` runs
these without PostgreSQL or Redis."""

from decimal import Decimal

import pytest

from apps.catalog.services import reservation_commit, stock_reserve
from tests.catalog.factories import CategoryFactory, ProductFactory

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]

PRODUCTS = "/api/v1/products"


def test_list_filters_search_and_detail_work(api_client):
    kitchen = CategoryFactory(slug="kitchen")
    kettle = ProductFactory(
        name="Electric kettle", category=kitchen, price=Decimal("30.00"), stock__on_hand=2
    )
    ProductFactory(name="Garden hose", price=Decimal("12.00"))

    listing = api_client.get(PRODUCTS, {"category": "kitchen", "in_stock": "true"})
    found = api_client.get(PRODUCTS, {"search": "kettle", "max_price": "40"})
    detail = api_client.get(f"{PRODUCTS}/{kettle.slug}")
    cached = api_client.get(f"{PRODUCTS}/{kettle.slug}")

    assert [item["id"] for item in listing.json()["results"]] == [kettle.pk]
    assert [item["id"] for item in found.json()["results"]] == [kettle.pk]
    assert detail.status_code == 200 and detail.json()["price"] == "30.00"
    assert cached.json() == detail.json()
    assert api_client.get("/api/v1/categories").json()[0]["slug"] == "kitchen"


def test_reserve_and_commit_work(api_client):
    product = ProductFactory(stock__on_hand=2)
    stock_reserve(reference="order-1", items=[(product.pk, 2)])
    reservation_commit(reference="order-1")
    assert api_client.get(f"{PRODUCTS}/{product.pk}").json()["in_stock"] is False
    assert api_client.get("/api/v1/products/popular").json()[0]["id"] == product.pk


def test_search_results_page_without_repeats(api_client):
    kettles = {ProductFactory(name=f"Kettle {n}").pk for n in range(3)}
    first = api_client.get(PRODUCTS, {"search": "kettle", "page_size": 2}).json()
    second = api_client.get(first["next"]).json()
    seen = [item["id"] for item in first["results"] + second["results"]]
    assert sorted(seen) == sorted(kettles) and second["next"] is None

"""The catalog publishes its facts in the transaction of the change: stock after sales,
releases, returns and adjustments (not after each reservation), prices, publication."""

from decimal import Decimal

import pytest
from django.db import transaction

from apps.catalog import services
from tests.support.outbox import published

pytestmark = pytest.mark.django_db


def stock_figures(event) -> dict:
    (product,) = event.payload["products"]
    return {key: product[key] for key in ("on_hand", "reserved", "available")}


def test_stock_changes_are_published_with_the_figures_after_them():
    product = services.product_create(sku="EV-1", name="Kettle", price=Decimal("20.00"))
    services.stock_adjust(product_id=product.pk, delta=5, reason="delivery")
    services.stock_reserve(reference="order-a", items=[(product.pk, 2)])
    services.stock_reserve(reference="order-b", items=[(product.pk, 1)])
    services.reservation_commit(reference="order-a")
    services.reservation_release(reference="order-b")
    services.reservation_return(reference="order-a")

    events = published("StockChanged")
    assert [(e.payload["cause"], e.payload["reference"]) for e in events] == [
        ("adjustment", events[0].payload["reference"]),
        ("sale", "order-a"),
        ("release", "order-b"),
        ("return", "order-a"),
    ]  # reservations themselves are not announced
    assert [stock_figures(e) for e in events] == [
        {"on_hand": 5, "reserved": 0, "available": 5},
        {"on_hand": 3, "reserved": 1, "available": 2},
        {"on_hand": 3, "reserved": 0, "available": 3},
        {"on_hand": 5, "reserved": 0, "available": 5},
    ]
    assert events[0].headers["schema_version"] == 1


def test_price_and_publication_changes_are_published_once_each():
    product = services.product_create(sku="EV-2", name="Lamp", price=Decimal("10.00"))
    services.product_update(product_id=product.pk, price=Decimal("12.50"))
    services.product_update(product_id=product.pk, name="Desk lamp")  # neither price nor state
    services.product_set_active(product_ids=[product.pk], is_active=False)
    services.product_set_active(product_ids=[product.pk], is_active=False)  # no change
    services.product_update(product_id=product.pk, is_active=True)

    assert [e.payload["price"] for e in published("ProductPublished", sku="EV-2")] == [
        "10.00",
        "12.50",
    ]
    assert len(published("ProductUnpublished", sku="EV-2")) == 1
    (price_change,) = published("ProductPriceChanged", sku="EV-2")
    assert (price_change.payload["old_price"], price_change.payload["price"]) == ("10.00", "12.50")


def test_a_rolled_back_change_publishes_nothing():
    product = services.product_create(sku="EV-3", name="Mug", price=Decimal("4.00"))
    with pytest.raises(RuntimeError), transaction.atomic():
        services.stock_adjust(product_id=product.pk, delta=3, reason="delivery")
        raise RuntimeError("the caller's transaction fails after the adjustment")
    assert published("StockChanged") == []

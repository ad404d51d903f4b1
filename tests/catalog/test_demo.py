import pytest

from apps.catalog.demo import seed_catalog
from apps.catalog.models import Category, Product, Reservation

pytestmark = pytest.mark.django_db


def test_demo_catalog_is_realistic_and_idempotent():
    first = seed_catalog()
    counts = (Category.objects.count(), Product.objects.count(), Reservation.objects.count())
    prices = dict(Product.objects.values_list("sku", "price"))

    second = seed_catalog()

    assert counts[1] >= 200
    assert Category.objects.filter(parent__parent__isnull=False).exists()  # three levels
    assert Reservation.objects.filter(status="committed").exists()
    assert (
        Category.objects.count(),
        Product.objects.count(),
        Reservation.objects.count(),
    ) == counts
    assert dict(Product.objects.values_list("sku", "price")) == prices
    assert "(0 new)" in second[0] and first != second

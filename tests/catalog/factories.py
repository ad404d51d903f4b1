from datetime import timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from apps.catalog.models import Category, Product, Reservation, Stock
from tests.users.factories import UserFactory


class CategoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Category

    name = factory.Sequence(lambda n: f"Category {n}")
    slug = factory.Sequence(lambda n: f"category-{n}")
    parent = None


class ProductFactory(factory.django.DjangoModelFactory):
    """A product with its stock row (`stock__on_hand=...` sets the units)."""

    class Meta:
        model = Product
        skip_postgeneration_save = True

    sku = factory.Sequence(lambda n: f"SKU-{n:06d}")
    slug = factory.Sequence(lambda n: f"product-{n}")
    name = factory.Sequence(lambda n: f"Product {n}")
    description = "A fine product."
    category = factory.SubFactory(CategoryFactory)
    price = Decimal("10.00")
    currency = "EUR"
    stock = factory.RelatedFactory(
        "tests.catalog.factories.StockFactory", factory_related_name="product"
    )


class StockFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Stock

    on_hand = 10
    reserved = 0


class ReservationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Reservation

    reference = factory.Sequence(lambda n: f"order-{n}")
    product = factory.SubFactory(ProductFactory)
    quantity = 1
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=15))


def catalog_manager():
    from django.contrib.auth.models import Group

    from apps.users.roles import CATALOG_MANAGERS

    user = UserFactory(is_staff=True)
    # get_or_create: transactional tests flush the group that a migration created.
    user.groups.add(Group.objects.get_or_create(name=CATALOG_MANAGERS)[0])
    return user

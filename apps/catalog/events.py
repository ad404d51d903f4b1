"""Events of the catalog context: its published contract (see docs/events.md).

Published in the transaction of the change. Stock is announced when units on hand or
available change for a lasting reason (a sale, a release, a return, an adjustment), not
for every reservation: a reservation either becomes a sale or is released, and both are
announced.
"""

from dataclasses import dataclass
from typing import Any

from apps.core.messaging.event_registry import published_event

CONTEXT = "catalog"


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class StockChanged:
    """Stock of some products changed. `cause`: sale, release, return, adjustment or
    initial; `reference`: the order (reservation) or adjustment behind it; `products`:
    [{product_id, sku, on_hand, reserved, available}] as they are after the change."""

    cause: str
    reference: str
    products: list[dict[str, Any]]


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class ProductPriceChanged:
    """A product's price (or currency) changed; orders keep the price they were placed at."""

    product_id: int
    sku: str
    old_price: str
    old_currency: str
    price: str
    currency: str


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class ProductPublished:
    """A product is for sale (created active, or activated)."""

    product_id: int
    sku: str
    slug: str
    name: str
    price: str
    currency: str


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class ProductUnpublished:
    """A product is no longer for sale (deactivated)."""

    product_id: int
    sku: str

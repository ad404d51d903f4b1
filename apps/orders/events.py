"""Events of the order aggregate, stored in the event store (the truth).

Each event is stored with its `SCHEMA_VERSION`; `upcast()` turns any stored older
version into the current shape, so history written years ago still replays.
Amounts are decimal strings, ids are strings: the payloads are plain JSON.

The events marked `@published_event` are also the orders context's public contract:
they go out through the outbox (docs/events.md). `StockReserved` and `PaymentCaptured`
are the order's own bookkeeping of its saga's steps and stay inside the context (the
payments context publishes the money facts).
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar

from apps.core.messaging.event_registry import published_event

CONTEXT = "orders"


@dataclass(frozen=True)
class OrderEvent:
    SCHEMA_VERSION: ClassVar[int] = 1

    @property
    def event_type(self) -> str:
        return type(self).__name__

    def as_data(self) -> dict[str, Any]:
        """The payload, sharing the event's lists and dicts (stored or shown, never
        changed): asdict()'s deep copy cost more than the rest of storing an order's
        event."""
        return dict(vars(self))


@published_event(context=CONTEXT)
@dataclass(frozen=True)
class OrderPlaced(OrderEvent):
    order_id: str
    user_id: int
    items: list[dict[str, Any]]  # product_id, sku, name, unit_price, quantity, line_total
    currency: str
    subtotal: str
    total: str
    shipping_address: dict[str, Any]


@dataclass(frozen=True)
class StockReserved(OrderEvent):
    order_id: str
    reservation_reference: str


@dataclass(frozen=True)
class PaymentCaptured(OrderEvent):
    order_id: str
    payment_id: str
    amount: str
    currency: str


@published_event(context=CONTEXT)
@dataclass(frozen=True)
class OrderConfirmed(OrderEvent):
    order_id: str


@published_event(context=CONTEXT)
@dataclass(frozen=True)
class OrderShipped(OrderEvent):
    SCHEMA_VERSION: ClassVar[int] = 2  # v2 added `carrier`
    order_id: str
    tracking_number: str
    carrier: str = "unknown"


@published_event(context=CONTEXT)
@dataclass(frozen=True)
class OrderDelivered(OrderEvent):
    order_id: str


@published_event(context=CONTEXT)
@dataclass(frozen=True)
class OrderCancelled(OrderEvent):
    order_id: str
    reason: str  # a code: customer_request, out_of_stock, payment_declined, ...
    note: str = ""
    # What made the saga give up, e.g. for out_of_stock:
    # {"products": [{"product_id": 7, "requested": 3, "available": 1}]}
    details: dict[str, Any] = field(default_factory=dict)


@published_event(context=CONTEXT)
@dataclass(frozen=True)
class OrderRefunded(OrderEvent):
    """The order's payment is now refunded in full (`amount`: by this refund)."""

    order_id: str
    amount: str
    currency: str
    payment_id: str = ""
    refund_ids: list[str] = field(default_factory=list)


@published_event(context=CONTEXT)
@dataclass(frozen=True)
class OrderPartiallyRefunded(OrderEvent):
    """Part of the order's payment was refunded (`amount`: by this refund)."""

    order_id: str
    amount: str
    currency: str
    payment_id: str = ""
    refund_ids: list[str] = field(default_factory=list)


EVENT_TYPES: dict[str, type[OrderEvent]] = {
    cls.__name__: cls
    for cls in (
        OrderPlaced,
        StockReserved,
        PaymentCaptured,
        OrderConfirmed,
        OrderShipped,
        OrderDelivered,
        OrderCancelled,
        OrderRefunded,
        OrderPartiallyRefunded,
    )
}


def _shipped_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "carrier": "unknown"}


# (event type, stored version) -> function giving the next version's data.
UPCASTERS = {("OrderShipped", 1): _shipped_v1_to_v2}


def upcast(event_type: str, schema_version: int, data: dict[str, Any]) -> OrderEvent:
    """The current event object for data stored under any schema version."""
    cls = EVENT_TYPES[event_type]
    while schema_version < cls.SCHEMA_VERSION:
        data = UPCASTERS[(event_type, schema_version)](data)
        schema_version += 1
    return cls(**data)

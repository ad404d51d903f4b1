"""Orders context queries: the read model for lists and details, the event store for
history and time travel."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import groupby
from operator import itemgetter
from typing import Any

from django.db.models import Count, Min, QuerySet, Sum

from apps.core.data.routing import replica_safe
from apps.core.errors import NotFound
from apps.orders import event_store
from apps.orders.domain import Order
from apps.orders.events import upcast
from apps.orders.models import OrderSummary, StoredEvent
from apps.orders.projections import summary_fields


@replica_safe
def order_list(*, user_id: int | None = None, status: str | None = None) -> QuerySet[OrderSummary]:
    orders = OrderSummary.objects.all()
    if user_id is not None:
        orders = orders.filter(user_id=user_id)
    if status:
        orders = orders.filter(status=status)
    return orders


def order_summary(*, order_id: str, user_id: int | None = None) -> OrderSummary:
    """The order's summary; `user_id` restricts it to its owner (others get NotFound).

    The owner is never told 404 for an order that exists: when the summary is not on the
    replica (it lags, or the projection is not written yet) it is read from the primary,
    else folded from the event store without writing (a query does not change the read
    model).
    """
    summary = _summary_from_read_model(order_id=order_id, user_id=user_id)
    if summary is not None:
        return summary
    orders = OrderSummary.objects.all()
    if user_id is not None:
        orders = orders.filter(user_id=user_id)
    summary = orders.filter(pk=order_id).first()
    if summary is None and StoredEvent.objects.filter(aggregate_id=order_id).exists():
        order = event_store.load_order(order_id)
        if user_id is None or order.user_id == user_id:
            summary = OrderSummary(id=order.id, **summary_fields(order))
    if summary is None:
        raise NotFound("No such order.")
    return summary


def order_summaries(*, order_ids: list[str]) -> dict[str, OrderSummary]:
    """The summaries of these orders in one query, by order id; an order whose summary is
    not written (yet) is left out (`order_summary` reads it from the event store)."""
    summaries = OrderSummary.objects.filter(pk__in=order_ids).order_by()
    return {str(summary.pk): summary for summary in summaries}


@replica_safe
def _summary_from_read_model(*, order_id: str, user_id: int | None) -> OrderSummary | None:
    orders = OrderSummary.objects.filter(pk=order_id)
    if user_id is not None:
        orders = orders.filter(user_id=user_id)
    return orders.first()


def order_events(*, order_id: str) -> QuerySet[StoredEvent]:
    events = StoredEvent.objects.filter(aggregate_id=order_id).order_by("version")
    if not events.exists():
        raise NotFound("No such order.")
    return events


def order_as_of(*, order_id: str, version: int | None = None, at: datetime | None = None) -> Order:
    """The order as it was at a version or a moment, rebuilt from its events."""
    return event_store.load_order(order_id, as_of_version=version, as_of=at)


# --- Integrity --------------------------------------------------------------------------


def orders_from_event_store() -> dict[str, Order]:
    """Every order rebuilt from its events (the truth), by id; nothing is written."""
    rows = StoredEvent.objects.order_by("aggregate_id", "version").values_list(
        "aggregate_id", "version", "event_type", "schema_version", "data", "recorded_at"
    )
    return {
        str(order_id): Order.from_history(
            str(order_id), ((v, upcast(t, sv, d), at) for _, v, t, sv, d, at in events)
        )
        for order_id, events in groupby(rows.iterator(chunk_size=2000), key=itemgetter(0))
    }


def read_model_discrepancy_report(*, rebuilt: dict[str, Order]) -> list[str]:
    """Where the read model differs from a rebuild from the event store, one readable line
    each (empty when they agree): missing, extra and differing summaries."""
    problems = []
    summaries = {str(s.pk): s for s in OrderSummary.objects.all()}
    for order_id in sorted(set(summaries) - set(rebuilt)):
        problems.append(f"order {order_id}: in the read model but has no events")
    for order_id, order in sorted(rebuilt.items()):
        summary = summaries.get(order_id)
        if summary is None:
            problems.append(f"order {order_id}: has events but no read model row")
            continue
        for name, expected in summary_fields(order).items():
            actual = getattr(summary, name)
            if actual != expected:
                problems.append(f"order {order_id}: {name} is {actual!r}, events say {expected!r}")
    return problems


# --- Staff view -------------------------------------------------------------------------

CENT = Decimal("0.01")
CANCELLATION_WORDS = {
    "customer_request": "Cancelled by the customer",
    "staff_request": "Cancelled by staff",
    "out_of_stock": "Cancelled: out of stock",
    "payment_declined": "Cancelled: payment declined",
    "payment_unavailable": "Cancelled: the payment provider did not answer in time",
    "reservation_expired": "Cancelled: the stock reservation expired",
    "timed_out": "Cancelled: not placed in time",
}


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    text: str
    actor_id: int | None  # the user whose request recorded it; None: the system


def cancellation_words(
    *, reason: str, note: str, details: dict[str, Any], items: list[dict[str, Any]]
) -> str:
    """A cancellation in words, with what made it fail (short products, decline code)."""
    words = CANCELLATION_WORDS.get(reason, f"Cancelled: {reason.replace('_', ' ')}")
    names = {line["product_id"]: line["name"] for line in items}
    short = [
        f"{names.get(p['product_id'], p['product_id'])}: {p['available']} available"
        if "available" in p
        else f"{names.get(p['product_id'], p['product_id'])}: not for sale"
        for p in details.get("products", [])
    ]
    if short:
        words += " — " + ", ".join(short)
    if details.get("decline_code"):
        words += f" ({details['decline_code']})"
    return f"{words}: {note}" if note else words


def _event_words(event_type: str, data: dict[str, Any], items: list[dict[str, Any]]) -> str:
    if event_type == "OrderPlaced":
        return f"Placed: {len(data['items'])} line(s), {data['total']} {data['currency']}"
    if event_type == "StockReserved":
        return f"Stock reserved ({data['reservation_reference']})"
    if event_type == "PaymentCaptured":
        return f"Payment of {data['amount']} {data['currency']} captured"
    if event_type == "OrderConfirmed":
        return "Confirmed"
    if event_type == "OrderShipped":
        return f"Shipped with {data['carrier']}, tracking number {data['tracking_number']}"
    if event_type == "OrderDelivered":
        return "Delivered"
    if event_type == "OrderCancelled":
        return cancellation_words(
            reason=data["reason"], note=data["note"], details=data["details"], items=items
        )
    if event_type in ("OrderRefunded", "OrderPartiallyRefunded"):
        whole = " (all of the payment)" if event_type == "OrderRefunded" else ""
        return f"Refunded {data['amount']} {data['currency']}{whole}"
    return event_type


def order_timeline(*, order_id: str) -> list[TimelineEntry]:
    """The order's history in words, oldest first, each with its time and actor."""
    entries, items = [], []
    for stored in order_events(order_id=order_id):
        event = upcast(stored.event_type, stored.schema_version, stored.data)
        data = event.as_data()
        if stored.event_type == "OrderPlaced":
            items = data["items"]
        entries.append(
            TimelineEntry(
                at=stored.recorded_at,
                text=_event_words(stored.event_type, data, items),
                actor_id=stored.metadata.get("user_id"),
            )
        )
    return entries


def orders_placed_since(*, since: datetime) -> tuple[int, dict[str, Decimal]]:
    """How many orders were placed since `since`, and their value per currency."""
    rows = (
        OrderSummary.objects.filter(placed_at__gte=since)
        .values_list("currency")
        .annotate(value=Sum("total"))
        .values_list("currency", "value")
    )
    # Cents: SQLite sums decimals as floats.
    totals = {currency: Decimal(value).quantize(CENT) for currency, value in rows}
    return OrderSummary.objects.filter(placed_at__gte=since).count(), totals


def orders_waiting() -> tuple[int, datetime | None]:
    """Orders still pending (their placement saga runs), and when the oldest was placed."""
    waiting = OrderSummary.objects.filter(status="pending").aggregate(
        count=Count("id"), oldest=Min("placed_at")
    )
    return waiting["count"], waiting["oldest"]

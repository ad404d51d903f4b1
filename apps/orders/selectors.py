"""Orders context queries: the read model for lists and details, the event store for
history and time travel."""

from datetime import datetime
from itertools import groupby
from operator import itemgetter

from django.db.models import QuerySet

from apps.core.errors import NotFound
from apps.core.routing import primary_reads
from apps.orders import event_store
from apps.orders.domain import Order
from apps.orders.events import upcast
from apps.orders.models import OrderSummary, StoredEvent
from apps.orders.projections import summary_fields


def order_list(*, user_id: int | None = None, status: str | None = None) -> QuerySet[OrderSummary]:
    orders = OrderSummary.objects.all()
    if user_id is not None:
        orders = orders.filter(user_id=user_id)
    if status:
        orders = orders.filter(status=status)
    return orders


def order_summary(*, order_id: str, user_id: int | None = None) -> OrderSummary:
    """The order's summary; `user_id` restricts it to its owner (others get NotFound).

    The owner is never told 404 for an order that exists: when the summary is not there
    (a lagging replica, a projection not yet written) it is folded from the event store on
    the primary, without writing (a query does not change the read model).
    """
    orders = OrderSummary.objects.all()
    if user_id is not None:
        orders = orders.filter(user_id=user_id)
    summary = orders.filter(pk=order_id).first()
    if summary is not None:
        return summary
    with primary_reads():
        summary = orders.filter(pk=order_id).first()
        if summary is None and StoredEvent.objects.filter(aggregate_id=order_id).exists():
            order = event_store.load_order(order_id)
            if user_id is None or order.user_id == user_id:
                summary = OrderSummary(id=order.id, **summary_fields(order))
    if summary is None:
        raise NotFound("No such order.")
    return summary


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
    with primary_reads():
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
    with primary_reads():
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

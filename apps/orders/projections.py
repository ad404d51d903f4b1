"""The order read model (`OrderSummary`), projected from the event store.

Projection folds an order's events through the aggregate and stores the result. It is
idempotent and ignores stale input: a summary only moves to a higher version.
"""

from collections.abc import Callable
from itertools import groupby
from operator import itemgetter

from django.db import transaction

from apps.core.data.atomic_inserts import InsertStatement
from apps.orders.domain import Order
from apps.orders.events import upcast
from apps.orders.models import OrderSummary, StoredEvent


def summary_fields(order: Order) -> dict:
    return {
        "user_id": order.user_id,
        "status": order.status.value,
        "currency": order.currency,
        "subtotal": order.subtotal,
        "total": order.total,
        "items": order.items,
        "item_count": sum(int(item["quantity"]) for item in order.items),
        "shipping_address": order.shipping_address,
        "payment_id": order.payment_id,
        "refunded_amount": order.refunded_amount,
        "tracking_number": order.tracking_number,
        "carrier": order.carrier,
        "cancellation_reason": order.cancellation_reason,
        "cancellation_details": order.cancellation_details,
        "version": order.version,
        "placed_at": order.placed_at,
        "updated_at": order.updated_at,
    }


def new_summary(order: Order) -> OrderSummary:
    """The unsaved summary of a new order."""
    return OrderSummary(id=order.id, **summary_fields(order))


def project(
    order: Order, *, is_new: bool = False, previous: tuple[int, dict] | None = None
) -> OrderSummary | None:
    """Store the order's state as its summary unless a newer version is already there.

    Returns the new summary when `is_new` (no extra query to read it back). `previous`:
    the version and `summary_fields` the order had before this command; if the summary
    still shows that version, only the fields that changed are written.
    """
    if is_new:
        summary = new_summary(order)
        summary.save(force_insert=True)
        return summary
    fields = summary_fields(order)
    if previous is not None:
        version, before = previous
        changed = {name: value for name, value in fields.items() if before.get(name) != value}
        if OrderSummary.objects.filter(pk=order.id, version=version).update(**changed):
            return None
    updated = OrderSummary.objects.filter(pk=order.id, version__lt=order.version).update(**fields)
    if not updated:
        OrderSummary.objects.get_or_create(id=order.id, defaults=fields)
    return None


def project_to(statement: InsertStatement, order: Order, *, previous: tuple[int, dict]) -> None:
    """`project(order, previous=previous)`'s update as part of one statement: the fields
    that changed, if the summary still shows the `previous` version. If it did not (the
    statement says so), `project(order)` catches up."""
    version, before = previous
    changed = {
        name: value for name, value in summary_fields(order).items() if before.get(name) != value
    }
    statement.update(OrderSummary.objects.filter(pk=order.id, version=version), **changed)


@transaction.atomic
def rebuild_all(
    *, batch_size: int = 500, progress: Callable[[int, int], None] | None = None
) -> int:
    """Replace the read model with one recomputed from the event store; returns the count.

    One pass over the store in (aggregate, version) order; summaries are written in
    batches. Runs in one transaction, so readers see the old or the new model, never half.
    """
    total = StoredEvent.objects.values("aggregate_id").distinct().count()
    rows = StoredEvent.objects.order_by("aggregate_id", "version").values_list(
        "aggregate_id", "version", "event_type", "schema_version", "data", "recorded_at"
    )
    OrderSummary.objects.all().delete()
    batch: list[OrderSummary] = []
    done = 0
    for order_id, events in groupby(rows.iterator(chunk_size=2000), key=itemgetter(0)):
        order = Order.from_history(
            str(order_id),
            ((v, upcast(t, sv, data), at) for _, v, t, sv, data, at in events),
        )
        batch.append(OrderSummary(id=order_id, **summary_fields(order)))
        done += 1
        if len(batch) >= batch_size:
            OrderSummary.objects.bulk_create(batch)
            batch.clear()
            if progress:
                progress(done, total)
    OrderSummary.objects.bulk_create(batch)
    if progress:
        progress(done, total)
    return done

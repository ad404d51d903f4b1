"""Orders context commands. Each loads the aggregate, runs one command, appends its
events and projects the read model in one transaction, retrying a bounded number of
times when another writer appended first (optimistic concurrency). A command a person
runs takes their `actor_id`, recorded with its events; without one, the system acted.
Each takes the write's `provenance` (request, correlation and causation ids), recorded
with its events too: views pass their request's, handlers the handled event's, saga
steps the one the placement started with."""

import contextlib
import uuid
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import structlog
from django.conf import settings
from django.db import connection, router, transaction
from django.db.models import Model

from apps.catalog import selectors as catalog_selectors
from apps.core.data.atomic_inserts import InsertStatement
from apps.core.errors import DomainError, ValidationFailed
from apps.core.messaging.provenance import SYSTEM, Provenance
from apps.core.workflows.sagas import kick_sagas, saga_instance, saga_start
from apps.orders import event_store, recent_orders
from apps.orders.domain import Order, OrderStatus
from apps.orders.errors import ConcurrencyConflict
from apps.orders.models import OrderSummary
from apps.orders.projections import new_summary, project, summary_fields

logger = structlog.get_logger(__name__)

MAX_COMMAND_ATTEMPTS = 5
ORDER_ID_NAMESPACE = uuid.UUID("5f0c1f4e-8d4b-4a8e-9b1c-6f1d2e3a4b5c")
# Defined in apps.orders.sagas: reserve stock -> charge -> confirm, with compensations.
ORDER_PLACEMENT_SAGA = "order_placement"
# Refund, then restock, a cancelled order that had been confirmed (apps.orders.sagas).
ORDER_CANCELLATION_SAGA = "order_cancellation"
ADDRESS_SNAPSHOT_FIELDS = (
    "full_name",
    "line1",
    "line2",
    "city",
    "region",
    "postal_code",
    "country",
    "phone",
)


def _run(
    order_id: str,
    command: Callable[[Order], None],
    *,
    provenance: Provenance,
    actor_id: int | None = None,
    remembered: bool = False,
) -> Order:
    """Run `command` on the order and store what it recorded, retrying on a conflict.

    `remembered`: for the commands that record facts for a saga step or a consumer,
    which start from the order this process committed last (see `recent_orders`). Inside
    the caller's transaction (an atomic step, an inbox transaction) they open no
    savepoint of their own and make one attempt: a conflict aborts the caller's
    transaction, whose own retry reloads."""
    in_callers_transaction = remembered and connection.in_atomic_block
    for attempt in range(1, MAX_COMMAND_ATTEMPTS + 1):
        try:
            with contextlib.nullcontext() if in_callers_transaction else transaction.atomic():
                order, before = _commanded(
                    order_id, command, remembered=remembered and attempt == 1
                )
                if order.pending_events:
                    event_store.append_projected(
                        order, previous=before, actor_id=actor_id, provenance=provenance
                    )
                    recent_orders.remember_on_commit(order)
                return order
        except ConcurrencyConflict:
            recent_orders.forget(order_id)
            logger.info("order_command_conflict", order_id=str(order_id), attempt=attempt)
            if in_callers_transaction or attempt == MAX_COMMAND_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _run_all(commands: list[tuple[str, Callable[[Order], None], Provenance]]) -> None:
    """`_run` with `remembered` for several orders, inside the caller's transaction (a
    saga step run for a batch of sagas): the orders this process does not remember are
    loaded in one read, their new events and read model rows written in one statement.
    Any order's DomainError or conflict raises: the caller's transaction is then to be
    rolled back (a conflict aborts it) and each order's command run alone."""
    if not connection.in_atomic_block:
        raise RuntimeError("_run_all belongs in the caller's transaction")
    remembered = {order_id: recent_orders.take(order_id) for order_id, _, _ in commands}
    missing = [order_id for order_id, order in remembered.items() if order is None]
    loaded = event_store.load_orders(missing) if missing else {}
    changes = []
    for order_id, command, provenance in commands:
        order = remembered[order_id] or loaded[order_id]
        before = (order.version, summary_fields(order))
        try:
            command(order)
        except DomainError:
            if remembered[order_id] is None:
                raise
            # Perhaps only stale: the history decides.
            order = event_store.load_order(order_id)
            before = (order.version, summary_fields(order))
            command(order)
        if order.pending_events:
            changes.append((order, before, provenance))
    if not changes:
        return
    try:
        event_store.append_projected_all(changes)
    except ConcurrencyConflict:
        for order, _, _ in changes:
            recent_orders.forget(order.id)
        raise
    for order, _, _ in changes:
        recent_orders.remember_on_commit(order)


def _commanded(
    order_id: str, command: Callable[[Order], None], *, remembered: bool
) -> tuple[Order, tuple[int, dict[str, Any]]]:
    """The order with `command` applied, and its version and summary fields before: the
    remembered order when the command records something on it (appending that fails
    with a conflict unless it is still the latest version), else the order loaded from
    its history."""
    if remembered and (order := recent_orders.take(order_id)) is not None:
        before = (order.version, summary_fields(order))
        try:
            command(order)
        except DomainError:
            pass  # perhaps only stale: the history decides
        else:
            if order.pending_events:
                return order, before
    order = event_store.load_order(order_id)
    before = (order.version, summary_fields(order))
    command(order)
    return order, before


def _order_lines(items: list[tuple[int, int]]) -> tuple[list[dict[str, Any]], str]:
    """Validated lines with a snapshot of each product's name and unit price."""
    errors: dict[str, list[str]] = {}
    if not items:
        raise ValidationFailed({"items": ["An order needs at least one item."]})
    if len(items) > settings.ORDER_MAX_LINES:
        raise ValidationFailed({"items": [f"At most {settings.ORDER_MAX_LINES} lines."]})
    seen: set[int] = set()
    for index, (product_id, quantity) in enumerate(items):
        if product_id in seen:
            errors[f"items.{index}.product_id"] = ["Each product may appear once."]
        seen.add(product_id)
        if not 1 <= quantity <= settings.ORDER_MAX_QUANTITY_PER_LINE:
            errors[f"items.{index}.quantity"] = [
                f"Must be between 1 and {settings.ORDER_MAX_QUANTITY_PER_LINE}."
            ]
    # The price charged must be the current one: read it from the primary, not a replica.
    snapshots = catalog_selectors.product_snapshots(product_ids=[p for p, _ in items])
    for index, (product_id, _) in enumerate(items):
        snapshot = snapshots.get(product_id)
        if snapshot is None or not snapshot.is_active:
            errors[f"items.{index}.product_id"] = ["No such product for sale."]
    if errors:
        raise ValidationFailed(errors)
    currencies = {snapshots[p].currency for p, _ in items}
    if len(currencies) > 1:
        raise ValidationFailed({"items": ["All products of an order must share a currency."]})
    lines = []
    for product_id, quantity in items:
        snapshot = snapshots[product_id]
        unit_price = Decimal(snapshot.unit_price)
        lines.append(
            {
                "product_id": product_id,
                "sku": snapshot.sku,
                "name": snapshot.name,
                "unit_price": str(unit_price),
                "quantity": quantity,
                "line_total": str(unit_price * quantity),
            }
        )
    return lines, currencies.pop()


def _order_id_for(*, user_id: int, idempotency_key: str) -> str:
    """The id of the order a user's request with this idempotency key places.

    Even a retry that outlived its idempotency record (a crash between the order commit
    and the stored response) lands on the same order instead of creating a second one.
    """
    return str(uuid.uuid5(ORDER_ID_NAMESPACE, f"{user_id}:{idempotency_key}"))


def order_place(
    *,
    user_id: int,
    items: list[tuple[int, int]],
    shipping_address: dict[str, Any],
    payment_token: str,
    idempotency_key: str | None = None,
    provenance: Provenance = SYSTEM,
) -> OrderSummary:
    """Record a new pending order and start its placement saga, in one transaction.

    With an idempotency key, placing again with the same key returns the same order."""
    order, saga = _placement(
        user_id=user_id,
        items=items,
        shipping_address=shipping_address,
        payment_token=payment_token,
        idempotency_key=idempotency_key,
        provenance=provenance,
    )
    try:
        with transaction.atomic():
            event_store.append(order, actor_id=user_id, provenance=provenance)
            summary = project(order, is_new=True)
            saga_start(**saga)
            assert summary is not None  # a new order always gets its summary row
            return summary
    except ConcurrencyConflict:
        # The same order id was placed already (a retried request): the placement is
        # idempotent for its owner.
        existing = OrderSummary.objects.filter(pk=order.id, user_id=user_id).first()
        if existing is None:
            raise
        return existing


def order_place_answered(
    *,
    user_id: int,
    items: list[tuple[int, int]],
    shipping_address: dict[str, Any],
    payment_token: str,
    idempotency_key: str,
    answer: Callable[[OrderSummary], Model],
    provenance: Provenance = SYSTEM,
) -> OrderSummary | None:
    """`order_place` in one statement, with the row `answer(summary)` returns (the
    request's completed idempotency record): the order's event, its outbox row, the read
    model, the saga and that row commit together or not at all (PostgreSQL only:
    `apps.core.data.atomic_inserts`). None, with nothing written, when that row's key is taken
    already; a placement of the same order id fails with `IntegrityError`."""
    order, saga = _placement(
        user_id=user_id,
        items=items,
        shipping_address=shipping_address,
        payment_token=payment_token,
        idempotency_key=idempotency_key,
        provenance=provenance,
    )
    statement = InsertStatement(using=router.db_for_write(OrderSummary))
    event_store.append_to(statement, order, actor_id=user_id, provenance=provenance)
    summary = new_summary(order)
    statement.add(summary)
    statement.add(saga_instance(**saga))
    statement.on_commit(kick_sagas)
    return summary if statement.execute(unless_taken=answer(summary)) else None


def _placement(
    *,
    user_id: int,
    items: list[tuple[int, int]],
    shipping_address: dict[str, Any],
    payment_token: str,
    idempotency_key: str | None,
    provenance: Provenance,
) -> tuple[Order, dict[str, Any]]:
    """The placed order, its event pending, and the `saga_start` arguments of its saga."""
    lines, currency = _order_lines(items)
    order = Order(
        id=str(uuid.uuid4())
        if idempotency_key is None
        else _order_id_for(user_id=user_id, idempotency_key=idempotency_key)
    )
    order.place(
        user_id=user_id,
        items=lines,
        currency=currency,
        shipping_address={k: shipping_address.get(k, "") for k in ADDRESS_SNAPSHOT_FIELDS},
    )
    saga = {
        "saga_type": ORDER_PLACEMENT_SAGA,
        "saga_id": order.id,
        "timeout_seconds": settings.ORDER_SAGA_TIMEOUT_SECONDS,
        "context": {
            "order_id": order.id,
            "user_id": user_id,
            "items": [[line["product_id"], line["quantity"]] for line in lines],
            "total": str(order.total),
            "currency": currency,
            "payment_token": payment_token,
            **provenance.as_dict(),
        },
    }
    return order, saga


def order_record_stock_reserved(
    *, order_id: str, reservation_reference: str, provenance: Provenance = SYSTEM
) -> Order:
    return _run(
        order_id,
        lambda o: o.record_stock_reserved(reservation_reference=reservation_reference),
        provenance=provenance,
        remembered=True,
    )


def order_record_payment_captured(
    *, order_id: str, payment_id: str, amount: Decimal, provenance: Provenance = SYSTEM
) -> Order:
    return _run(
        order_id,
        lambda o: o.record_payment_captured(payment_id=payment_id, amount=amount),
        provenance=provenance,
        remembered=True,
    )


def order_confirm(*, order_id: str, provenance: Provenance = SYSTEM) -> Order:
    return _run(order_id, lambda o: o.confirm(), provenance=provenance, remembered=True)


def orders_record_stock_reserved(*, orders: list[tuple[str, str, Provenance]]) -> None:
    """`order_record_stock_reserved` for several (order id, reservation reference,
    provenance) in the caller's transaction, written together (see `_run_all`)."""
    _run_all(
        [
            (order_id, partial(_record_stock_reserved, reservation_reference=reference), provenance)
            for order_id, reference, provenance in orders
        ]
    )


def _record_stock_reserved(order: Order, *, reservation_reference: str) -> None:
    order.record_stock_reserved(reservation_reference=reservation_reference)


def orders_confirm(*, orders: list[tuple[str, Provenance]]) -> None:
    """`order_confirm` for several (order id, provenance) in the caller's transaction,
    written together (see `_run_all`)."""
    _run_all([(order_id, Order.confirm, provenance) for order_id, provenance in orders])


def order_ship(
    *,
    order_id: str,
    tracking_number: str,
    carrier: str = "unknown",
    actor_id: int | None = None,
    provenance: Provenance = SYSTEM,
) -> Order:
    return _run(
        order_id,
        lambda o: o.ship(tracking_number=tracking_number, carrier=carrier),
        actor_id=actor_id,
        provenance=provenance,
    )


def order_deliver(
    *, order_id: str, actor_id: int | None = None, provenance: Provenance = SYSTEM
) -> Order:
    return _run(order_id, lambda o: o.deliver(), actor_id=actor_id, provenance=provenance)


def order_cancel(
    *,
    order_id: str,
    actor_id: int | None = None,
    reason: str | None = None,
    note: str = "",
    details: dict[str, Any] | None = None,
    provenance: Provenance = SYSTEM,
) -> Order:
    """Cancel until shipped. A pending order's placement saga undoes its own steps when it
    next runs; a confirmed order gets a refund-and-restock saga, started with the cancel.

    The system gives its `reason`; a person (`actor_id`) cancels at the customer's
    request when the order is theirs, else at staff's request.
    """
    if reason is None and actor_id is None:
        raise TypeError("order_cancel needs a reason or the actor_id of who cancels")

    def cancel(order: Order) -> None:
        was_confirmed = order.stage == OrderStatus.CONFIRMED
        why = reason or ("customer_request" if order.user_id == actor_id else "staff_request")
        order.cancel(reason=why, note=note, details=details or {})
        if was_confirmed:
            saga_start(
                saga_type=ORDER_CANCELLATION_SAGA,
                timeout_seconds=settings.ORDER_CANCELLATION_SAGA_TIMEOUT_SECONDS,
                context={"order_id": order.id, **provenance.as_dict()},
            )

    return _run(order_id, cancel, actor_id=actor_id, provenance=provenance)


def order_record_refund(
    *,
    order_id: str,
    payment_id: str,
    refund_id: str,
    amount: Decimal,
    captured: Decimal,
    provenance: Provenance = SYSTEM,
) -> Order:
    """Record a refund of the order's payment, once per refund id. A capture the order
    has not heard of yet (it was settled late, or its event is still on the way) is
    recorded first: facts may arrive in any order."""

    def record(order: Order) -> None:
        if order.payment_id != payment_id and refund_id not in order.refund_ids:
            order.record_payment_captured(payment_id=payment_id, amount=captured)
        order.record_refund(amount=amount, payment_id=payment_id, refund_ids=[refund_id])

    return _run(order_id, record, provenance=provenance)

"""The order sagas.

Placement: reserve stock → charge payment → confirm order. On a business failure (out
of stock, declined) or when the provider stays unreachable past the deadline, the
completed steps are undone in reverse (refund, release stock) and the order is cancelled
with the reason.

Cancellation of a confirmed order: refund the payment → put the sold stock back. It only
moves forward: each step is retried until it succeeds.

Every action and compensation is idempotent: a worker may die at any point and the step
runs again.
"""

import contextlib
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from apps.catalog import services as catalog
from apps.core.errors import DomainError, InvalidState
from apps.core.messaging.outbox import consumed_inline
from apps.core.messaging.provenance import Provenance
from apps.core.workflows.sagas import SagaDefinition, Step, register_saga
from apps.orders import services as orders
from apps.orders.event_store import ConcurrencyConflict
from apps.orders.handlers import RECORD_PAYMENT_CAPTURED
from apps.payments import services as payments


def reserve_stock(ctx: dict[str, Any]) -> None:
    catalog.stock_reserve(
        reference=ctx["order_id"],
        items=[(product_id, quantity) for product_id, quantity in ctx["items"]],
        ttl_seconds=settings.ORDER_RESERVATION_TTL_SECONDS,
    )
    orders.order_record_stock_reserved(
        order_id=ctx["order_id"],
        reservation_reference=ctx["order_id"],
        provenance=Provenance.from_dict(ctx),
    )


def reserve_stock_together(contexts: list[dict[str, Any]]) -> None:
    """`reserve_stock` for the sagas of a batch: the reservations in one statement, the
    orders' events and read model rows in another (or none made, and each runs alone)."""
    catalog.stocks_reserve(
        reservations=[
            (ctx["order_id"], [(product_id, quantity) for product_id, quantity in ctx["items"]])
            for ctx in contexts
        ],
        ttl_seconds=settings.ORDER_RESERVATION_TTL_SECONDS,
    )
    orders.orders_record_stock_reserved(
        orders=[(ctx["order_id"], ctx["order_id"], Provenance.from_dict(ctx)) for ctx in contexts]
    )


def release_stock(ctx: dict[str, Any]) -> None:
    catalog.reservation_release(reference=ctx["order_id"])


def charge_payment(ctx: dict[str, Any]) -> dict[str, Any]:
    # The order's PaymentCaptured consumer records the capture in the transaction that
    # settles it: one commit for both, and no message to that consumer for it.
    with consumed_inline(RECORD_PAYMENT_CAPTURED) as recorded:
        result = payments.payment_charge_for_order(
            order_id=ctx["order_id"],
            user_id=ctx["user_id"],
            amount=Decimal(ctx["total"]),
            currency=ctx["currency"],
            token=ctx["payment_token"],
        )
    if not recorded:
        # Settled before this call (a webhook came first, a retried step), or the
        # consumer failed inline: record it here (a no-op if recorded already).
        orders.order_record_payment_captured(
            order_id=ctx["order_id"],
            payment_id=str(result.payment_id),
            amount=result.amount,
            provenance=Provenance.from_dict(ctx),
        )
    return {"payment_id": result.payment_id}


def refund_payment(ctx: dict[str, Any]) -> None:
    # The order learns of the refund from the payments context's PaymentRefunded event
    # (apps.orders.handlers), published with the refund itself: nothing to record here.
    payments.payment_void_for_order(order_id=ctx["order_id"], reason="order not placed")


def confirm_order(ctx: dict[str, Any]) -> None:
    # One transaction (an atomic step): the order is confirmed if and only if its stock
    # is sold. A reservation that expired rolls the confirmation back, then compensation.
    orders.order_confirm(order_id=ctx["order_id"], provenance=Provenance.from_dict(ctx))
    catalog.reservation_commit(reference=ctx["order_id"])


def confirm_orders_together(contexts: list[dict[str, Any]]) -> None:
    """`confirm_order` for the sagas of a batch: the orders' events and read model rows in
    one statement, the sales in another, their StockChanged events in a third."""
    provenances = [(ctx["order_id"], Provenance.from_dict(ctx)) for ctx in contexts]
    orders.orders_confirm(orders=provenances)
    catalog.reservations_commit(references=provenances)


def cancel_order(ctx: dict[str, Any], reason: str) -> None:
    # InvalidState: cancelled already (by its owner, or by an earlier run of this step).
    with contextlib.suppress(InvalidState):
        orders.order_cancel(
            order_id=ctx["order_id"],
            reason=reason,
            details=ctx.get("failure_details"),
            provenance=Provenance.from_dict(ctx),
        )


def failure_reason(exc: Exception) -> str | None:
    """A business failure's reason, or None for a transient error worth retrying."""
    if isinstance(exc, catalog.OutOfStock | catalog.ProductUnavailable):
        return "out_of_stock"
    if isinstance(exc, payments.PaymentDeclined):
        return "payment_declined"
    if isinstance(exc, payments.PaymentProviderUnavailable | ConcurrencyConflict | DatabaseError):
        return None
    if isinstance(exc, catalog.ReservationReleased):
        return "reservation_expired"
    if isinstance(exc, InvalidState):
        return "order_not_pending"  # cancelled by its owner while the saga ran
    if isinstance(exc, DomainError):
        return exc.problem_type.replace("-", "_")
    return None  # unexpected: retried until the deadline, then compensated


def failure_details(exc: Exception) -> dict[str, Any]:
    """What the customer and staff are told beside the reason."""
    if isinstance(exc, catalog.OutOfStock):
        return {
            "products": [
                {"product_id": product_id, "available": exc.available.get(product_id, 0)}
                for product_id in exc.product_ids
            ]
        }
    if isinstance(exc, catalog.ProductUnavailable):
        return {"products": [{"product_id": product_id} for product_id in exc.product_ids]}
    if isinstance(exc, payments.PaymentDeclined):
        return {"decline_code": exc.decline_code, "payment_id": str(exc.payment_id)}
    return {}


def timeout_reason(exc: Exception) -> str:
    if isinstance(exc, payments.PaymentProviderUnavailable):
        return "payment_unavailable"
    return "timed_out"


register_saga(
    SagaDefinition(
        name=orders.ORDER_PLACEMENT_SAGA,
        steps=(
            # Reservation rows, the order's event and read model, the saga's move: one
            # commit. The charge calls the provider, so it runs outside a transaction.
            # Run for the sagas of a drained batch at once where they can be.
            Step(
                "reserve_stock",
                reserve_stock,
                release_stock,
                atomic=True,
                batch_action=reserve_stock_together,
            ),
            Step("charge_payment", charge_payment, refund_payment),
            Step("confirm_order", confirm_order, atomic=True, batch_action=confirm_orders_together),
        ),
        failure_reason=failure_reason,
        failure_details=failure_details,
        timeout_reason=timeout_reason,
        on_compensated=cancel_order,
        sensitive_keys=("payment_token",),
    )
)


def refund_cancelled_order(ctx: dict[str, Any]) -> None:
    # Recorded on the order by its PaymentRefunded event, as in the placement saga.
    payments.payment_void_for_order(order_id=ctx["order_id"], reason="order cancelled")


def restock(ctx: dict[str, Any]) -> None:
    catalog.reservation_return(reference=ctx["order_id"])


register_saga(
    SagaDefinition(
        name=orders.ORDER_CANCELLATION_SAGA,
        steps=(Step("refund_payment", refund_cancelled_order), Step("restock", restock)),
        # Forward recovery only: every error is retried until the (long) deadline.
        failure_reason=lambda exc: None,
    )
)

"""The order aggregate: a plain class rebuilt from its events.

Commands check the state machine and record new events; `apply` is the only place
state changes, for recorded and replayed events alike.

The order's stage follows fulfilment:

    pending ──StockReserved, PaymentCaptured──▶ pending ──OrderConfirmed──▶ confirmed
    confirmed ──OrderShipped──▶ shipped ──OrderDelivered──▶ delivered
    pending | confirmed ──OrderCancelled──▶ cancelled

Refunds (`OrderPartiallyRefunded`, `OrderRefunded`) follow the money whatever moved it
(a cancellation, staff, the API, a late capture given back) and never change the stage;
the status a customer sees combines both: a confirmed order with part of its payment
refunded is `partially_refunded`, and any placed order whose payment is refunded in full
is `refunded` (it cannot be shipped any more).
"""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from apps.core.errors import InvalidState
from apps.orders import events as ev


class OrderStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    PARTIALLY_REFUNDED = "partially_refunded"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


# The stages of fulfilment; PARTIALLY_REFUNDED and REFUNDED are statuses only.
CANCELLABLE = frozenset({OrderStatus.PENDING, OrderStatus.CONFIRMED})


@dataclass
class Order:
    id: str
    version: int = 0
    stage: OrderStatus | None = None
    user_id: int | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    currency: str = ""
    subtotal: Decimal = Decimal("0")
    total: Decimal = Decimal("0")
    shipping_address: dict[str, Any] = field(default_factory=dict)
    reservation_reference: str = ""
    payment_id: str = ""
    paid_amount: Decimal = Decimal("0")
    refunded_amount: Decimal = Decimal("0")
    refund_ids: set[str] = field(default_factory=set)
    tracking_number: str = ""
    carrier: str = ""
    cancellation_reason: str = ""
    cancellation_note: str = ""
    cancellation_details: dict[str, Any] = field(default_factory=dict)
    placed_at: datetime | None = None
    updated_at: datetime | None = None
    pending_events: list[ev.OrderEvent] = field(default_factory=list, repr=False)

    # --- rebuilding ----------------------------------------------------------------

    @classmethod
    def from_history(cls, order_id: str, history) -> "Order":
        """Rebuild from (version, event, recorded_at) triples in version order."""
        order = cls(id=order_id)
        for version, event, recorded_at in history:
            order.apply(event, recorded_at=recorded_at)
            order.version = version
        return order

    @property
    def exists(self) -> bool:
        return self.version > 0 or bool(self.pending_events)

    @property
    def fully_refunded(self) -> bool:
        return self.paid_amount > 0 and self.refunded_amount >= self.paid_amount

    @property
    def status(self) -> OrderStatus | None:
        """What the customer sees: the stage, or how much of the payment came back."""
        if self.stage in (None, OrderStatus.PENDING):
            return self.stage
        if self.fully_refunded:
            return OrderStatus.REFUNDED
        if self.stage == OrderStatus.CONFIRMED and self.refunded_amount > 0:
            return OrderStatus.PARTIALLY_REFUNDED
        return self.stage

    def apply(self, event: ev.OrderEvent, *, recorded_at: datetime | None = None) -> None:
        handler = getattr(self, f"_apply_{event.event_type}")
        handler(event)
        if recorded_at is not None:
            self.placed_at = self.placed_at or recorded_at
            self.updated_at = recorded_at

    def _apply_OrderPlaced(self, e: ev.OrderPlaced) -> None:
        self.stage = OrderStatus.PENDING
        self.user_id = e.user_id
        self.items = list(e.items)
        self.currency = e.currency
        self.subtotal = Decimal(e.subtotal)
        self.total = Decimal(e.total)
        self.shipping_address = dict(e.shipping_address)

    def _apply_StockReserved(self, e: ev.StockReserved) -> None:
        self.reservation_reference = e.reservation_reference

    def _apply_PaymentCaptured(self, e: ev.PaymentCaptured) -> None:
        self.payment_id = e.payment_id
        self.paid_amount = Decimal(e.amount)

    def _apply_OrderConfirmed(self, e: ev.OrderConfirmed) -> None:
        self.stage = OrderStatus.CONFIRMED

    def _apply_OrderShipped(self, e: ev.OrderShipped) -> None:
        self.stage = OrderStatus.SHIPPED
        self.tracking_number = e.tracking_number
        self.carrier = e.carrier

    def _apply_OrderDelivered(self, e: ev.OrderDelivered) -> None:
        self.stage = OrderStatus.DELIVERED

    def _apply_OrderCancelled(self, e: ev.OrderCancelled) -> None:
        self.stage = OrderStatus.CANCELLED
        self.cancellation_reason = e.reason
        self.cancellation_note = e.note
        self.cancellation_details = dict(e.details)

    def _apply_OrderRefunded(self, e: ev.OrderRefunded | ev.OrderPartiallyRefunded) -> None:
        self.refunded_amount += Decimal(e.amount)
        self.refund_ids.update(e.refund_ids)

    _apply_OrderPartiallyRefunded = _apply_OrderRefunded

    # --- commands ------------------------------------------------------------------

    def _record(self, event: ev.OrderEvent) -> None:
        self.apply(event)
        self.pending_events.append(event)

    def _require(self, allowed: set[OrderStatus] | frozenset[OrderStatus], action: str) -> None:
        if self.stage not in allowed:
            state = self.status.value if self.status else "not placed"
            raise InvalidState(f"Cannot {action} an order that is {state}.")

    def place(
        self,
        *,
        user_id: int,
        items: list[dict[str, Any]],
        currency: str,
        shipping_address: dict[str, Any],
    ) -> None:
        if self.exists:
            raise InvalidState("The order has already been placed.")
        subtotal = sum((Decimal(i["line_total"]) for i in items), Decimal("0"))
        self._record(
            ev.OrderPlaced(
                order_id=self.id,
                user_id=user_id,
                items=items,
                currency=currency,
                subtotal=str(subtotal),
                total=str(subtotal),
                shipping_address=shipping_address,
            )
        )

    def record_stock_reserved(self, *, reservation_reference: str) -> None:
        if self.reservation_reference == reservation_reference:
            return  # already recorded: commands from a retried saga step are no-ops
        self._require({OrderStatus.PENDING}, "reserve stock for")
        self._record(
            ev.StockReserved(order_id=self.id, reservation_reference=reservation_reference)
        )

    def record_payment_captured(self, *, payment_id: str, amount: Decimal) -> None:
        if self.payment_id == payment_id:
            return
        # Cancelled too: a charge that completed after its owner cancelled is a fact the
        # history must hold, so that its refund can be recorded against it.
        self._require({OrderStatus.PENDING, OrderStatus.CANCELLED}, "capture a payment for")
        if amount != self.total:
            raise InvalidState(f"Captured {amount} does not match the order total {self.total}.")
        self._record(
            ev.PaymentCaptured(
                order_id=self.id, payment_id=payment_id, amount=str(amount), currency=self.currency
            )
        )

    def confirm(self) -> None:
        if self.stage == OrderStatus.CONFIRMED:
            return
        self._require({OrderStatus.PENDING}, "confirm")
        if not self.reservation_reference or not self.payment_id:
            raise InvalidState("An order is confirmed only once stock is reserved and paid.")
        self._record(ev.OrderConfirmed(order_id=self.id))

    def ship(self, *, tracking_number: str, carrier: str = "unknown") -> None:
        self._require({OrderStatus.CONFIRMED}, "ship")
        if self.fully_refunded:
            raise InvalidState("Cannot ship an order whose payment was refunded in full.")
        self._record(
            ev.OrderShipped(order_id=self.id, tracking_number=tracking_number, carrier=carrier)
        )

    def deliver(self) -> None:
        self._require({OrderStatus.SHIPPED}, "deliver")
        self._record(ev.OrderDelivered(order_id=self.id))

    def cancel(self, *, reason: str, note: str = "", details: dict[str, Any] | None = None) -> None:
        self._require(CANCELLABLE, "cancel")
        self._record(
            ev.OrderCancelled(order_id=self.id, reason=reason, note=note, details=details or {})
        )

    def record_refund(self, *, amount: Decimal, payment_id: str, refund_ids: list[str]) -> None:
        """Record money given back. A refund already recorded (by id) is a no-op: the
        same fact may arrive twice (a redelivered event, a retried saga step)."""
        if self.refund_ids.issuperset(refund_ids):
            return
        if self.stage is None:
            raise InvalidState("Cannot refund an order that is not placed.")
        if not self.payment_id or payment_id != self.payment_id:
            raise InvalidState(f"Payment {payment_id} of this order was not recorded as captured.")
        if amount <= 0 or self.refunded_amount + amount > self.paid_amount:
            raise InvalidState("A refund cannot exceed what was paid.")
        fields = {
            "order_id": self.id,
            "amount": str(amount),
            "currency": self.currency,
            "payment_id": payment_id,
            "refund_ids": refund_ids,
        }
        if self.refunded_amount + amount >= self.paid_amount:
            self._record(ev.OrderRefunded(**fields))
        else:
            self._record(ev.OrderPartiallyRefunded(**fields))

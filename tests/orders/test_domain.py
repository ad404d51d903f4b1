from decimal import Decimal

import pytest

from apps.core.errors import InvalidState
from apps.orders.domain import Order, OrderStatus
from apps.orders.events import OrderShipped, upcast

ITEMS = [{"product_id": 1, "sku": "A", "name": "A", "unit_price": "5.00", "quantity": 2,
          "line_total": "10.00"}]  # fmt: skip


def placed() -> Order:
    order = Order(id="o-1")
    order.place(user_id=7, items=ITEMS, currency="EUR", shipping_address={"city": "X"})
    return order


def confirmed() -> Order:
    order = placed()
    order.record_stock_reserved(reservation_reference="r-1")
    order.record_payment_captured(payment_id="p-1", amount=Decimal("10.00"))
    order.confirm()
    return order


def test_placing_computes_totals_from_the_lines():
    order = placed()
    assert order.status == OrderStatus.PENDING
    assert order.total == Decimal("10.00")
    assert [e.event_type for e in order.pending_events] == ["OrderPlaced"]


def test_happy_path_to_delivered():
    order = confirmed()
    order.ship(tracking_number="TRACK-1", carrier="DHL")
    order.deliver()
    assert order.status == OrderStatus.DELIVERED
    assert [e.event_type for e in order.pending_events] == [
        "OrderPlaced", "StockReserved", "PaymentCaptured", "OrderConfirmed",
        "OrderShipped", "OrderDelivered",
    ]  # fmt: skip


def test_confirming_needs_stock_and_payment():
    order = placed()
    order.record_stock_reserved(reservation_reference="r-1")
    with pytest.raises(InvalidState):
        order.confirm()


def test_shipping_a_cancelled_order_is_invalid_state():
    order = placed()
    order.cancel(reason="customer_request")
    with pytest.raises(InvalidState, match="cancelled"):
        order.ship(tracking_number="T")


def test_shipped_order_cannot_be_cancelled():
    order = confirmed()
    order.ship(tracking_number="T")
    with pytest.raises(InvalidState):
        order.cancel(reason="customer_request")


def test_payment_must_match_total():
    order = placed()
    order.record_stock_reserved(reservation_reference="r-1")
    with pytest.raises(InvalidState):
        order.record_payment_captured(payment_id="p", amount=Decimal("9.99"))


def test_repeated_saga_step_commands_are_no_ops():
    order = confirmed()
    events = len(order.pending_events)
    order.record_stock_reserved(reservation_reference="r-1")
    order.record_payment_captured(payment_id="p-1", amount=Decimal("10.00"))
    order.confirm()
    assert len(order.pending_events) == events


def test_refunds_never_exceed_the_payment_and_full_refund_marks_refunded():
    order = confirmed()
    order.cancel(reason="customer_request")
    order.record_refund(amount=Decimal("4.00"), payment_id="p-1", refund_ids=["r1"])
    assert order.status == OrderStatus.CANCELLED
    with pytest.raises(InvalidState):
        order.record_refund(amount=Decimal("6.01"), payment_id="p-1", refund_ids=["r2"])
    order.record_refund(amount=Decimal("6.00"), payment_id="p-1", refund_ids=["r3"])
    assert order.status == OrderStatus.REFUNDED


def test_rebuilding_from_history_gives_the_same_state():
    live = confirmed()
    live.ship(tracking_number="T-9", carrier="UPS")
    history = [(n, e, None) for n, e in enumerate(live.pending_events, start=1)]
    rebuilt = Order.from_history("o-1", history)
    assert rebuilt.version == 5
    assert (rebuilt.status, rebuilt.tracking_number, rebuilt.carrier, rebuilt.total) == (
        live.status, live.tracking_number, live.carrier, live.total,
    )  # fmt: skip


def test_old_schema_versions_are_upcast():
    event = upcast("OrderShipped", 1, {"order_id": "o-1", "tracking_number": "T-1"})
    assert event == OrderShipped(order_id="o-1", tracking_number="T-1", carrier="unknown")


def test_a_capture_after_cancellation_is_recorded_so_its_refund_can_be():
    order = placed()
    order.record_stock_reserved(reservation_reference="r-1")
    order.cancel(reason="customer_request")
    order.record_payment_captured(payment_id="p-1", amount=Decimal("10.00"))
    order.record_refund(amount=Decimal("10.00"), payment_id="p-1", refund_ids=["r"])
    assert order.status == OrderStatus.REFUNDED
    with pytest.raises(InvalidState):
        order.confirm()

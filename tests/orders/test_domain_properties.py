"""Property tests of the order aggregate and of order money.

Any sequence of commands, allowed or refused, keeps the aggregate's invariants, and its
events replay (through their JSON form) to the same order with consecutive versions.
Order money is Decimal with two places from the catalog's price to the read model.
"""

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import transaction
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from apps.catalog import services as catalog_services
from apps.core.errors import InvalidState
from apps.orders import event_store, services
from apps.orders.domain import Order, OrderStatus
from apps.orders.events import upcast
from apps.orders.models import OrderSummary
from tests.orders.conftest import ADDRESS

TWO_PLACES = Decimal("0.01")
prices = st.decimals(min_value=Decimal("0.00"), max_value=Decimal("99999.99"), places=2)
amounts = st.decimals(min_value=Decimal("-5.00"), max_value=Decimal("500.00"), places=2)

commands = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(["res-1", "res-2"])),
    st.tuples(
        st.just("capture"),
        st.sampled_from(["pay-1", "pay-2"]),
        st.sampled_from([True, True, True, False]),  # mostly the order's total
        amounts,
    ),
    st.tuples(st.just("confirm")),
    st.tuples(st.just("ship"), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("deliver")),
    st.tuples(st.just("cancel"), st.sampled_from(["customer_request", "staff_request"])),
    st.tuples(st.just("refund"), st.sampled_from(["rest", "half", "one cent over"]) | amounts),
)

# Random commands rarely walk the happy path far: start some scripts partway along it.
HAPPY_PATH = [("reserve", "res-1"), ("capture", "pay-1", True, Decimal("0")), ("confirm",)]
scripts = st.tuples(
    st.sampled_from(
        [
            [],
            HAPPY_PATH,
            [*HAPPY_PATH, ("ship", "T")],
            [*HAPPY_PATH, ("cancel", "customer_request")],
            [*HAPPY_PATH, ("cancel", "customer_request"), ("refund", "half")],
        ]
    ),
    st.lists(commands, max_size=20),
).map(lambda parts: parts[0] + parts[1])


def _placed(prices_and_quantities) -> Order:
    order = Order(id="order-1")
    order.place(
        user_id=1,
        items=[
            {
                "product_id": index,
                "sku": f"SKU-{index}",
                "name": "Thing",
                "unit_price": str(price),
                "quantity": quantity,
                "line_total": str(price * quantity),
            }
            for index, (price, quantity) in enumerate(prices_and_quantities, start=1)
        ],
        currency="EUR",
        shipping_address=ADDRESS,
    )
    return order


def _run(order: Order, command: tuple) -> None:
    match command:
        case ("reserve", reference):
            order.record_stock_reserved(reservation_reference=reference)
        case ("capture", payment_id, exact, other_amount):
            amount = order.total if exact else other_amount
            order.record_payment_captured(payment_id=payment_id, amount=amount)
        case ("confirm",):
            order.confirm()
        case ("ship", tracking):
            order.ship(tracking_number=tracking)
        case ("deliver",):
            order.deliver()
        case ("cancel", reason):
            order.cancel(reason=reason)
        case ("refund", amount):
            rest = order.paid_amount - order.refunded_amount
            amount = {
                "rest": rest,
                "half": (rest / 2).quantize(TWO_PLACES),
                "one cent over": rest + TWO_PLACES,
            }.get(amount, amount)
            refund_id = f"r{len(order.pending_events)}"
            order.record_refund(amount=amount, payment_id=order.payment_id, refund_ids=[refund_id])
            # The same refund arriving again (a redelivered event) changes nothing.
            events, state = len(order.pending_events), _state(order)
            order.record_refund(amount=amount, payment_id=order.payment_id, refund_ids=[refund_id])
            assert (len(order.pending_events), _state(order)) == (events, state)


def _state(order: Order) -> dict:
    return {
        f.name: getattr(order, f.name)
        for f in dataclasses.fields(order)
        if f.name not in ("pending_events", "version", "placed_at", "updated_at")
    }


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(prices, st.integers(1, 100)), min_size=1, max_size=4),
    script=scripts,
)
def test_any_command_sequence_keeps_the_order_invariants(lines, script):
    order = _placed(lines)
    confirmed_seen = False
    for command in script:
        before, events_before = _state(order), len(order.pending_events)
        try:
            _run(order, command)
        except InvalidState:
            # A refused command records nothing and changes nothing.
            assert len(order.pending_events) == events_before
            assert _state(order) == before
        types = [event.event_type for event in order.pending_events]
        confirmed_seen = "OrderConfirmed" in types
        assert Decimal("0") <= order.refunded_amount <= order.paid_amount
        if order.paid_amount:
            assert order.paid_amount == order.total
        if order.stage in (OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED):
            assert confirmed_seen and order.reservation_reference and order.payment_id
        if order.status == OrderStatus.PARTIALLY_REFUNDED:
            assert order.stage == OrderStatus.CONFIRMED
            assert 0 < order.refunded_amount < order.paid_amount
        if "OrderShipped" in types and order.fully_refunded:
            # Shipped first, refunded after (a return): never shipped once refunded in full.
            assert types.index("OrderShipped") < types.index("OrderRefunded")
        if "OrderShipped" in types:
            assert types.index("OrderConfirmed") < types.index("OrderShipped")
        if "OrderDelivered" in types:
            assert types.index("OrderShipped") < types.index("OrderDelivered")
        if order.status == OrderStatus.REFUNDED:
            assert order.refunded_amount == order.paid_amount > 0

    # The history, through its stored JSON form, replays to the same order.
    recorded_at = datetime(2026, 1, 1, tzinfo=UTC)
    history = [
        (version, upcast(e.event_type, e.SCHEMA_VERSION, json.loads(json.dumps(e.as_data()))),
         recorded_at)
        for version, e in enumerate(order.pending_events, start=1)
    ]  # fmt: skip
    replayed = Order.from_history(order.id, history)
    assert replayed.version == len(history) == len(order.pending_events)
    assert _state(replayed) == _state(order)


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=scripts)
def test_stored_histories_have_consecutive_versions_and_replay_the_same(script):
    order = _placed([(Decimal("12.34"), 2)])
    order.id = str(uuid.uuid4())
    with transaction.atomic():
        event_store.append(order)
        for command in script:
            try:
                _run(order, command)
            except InvalidState:
                continue
            event_store.append(order)
    stored = event_store.history(order.id)
    assert [version for version, _, _ in stored] == list(range(1, order.version + 1))
    assert _state(event_store.load_order(order.id)) == _state(order)


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(st.tuples(prices, st.integers(1, 100)), min_size=1, max_size=5))
def test_order_money_is_exact_decimal_with_two_places(user, lines):
    products = [
        catalog_services.product_create(
            sku=f"PROP-{index}-{uuid.uuid4().hex[:8]}",
            name="Thing",
            price=price,
            currency="EUR",
            initial_stock=settings.ORDER_MAX_QUANTITY_PER_LINE,
        )
        for index, (price, _) in enumerate(lines)
    ]
    summary = services.order_place(
        user_id=user.pk,
        items=[(p.pk, quantity) for p, (_, quantity) in zip(products, lines, strict=True)],
        shipping_address=ADDRESS,
        payment_token="tok_visa",
    )
    expected_total = Decimal("0")
    for item, (price, quantity) in zip(summary.items, lines, strict=True):
        # Stored as strings (never floats), exact, with two places.
        assert isinstance(item["unit_price"], str) and isinstance(item["line_total"], str)
        line_total = Decimal(item["line_total"])
        assert line_total == price * quantity
        assert line_total.as_tuple().exponent == -2
        expected_total += line_total
    stored = OrderSummary.objects.get(pk=summary.pk)
    assert stored.subtotal == stored.total == expected_total
    assert stored.total == stored.total.quantize(TWO_PLACES)
    assert event_store.load_order(str(summary.pk)).total == expected_total

"""A drained batch of placement sagas: the steps with a batch action run for all the
sagas at them in one transaction, and what fails for one order fails for it alone."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.catalog.models import Stock
from apps.core.models import SagaInstance, SagaTransition
from apps.core.workflows.sagas import sagas_drain
from apps.orders.models import OrderSummary, StoredEvent
from tests.catalog.factories import ProductFactory
from tests.orders.conftest import place_order

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def stock(product) -> tuple[int, int]:
    row = Stock.objects.get(product=product)
    return row.on_hand, row.reserved


def test_a_batch_reserves_and_confirms_together_in_a_few_statements(
    saga_settings, customer, sandbox
):
    product = ProductFactory(stock__on_hand=10)
    order_ids = [str(place_order(customer, products=[product]).pk) for _ in range(4)]

    with CaptureQueriesContext(connection) as captured:
        assert sagas_drain(batch_size=8, time_budget=30) == 4

    assert set(OrderSummary.objects.filter(pk__in=order_ids).values_list("status", flat=True)) == {
        "confirmed"
    }
    assert stock(product) == (6, 0)
    for order_id in order_ids:
        assert list(
            StoredEvent.objects.filter(aggregate_id=order_id)
            .order_by("version")
            .values_list("event_type", flat=True)
        ) == ["OrderPlaced", "StockReserved", "PaymentCaptured", "OrderConfirmed"]
    # The claim; reserve for all (BEGIN, reservations, history, events and read model,
    # moves, COMMIT); a charge each (9: as alone, without its move), then their moves in
    # one statement; confirm for all (BEGIN, events and read model, sale, StockChanged
    # events, moves, COMMIT).
    assert len(captured.captured_queries) <= 1 + 6 + 4 * 9 + 1 + 6
    for step in ("reserve_stock", "charge_payment", "confirm_order"):
        moves = SagaTransition.objects.filter(saga_id__in=order_ids, step=step)
        assert len({move.at for move in moves}) == 1  # one statement moved them all


def test_an_order_out_of_stock_fails_alone_and_the_others_of_its_batch_are_confirmed(
    saga_settings, customer, sandbox
):
    plenty = ProductFactory(stock__on_hand=10)
    scarce = ProductFactory(stock__on_hand=1)
    other = ProductFactory(stock__on_hand=1)
    confirmed = [str(place_order(customer, products=[plenty]).pk) for _ in range(2)]
    short = str(place_order(customer, products=[scarce], quantity=2).pk)
    confirmed.append(str(place_order(customer, products=[plenty, other]).pk))

    assert sagas_drain(batch_size=8, time_budget=30) == 4

    assert set(OrderSummary.objects.filter(pk__in=confirmed).values_list("status", flat=True)) == {
        "confirmed"
    }
    cancelled = OrderSummary.objects.get(pk=short)
    assert (cancelled.status, cancelled.cancellation_reason) == ("cancelled", "out_of_stock")
    assert cancelled.cancellation_details == {
        "products": [{"product_id": scarce.pk, "available": 1}]
    }
    assert SagaInstance.objects.get(pk=short).state == "compensated"
    assert stock(plenty) == (7, 0)
    assert stock(scarce) == (1, 0)
    assert stock(other) == (0, 0)
    # The short order was never charged.
    assert sandbox.charges_for(short) == []

"""What the placement saga costs the database, step by step: its statements counted in
this process against real PostgreSQL and the sandbox PSP."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.core.models import InboxMessage, OutboxMessage, SagaInstance
from apps.core.workflows.sagas import saga_advance
from apps.orders.handlers import RECORD_PAYMENT_CAPTURED
from apps.orders.models import OrderSummary, StoredEvent
from tests.catalog.factories import ProductFactory
from tests.orders.conftest import place_order

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

# Each step ends with the saga's move: the fenced update of its row and the insert of its
# transition, in one statement.
SAGA_MOVE = 'WITH data ("id", "fence"'
# Statements per step, the move included (BEGIN/COMMIT and savepoints count).
MOST_PER_STEP = {"reserve_stock": 6, "charge_payment": 10, "confirm_order": 6}


def statements_per_step(queries: list[dict]) -> list[list[str]]:
    """Split at each move (and the COMMIT of an atomic step's transaction after it)."""
    steps: list[list[str]] = []
    current: list[str] = []
    for query in queries:
        if query["sql"] == "COMMIT" and not current and steps:
            steps[-1].append(query["sql"])
            continue
        current.append(query["sql"])
        if query["sql"].startswith(SAGA_MOVE):
            steps.append(current)
            current = []
    return steps


def test_the_placement_saga_claims_once_and_each_step_stays_within_its_statements(
    saga_settings, customer, sandbox
):
    product = ProductFactory(stock__on_hand=5)
    summary = place_order(customer, products=[product])

    with CaptureQueriesContext(connection) as captured:
        assert saga_advance(summary.pk) == "succeeded"

    claim, *rest = captured.captured_queries
    assert claim["sql"].startswith('UPDATE "core_sagainstance" SET lease_until')
    steps = statements_per_step(rest)
    assert len(steps) == 3
    counts = dict(zip(MOST_PER_STEP, map(len, steps), strict=True))
    assert all(counts[step] <= most for step, most in MOST_PER_STEP.items()), counts
    # Nothing after the last move: the saga is not read back.
    assert sum(counts.values()) == len(rest)
    assert SagaInstance.objects.get(pk=summary.pk).transitions.count() == 3


def test_the_saga_records_its_own_capture_with_the_payment_and_relays_no_message_for_it(
    saga_settings, customer, sandbox
):
    product = ProductFactory(stock__on_hand=5)
    summary = place_order(customer, products=[product])

    assert saga_advance(summary.pk) == "succeeded"

    captured = OutboxMessage.objects.get(event_type="PaymentCaptured")
    # Recorded on the order by its consumer in the transaction that settled the payment:
    # stored as relayed, with that consumer, and the inbox says it handled it.
    assert captured.published_at is not None
    assert captured.consumers == [RECORD_PAYMENT_CAPTURED]
    assert InboxMessage.objects.filter(
        event_id=captured.pk, consumer=RECORD_PAYMENT_CAPTURED
    ).exists()
    payment_id = captured.payload["payment_id"]
    assert OrderSummary.objects.get(pk=summary.pk).payment_id == payment_id
    assert list(
        StoredEvent.objects.filter(aggregate_id=summary.pk)
        .order_by("version")
        .values_list("event_type", flat=True)
    ) == ["OrderPlaced", "StockReserved", "PaymentCaptured", "OrderConfirmed"]

"""The order placement saga end to end: the API in this process, a real Celery worker
process on the broker, the real sandbox PSP, PostgreSQL."""

import contextlib
import uuid
from decimal import Decimal

import psycopg
import pytest
from django.db import connections
from django.db.models import Sum
from django.forms.models import model_to_dict

from apps.catalog.models import Reservation, Stock
from apps.core.models import SagaInstance, SagaTransition
from apps.core.workflows.sagas import saga_sweep
from apps.orders.event_store import load_order
from apps.orders.models import OrderSummary, StoredEvent
from apps.orders.projections import summary_fields
from apps.payments.models import Payment
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS
from tests.support.celery_worker import wait_until
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ORDERS = "/api/v1/orders"
TERMINAL = {"confirmed", "cancelled", "refunded"}


@pytest.fixture
def worker(start_celery_worker, saga_settings):
    return start_celery_worker(env=saga_settings)


@pytest.fixture
def customer_client():
    return bearer_client(UserFactory())


def place(client, items, token: str = "tok_visa") -> str:
    response = client.post(
        ORDERS,
        {
            "items": [{"product_id": p.pk, "quantity": q} for p, q in items],
            "shipping_address": ADDRESS,
            "payment": {"token": token},
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "pending"
    return response.json()["id"]


def summary(order_id: str) -> OrderSummary:
    return OrderSummary.objects.get(pk=order_id)


def wait_for_outcome(order_id: str, timeout: float = 20.0) -> OrderSummary:
    def finished():
        saga = SagaInstance.objects.filter(pk=order_id).first()
        done = saga is not None and saga.state in {"succeeded", "compensated"}
        return done and summary(order_id)

    try:
        return wait_until(finished, timeout=timeout, what=f"order {order_id} saga to finish")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{saga_report(order_id)}") from None


def saga_report(order_id: str) -> str:
    saga = SagaInstance.objects.filter(pk=order_id).first()
    if saga is None:
        return "no saga"
    log = [f"  {t.kind} {t.step} {t.state} {t.detail[:150]}" for t in saga.transitions.all()]
    return "\n".join([f"saga {saga.state} step {saga.current_step} error {saga.last_error}", *log])


def stock(product) -> tuple[int, int]:
    row = Stock.objects.get(product=product)
    return row.on_hand, row.reserved


def payments_of(order_id: str) -> list[str]:
    return list(Payment.objects.filter(order_id=order_id).values_list("status", flat=True))


def test_happy_path_confirms_commits_stock_and_charges_once(worker, customer_client, sandbox):
    product = ProductFactory(price=Decimal("20.00"), stock__on_hand=5)
    order_id = place(customer_client, [(product, 2)])

    order = wait_for_outcome(order_id)

    assert order.status == "confirmed"
    assert stock(product) == (3, 0)  # two units sold, none left reserved
    assert payments_of(order_id) == ["succeeded"]
    assert len(sandbox.charges_for(order_id)) == 1
    events = list(
        StoredEvent.objects.filter(aggregate_id=order_id)
        .order_by("version")
        .values_list("event_type", flat=True)
    )
    saga = SagaInstance.objects.get(pk=order_id)
    assert events == ["OrderPlaced", "StockReserved", "PaymentCaptured", "OrderConfirmed"]
    assert "payment_token" not in saga.context  # scrubbed once finished


def test_declined_card_releases_stock_and_cancels(worker, customer_client, sandbox):
    product = ProductFactory(stock__on_hand=5)
    order_id = place(customer_client, [(product, 2)], token="tok_declined")

    order = wait_for_outcome(order_id)

    assert (order.status, order.cancellation_reason) == ("cancelled", "payment_declined")
    assert stock(product) == (5, 0)
    assert payments_of(order_id) == ["failed"]


def test_out_of_stock_cancels_without_charging(worker, customer_client, sandbox):
    scarce = ProductFactory(stock__on_hand=1)
    plenty = ProductFactory(stock__on_hand=10)
    order_id = place(customer_client, [(plenty, 3), (scarce, 2)])

    order = wait_for_outcome(order_id)

    assert (order.status, order.cancellation_reason) == ("cancelled", "out_of_stock")
    # Which products were short, and how many were left, on the order and its event.
    short = {"products": [{"product_id": scarce.pk, "available": 1}]}
    assert order.cancellation_details == short
    cancelled = StoredEvent.objects.get(aggregate_id=order_id, event_type="OrderCancelled")
    assert cancelled.data["details"] == short
    assert stock(scarce) == (1, 0) and stock(plenty) == (10, 0)
    assert payments_of(order_id) == []
    assert sandbox.charges_for(order_id) == []


def test_provider_down_until_the_deadline_compensates(worker, customer_client, sandbox, settings):
    # Long enough for retries even when a busy machine delays the saga's first run.
    settings.ORDER_SAGA_TIMEOUT_SECONDS = 5.0
    sandbox.chaos(down=True)
    product = ProductFactory(stock__on_hand=4)
    order_id = place(customer_client, [(product, 1)])

    order = wait_for_outcome(order_id, timeout=30)

    assert (order.status, order.cancellation_reason) == ("cancelled", "payment_unavailable")
    assert stock(product) == (4, 0)
    assert sandbox.charges_for(order_id) == []
    assert SagaInstance.objects.get(pk=order_id).transitions.filter(kind="step_retry").exists()


def test_a_failure_after_the_charge_refunds_it(worker, customer_client, sandbox):
    sandbox.chaos(latency_ms=400)  # keeps the saga in its charge step for a while
    product = ProductFactory(price=Decimal("15.00"), stock__on_hand=3)
    order_id = place(customer_client, [(product, 1)])

    def charging():
        return SagaInstance.objects.filter(pk=order_id, current_step=1).exists()

    wait_until(charging, timeout=15, what="the saga to reach its charge step")
    cancel = customer_client.post(f"{ORDERS}/{order_id}/cancel", {}, format="json")
    assert cancel.status_code == 200

    order = wait_for_outcome(order_id, timeout=30)

    assert order.status in {"cancelled", "refunded"}
    assert order.cancellation_reason == "customer_request"
    assert stock(product) == (3, 0)
    assert payments_of(order_id) in (["refunded"], ["failed"])
    charges = sandbox.charges_for(order_id)
    assert len(charges) <= 1
    if payments_of(order_id) == ["refunded"]:
        # The order hears of the refund through the payments context's event.
        wait_until(
            lambda: summary(order_id).refunded_amount == Decimal("15.00"),
            timeout=20,
            what="the refund recorded on the order",
        )
        assert summary(order_id).status == "refunded"


def test_cancelling_a_confirmed_order_refunds_and_restocks(worker, customer_client, sandbox):
    product = ProductFactory(price=Decimal("9.50"), stock__on_hand=4)
    order_id = place(customer_client, [(product, 2)])
    assert wait_for_outcome(order_id).status == "confirmed"
    assert stock(product) == (2, 0)

    response = customer_client.post(f"{ORDERS}/{order_id}/cancel", {}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"

    def refunded():
        return summary(order_id).status == "refunded" and stock(product) == (4, 0)

    wait_until(refunded, timeout=20, what="refund and restock")
    assert summary(order_id).refunded_amount == Decimal("19.00")
    assert payments_of(order_id) == ["refunded"]
    assert Reservation.objects.get(reference=order_id).status == "returned"


def conserved(products, initial: dict[int, int]) -> None:
    """initial = on hand now + sold; available + reserved = on hand."""
    for product in products:
        row = Stock.objects.get(product=product)
        sold = (
            Reservation.objects.filter(product=product, status="committed").aggregate(
                n=Sum("quantity")
            )["n"]
            or 0
        )
        assert row.on_hand + sold == initial[product.pk], product
        assert row.reserved == 0, product


def test_sagas_finish_after_workers_are_killed_in_every_step(
    start_celery_worker, saga_settings, customer_client, sandbox
):
    sandbox.chaos(latency_ms=400)
    products = [ProductFactory(stock__on_hand=6) for _ in range(3)]
    initial = {p.pk: 6 for p in products}
    worker = start_celery_worker(env=saga_settings)
    order_ids = []
    steps_at_kill: set[int] = set()
    for round_ in range(3):
        for n in range(3):
            order_ids.append(place(customer_client, [(products[(round_ + n) % 3], 1 + n % 2)]))
        # Let the sagas get going, then crash the worker in the middle of them.
        wait_until(
            lambda: _active_steps(order_ids),
            timeout=10,
            what="sagas in progress",
        )
        steps_at_kill |= _active_steps(order_ids)
        worker.kill()
        worker.start()

    def all_finished():
        saga_sweep()  # what beat does every few seconds: resume what the crash left
        return not SagaInstance.objects.filter(
            pk__in=order_ids, state__in=["running", "compensating"]
        ).exists()

    wait_until(all_finished, timeout=90, interval=0.5, what="every saga to finish")

    assert steps_at_kill & {0, 1}, steps_at_kill
    # The read model the crashes left equals one rebuilt from the event store.
    live = {str(o.pk): model_to_dict(o) for o in OrderSummary.objects.filter(pk__in=order_ids)}
    rebuilt = {}
    for order_id in order_ids:
        order = load_order(order_id)
        rebuilt[order_id] = model_to_dict(OrderSummary(id=order.id, **summary_fields(order)))
    assert live == rebuilt
    for order_id in order_ids:
        assert summary(order_id).status in TERMINAL
        assert len(sandbox.charges_for(order_id)) <= 1
        statuses = payments_of(order_id)
        if summary(order_id).status == "confirmed":
            assert statuses == ["succeeded"]
    conserved(products, initial)


def _active_steps(order_ids: list[str]) -> set[int]:
    return set(
        SagaInstance.objects.filter(pk__in=order_ids, state="running").values_list(
            "current_step", flat=True
        )
    )


@contextlib.contextmanager
def stock_row_locked(product):
    """Hold the product's stock row lock from a connection of our own (not the test's,
    whose writes the worker must see): a step that updates the row waits on it inside its
    transaction. Yields that connection."""
    db = connections["default"].settings_dict
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"],
        dbname=db["NAME"],
    ) as conn:  # fmt: skip
        conn.execute("SELECT 1 FROM catalog_stock WHERE product_id = %s FOR UPDATE", [product.pk])
        yield conn


def _backends(conn, states: tuple[str, ...] = (), *, waiting_on_lock: bool = False) -> int:
    """Other backends of the test database in one of `states` (or waiting on a lock)."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    if waiting_on_lock:
        sql += " AND wait_event_type = 'Lock'"
    else:
        sql += " AND state = ANY(%s)"
    # `conn` is in a transaction (it holds the row lock), and PostgreSQL keeps one snapshot
    # of pg_stat_activity per transaction: without this every call reads the first one.
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(sql, [] if waiting_on_lock else [list(states)]).fetchone()[0]


def order_events(order_id: str) -> list[str]:
    return list(
        StoredEvent.objects.filter(aggregate_id=order_id)
        .order_by("version")
        .values_list("event_type", flat=True)
    )


@pytest.mark.parametrize("orders", [1, 3], ids=["alone", "batch"])
@pytest.mark.parametrize("step", ["reserve_stock", "confirm_order"])
def test_a_worker_killed_inside_a_one_transaction_step_leaves_none_of_it_and_the_saga_ends(
    step, orders, start_celery_worker, saga_settings, customer_client, sandbox
):
    # Three orders placed while the worker is stopped are claimed together: their step
    # runs for all three in one transaction (a batch step).
    on_hand = 2 * orders + 3
    product = ProductFactory(stock__on_hand=on_hand)
    if step == "confirm_order":
        sandbox.chaos(latency_ms=250)  # time to take the lock while the charge runs
    worker = start_celery_worker(env=saga_settings)  # first: it purges the queues
    with contextlib.ExitStack() as held:
        # The saga's task waits in the queue until the worker starts.
        worker.stop()
        order_ids = [place(customer_client, [(product, 2)]) for _ in range(orders)]
        if step == "reserve_stock":
            conn = held.enter_context(stock_row_locked(product))
            worker.start()
        else:
            worker.start()
            wait_until(lambda: _active_steps(order_ids) == {1}, timeout=60, what="charging")
            conn = held.enter_context(stock_row_locked(product))

        # The step's transaction has begun and waits on the stock row: kill it there.
        def step_waits_on_the_row():
            saga_sweep()  # what beat does, should the task have been lost
            return _backends(conn, waiting_on_lock=True) > 0

        # Bounds, not speeds: a starved machine takes long to run a fresh worker's first task.
        try:
            wait_until(step_waits_on_the_row, timeout=60, interval=0.2, what=f"{step} on the row")
        except AssertionError as timed_out:
            report = "\n".join(map(saga_report, order_ids))
            raise AssertionError(f"{timed_out}\n{report}\n{worker.log_tail()}") from None
        if step == "confirm_order":
            # A batch is charged saga by saga, then confirmed together: all are at it.
            assert _active_steps(order_ids) == {2}
        worker.kill()
    sandbox.chaos(latency_ms=0)
    with stock_row_locked(product) as conn:
        conn.commit()  # lock released at once: just a connection to watch from
        wait_until(
            lambda: _backends(conn, ("active", "idle in transaction")) == 0,
            timeout=15,
            what="the killed worker's transaction to end",
        )
    # None of the step committed: the sagas are still at it, the orders have none of its
    # events.
    expected_before = {
        "reserve_stock": ["OrderPlaced"],
        "confirm_order": ["OrderPlaced", "StockReserved", "PaymentCaptured"],
    }
    for order_id in order_ids:
        assert order_events(order_id) == expected_before[step]  # fmt: skip
    reserved = 0 if step == "reserve_stock" else 2 * orders
    assert stock(product) == (on_hand, reserved)

    worker.start()

    def finished():
        saga_sweep()  # what beat does: resume the sagas whose worker died
        return all(summary(order_id).status in TERMINAL for order_id in order_ids)

    wait_until(finished, timeout=60, interval=0.5, what="the sagas to finish")
    for order_id in order_ids:
        assert summary(order_id).status == "confirmed", saga_report(order_id)
        assert order_events(order_id) == [
            "OrderPlaced", "StockReserved", "PaymentCaptured", "OrderConfirmed",
        ]  # fmt: skip
        assert payments_of(order_id) == ["succeeded"]
        assert len(sandbox.charges_for(order_id)) == 1
        assert Reservation.objects.get(reference=order_id).status == "committed"
        live = model_to_dict(OrderSummary.objects.get(pk=order_id))
        rebuilt = model_to_dict(OrderSummary(id=order_id, **summary_fields(load_order(order_id))))
        assert live == rebuilt
    assert stock(product) == (on_hand - 2 * orders, 0)
    if orders > 1 and step == "reserve_stock":
        # Claimed together again once their leases ran out, and the step ran for them
        # together: their moves are one statement, at one time. (Before a confirmation,
        # each charge renewed its saga's lease: they may be claimed apart after the kill.)
        moves = SagaTransition.objects.filter(saga_id__in=order_ids, step=step, kind="step_done")
        assert len({move.at for move in moves}) == 1

"""Real concurrent buyers: threads with their own PostgreSQL connections."""

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import DatabaseError, connection, connections, transaction

from apps.catalog.errors import OutOfStock
from apps.catalog.models import Reservation, Stock
from apps.catalog.services import reservation_commit, stock_reserve
from tests.catalog.factories import ProductFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

TIMEOUT_SECONDS = 30


def run_concurrently(calls: list) -> list[str]:
    """Start every call at once (a barrier); each returns its outcome's name."""
    barrier = threading.Barrier(len(calls), timeout=TIMEOUT_SECONDS)

    def run(call) -> str:
        try:
            barrier.wait()
            call()
            return "ok"
        except OutOfStock:
            return "out-of-stock"
        except DatabaseError as exc:  # a deadlock or a constraint breach would land here
            return f"database-error: {exc}"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=TIMEOUT_SECONDS) for future in futures]


@pytest.fixture(autouse=True)
def read_the_primary():
    # The assertions read what the threads just wrote: a lagging replica would not have it.
    yield


def test_fifty_buyers_for_ten_units_reserve_exactly_ten():
    product = ProductFactory(stock__on_hand=10)
    calls = [
        lambda i=i: stock_reserve(reference=f"buyer-{i}", items=[(product.pk, 1)])
        for i in range(50)
    ]

    outcomes = Counter(run_concurrently(calls))

    assert outcomes == {"ok": 10, "out-of-stock": 40}
    stock = Stock.objects.get(product=product)
    assert (stock.on_hand, stock.reserved) == (10, 10)
    assert Reservation.objects.filter(product=product).count() == 10


def test_multi_item_reservations_in_opposite_orders_do_not_deadlock():
    a, b, c = (ProductFactory(stock__on_hand=1000) for _ in range(3))
    orders = [[(a.pk, 1), (b.pk, 2), (c.pk, 1)], [(c.pk, 1), (b.pk, 2), (a.pk, 1)]]

    def buy(i: int) -> None:
        # Several round trips per thread keep the row locks contended.
        for round_ in range(3):
            reference = f"buyer-{i}-{round_}"
            stock_reserve(reference=reference, items=orders[i % 2])
            reservation_commit(reference=reference)

    outcomes = Counter(run_concurrently([lambda i=i: buy(i) for i in range(20)]))

    assert outcomes == {"ok": 20}
    on_hand = dict(Stock.objects.values_list("product_id", "on_hand"))
    assert on_hand == {a.pk: 940, b.pk: 880, c.pk: 940}
    assert set(Stock.objects.values_list("reserved", flat=True)) == {0}


def test_concurrent_repeats_of_one_reference_reserve_once():
    # Two reservations of 6 would not fit in 10: the repeats must see the first one.
    product = ProductFactory(stock__on_hand=10)
    calls = [lambda: stock_reserve(reference="order-7", items=[(product.pk, 6)])] * 8

    outcomes = Counter(run_concurrently(calls))

    assert outcomes == {"ok": 8}
    assert Stock.objects.get(product=product).reserved == 6
    assert Reservation.objects.filter(reference="order-7").count() == 1


def test_reserving_and_selling_lock_the_stock_of_their_own_products_only():
    # A reservation open in one transaction must not hold up another product's buyers.
    held, other = ProductFactory(stock__on_hand=5), ProductFactory(stock__on_hand=5)
    inside, release = threading.Event(), threading.Event()

    def hold_a_reservation_open() -> None:
        try:
            with transaction.atomic():
                stock_reserve(reference="order-held", items=[(held.pk, 1)])
                inside.set()
                assert release.wait(TIMEOUT_SECONDS)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_a_reservation_open)
    holder.start()
    try:
        assert inside.wait(TIMEOUT_SECONDS)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")
            stock_reserve(reference="order-other", items=[(other.pk, 1)])
            reservation_commit(reference="order-other")
    finally:
        release.set()
        holder.join(TIMEOUT_SECONDS)
    assert Stock.objects.get(product=other).on_hand == 4
    assert Stock.objects.get(product=held).reserved == 1

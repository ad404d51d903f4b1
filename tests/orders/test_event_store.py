import threading

import pytest
from django.db import connection, transaction

from apps.core.errors import InvalidState
from apps.orders import event_store, services
from apps.orders.errors import ConcurrencyConflict
from apps.orders.models import StoredEvent
from tests.orders.conftest import confirm, place_order
from tests.users.factories import UserFactory


@pytest.mark.django_db
def test_events_are_stored_with_consecutive_versions_and_metadata(customer):
    summary = place_order(customer)
    confirm(str(summary.pk))
    rows = list(StoredEvent.objects.filter(aggregate_id=summary.pk).order_by("version"))
    assert [(r.version, r.event_type) for r in rows] == [
        (1, "OrderPlaced"), (2, "StockReserved"), (3, "PaymentCaptured"), (4, "OrderConfirmed"),
    ]  # fmt: skip
    assert all(r.schema_version == 1 for r in rows)


@pytest.mark.django_db
def test_a_stale_writer_gets_a_concurrency_conflict(customer):
    order_id = str(place_order(customer).pk)
    first = event_store.load_order(order_id)
    second = event_store.load_order(order_id)
    first.cancel(reason="customer_request")
    event_store.append(first)
    second.record_stock_reserved(reservation_reference="r-1")
    with pytest.raises(ConcurrencyConflict), transaction.atomic():
        event_store.append(second)
    assert StoredEvent.objects.filter(aggregate_id=order_id).count() == 2


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_concurrent_commands_one_wins_and_the_stream_has_no_gap():
    order_id = str(place_order(UserFactory()).pk)
    confirm(order_id)
    workers = 8
    barrier = threading.Barrier(workers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def ship(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            services.order_ship(order_id=order_id, tracking_number=f"T-{n}")
            outcome = "shipped"
        except InvalidState:
            outcome = "invalid-state"
        except ConcurrencyConflict:
            outcome = "conflict"
        finally:
            connection.close()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=ship, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert outcomes.count("shipped") == 1
    assert len(outcomes) == workers
    assert set(outcomes) <= {"shipped", "invalid-state", "conflict"}
    versions = list(
        StoredEvent.objects.filter(aggregate_id=order_id)
        .order_by("version")
        .values_list("version", "event_type")
    )
    assert [v for v, _ in versions] == list(range(1, len(versions) + 1))
    assert [t for _, t in versions].count("OrderShipped") == 1

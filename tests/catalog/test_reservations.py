"""reserve / commit / release: all-or-nothing, idempotent, safe in any order."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.catalog.models import Reservation, Stock
from apps.catalog.services import (
    OutOfStock,
    ProductUnavailable,
    ReservationCommitted,
    ReservationMismatch,
    ReservationNotFound,
    ReservationReleased,
    reservation_commit,
    reservation_release,
    reservations_release_expired,
    stock_reserve,
)
from apps.core.errors import ValidationFailed
from config.celery import app as celery_app
from tests.catalog.factories import ProductFactory

pytestmark = pytest.mark.django_db


def stock_of(product) -> tuple[int, int]:
    stock = Stock.objects.get(product=product)
    return stock.on_hand, stock.reserved


def test_reserve_holds_units_of_every_item():
    a, b = ProductFactory(stock__on_hand=5), ProductFactory(stock__on_hand=3)
    lines = stock_reserve(reference="order-1", items=[(a.pk, 2), (b.pk, 3)], ttl_seconds=60)
    assert {(line.product_id, line.quantity, line.status) for line in lines} == {
        (a.pk, 2, "active"),
        (b.pk, 3, "active"),
    }
    assert stock_of(a) == (5, 2) and stock_of(b) == (3, 3)
    assert all(line.expires_at > timezone.now() for line in lines)


def test_reserve_is_all_or_nothing_and_names_every_short_product():
    a, b, c = (ProductFactory(stock__on_hand=n) for n in (5, 1, 0))
    with pytest.raises(OutOfStock) as raised:
        stock_reserve(reference="order-1", items=[(a.pk, 2), (b.pk, 2), (c.pk, 1)])
    assert raised.value.product_ids == [b.pk, c.pk]
    assert raised.value.extra == {"product_ids": [b.pk, c.pk]}
    assert raised.value.problem_type == "out-of-stock"
    assert stock_of(a) == (5, 0)
    assert not Reservation.objects.exists()


def test_reserve_rejects_unknown_and_inactive_products_without_holding_anything():
    a = ProductFactory(stock__on_hand=5)
    inactive = ProductFactory(stock__on_hand=5, is_active=False)
    with pytest.raises(ProductUnavailable) as raised:
        stock_reserve(reference="order-1", items=[(a.pk, 1), (inactive.pk, 1), (999_999, 1)])
    assert raised.value.product_ids == [inactive.pk, 999_999]
    assert stock_of(a) == (5, 0)


@pytest.mark.parametrize(
    "items",
    [[], [(1, 0)], [(1, -2)], [("x", 1)], [(1,)], None],
    ids=["empty", "zero", "negative", "bad-id", "not-a-pair", "none"],
)
def test_reserve_rejects_malformed_items(items):
    with pytest.raises(ValidationFailed):
        stock_reserve(reference="order-1", items=items)


def test_duplicate_items_are_summed():
    a = ProductFactory(stock__on_hand=5)
    lines = stock_reserve(reference="order-1", items=[(a.pk, 1), (a.pk, 2)])
    assert [(line.product_id, line.quantity) for line in lines] == [(a.pk, 3)]
    assert stock_of(a) == (5, 3)


def test_reserve_again_with_same_reference_changes_nothing_and_returns_same_lines():
    a = ProductFactory(stock__on_hand=5)
    first = stock_reserve(reference="order-1", items=[(a.pk, 2)])
    second = stock_reserve(reference="order-1", items=[(a.pk, 2)])
    assert first == second
    assert stock_of(a) == (5, 2)
    assert Reservation.objects.count() == 1


def test_reserve_same_reference_with_other_items_is_a_conflict():
    a = ProductFactory(stock__on_hand=5)
    stock_reserve(reference="order-1", items=[(a.pk, 2)])
    with pytest.raises(ReservationMismatch):
        stock_reserve(reference="order-1", items=[(a.pk, 3)])
    assert stock_of(a) == (5, 2)


def test_commit_sells_the_units_and_is_idempotent():
    a = ProductFactory(stock__on_hand=5)
    stock_reserve(reference="order-1", items=[(a.pk, 2)])
    reservation_commit(reference="order-1")
    reservation_commit(reference="order-1")
    assert stock_of(a) == (3, 0)
    assert Reservation.objects.get().status == "committed"
    # The idempotent reserve still answers with the (now committed) lines.
    assert stock_reserve(reference="order-1", items=[(a.pk, 2)])[0].status == "committed"
    assert stock_of(a) == (3, 0)


def test_release_returns_the_units_and_is_idempotent():
    a = ProductFactory(stock__on_hand=5)
    stock_reserve(reference="order-1", items=[(a.pk, 2)])
    reservation_release(reference="order-1")
    reservation_release(reference="order-1")
    assert stock_of(a) == (5, 0)
    assert Reservation.objects.get().status == "released"


def test_release_of_an_unknown_reference_is_a_no_op():
    reservation_release(reference="never-reserved")
    assert not Reservation.objects.exists()


def test_commit_after_release_does_not_resurrect_the_reservation():
    a = ProductFactory(stock__on_hand=5)
    stock_reserve(reference="order-1", items=[(a.pk, 2)])
    reservation_release(reference="order-1")
    with pytest.raises(ReservationReleased):
        reservation_commit(reference="order-1")
    assert stock_of(a) == (5, 0)
    assert Reservation.objects.get().status == "released"


def test_release_after_commit_does_not_unsell():
    a = ProductFactory(stock__on_hand=5)
    stock_reserve(reference="order-1", items=[(a.pk, 2)])
    reservation_commit(reference="order-1")
    with pytest.raises(ReservationCommitted):
        reservation_release(reference="order-1")
    assert stock_of(a) == (3, 0)


def test_commit_of_an_unknown_reference_is_not_found():
    with pytest.raises(ReservationNotFound):
        reservation_commit(reference="never-reserved")


def test_sweeper_releases_only_expired_active_reservations():
    a = ProductFactory(stock__on_hand=10)
    stock_reserve(reference="expired", items=[(a.pk, 3)], ttl_seconds=60)
    stock_reserve(reference="live", items=[(a.pk, 2)], ttl_seconds=3600)
    stock_reserve(reference="sold", items=[(a.pk, 1)], ttl_seconds=60)
    reservation_commit(reference="sold")
    later = timezone.now() + timedelta(minutes=5)

    assert reservations_release_expired(now=later) == 1
    assert reservations_release_expired(now=later) == 0  # idempotent

    statuses = dict(Reservation.objects.values_list("reference", "status"))
    assert statuses == {"expired": "released", "live": "active", "sold": "committed"}
    assert stock_of(a) == (9, 2)
    with pytest.raises(ReservationReleased):
        reservation_commit(reference="expired")


def test_sweeper_task_is_scheduled_and_runs_the_service(settings):
    a = ProductFactory(stock__on_hand=4)
    stock_reserve(reference="short-lived", items=[(a.pk, 4)], ttl_seconds=1)
    Reservation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    entry = settings.CELERY_BEAT_SCHEDULE["catalog-release-expired-reservations"]
    celery_app.loader.import_default_modules()  # autodiscovery, as a worker does at start
    task = celery_app.tasks[entry["task"]]
    assert task.apply().get() == 1
    assert stock_of(a) == (4, 0)


def test_database_refuses_reserved_above_on_hand():
    a = ProductFactory(stock__on_hand=2)
    with pytest.raises(IntegrityError), transaction.atomic():
        Stock.objects.filter(product=a).update(reserved=3)


def test_refused_reservations_and_sales_leave_the_callers_transaction_usable_and_unchanged():
    # A saga step reserves and sells inside its own transaction, with no savepoint around
    # these calls: an error must mean nothing was written.
    a, b = ProductFactory(stock__on_hand=5), ProductFactory(stock__on_hand=1)
    with transaction.atomic():
        with pytest.raises(OutOfStock) as raised:
            stock_reserve(reference="order-1", items=[(a.pk, 2), (b.pk, 2)])
        assert (raised.value.product_ids, raised.value.available) == ([b.pk], {b.pk: 1})
        stock_reserve(reference="order-2", items=[(a.pk, 1)])
        reservation_release(reference="order-2")
        with pytest.raises(ReservationReleased):
            reservation_commit(reference="order-2")
        stock_reserve(reference="order-3", items=[(b.pk, 1)])
        reservation_commit(reference="order-3")
    assert stock_of(a) == (5, 0)
    assert stock_of(b) == (0, 0)
    assert list(Reservation.objects.values_list("reference", "status")) == [
        ("order-2", "released"),
        ("order-3", "committed"),
    ]

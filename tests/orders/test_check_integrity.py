"""`manage.py check_integrity`: a consistent database passes; each kind of corruption,
made directly in the tables, is reported by name and fails the command."""

import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.catalog import services as catalog_services
from apps.catalog.models import Reservation, Stock
from apps.core.models import OutboxMessage, SagaInstance
from apps.orders import services
from apps.orders.models import OrderSummary
from apps.payments.models import Payment
from tests.orders.conftest import ADDRESS
from tests.payments.factories import PaymentFactory, RefundFactory
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db


def run_check(*args: str) -> tuple[bool, str]:
    out = io.StringIO()
    try:
        call_command("check_integrity", *args, stdout=out)
    except CommandError:
        return False, out.getvalue()
    return True, out.getvalue()


def _placed_and_paid(user, product, quantity: int) -> str:
    """An order taken through the placement saga's effects by hand: reserved, charged."""
    summary = services.order_place(
        user_id=user.pk,
        items=[(product.pk, quantity)],
        shipping_address=ADDRESS,
        payment_token="tok_visa",
    )
    order_id = str(summary.pk)
    catalog_services.stock_reserve(reference=order_id, items=[(product.pk, quantity)])
    services.order_record_stock_reserved(order_id=order_id, reservation_reference=order_id)
    payment = PaymentFactory(
        order_id=order_id, user_id=user.pk, amount=summary.total, currency=summary.currency
    )
    services.order_record_payment_captured(
        order_id=order_id, payment_id=str(payment.pk), amount=summary.total
    )
    return order_id


@pytest.fixture
def shop(db):
    return build_shop()


@transaction.atomic  # reads on the primary, also in a transactional test
def build_shop() -> dict:
    """A consistent shop: a confirmed, a shipped, a pending (stock held) and a cancelled
    and refunded order, with the stock movements and payments each implies."""
    user = UserFactory()
    lamp = catalog_services.product_create(
        sku="LAMP-1", name="Lamp", price=Decimal("19.99"), currency="EUR", initial_stock=20
    )
    desk = catalog_services.product_create(
        sku="DESK-1", name="Desk", price=Decimal("120.00"), currency="EUR", initial_stock=5
    )
    catalog_services.stock_adjust(product_id=desk.pk, delta=3, reason="delivery")

    confirmed = _placed_and_paid(user, lamp, 2)
    catalog_services.reservation_commit(reference=confirmed)
    services.order_confirm(order_id=confirmed)

    shipped = _placed_and_paid(user, desk, 1)
    catalog_services.reservation_commit(reference=shipped)
    services.order_confirm(order_id=shipped)
    services.order_ship(order_id=shipped, tracking_number="TRK-1")

    pending = services.order_place(
        user_id=user.pk, items=[(lamp.pk, 3)], shipping_address=ADDRESS, payment_token="tok_visa"
    )
    catalog_services.stock_reserve(reference=str(pending.pk), items=[(lamp.pk, 3)])

    refunded = _placed_and_paid(user, desk, 2)
    catalog_services.reservation_commit(reference=refunded)
    services.order_confirm(order_id=refunded)
    services.order_cancel(order_id=refunded, reason="customer_request")
    payment = Payment.objects.get(order_id=refunded)
    RefundFactory(payment=payment, amount=payment.amount)
    Payment.objects.filter(pk=payment.pk).update(
        amount_refunded=payment.amount, status=Payment.Status.REFUNDED
    )
    services.order_record_refund(
        order_id=refunded,
        amount=payment.amount,
        payment_id=str(payment.pk),
        refund_id="r1",
        captured=payment.amount,
    )
    catalog_services.reservation_return(reference=refunded)
    return {"lamp": lamp, "desk": desk, "confirmed": confirmed, "pending": str(pending.pk)}


def test_a_consistent_database_passes(shop):
    passed, report = run_check()
    assert passed, report
    assert report.count("OK ") == 8
    assert "4 orders checked" in report
    assert "integrity check passed" in report


def _unrecorded_stock(shop):
    Stock.objects.filter(product=shop["lamp"]).update(on_hand=F("on_hand") + 1)


def _reservation_lost(shop):
    Reservation.objects.filter(reference=shop["pending"]).update(status=Reservation.Status.RELEASED)


def _payment_missing(shop):
    Payment.objects.filter(order_id=shop["confirmed"]).delete()


def _payment_of_another_amount(shop):
    Payment.objects.filter(order_id=shop["confirmed"]).update(amount=Decimal("1.00"))


def _refund_beyond_the_charge(shop):
    payment = Payment.objects.get(order_id=shop["confirmed"])
    RefundFactory(payment=payment, amount=payment.amount)
    RefundFactory(payment=payment, amount=Decimal("0.01"))


def _read_model_drift(shop):
    OrderSummary.objects.filter(pk=shop["confirmed"]).update(status="delivered")


def _read_model_row_missing(shop):
    OrderSummary.objects.filter(pk=shop["pending"]).delete()


def _saga_stuck_past_deadline(shop):
    SagaInstance.objects.filter(pk=shop["pending"]).update(
        deadline=timezone.now() - timedelta(hours=1)
    )


CORRUPTIONS = [
    (_unrecorded_stock, "stock conservation", "adjustments total 20 != available"),
    (_reservation_lost, "stock conservation", "reserved 3 != 0 units in active reservations"),
    (_payment_missing, "payments of confirmed orders", "0 succeeded payments, expected exactly 1"),
    (_payment_of_another_amount, "payments of confirmed orders", "paid 1.00 EUR, total is 39.98"),
    (_refund_beyond_the_charge, "refunds within charges", "refunds 39.99 exceed the charge 39.98"),
    (_read_model_drift, "order read model = event store", "status is 'delivered'"),
    (_read_model_row_missing, "order read model = event store", "has events but no read model"),
    (_saga_stuck_past_deadline, "sagas within their deadline", "still running at step 0"),
]


@pytest.mark.parametrize(
    ("corrupt", "check", "detail"), CORRUPTIONS, ids=[c[0].__name__.strip("_") for c in CORRUPTIONS]
)
def test_each_kind_of_corruption_is_reported_and_fails(shop, corrupt, check, detail):
    corrupt(shop)
    passed, report = run_check()
    assert not passed
    assert f"FAIL  {check}: " in report, report
    assert detail in report, report
    assert report.count("FAIL ") == 1, report


def _refund_not_on_the_order(shop):
    payment = Payment.objects.get(order_id=shop["confirmed"])
    RefundFactory(payment=payment, amount=Decimal("5.00"))
    Payment.objects.filter(pk=payment.pk).update(
        amount_refunded=Decimal("5.00"), status=Payment.Status.PARTIALLY_REFUNDED
    )


def _event_relayed_but_never_handled(shop):
    OutboxMessage.objects.filter(event_type="OrderConfirmed").update(
        published_at=timezone.now(), consumers=["orders.email_customer"]
    )


LATE_FACTS = [
    (_refund_not_on_the_order, "refunds recorded on their orders", "its payment has 5.00 refunded"),
    (
        _event_relayed_but_never_handled,
        "events handled by their consumers",
        "orders.email_customer: 3 event(s) not handled: OrderConfirmed",
    ),
]


@pytest.mark.parametrize(
    ("corrupt", "check", "detail"), LATE_FACTS, ids=[c[0].__name__.strip("_") for c in LATE_FACTS]
)
def test_a_fact_that_never_reached_its_consumer_is_reported_after_the_grace(
    shop, corrupt, check, detail
):
    corrupt(shop)
    assert run_check("--event-grace-seconds=600")[0]  # may still be on its way
    passed, report = run_check("--event-grace-seconds=0")
    assert not passed
    assert f"FAIL  {check}: " in report, report
    assert detail in report, report
    assert report.count("FAIL ") == 1, report


def test_an_outbox_backlog_over_the_bound_fails(shop):
    pending = OutboxMessage.objects.filter(published_at__isnull=True).count()
    assert pending > 0
    assert run_check(f"--max-outbox-backlog={pending}")[0]
    passed, report = run_check(f"--max-outbox-backlog={pending - 1}")
    assert not passed
    assert "FAIL  outbox backlog: 1 problem(s)" in report
    assert f"{pending} messages wait for the relay" in report


def test_a_saga_just_past_its_deadline_is_within_the_grace(shop):
    SagaInstance.objects.filter(pk=shop["pending"]).update(
        deadline=timezone.now() - timedelta(seconds=30)
    )
    assert run_check("--saga-grace-seconds=300")[0]
    assert not run_check("--saga-grace-seconds=0")[0]


def test_the_command_line_exits_non_zero_on_failure(shop, capsys):
    _unrecorded_stock(shop)
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "check_integrity"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "FAIL  stock conservation" in captured.out
    assert "integrity check failed: 1 of 8 checks" in captured.err


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_the_check_reads_one_committed_snapshot_outside_a_transaction():
    shop = build_shop()
    passed, report = run_check()
    assert passed, report
    _unrecorded_stock(shop)
    passed, report = run_check()
    assert not passed
    assert "FAIL  stock conservation" in report

from decimal import Decimal

import pytest
from django.utils import timezone

from apps.payments.gateway import get_provider
from apps.payments.models import Payment, Refund
from apps.payments.services import (
    payment_charge_for_order,
    payment_refund,
    payments_reconcile_pending,
)
from apps.payments.tasks import reconcile_pending_payments
from tests.payments.conftest import new_order_id
from tests.payments.factories import PaymentFactory, RefundFactory

pytestmark = pytest.mark.django_db


def pending_payment() -> Payment:
    return PaymentFactory(status=Payment.Status.PENDING, provider_charge_id="")


def test_the_task_settles_pending_payments_from_the_provider_by_key(settings):
    settings.PAYMENT_RECONCILE_AFTER_SECONDS = 0
    charged, declined, never_sent = pending_payment(), pending_payment(), pending_payment()
    for payment, card in ((charged, "tok_visa"), (declined, "tok_declined")):
        get_provider().charge(
            idempotency_key=payment.idempotency_key,
            amount=payment.amount,
            currency=payment.currency,
            token=card,
            reference=payment.order_id,
        )

    counts = reconcile_pending_payments()

    assert counts == {"payments_settled": 3}
    for payment in (charged, declined, never_sent):
        payment.refresh_from_db()
    assert (charged.status, charged.provider_charge_id[:3]) == ("succeeded", "ch_")
    assert (declined.status, declined.failure_code) == ("failed", "card_declined")
    assert (never_sent.status, never_sent.failure_code) == ("failed", "not_submitted")
    assert charged.events.get(kind="payment.succeeded").source == "reconciliation"


def test_recent_pending_payments_are_left_alone(sandbox):
    payment = pending_payment()

    assert payments_reconcile_pending(older_than_seconds=3600) == {}

    payment.refresh_from_db()
    assert payment.status == "pending"
    assert sandbox.requests_naming(payment.idempotency_key, str(payment.order_id)) == 0


def test_a_pending_refund_is_settled_from_the_provider():
    payment = PaymentFactory(status=Payment.Status.PENDING, amount=Decimal("20.00"))
    provider = get_provider()
    provider.charge(
        idempotency_key=payment.idempotency_key,
        amount=payment.amount,
        currency="EUR",
        token="tok_visa",
        reference=payment.order_id,
    )
    payments_reconcile_pending(older_than_seconds=0)
    payment.refresh_from_db()
    refund = RefundFactory(payment=payment, amount=Decimal("5.00"), status=Refund.Status.PENDING)
    provider.refund(
        idempotency_key=refund.idempotency_key,
        charge_id=payment.provider_charge_id,
        amount=refund.amount,
        reason="lost answer",
    )

    counts = payments_reconcile_pending(older_than_seconds=0)

    assert counts == {"refunds_settled": 1}
    refund.refresh_from_db()
    payment.refresh_from_db()
    assert refund.status == "succeeded"
    assert (payment.status, payment.amount_refunded) == ("partially_refunded", Decimal("5.00"))


def test_reconciliation_defers_while_the_provider_is_down(sandbox, settings):
    settings.PAYMENT_BREAKER_FAIL_MAX = 100
    payment = pending_payment()
    sandbox.chaos(down=True)

    counts = payments_reconcile_pending(older_than_seconds=0)

    assert counts == {"deferred": 1}
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_the_reconciliation_task_is_scheduled(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["payments-reconcile-pending"]
    assert entry["task"] == reconcile_pending_payments.name


def test_a_late_capture_whose_refund_never_reached_the_provider_is_refunded_again(sandbox):
    """A given-up order's capture: its refund was lost on the way (failed `not_submitted`);
    reconciliation submits it again under the same key, and the money comes back once."""
    result = payment_charge_for_order(
        order_id=new_order_id(), user_id=1, amount=Decimal("9.00"), currency="EUR",
        token="tok_visa",
    )  # fmt: skip
    Payment.objects.filter(pk=result.payment_id).update(void_requested_at=timezone.now())
    refunds_at_provider = sandbox.state()["refunds"]
    lost = RefundFactory(
        payment_id=result.payment_id,
        amount=Decimal("9.00"),
        status=Refund.Status.FAILED,
        failure_code="not_submitted",
        idempotency_key=f"refund:{result.payment_id}:remaining",
    )

    counts = payments_reconcile_pending(older_than_seconds=0)

    assert counts == {"late_captures_refunded": 1}
    lost.refresh_from_db()
    assert (lost.status, lost.failure_code) == ("succeeded", "")
    payment = Payment.objects.get(pk=result.payment_id)
    assert (payment.status, payment.amount_refunded) == ("refunded", Decimal("9.00"))
    again = payment_refund(payment_id=result.payment_id, reason="once more")
    assert again.refund_id == lost.pk  # refunded already: the same refund, nothing more
    assert sandbox.state()["refunds"] == refunds_at_provider + 1

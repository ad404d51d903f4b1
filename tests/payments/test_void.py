"""Giving up a charge whose outcome is unknown: the order moves on, the money comes back."""

import time
from decimal import Decimal

import pytest

from apps.payments.models import Payment, PaymentEvent
from apps.payments.services import (
    PaymentProviderUnavailable,
    payment_charge_for_order,
    payment_void_for_order,
    payments_reconcile_pending,
)
from tests.payments.conftest import new_order_id

pytestmark = pytest.mark.django_db


def test_nothing_charged_means_nothing_to_void(sandbox):
    assert payment_void_for_order(order_id=new_order_id(), reason="test") is None


def test_a_captured_charge_is_refunded_in_full_once(sandbox):
    order_id = new_order_id()
    payment_charge_for_order(
        order_id=order_id, user_id=1, amount=Decimal("8.00"), currency="EUR", token="tok_visa"
    )
    first = payment_void_for_order(order_id=order_id, reason="order not placed")
    again = payment_void_for_order(order_id=order_id, reason="order not placed")
    assert first is not None and first.amount == Decimal("8.00")
    assert again is None  # refunded already
    assert Payment.objects.get(order_id=order_id).status == "refunded"


def test_unknown_outcome_requests_a_void_and_a_late_capture_is_refunded(sandbox, settings):
    settings.PAYMENT_BREAKER_FAIL_MAX = 100
    # Every attempt times out, but the sandbox still processes the first one: charged.
    sandbox.chaos(latency_ms=int(settings.PAYMENT_READ_TIMEOUT_SECONDS * 1000) + 300)
    order_id = new_order_id()
    with pytest.raises(PaymentProviderUnavailable):
        payment_charge_for_order(
            order_id=order_id, user_id=1, amount=Decimal("5.00"), currency="EUR", token="tok_visa"
        )
    sandbox.chaos(down=True, latency_ms=0)

    assert payment_void_for_order(order_id=order_id, reason="order not placed") is None
    payment = Payment.objects.get(order_id=order_id)
    assert payment.status == "pending" and payment.void_requested_at is not None
    assert PaymentEvent.objects.filter(payment=payment, kind="payment.void_requested").exists()

    sandbox.chaos(down=False)
    deadline = time.monotonic() + 5
    while not sandbox.charges_for(order_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sandbox.charges_for(order_id)) == 1
    payments_reconcile_pending(older_than_seconds=0)

    payment.refresh_from_db()
    assert payment.status == "refunded"
    assert payment.refunds.get().amount == Decimal("5.00")

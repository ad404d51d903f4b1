"""Payments publish every money fact in the transaction that settles it, whatever path
settled it: the provider's answer, a refund by staff or the API, reconciliation."""

from decimal import Decimal

import pytest

from apps.payments.services import (
    PaymentDeclined,
    payment_charge_for_order,
    payment_refund,
    payment_void_for_order,
)
from tests.payments.conftest import new_order_id
from tests.support.outbox import published

pytestmark = pytest.mark.django_db


def charge(order_id: str, amount: str = "20.00", token: str = "tok_visa"):
    return payment_charge_for_order(
        order_id=order_id, user_id=7, amount=Decimal(amount), currency="EUR", token=token
    )


def test_a_capture_and_its_refunds_are_published_with_the_running_total(sandbox):
    order_id = new_order_id()
    payment = charge(order_id)
    payment_refund(payment_id=payment.payment_id, amount=Decimal("5.00"), reason="scratched")
    payment_void_for_order(order_id=order_id, reason="order cancelled")

    (captured,) = published("PaymentCaptured", order_id=order_id)
    assert captured.payload["amount"] == "20.00"
    assert captured.payload["payment_id"] == str(payment.payment_id)
    refunds = published("PaymentRefunded", order_id=order_id)
    assert [
        (r.payload["amount"], r.payload["amount_refunded"], r.payload["full"]) for r in refunds
    ] == [("5.00", "5.00", False), ("15.00", "20.00", True)]
    assert len({r.payload["refund_id"] for r in refunds}) == 2


def test_a_declined_charge_is_published_as_failed(sandbox):
    order_id = new_order_id()
    with pytest.raises(PaymentDeclined):
        charge(order_id, token="tok_declined")
    (failed,) = published("PaymentFailed", order_id=order_id)
    assert failed.payload["failure_code"]
    assert published("PaymentCaptured", order_id=order_id) == []


def test_a_charge_settled_twice_is_published_once(sandbox):
    order_id = new_order_id()
    charge(order_id)
    charge(order_id)  # the saga's retry: the same outcome, no new fact
    assert len(published("PaymentCaptured", order_id=order_id)) == 1

from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from apps.core.errors import ValidationFailed
from apps.payments.models import Payment
from apps.payments.services import (
    PaymentDeclined,
    PaymentProviderUnavailable,
    payment_charge_for_order,
)
from tests.payments.conftest import new_order_id

pytestmark = pytest.mark.django_db

AMOUNT = Decimal("42.50")


def charge(order_id: str, card: str = "tok_visa", amount: Decimal = AMOUNT):
    return payment_charge_for_order(
        order_id=order_id, user_id=7, amount=amount, currency="EUR", token=card
    )


def test_visa_charge_succeeds_and_is_recorded(sandbox):
    order_id = new_order_id()
    result = charge(order_id)

    assert result.status == "succeeded"
    assert (result.amount, result.currency) == (AMOUNT, "EUR")
    payment = Payment.objects.get(pk=result.payment_id)
    assert payment.user_id == 7
    assert payment.provider_charge_id == result.provider_charge_id
    assert [c["id"] for c in sandbox.charges_for(order_id)] == [result.provider_charge_id]
    assert list(payment.events.values_list("kind", flat=True)) == [
        "payment.created",
        "payment.succeeded",
    ]


def test_second_charge_for_an_order_returns_the_first_without_charging_again(sandbox):
    order_id = new_order_id()
    first = charge(order_id)
    key = Payment.objects.get(order_id=order_id).idempotency_key
    served = sandbox.requests_naming(order_id, key)

    again = charge(order_id)

    assert again == first
    assert sandbox.requests_naming(order_id, key) == served
    assert len(sandbox.charges_for(order_id)) == 1
    assert Payment.objects.filter(order_id=order_id).count() == 1


def retries_metric() -> float:
    labels = {"provider": "sandbox", "operation": "charge"}
    return REGISTRY.get_sample_value("mercato_payment_provider_retries_total", labels) or 0.0


def test_flaky_card_succeeds_after_a_retry(sandbox):
    order_id = new_order_id()
    retries = retries_metric()

    result = charge(order_id, card="tok_flaky")

    assert result.status == "succeeded"
    assert retries_metric() == retries + 1
    # The 500, then (outcome unknown) a look-up by key, then the retried charge.
    key = Payment.objects.get(order_id=order_id).idempotency_key
    assert sandbox.requests_naming(order_id, key) == 3
    assert len(sandbox.charges_for(order_id)) == 1


@pytest.mark.parametrize(
    ("token", "code"),
    [("tok_declined", "card_declined"), ("tok_insufficient_funds", "insufficient_funds")],
)
def test_decline_is_not_retried_and_is_remembered(sandbox, token, code):
    order_id = new_order_id()

    with pytest.raises(PaymentDeclined) as declined:
        charge(order_id, card=token)

    assert declined.value.decline_code == code
    assert declined.value.problem_type == "payment-declined"
    payment = Payment.objects.get(order_id=order_id)
    assert sandbox.requests_naming(order_id, payment.idempotency_key) == 1
    assert (payment.status, payment.failure_code) == ("failed", code)

    with pytest.raises(PaymentDeclined) as again:
        charge(order_id, card=token)
    assert again.value.payment_id == payment.pk
    assert sandbox.requests_naming(order_id, payment.idempotency_key) == 1


def test_slow_card_times_out_but_ends_with_exactly_one_charge(sandbox, settings):
    assert settings.PAYMENT_READ_TIMEOUT_SECONDS < 1.5  # the sandbox answers tok_slow late
    order_id = new_order_id()

    result = charge(order_id, card="tok_slow")

    assert result.status == "succeeded"
    charges = sandbox.charges_for(order_id)
    assert [c["id"] for c in charges] == [result.provider_charge_id]


def test_unavailable_provider_leaves_the_payment_pending_and_a_retry_resumes_it(sandbox, settings):
    settings.PAYMENT_BREAKER_FAIL_MAX = 100  # this test is about retries, not the breaker
    order_id = new_order_id()
    sandbox.chaos(down=True)

    with pytest.raises(PaymentProviderUnavailable) as unavailable:
        charge(order_id)

    assert unavailable.value.status == 503
    payment = Payment.objects.get(order_id=order_id)
    assert payment.status == "pending"
    assert sandbox.charges_for(order_id) == []

    sandbox.chaos(down=False)
    result = charge(order_id)

    assert result.payment_id == payment.pk
    assert result.status == "succeeded"
    assert len(sandbox.charges_for(order_id)) == 1


def test_invalid_charge_input_is_refused_before_anything_is_written(sandbox):
    served = sandbox.requests_served()
    with pytest.raises(ValidationFailed) as invalid:
        payment_charge_for_order(
            order_id="", user_id=7, amount=Decimal("-1.001"), currency="XXX", token=""
        )

    assert set(invalid.value.errors) == {"order_id", "amount", "currency", "token"}
    assert not Payment.objects.exists()
    assert sandbox.requests_served() == served

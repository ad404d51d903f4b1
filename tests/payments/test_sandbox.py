"""The sandbox PSP itself, over HTTP: idempotency, validation and chaos switches."""

import time
import uuid
from decimal import Decimal

import pytest

from apps.payments.models import Payment
from apps.payments.services import (
    PaymentProviderUnavailable,
    payment_charge_for_order,
    payments_reconcile_pending,
)
from tests.payments.conftest import new_order_id


def charge_body(**overrides) -> dict:
    return {"amount": "5.00", "currency": "EUR", "token": "tok_visa", "reference": "r", **overrides}


def post_charge(client, key: str, body: dict):
    return client.post("/v1/charges", json=body, headers={"Idempotency-Key": key})


def test_a_repeated_charge_key_replays_the_first_charge(sandbox):
    key = uuid.uuid4().hex
    with sandbox.api() as client:
        first = post_charge(client, key, charge_body())
        again = post_charge(client, key, charge_body())
        other_body = post_charge(client, key, charge_body(amount="6.00"))

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert other_body.status_code == 422
    assert other_body.json()["error"]["code"] == "idempotency_key_reused"


def test_a_repeated_refund_key_refunds_once(sandbox):
    with sandbox.api() as client:
        charge = post_charge(client, uuid.uuid4().hex, charge_body(amount="9.00")).json()
        key = uuid.uuid4().hex
        body = {"charge_id": charge["id"], "amount": "4.00", "reason": "r"}
        refunds = [
            client.post("/v1/refunds", json=body, headers={"Idempotency-Key": key})
            for _ in range(2)
        ]
        over = client.post(
            "/v1/refunds",
            json={**body, "amount": "5.01"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )

    assert [r.status_code for r in refunds] == [201, 201]
    assert refunds[0].json()["id"] == refunds[1].json()["id"]
    assert over.status_code == 422
    assert over.json()["error"]["code"] == "amount_exceeds_charge"


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        ({}, charge_body(), "idempotency_key_required"),
        ({"Idempotency-Key": "k"}, charge_body(amount="1.001"), "invalid_amount"),
        ({"Idempotency-Key": "k"}, charge_body(currency="euro"), "invalid_currency"),
    ],
)
def test_invalid_requests_are_refused_with_a_400(sandbox, headers, body, code):
    with sandbox.api() as client:
        response = client.post("/v1/charges", json=body, headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (400, code)


def test_chaos_switches_take_effect_at_runtime(sandbox):
    with sandbox.api() as client:
        sandbox.chaos(failure_rate=1.0)
        assert post_charge(client, uuid.uuid4().hex, charge_body()).status_code == 500
        sandbox.chaos(failure_rate=0, down=True)
        assert post_charge(client, uuid.uuid4().hex, charge_body()).status_code == 503
        sandbox.chaos(down=False, latency_ms=300)
        started = time.monotonic()
        assert post_charge(client, uuid.uuid4().hex, charge_body()).status_code == 201
        assert time.monotonic() - started >= 0.3
    assert sandbox.state()["chaos"] == {"failure_rate": 0.0, "latency_ms": 300, "down": False}


@pytest.mark.django_db
def test_latency_past_the_read_timeout_charges_once_and_reconciliation_settles_it(
    sandbox, settings
):
    settings.PAYMENT_BREAKER_FAIL_MAX = 100
    sandbox.chaos(latency_ms=int(settings.PAYMENT_READ_TIMEOUT_SECONDS * 1000) + 300)
    order_id = new_order_id()

    with pytest.raises(PaymentProviderUnavailable):
        payment_charge_for_order(
            order_id=order_id, user_id=1, amount=Decimal("3.00"), currency="EUR", token="tok_visa"
        )

    # Every attempt timed out, yet the first one was processed after its delay.
    sandbox.chaos(latency_ms=0)
    deadline = time.monotonic() + 5
    while not sandbox.charges_for(order_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sandbox.charges_for(order_id)) == 1
    assert Payment.objects.get(order_id=order_id).status == "pending"

    payments_reconcile_pending(older_than_seconds=0)

    assert Payment.objects.get(order_id=order_id).status == "succeeded"
    assert len(sandbox.charges_for(order_id)) == 1

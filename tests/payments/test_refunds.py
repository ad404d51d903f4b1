import threading
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.db import connection

from apps.core.errors import Conflict, InvalidState
from apps.payments.errors import RefundExceedsCaptured
from apps.payments.models import Payment, Refund
from apps.payments.services import payment_charge_for_order, payment_refund
from apps.users.roles import ORDER_MANAGERS
from tests.conftest import bearer_client
from tests.payments.conftest import new_order_id
from tests.payments.factories import PaymentFactory
from tests.users.factories import UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db


@pytest.fixture
def captured(sandbox) -> Payment:
    result = payment_charge_for_order(
        order_id=new_order_id(),
        user_id=3,
        amount=Decimal("100.00"),
        currency="EUR",
        token="tok_visa",
    )
    return Payment.objects.get(pk=result.payment_id)


def sandbox_refund_count(sandbox) -> int:
    return sandbox.state()["refunds"]


def test_partial_then_full_refund(captured):
    partial = payment_refund(payment_id=captured.pk, amount=Decimal("30.00"), reason="damaged")
    assert (partial.status, partial.amount) == ("succeeded", Decimal("30.00"))
    assert (partial.payment_status, partial.amount_refunded) == (
        "partially_refunded",
        Decimal("30.00"),
    )

    rest = payment_refund(payment_id=captured.pk, reason="order cancelled")

    assert rest.amount == Decimal("70.00")
    assert (rest.payment_status, rest.amount_refunded) == ("refunded", Decimal("100.00"))
    captured.refresh_from_db()
    assert captured.status == "refunded"
    assert list(captured.refunds.values_list("status", flat=True)) == ["succeeded", "succeeded"]
    assert list(
        captured.events.filter(kind__startswith="refund.").values_list("kind", flat=True)
    ) == ["refund.requested", "refund.succeeded", "refund.requested", "refund.succeeded"]


def test_over_refund_is_refused_and_nothing_is_written(captured, sandbox):
    payment_refund(payment_id=captured.pk, amount=Decimal("60.00"), reason="partial")
    refunds_at_provider = sandbox_refund_count(sandbox)

    with pytest.raises(RefundExceedsCaptured) as refused:
        payment_refund(payment_id=captured.pk, amount=Decimal("40.01"), reason="too much")

    assert refused.value.extra["refundable"] == "40.00"
    assert captured.refunds.count() == 1
    assert sandbox_refund_count(sandbox) == refunds_at_provider
    captured.refresh_from_db()
    assert captured.amount_refunded == Decimal("60.00")


def test_the_same_refund_key_twice_refunds_once(captured, sandbox):
    refunds_at_provider = sandbox_refund_count(sandbox)

    first = payment_refund(
        payment_id=captured.pk, amount=Decimal("10.00"), reason="x", idempotency_key="rk-1"
    )
    second = payment_refund(
        payment_id=captured.pk, amount=Decimal("10.00"), reason="x", idempotency_key="rk-1"
    )

    assert second == first
    assert captured.refunds.count() == 1
    assert sandbox_refund_count(sandbox) == refunds_at_provider + 1
    captured.refresh_from_db()
    assert captured.amount_refunded == Decimal("10.00")


def test_a_refund_key_counts_per_payment(captured, sandbox):
    other = Payment.objects.get(
        pk=payment_charge_for_order(
            order_id=new_order_id(),
            user_id=3,
            amount=Decimal("50.00"),
            currency="EUR",
            token="tok_visa",
        ).payment_id
    )

    first = payment_refund(
        payment_id=captured.pk, amount=Decimal("10.00"), reason="x", idempotency_key="same"
    )
    second = payment_refund(
        payment_id=other.pk, amount=Decimal("10.00"), reason="x", idempotency_key="same"
    )

    assert (first.payment_id, second.payment_id) == (captured.pk, other.pk)
    assert first.refund_id != second.refund_id
    assert [p.refunds.count() for p in (captured, other)] == [1, 1]


def test_a_refund_key_reused_for_another_amount_is_a_conflict(captured):
    payment_refund(
        payment_id=captured.pk, amount=Decimal("10.00"), reason="x", idempotency_key="rk-2"
    )
    with pytest.raises(Conflict):
        payment_refund(
            payment_id=captured.pk, amount=Decimal("20.00"), reason="x", idempotency_key="rk-2"
        )
    assert captured.refunds.count() == 1


def test_a_full_refund_without_a_key_is_repeatable(captured, sandbox):
    first = payment_refund(payment_id=captured.pk, reason="saga compensation")
    again = payment_refund(payment_id=captured.pk, reason="saga compensation")

    assert again.refund_id == first.refund_id
    assert captured.refunds.count() == 1


def test_a_refund_the_provider_refuses_is_recorded_as_failed_and_frees_the_amount(sandbox):
    payment = PaymentFactory(provider_charge_id="ch_unknown_to_the_provider")

    with pytest.raises(InvalidState):
        payment_refund(payment_id=payment.pk, amount=Decimal("5.00"), reason="x")

    refund = payment.refunds.get()
    assert (refund.status, refund.failure_code) == ("failed", "no_such_charge")
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("succeeded", Decimal("0.00"))


def test_a_failed_payment_cannot_be_refunded():
    payment = PaymentFactory(status=Payment.Status.FAILED)
    with pytest.raises(InvalidState):
        payment_refund(payment_id=payment.pk, reason="x")
    assert not Refund.objects.exists()


# -- the API --------------------------------------------------------------------------


@pytest.fixture
def order_manager():
    user = UserFactory(is_staff=True)
    # get_or_create: a transactional test elsewhere may have flushed the migrated groups.
    user.groups.add(Group.objects.get_or_create(name=ORDER_MANAGERS)[0])
    return user


def refunds_url(payment: Payment) -> str:
    return f"/api/v1/payments/{payment.pk}/refunds"


def test_staff_refund_through_the_api_replays_the_same_key(captured, order_manager, sandbox):
    client = bearer_client(order_manager)
    refunds_at_provider = sandbox_refund_count(sandbox)

    responses = [
        client.post(
            refunds_url(captured),
            {"amount": "25.00", "reason": "late delivery"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="api-key-1",
        )
        for _ in range(2)
    ]

    assert [r.status_code for r in responses] == [201, 201]
    assert responses[0].json() == responses[1].json()
    body = responses[0].json()
    assert (body["amount"], body["status"], body["payment_status"]) == (
        "25.00",
        "succeeded",
        "partially_refunded",
    )
    assert sandbox_refund_count(sandbox) == refunds_at_provider + 1


def test_refund_api_requires_the_idempotency_key_and_valid_fields(captured, order_manager):
    client = bearer_client(order_manager)
    missing_key = client.post(refunds_url(captured), {"reason": "x"}, format="json")
    assert_problem(missing_key, 400, "idempotency-key-missing")

    invalid = client.post(
        refunds_url(captured),
        {"amount": "-3", "reason": "", "extra": 1},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert set(assert_problem(invalid, 400, "validation-error")["errors"]) == {
        "amount",
        "reason",
        "extra",
    }

    too_much = client.post(
        refunds_url(captured),
        {"amount": "100.01", "reason": "x"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k2",
    )
    assert_problem(too_much, 409, "refund-exceeds-captured")
    assert not captured.refunds.exists()


def test_refund_api_is_for_payment_staff_only(captured):
    customer = UserFactory(id=captured.user_id)
    response = bearer_client(customer).post(
        refunds_url(captured), {"reason": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert_problem(response, 403, "permission-denied")
    assert not captured.refunds.exists()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_concurrent_refunds_never_exceed_the_captured_amount(sandbox):
    result = payment_charge_for_order(
        order_id=new_order_id(),
        user_id=3,
        amount=Decimal("100.00"),
        currency="EUR",
        token="tok_visa",
    )
    start = threading.Barrier(2, timeout=10)
    outcomes: list[str] = []

    def refund_sixty(key: str) -> None:
        try:
            start.wait()
            payment_refund(
                payment_id=result.payment_id,
                amount=Decimal("60.00"),
                reason="race",
                idempotency_key=key,
            )
            outcomes.append("refunded")
        except RefundExceedsCaptured:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=refund_sixty, args=(f"race-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == ["refunded", "refused"]
    payment = Payment.objects.get(pk=result.payment_id)
    assert payment.amount_refunded == Decimal("60.00")
    assert payment.refunds.count() == 1


def test_refund_api_same_key_other_body_is_422(captured, order_manager):
    client = bearer_client(order_manager)
    first = client.post(refunds_url(captured), {"amount": "1.00", "reason": "x"},
                        format="json", HTTP_IDEMPOTENCY_KEY="refund-key")  # fmt: skip
    other = client.post(refunds_url(captured), {"amount": "2.00", "reason": "x"},
                        format="json", HTTP_IDEMPOTENCY_KEY="refund-key")  # fmt: skip
    assert first.status_code == 201
    assert_problem(other, 422, "idempotency-key-reused")
    assert captured.refunds.count() == 1

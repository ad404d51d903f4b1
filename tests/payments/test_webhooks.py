import json
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from apps.payments.gateway import get_provider
from apps.payments.models import Payment, PaymentEvent
from apps.payments.sandbox.server import sign
from apps.payments.services import payment_charge_for_order, webhook_handle
from tests.payments.factories import PaymentFactory
from tests.support.sandbox import WEBHOOK_SECRET
from tests.users.test_auth_api import assert_problem

WEBHOOK = "/api/v1/payments/webhooks/sandbox"


def pending_payment(**fields) -> Payment:
    return PaymentFactory(status=Payment.Status.PENDING, provider_charge_id="", **fields)


def charge_at_provider(payment: Payment, card: str = "tok_visa") -> None:
    """The provider charges, but (as after a crash) our side never saw the answer."""
    get_provider().charge(
        idempotency_key=payment.idempotency_key,
        amount=payment.amount,
        currency=payment.currency,
        token=card,
        reference=payment.order_id,
    )


def delivery_for(receiver, idempotency_key: str, minimum: int = 1):
    def about_it(delivery) -> bool:
        return json.loads(delivery.body)["data"]["idempotency_key"] == idempotency_key

    deadline = time.monotonic() + 10
    while True:
        found = receiver.wait_for(about_it, timeout=max(0.1, deadline - time.monotonic()))
        if len(found) >= minimum or time.monotonic() > deadline:
            assert len(found) >= minimum, f"expected {minimum} deliveries, got {len(found)}"
            return found
        time.sleep(0.05)


def post_webhook(client, body: bytes, signature: str):
    return client.post(
        WEBHOOK, data=body, content_type="application/json", HTTP_SANDBOX_SIGNATURE=signature
    )


@pytest.mark.django_db
def test_a_signed_webhook_from_the_sandbox_settles_a_pending_payment_once(
    api_client, webhook_receiver
):
    payment = pending_payment()
    charge_at_provider(payment)
    delivery = delivery_for(webhook_receiver, payment.idempotency_key)[0]
    signature = delivery.headers["Sandbox-Signature"]

    first = post_webhook(api_client, delivery.body, signature)
    second = post_webhook(api_client, delivery.body, signature)

    assert (first.status_code, first.json()) == (200, {"status": "settled"})
    assert (second.status_code, second.json()) == (200, {"status": "duplicate"})
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    assert payment.provider_charge_id.startswith("ch_")
    kinds = list(payment.events.values_list("kind", flat=True))
    assert kinds == ["webhook.received", "payment.succeeded"]


@pytest.mark.django_db
def test_a_webhook_for_a_payment_the_charge_settled_is_recorded_once_in_one_statement(
    webhook_receiver,
):
    payment = pending_payment()
    # The saga's charge call, replayed by its key: the provider's answer settles it first.
    payment_charge_for_order(
        order_id=payment.order_id,
        user_id=payment.user_id,
        amount=payment.amount,
        currency=payment.currency,
        token="tok_visa",
    )
    delivery = delivery_for(webhook_receiver, payment.idempotency_key)[0]
    event = json.loads(delivery.body)

    with CaptureQueriesContext(connection) as first_sql:
        first = webhook_handle(body=delivery.body, headers=delivery.headers)
    second = webhook_handle(body=delivery.body, headers=delivery.headers)

    assert (first, second) == ("already-settled", "duplicate")
    assert len(first_sql.captured_queries) == 1
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    received = payment.events.get(kind="webhook.received")
    assert (received.source, received.provider_event_id) == ("webhook", event["id"])
    assert received.data == {"object_id": event["data"]["id"]}
    kinds = list(payment.events.values_list("kind", flat=True))
    assert kinds == ["payment.succeeded", "webhook.received"]


@pytest.mark.django_db
def test_a_charge_webhook_about_no_payment_of_ours_is_ignored(api_client, webhook_receiver):
    payment = pending_payment()
    charge_at_provider(payment)
    delivery = delivery_for(webhook_receiver, payment.idempotency_key)[0]
    payment.delete()

    response = post_webhook(api_client, delivery.body, delivery.headers["Sandbox-Signature"])

    assert (response.status_code, response.json()) == (200, {"status": "ignored"})
    assert not PaymentEvent.objects.exists()


@pytest.mark.django_db
def test_a_declined_charge_webhook_fails_the_payment(api_client, webhook_receiver):
    payment = pending_payment()
    charge_at_provider(payment, card="tok_insufficient_funds")
    delivery = delivery_for(webhook_receiver, payment.idempotency_key)[0]

    response = post_webhook(api_client, delivery.body, delivery.headers["Sandbox-Signature"])

    assert response.json() == {"status": "settled"}
    payment.refresh_from_db()
    assert (payment.status, payment.failure_code) == ("failed", "insufficient_funds")


@pytest.mark.django_db
@pytest.mark.parametrize("tamper", ["body", "signature", "stale", "missing"])
def test_a_tampered_or_stale_webhook_is_refused_and_nothing_is_stored(
    api_client, webhook_receiver, tamper
):
    payment = pending_payment()
    charge_at_provider(payment)
    delivery = delivery_for(webhook_receiver, payment.idempotency_key)[0]
    body, signature = delivery.body, delivery.headers["Sandbox-Signature"]
    if tamper == "body":
        body = body.replace(b'"succeeded"', b'"declined"', 1)
    elif tamper == "signature":
        timestamp = signature.split(",")[0]
        signature = f"{timestamp},v1={'0' * 64}"
    elif tamper == "stale":
        old = int(time.time()) - 3600
        signature = f"t={old},v1={sign(WEBHOOK_SECRET, old, body)}"
    else:
        signature = ""

    response = post_webhook(api_client, body, signature)

    assert_problem(response, 400, "invalid-webhook")
    payment.refresh_from_db()
    assert payment.status == "pending"
    assert not PaymentEvent.objects.filter(payment=payment).exists()


@pytest.mark.django_db
def test_the_sandbox_retries_a_webhook_until_it_is_acknowledged(webhook_receiver):
    payment = pending_payment()
    webhook_receiver.refuse_next = 1
    charge_at_provider(payment)

    deliveries = delivery_for(webhook_receiver, payment.idempotency_key, minimum=2)

    assert len({json.loads(d.body)["id"] for d in deliveries}) == 1  # the same event again
    assert webhook_receiver.refuse_next == 0


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_webhook_racing_the_synchronous_response_settles_the_payment_once(webhook_receiver):
    for _ in range(3):
        payment = pending_payment(amount=Decimal("12.00"))
        charge_at_provider(payment)
        delivery = delivery_for(webhook_receiver, payment.idempotency_key)[0]
        start = threading.Barrier(2, timeout=10)
        outcomes: dict[str, object] = {}

        def via_webhook(payment=payment, delivery=delivery, start=start, outcomes=outcomes):
            try:
                start.wait()
                outcomes["webhook"] = webhook_handle(body=delivery.body, headers=delivery.headers)
            finally:
                connection.close()

        def via_response(payment=payment, start=start, outcomes=outcomes):
            try:
                start.wait()
                # The saga's charge call for the pending payment: replayed by its key.
                outcomes["response"] = payment_charge_for_order(
                    order_id=payment.order_id,
                    user_id=payment.user_id,
                    amount=payment.amount,
                    currency=payment.currency,
                    token="tok_visa",
                ).status
            finally:
                connection.close()

        threads = [threading.Thread(target=via_webhook), threading.Thread(target=via_response)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert outcomes["response"] == "succeeded"
        assert outcomes["webhook"] in {"settled", "already-settled"}
        payment.refresh_from_db()
        assert payment.status == "succeeded"
        assert payment.events.filter(kind="payment.succeeded").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_webhook_arriving_during_the_charges_own_settlement_waits_for_it_in_two_statements(
    webhook_receiver,
):
    payment = pending_payment()
    charge_at_provider(payment)
    delivery = delivery_for(webhook_receiver, payment.idempotency_key)[0]
    settling, answered = threading.Event(), {}

    def webhook() -> None:
        try:
            settling.wait(10)
            with CaptureQueriesContext(connection) as sql:
                answered["outcome"] = webhook_handle(body=delivery.body, headers=delivery.headers)
            answered["statements"] = len(sql.captured_queries)
        except Exception as exc:
            answered["error"] = repr(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=webhook)
    thread.start()
    # The saga's settlement, under way: the row is locked and changed, not yet committed.
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        locked.status = Payment.Status.SUCCEEDED
        locked.save(update_fields=["status", "updated_at"])
        settling.set()
        deadline = time.monotonic() + 10
        while not waiting_for_a_lock() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert waiting_for_a_lock(), "the webhook never waited for the settlement"
    thread.join(timeout=10)

    assert answered == {"outcome": "already-settled", "statements": 2}
    received = payment.events.get(kind="webhook.received")
    assert received.provider_event_id == json.loads(delivery.body)["id"]


def waiting_for_a_lock() -> bool:
    with connections["default"].cursor() as cursor:
        # Inside a transaction the activity view is a snapshot taken at its first read.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0] > 0

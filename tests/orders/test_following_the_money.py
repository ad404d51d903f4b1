"""Orders follow the money whatever moved it: a staff refund in the admin, a partial
refund through the API, a capture the provider settles after the saga gave up, a worker
killed between a refund and its recording. Real worker, real sandbox PSP, PostgreSQL."""

import uuid
from decimal import Decimal

import pytest
from django.urls import reverse

from apps.orders.models import OrderSummary, StoredEvent
from apps.payments.models import Payment
from apps.payments.services import payments_reconcile_pending
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.orders.test_placement_saga import place, wait_for_outcome
from tests.support.celery_worker import wait_until
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ORDERS = "/api/v1/orders"


@pytest.fixture
def confirmed_order(start_celery_worker, saga_settings):
    worker = start_celery_worker(env=saga_settings)
    customer = bearer_client(UserFactory())
    order_id = place(customer, [(ProductFactory(price=Decimal("30.00"), stock__on_hand=5), 2)])
    assert wait_for_outcome(order_id).status == "confirmed"
    return {"id": order_id, "worker": worker, "customer": customer}


def summary(order_id: str) -> OrderSummary:
    return OrderSummary.objects.get(pk=order_id)


def order_event_types(order_id: str) -> list[str]:
    return list(
        StoredEvent.objects.filter(aggregate_id=order_id)
        .order_by("version")
        .values_list("event_type", flat=True)
    )


def wait_for_refunded_amount(order_id: str, amount: str, worker) -> OrderSummary:
    try:
        wait_until(
            lambda: summary(order_id).refunded_amount == Decimal(amount),
            timeout=30,
            what=f"order {order_id} to record {amount} refunded",
        )
    except AssertionError:
        raise AssertionError(worker.log_tail(60)) from None
    return summary(order_id)


def payment_of(order_id: str) -> Payment:
    return Payment.objects.get(order_id=order_id)


def test_a_staff_refund_in_the_admin_refunds_the_order_which_then_cannot_ship(
    confirmed_order, client
):
    order_id = confirmed_order["id"]
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = client.post(
        reverse("admin:payments_payment_changelist"),
        {"action": "refund_in_full", "_selected_action": [payment_of(order_id).pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "refunded 60.00 EUR" in response.content.decode()

    order = wait_for_refunded_amount(order_id, "60.00", confirmed_order["worker"])
    assert order.status == "refunded"
    assert order_event_types(order_id)[-1] == "OrderRefunded"

    manager = bearer_client(UserFactory(is_staff=True, is_superuser=True))
    shipped = manager.post(f"{ORDERS}/{order_id}/ship", {"tracking_number": "T-1"}, format="json")
    assert shipped.status_code == 409, shipped.content
    assert shipped["Content-Type"] == "application/problem+json"
    assert "refunded in full" in shipped.json()["detail"]


def test_a_partial_refund_through_the_api_shows_on_the_order_which_can_still_ship(
    confirmed_order,
):
    order_id = confirmed_order["id"]
    # A superuser: the transactional flush of earlier tests removed the staff groups.
    support = bearer_client(UserFactory(is_staff=True, is_superuser=True))
    response = support.post(
        f"/api/v1/payments/{payment_of(order_id).pk}/refunds",
        {"amount": "10.00", "reason": "scratched"},
        format="json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )
    assert response.status_code == 201, response.content

    order = wait_for_refunded_amount(order_id, "10.00", confirmed_order["worker"])
    assert order.status == "partially_refunded"
    assert order_event_types(order_id)[-1] == "OrderPartiallyRefunded"
    customer_view = confirmed_order["customer"].get(f"{ORDERS}/{order_id}").json()
    assert (customer_view["status"], customer_view["refunded_amount"]) == (
        "partially_refunded",
        "10.00",
    )
    shipped = support.post(f"{ORDERS}/{order_id}/ship", {"tracking_number": "T-2"}, format="json")
    assert shipped.status_code == 200, shipped.content
    assert summary(order_id).status == "shipped"


def test_a_refund_is_recorded_once_when_the_worker_dies_between_refund_and_recording(
    start_celery_worker, saga_settings
):
    # Sagas only: the cancellation's refund happens, its recording (an event) cannot.
    sagas_only = start_celery_worker(env=saga_settings, queues=["sagas"])
    customer = bearer_client(UserFactory())
    order_id = place(customer, [(ProductFactory(price=Decimal("12.50"), stock__on_hand=3), 1)])
    wait_until(lambda: summary(order_id).status == "confirmed", timeout=30, what="confirmed")
    assert customer.post(f"{ORDERS}/{order_id}/cancel", {}, format="json").status_code == 200

    wait_until(
        lambda: payment_of(order_id).status == "refunded", timeout=30, what="the refund itself"
    )
    sagas_only.kill()  # SIGKILL: the refund is done, the order has not heard of it
    assert summary(order_id).refunded_amount == Decimal("0.00")

    everything = start_celery_worker(env=saga_settings)
    order = wait_for_refunded_amount(order_id, "12.50", everything)
    assert order.status == "refunded"
    assert order_event_types(order_id).count("OrderRefunded") == 1
    assert (
        order_event_types(order_id).count("OrderRefunded")
        + order_event_types(order_id).count("OrderPartiallyRefunded")
        == 1
    )


def test_a_capture_the_provider_settles_after_the_saga_gave_up_is_refunded_on_the_order(
    start_celery_worker, saga_settings, settings, sandbox, webhook_receiver, api_client
):
    # Every charge attempt times out while the provider still processes the first: the
    # saga gives up at its deadline with the charge's outcome unknown.
    settings.ORDER_SAGA_TIMEOUT_SECONDS = 2.0
    slow = int(float(saga_settings["PAYMENT_READ_TIMEOUT_SECONDS"]) * 1000) + 300
    worker = start_celery_worker(env=saga_settings)
    sandbox.chaos(latency_ms=slow)
    customer = bearer_client(UserFactory())
    order_id = place(customer, [(ProductFactory(price=Decimal("7.00"), stock__on_hand=2), 1)])
    order = wait_for_outcome(order_id, timeout=40)
    assert (order.status, order.cancellation_reason) == ("cancelled", "payment_unavailable")
    sandbox.chaos(latency_ms=0)
    payment = payment_of(order_id)
    assert payment.status == "pending" and payment.void_requested_at is not None

    # The provider's webhook tells of the capture: payments refund it, the order hears both.
    delivery = next(
        d
        for d in webhook_receiver.wait_for(
            lambda d: (
                b'"charge.succeeded"' in d.body and payment.idempotency_key.encode() in d.body
            ),
            timeout=15,
        )
    )
    response = api_client.post(
        "/api/v1/payments/webhooks/sandbox",
        data=delivery.body,
        content_type="application/json",
        HTTP_SANDBOX_SIGNATURE=delivery.headers["Sandbox-Signature"],
    )
    assert response.status_code == 200, response.content

    def refunded_by_reconciliation():
        # The provider's breaker may still be cooling down from the timeouts: the refund
        # is then deferred to reconciliation, which beat runs every minute.
        payments_reconcile_pending(older_than_seconds=0)
        return payment_of(order_id).status == "refunded"

    wait_until(refunded_by_reconciliation, timeout=30, interval=0.5, what="the late refund")

    order = wait_for_refunded_amount(order_id, "7.00", worker)
    assert order.status == "refunded"
    history = order_event_types(order_id)
    assert history.index("OrderCancelled") < history.index("PaymentCaptured")
    assert history.index("PaymentCaptured") < history.index("OrderRefunded")
    assert len(sandbox.charges_for(order_id)) == 1

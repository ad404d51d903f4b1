import importlib
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.urls import reverse

from apps.payments.models import Payment, PaymentEvent
from apps.payments.services import payment_charge_for_order
from apps.users.roles import ORDER_MANAGERS, SUPPORT
from tests.payments.conftest import new_order_id
from tests.payments.factories import PaymentFactory
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_the_changelist_shows_the_breaker_state_and_filters(admin_client):
    PaymentFactory(status=Payment.Status.FAILED)
    response = admin_client.get(reverse("admin:payments_payment_changelist"), {"status": "failed"})

    assert response.status_code == 200
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert "Payment provider circuit breaker: closed" in messages
    assert response.context["cl"].result_count == 1


def test_the_refund_action_refunds_through_the_service(admin_client, sandbox):
    result = payment_charge_for_order(
        order_id=new_order_id(), user_id=1, amount=Decimal("8.00"), currency="EUR", token="tok_visa"
    )
    refunds_at_provider = sandbox.state()["refunds"]

    response = admin_client.post(
        reverse("admin:payments_payment_changelist"),
        {"action": "refund_in_full", "_selected_action": [result.payment_id]},
        follow=True,
    )

    assert response.status_code == 200
    payment = Payment.objects.get(pk=result.payment_id)
    assert (payment.status, payment.amount_refunded) == ("refunded", Decimal("8.00"))
    assert sandbox.state()["refunds"] == refunds_at_provider + 1


def test_the_event_log_is_read_only(admin_client):
    payment = PaymentFactory()
    event = PaymentEvent.objects.create(payment=payment, kind="payment.created", source="api")
    url = reverse("admin:payments_paymentevent_change", args=[event.pk])

    admin_client.post(url, {"kind": "tampered", "source": "api", "data": "{}"})

    event.refresh_from_db()
    assert event.kind == "payment.created"
    assert admin_client.get(reverse("admin:payments_paymentevent_add")).status_code == 403


def test_support_and_order_managers_may_view_payments():
    # Replays the data migration (a transactional test may have flushed its rows).
    migration = importlib.import_module("apps.payments.migrations.0002_role_permissions")
    state = MigrationLoader(connection).project_state(("payments", "0002_role_permissions"))
    migration.grant_view_permissions(state.apps, schema_editor=None)

    for role in (ORDER_MANAGERS, SUPPORT):
        codenames = set(Group.objects.get(name=role).permissions.values_list("codename", flat=True))
        assert {"view_payment", "view_refund", "view_paymentevent"} <= codenames


def test_refunding_several_payments_tells_in_one_message_what_was_refused(admin_client, sandbox):
    captured = payment_charge_for_order(
        order_id=new_order_id(), user_id=1, amount=Decimal("8.00"), currency="EUR", token="tok_visa"
    )
    failed = PaymentFactory(status=Payment.Status.FAILED)

    response = admin_client.post(
        reverse("admin:payments_payment_changelist"),
        {"action": "refund_in_full", "_selected_action": [captured.payment_id, failed.pk]},
        follow=True,
    )

    [message] = [m for m in get_messages(response.wsgi_request) if "refund" in str(m)]
    assert message.level_tag == "error"
    assert str(message) == (
        f"Payment {captured.payment_id}: refunded 8.00 EUR; "
        f"not refunded: payment {failed.pk} (A failed payment cannot be refunded.)."
    )
    assert Payment.objects.get(pk=captured.payment_id).status == "refunded"

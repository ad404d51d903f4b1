"""The provider's webhook POST is handled without DRF's request handling
(apps.core.http.api.plain_requests) and answered exactly as DRF's view answers it."""

import json
import re
import time
import uuid

import pytest
from django.conf import settings
from rest_framework.views import APIView

from apps.payments.models import Payment, PaymentEvent
from apps.payments.sandbox.server import sign
from tests.payments.factories import PaymentFactory

pytestmark = pytest.mark.django_db

WEBHOOK = "/api/v1/payments/webhooks/sandbox"
# Another Accept that DRF negotiates to the same JSON renderer: DRF's view answers.
THROUGH_DRF = {"HTTP_ACCEPT": "application/json, */*"}
REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def charge_event(payment: Payment | None, event_id: str | None = None) -> dict:
    key = payment.idempotency_key if payment else f"pay_{uuid.uuid4().hex}"
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "type": "charge.succeeded",
        "created": int(time.time()),
        "data": {
            "id": f"ch_{uuid.uuid4().hex[:24]}",
            "object": "charge",
            "idempotency_key": key,
            "amount": "25.00",
            "currency": "EUR",
            "status": "succeeded",
            "decline_code": "",
            "decline_message": "",
        },
    }


def post(client, event: dict | bytes, *, signature: str | None = None, **extra):
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    if signature is None:
        timestamp = int(time.time())
        signature = f"t={timestamp},v1={sign(settings.PAYMENT_WEBHOOK_SECRET, timestamp, body)}"
    return client.post(
        WEBHOOK,
        data=body,
        content_type="application/json",
        HTTP_SANDBOX_SIGNATURE=signature,
        **extra,
    )


def answer(response) -> tuple:
    """Status, every header in order and the body, request ids masked."""
    headers = [(name, REQUEST_ID.sub("*", value)) for name, value in response.headers.items()]
    return response.status_code, headers, REQUEST_ID.sub("*", response.content.decode())


@pytest.fixture
def without_drf(monkeypatch):
    """DRF's request handling refuses every request: what still answers did without it."""

    def refused(self, request, *args, **kwargs):
        raise AssertionError("DRF handled the request")

    monkeypatch.setattr(APIView, "initial", refused)


def test_the_providers_webhook_is_handled_without_drf(api_client, without_drf):
    payment = PaymentFactory()
    event = charge_event(payment)

    response = post(api_client, event)

    assert (response.status_code, response.json()) == (200, {"status": "already-settled"})
    received = PaymentEvent.objects.get(payment=payment, kind="webhook.received")
    assert received.provider_event_id == event["id"]


@pytest.mark.parametrize(
    "extra",
    [{"HTTP_ACCEPT": "text/html"}, {"QUERY_STRING": "x=1"}, THROUGH_DRF],
    ids=["other Accept", "a query string", "Accept with a list"],
)
def test_other_posts_go_to_drf(api_client, without_drf, extra):
    with pytest.raises(AssertionError, match="DRF handled"):
        post(api_client, charge_event(PaymentFactory()), **extra)


def test_other_methods_go_to_drf(api_client, without_drf):
    with pytest.raises(AssertionError, match="DRF handled"):
        api_client.get(WEBHOOK)


def test_settled_already_settled_duplicate_and_ignored_are_drfs_answers_to_the_byte(api_client):
    settled = PaymentFactory()
    answers = {}
    for way, extra in (("plain", {}), ("drf", THROUGH_DRF)):
        pending = PaymentFactory(status=Payment.Status.PENDING, provider_charge_id="")
        event = charge_event(settled)
        answers[way] = [
            answer(post(api_client, charge_event(pending), **extra)),
            answer(post(api_client, event, **extra)),
            answer(post(api_client, event, **extra)),
            answer(post(api_client, charge_event(None), **extra)),
        ]
        pending.refresh_from_db()
        assert pending.status == Payment.Status.SUCCEEDED

    outcomes = [json.loads(body)["status"] for _, _, body in answers["plain"]]
    assert outcomes == ["settled", "already-settled", "duplicate", "ignored"]
    assert answers["plain"] == answers["drf"]


@pytest.mark.parametrize(
    "refused", ["signature", "no signature", "stale", "not an event", "malformed data"]
)
def test_a_refused_webhook_is_drfs_problem_to_the_byte(api_client, refused):
    payment = PaymentFactory(status=Payment.Status.PENDING, provider_charge_id="")
    event = charge_event(payment)
    body, signature = json.dumps(event).encode(), None
    if refused == "signature":
        signature = f"t={int(time.time())},v1={'0' * 64}"
    elif refused == "no signature":
        signature = ""
    elif refused == "stale":
        old = int(time.time()) - 3600
        signature = f"t={old},v1={sign(settings.PAYMENT_WEBHOOK_SECRET, old, body)}"
    elif refused == "not an event":
        body = b"[1, 2]"
    else:
        del event["data"]["amount"]
        body = json.dumps(event).encode()

    plain = post(api_client, body, signature=signature)
    through_drf = post(api_client, body, signature=signature, **THROUGH_DRF)

    assert plain.status_code == 400
    assert plain["Content-Type"] == "application/problem+json"
    assert plain.json()["type"] == "/problems/invalid-webhook"
    assert answer(plain) == answer(through_drf)
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert not PaymentEvent.objects.filter(payment=payment).exists()


def test_a_changed_webhook_secret_is_used_at_once(api_client, settings):
    event = charge_event(PaymentFactory())
    assert post(api_client, event).status_code == 200  # the provider is looked up and kept
    signed_before = json.dumps({**event, "id": f"evt_{uuid.uuid4().hex}"}).encode()
    timestamp = int(time.time())
    old_signature = (
        f"t={timestamp},v1={sign(settings.PAYMENT_WEBHOOK_SECRET, timestamp, signed_before)}"
    )

    settings.PAYMENT_WEBHOOK_SECRET = "a-rotated-secret"

    assert post(api_client, signed_before, signature=old_signature).status_code == 400
    assert post(api_client, signed_before).status_code == 200

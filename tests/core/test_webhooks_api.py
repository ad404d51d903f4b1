"""The staff API of webhook subscriptions: validation, secrets, the delivery log,
redelivery, and who may use it."""

import uuid

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.utils import timezone

from apps.core.messaging.inbox import EventEnvelope
from apps.core.messaging.webhooks.delivery import fan_out
from apps.core.messaging.webhooks.services import webhook_subscription_create
from apps.core.models import WebhookDelivery, WebhookSubscription
from tests.conftest import bearer_client
from tests.core.webhook_probes import WebhookProbeHappened  # noqa: F401 (registers the type)
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db
LIST = "/api/v1/webhooks/subscriptions"
PROBE = "WebhookProbeHappened"


@pytest.fixture
def integrator():
    """A staff member whose group holds the webhook permission (not a superuser)."""
    group = Group.objects.create(name="integrations")
    group.permissions.add(Permission.objects.get(codename="change_webhooksubscription"))
    user = UserFactory(is_staff=True)
    user.groups.add(group)
    return bearer_client(user)


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


def delivery_for(subscription: WebhookSubscription, *, status: str) -> WebhookDelivery:
    with transaction.atomic():
        fan_out(
            EventEnvelope(id=uuid.uuid4(), type=PROBE, payload={"n": 1}, created_at=timezone.now())
        )
    delivery = WebhookDelivery.objects.filter(subscription=subscription).latest("id")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=status)
    return delivery


def test_created_subscription_shows_its_generated_secret_once(integrator):
    response = integrator.post(
        LIST,
        {"target_url": "https://shop.example/hooks", "event_types": [PROBE], "description": "ERP"},
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert created["is_active"] is True and created["event_types"] == [PROBE]
    assert WebhookSubscription.objects.get(pk=created["id"]).secret == created["secret"]

    shown = integrator.get(f"{LIST}/{created['id']}").json()
    assert "secret" not in shown
    listed = integrator.get(LIST).json()
    assert [s["id"] for s in listed["results"]] == [created["id"]]
    assert all("secret" not in s for s in listed["results"])


def test_a_given_secret_is_kept(integrator):
    response = integrator.post(
        LIST,
        {"target_url": "https://shop.example/h", "event_types": [PROBE], "secret": "s" * 32},
        format="json",
    )
    assert response.json()["secret"] == "s" * 32


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target_url": "not a url", "event_types": [PROBE]}, "target_url"),
        ({"target_url": "ftp://shop.example/h", "event_types": [PROBE]}, "target_url"),
        ({"target_url": "https://user:pw@shop.example/h", "event_types": [PROBE]}, "target_url"),
        ({"target_url": "https://shop.example/h", "event_types": ["NoSuchEvent"]}, "event_types"),
        ({"target_url": "https://shop.example/h", "event_types": []}, "event_types"),
        ({"target_url": "https://shop.example/h", "event_types": [PROBE], "secret": "x"}, "secret"),
        ({"target_url": "https://shop.example/h", "event_types": [PROBE], "x": 1}, "x"),
    ],
)
def test_invalid_subscription_is_a_400_problem_naming_the_field(integrator, body, field):
    problem = assert_problem(integrator.post(LIST, body, format="json"), 400)
    assert field in problem["errors"]
    assert not WebhookSubscription.objects.exists()


def test_unknown_event_type_is_named_in_the_problem(integrator):
    body = {"target_url": "https://shop.example/h", "event_types": [PROBE, "NoSuchEvent"]}
    problem = assert_problem(integrator.post(LIST, body, format="json"), 400)
    assert problem["errors"]["event_types"] == ["Unknown event type: NoSuchEvent."]


def test_plain_http_is_refused_where_https_is_required(integrator, settings):
    settings.WEBHOOK_REQUIRE_HTTPS = True
    body = {"target_url": "http://shop.example/h", "event_types": [PROBE]}
    problem = assert_problem(integrator.post(LIST, body, format="json"), 400)
    assert problem["errors"]["target_url"] == ["Enter a valid https URL."]


def test_update_changes_fields_and_reenables_a_disabled_subscription(integrator):
    subscription = webhook_subscription_create(target_url="https://a.example/", event_types=[PROBE])
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        is_active=False,
        failing_since=timezone.now(),
        disabled_at=timezone.now(),
        disabled_reason="no delivery succeeded",
    )
    response = integrator.patch(
        f"{LIST}/{subscription.pk}",
        {"target_url": "https://b.example/", "is_active": True},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["target_url"] == "https://b.example/" and body["is_active"] is True
    assert body["failing_since"] is None and body["disabled_reason"] == ""
    problem = assert_problem(
        integrator.patch(f"{LIST}/{subscription.pk}", {"event_types": ["Nope"]}, format="json"),
        400,
    )
    assert "event_types" in problem["errors"]


def test_staff_disabling_stops_pending_deliveries(integrator):
    subscription = webhook_subscription_create(target_url="https://a.example/", event_types=[PROBE])
    pending = delivery_for(subscription, status="pending")
    body = integrator.patch(f"{LIST}/{subscription.pk}", {"is_active": False}, format="json").json()
    assert body["is_active"] is False and body["disabled_reason"] == "disabled by staff"
    pending.refresh_from_db()
    assert pending.status == "failed"


def test_delete_removes_the_subscription_and_its_log(integrator):
    subscription = webhook_subscription_create(target_url="https://a.example/", event_types=[PROBE])
    delivery_for(subscription, status="succeeded")
    assert integrator.delete(f"{LIST}/{subscription.pk}").status_code == 204
    assert not WebhookDelivery.objects.exists()
    problem = assert_problem(integrator.get(f"{LIST}/{subscription.pk}"), 404)
    assert problem["type"] == "/problems/webhook-subscription-not-found"


def test_delivery_log_lists_newest_first_and_filters_by_status(integrator):
    subscription = webhook_subscription_create(target_url="https://a.example/", event_types=[PROBE])
    failed = delivery_for(subscription, status="failed")
    succeeded = delivery_for(subscription, status="succeeded")
    url = f"{LIST}/{subscription.pk}/deliveries"

    listed = integrator.get(url).json()["results"]
    assert [d["id"] for d in listed] == [succeeded.pk, failed.pk]
    assert listed[0]["body"]["type"] == PROBE and listed[0]["body"]["payload"] == {"n": 1}
    assert [d["id"] for d in integrator.get(url, {"status": "failed"}).json()["results"]] == [
        failed.pk
    ]
    assert "status" in assert_problem(integrator.get(url, {"status": "lost"}), 400)["errors"]
    assert_problem(integrator.get(f"{LIST}/999999/deliveries"), 404)


def test_redeliver_makes_a_finished_delivery_pending_with_a_new_window(integrator):
    subscription = webhook_subscription_create(target_url="https://a.example/", event_types=[PROBE])
    failed = delivery_for(subscription, status="failed")
    WebhookDelivery.objects.filter(pk=failed.pk).update(retry_until=timezone.now())
    url = f"{LIST}/{subscription.pk}/deliveries/{failed.pk}/redeliver"

    response = integrator.post(url)

    assert response.status_code == 202, response.content
    failed.refresh_from_db()
    assert failed.status == "pending" and failed.retry_until > timezone.now()
    assert assert_problem(integrator.post(url), 409)["type"] == "/problems/invalid-state"


def test_redeliver_is_refused_while_the_subscription_is_disabled(integrator):
    subscription = webhook_subscription_create(target_url="https://a.example/", event_types=[PROBE])
    failed = delivery_for(subscription, status="failed")
    integrator.patch(f"{LIST}/{subscription.pk}", {"is_active": False}, format="json")
    url = f"{LIST}/{subscription.pk}/deliveries/{failed.pk}/redeliver"
    assert_problem(integrator.post(url), 409)
    assert_problem(integrator.post(f"{LIST}/{subscription.pk}/deliveries/999999/redeliver"), 404)


def test_event_types_lists_what_may_be_subscribed(integrator):
    types = {t["name"]: t for t in integrator.get("/api/v1/webhooks/event-types").json()}
    assert types[PROBE] == {
        "name": PROBE,
        "context": "tests",
        "version": 2,
        "fields": ["n", "note"],
        "description": "A probe a webhook subscriber subscribes to.",
    }


@pytest.mark.parametrize(
    ("caller", "status"),
    [
        ("anonymous", 401),
        ("customer", 403),
        ("staff without the permission", 403),
        ("superuser", 200),
    ],
)
def test_only_staff_with_the_webhook_permission_manage_subscriptions(api_client, caller, status):
    clients = {
        "anonymous": lambda: api_client,
        "customer": lambda: bearer_client(UserFactory()),
        "staff without the permission": lambda: bearer_client(UserFactory(is_staff=True)),
        "superuser": lambda: bearer_client(UserFactory(is_staff=True, is_superuser=True)),
    }
    client = clients[caller]()
    response = client.get(LIST)
    assert response.status_code == status
    body = {"target_url": "https://shop.example/h", "event_types": [PROBE]}
    created = client.post(LIST, body, format="json")
    assert created.status_code == (201 if status == 200 else status)
    if status != 200:
        assert created["Content-Type"] == "application/problem+json"
        assert not WebhookSubscription.objects.exists()


def test_the_webhook_api_is_in_the_openapi_schema(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    paths = schema["paths"]
    assert set(paths[LIST]) >= {"get", "post"}
    assert set(paths[LIST + "/{subscription_id}"]) >= {"get", "patch", "delete"}
    assert "get" in paths[LIST + "/{subscription_id}/deliveries"]
    assert "post" in paths[LIST + "/{subscription_id}/deliveries/{delivery_id}/redeliver"]
    created = paths[LIST]["post"]["responses"]["201"]["content"]["application/json"]["schema"]
    assert created == {"$ref": "#/components/schemas/WebhookSubscriptionCreated"}

"""Staff see the event pipeline in the admin and can send a message again."""

import pytest
from django.db import transaction

from apps.core.messaging.outbox import publish_event, relay_pending_messages
from apps.core.models import OutboxMessage
from tests.core.event_probes import PROBED

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
]
CHANGELIST = "/admin/core/outboxmessage/"


def test_staff_see_pending_messages_but_cannot_edit_them(admin_client):
    with transaction.atomic():
        publish_event(event_type=PROBED, payload={"n": 1})
    page = admin_client.get(CHANGELIST, {"pending": "yes"})
    assert page.status_code == 200
    assert PROBED in page.content.decode()
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    for path in ("/admin/core/inboxmessage/", "/admin/core/idempotencyrecord/"):
        assert admin_client.get(path).status_code == 200


def test_resend_action_makes_a_published_message_pending_again(admin_client):
    with transaction.atomic():
        event_id = publish_event(event_type=PROBED, payload={"n": 1})
    relay_pending_messages()
    response = admin_client.post(
        CHANGELIST,
        {"action": "resend", "index": 0, "_selected_action": [str(event_id)]},
        follow=True,
    )
    assert response.status_code == 200
    assert OutboxMessage.objects.get(pk=event_id).published_at is None
    assert relay_pending_messages() == 1


def test_staff_see_how_far_behind_each_consumer_is(admin_client):
    with transaction.atomic():
        publish_event(event_type=PROBED, payload={"n": 1})
    relay_pending_messages()  # sent to tests.echo, which has not handled it
    page = admin_client.get("/admin/core/inboxmessage/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Oldest unhandled event per consumer:" in text
    assert "tests.echo" in text

"""What staff see first (the admin index's figures, each linking to its list) and the
saga admin: retrying a finished saga says why nothing happened; secrets stay hidden."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.db import transaction
from django.utils import timezone
from pytest_django.asserts import assertInHTML

from apps.core import staff_admin
from apps.core.messaging.outbox import publish_event
from apps.core.models import OutboxMessage, SagaInstance
from apps.core.staff_admin import Figure
from apps.users.roles import ORDER_MANAGERS
from tests.catalog.factories import ProductFactory
from tests.core.event_probes import PROBED
from tests.orders.conftest import place_order, staff_member
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def saga(state: str, *, updated_ago: timedelta = timedelta(0), **context) -> SagaInstance:
    now = timezone.now()
    return SagaInstance.objects.create(
        saga_type="order_placement",
        state=state,
        context=context,
        deadline=now,
        updated_at=now - updated_ago,
    )


def figures(client) -> dict[str, tuple[str, str]]:
    """label -> (value, link) as the index shows them."""
    response = client.get("/admin/")
    assert response.status_code == 200
    return {f.label: (f.value, f.url) for f in response.context["figures"]}


def test_the_index_shows_how_the_shop_is_doing_each_figure_linking_to_its_list(
    superuser_client,
):
    lamp = ProductFactory(price=Decimal("20.00"), stock__on_hand=2)
    ProductFactory(stock__on_hand=50)
    place_order(UserFactory(), products=[lamp])
    place_order(UserFactory(), products=[lamp])
    saga("compensating")
    saga("compensated", updated_ago=timedelta(hours=2))
    saga("compensated", updated_ago=timedelta(hours=30))  # before the last 24 h
    with transaction.atomic():
        publish_event(event_type=PROBED, payload={"n": 1})
    pending_events = OutboxMessage.objects.filter(published_at__isnull=True).count()

    shown = figures(superuser_client)

    expected = {
        "Orders today": (r"2 \(40.00 EUR\)", 2),
        "Orders waiting in their placement saga": (r"2, the oldest for \d+ s", 2),
        "Sagas compensating now": ("1", 1),
        "Sagas that failed (compensated) in the last 24 h": ("1", 1),
        "Active products with 3 or fewer units available": ("1", 1),
        "Payment provider circuit breaker": ("closed", 0),
    }
    for label, (value, rows) in expected.items():
        shown_value, url = shown[label]
        assert re.fullmatch(value, shown_value), (label, shown_value)
        listing = superuser_client.get(url)
        assert listing.status_code == 200, url
        assert listing.context["cl"].result_count == rows, label
    outbox_value, outbox_url = shown["Outbox: events waiting for the relay"]
    assert pending_events and outbox_value.startswith(f"{pending_events}, the oldest for ")
    assert superuser_client.get(outbox_url).context["cl"].result_count == pending_events
    assert "Consumer lag (oldest unhandled event)" in shown
    page = superuser_client.get("/admin/").content.decode()
    assertInHTML('<a href="/admin/orders/ordersummary/?status__exact=pending">'
                 "Orders waiting in their placement saga</a>", page)  # fmt: skip


def test_retrying_a_finished_saga_says_why_nothing_happened(superuser_client):
    finished = saga("succeeded", order_id="o-1")
    response = superuser_client.post(
        "/admin/core/sagainstance/",
        {"action": "retry_now", "_selected_action": [str(finished.pk)]},
        follow=True,
    )
    [message] = get_messages(response.wsgi_request)
    assert message.level_tag == "error"
    assert str(message) == (
        f"0 saga(s) woken; not woken: {finished.pk} is succeeded: finished, nothing to retry."
    )
    finished.refresh_from_db()
    assert finished.state == "succeeded"


def test_the_saga_page_hides_the_payment_token(superuser_client):
    running = saga("running", order_id="o-2", payment_token="tok_secret_4242")
    page = superuser_client.get(f"/admin/core/sagainstance/{running.pk}/change/").content.decode()
    assert "o-2" in page
    assert "tok_secret_4242" not in page
    assert "(hidden)" in page


def test_staff_see_only_the_figures_whose_lists_they_may_open(client):
    client.force_login(staff_member(ORDER_MANAGERS))
    shown = figures(client)
    assert "Orders today" in shown
    assert "Sagas compensating now" not in shown
    assert "Active products with 3 or fewer units available" not in shown


def test_a_figure_whose_source_is_down_reads_unavailable_and_the_index_renders(
    superuser_client, monkeypatch
):
    def breaker_store_down() -> list[Figure]:
        """Payment provider circuit breaker"""
        raise ConnectionError("redis is down")

    monkeypatch.setattr(staff_admin, "_figures", [(0, breaker_store_down)])
    assert figures(superuser_client) == {
        "Payment provider circuit breaker": ("unavailable", ""),
    }

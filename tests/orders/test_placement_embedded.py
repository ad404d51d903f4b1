"""POST /orders in `make run`'s embedded mode (SQLite): the ORM path places the order,
replays its answer and refuses the key for another body, as the one statement does on
PostgreSQL."""

import pytest

from apps.core.models import IdempotencyRecord, OutboxMessage, SagaInstance
from apps.orders.models import OrderSummary, StoredEvent
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS
from tests.users.factories import UserFactory

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]

ORDERS = "/api/v1/orders"


def test_an_order_is_placed_replayed_and_its_key_kept_on_sqlite():
    client = bearer_client(UserFactory())
    product = ProductFactory()
    body = {
        "items": [{"product_id": product.pk, "quantity": 2}],
        "shipping_address": ADDRESS,
        "payment": {"token": "tok_visa"},
    }

    placed = client.post(ORDERS, body, format="json", HTTP_IDEMPOTENCY_KEY="k-embedded")
    replayed = client.post(ORDERS, body, format="json", HTTP_IDEMPOTENCY_KEY="k-embedded")
    other = {**body, "items": [{"product_id": product.pk, "quantity": 3}]}
    reused = client.post(ORDERS, other, format="json", HTTP_IDEMPOTENCY_KEY="k-embedded")

    assert placed.status_code == replayed.status_code == 202
    assert replayed.content == placed.content
    assert replayed["Idempotent-Replayed"] == "true"
    assert reused.status_code == 422
    order_id = placed.json()["id"]
    assert StoredEvent.objects.filter(aggregate_id=order_id).count() == 1
    assert OutboxMessage.objects.filter(aggregate_id=order_id).count() == 1
    assert OrderSummary.objects.get(pk=order_id).item_count == 2
    assert SagaInstance.objects.filter(pk=order_id).exists()
    assert IdempotencyRecord.objects.get().state == IdempotencyRecord.State.COMPLETED

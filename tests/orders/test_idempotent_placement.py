"""The same Idempotency-Key sent concurrently places exactly one order."""

import threading

import pytest
from django.db import connection

from apps.orders.models import OrderSummary, StoredEvent
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.orders.test_orders_api import ORDERS, order_body
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

CONCURRENT_REQUESTS = 20


def test_twenty_concurrent_identical_requests_place_one_order():
    user = UserFactory()
    body = order_body([ProductFactory(), ProductFactory()])
    barrier = threading.Barrier(CONCURRENT_REQUESTS)
    responses = []
    lock = threading.Lock()

    def send() -> None:
        client = bearer_client(user)
        try:
            barrier.wait(timeout=10)
            response = client.post(ORDERS, body, format="json", HTTP_IDEMPOTENCY_KEY="same-key")
            with lock:
                responses.append(response)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(CONCURRENT_REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    statuses = sorted(r.status_code for r in responses)
    assert len(responses) == CONCURRENT_REQUESTS
    # Each request either got the order or was told the first one is still in flight.
    assert set(statuses) <= {202, 409}, statuses
    accepted = [r for r in responses if r.status_code == 202]
    assert accepted and len({r.content for r in accepted}) == 1
    assert OrderSummary.objects.count() == 1
    assert StoredEvent.objects.filter(event_type="OrderPlaced").count() == 1

"""POST /orders on PostgreSQL writes the order and its stored answer in one statement; the
ORM path (claim, transaction, store: what SQLite runs, and what answers every request the
one statement does not) must have the same effect: the same rows in the event store, the
outbox, the read model, the saga table and the idempotency records."""

import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from apps.core.http import idempotency
from apps.core.models import IdempotencyRecord, OutboxMessage, SagaInstance
from apps.core.workflows.sagas import DRAIN_KICK_PENDING_KEY
from apps.orders.models import OrderSummary, StoredEvent
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS
from tests.support.celery_worker import queued_messages
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ORDERS = "/api/v1/orders"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")


def body(products) -> dict:
    return {
        "items": [{"product_id": p.pk, "quantity": n} for n, p in enumerate(products, 1)],
        "shipping_address": {**ADDRESS, "region": "Westminster"},
        "payment": {"token": "tok_visa"},
    }


def rows_of(model: type[models.Model], order_id: str, variable: dict[str, str]) -> list[dict]:
    """Every column of the order's rows, with what differs per placement (ids, keys,
    request ids, times) replaced by placeholders."""
    filters = {
        StoredEvent: {"aggregate_id": order_id},
        OutboxMessage: {"aggregate_id": order_id},
        OrderSummary: {"pk": order_id},
        SagaInstance: {"pk": order_id},
        IdempotencyRecord: {"key__in": list(variable)},
    }[model]
    rows = []
    for row in model.objects.using("default").filter(**filters):
        values = {
            field.attname: getattr(row, field.attname)
            for field in model._meta.concrete_fields
            if not (field.primary_key and model in (StoredEvent, OutboxMessage, IdempotencyRecord))
        }
        text = json.dumps(values, cls=DjangoJSONEncoder, sort_keys=True)
        for value, placeholder in variable.items():
            text = text.replace(value, placeholder)
        rows.append(json.loads(TIMESTAMP.sub("{time}", text)))
    return rows


def place(client, key: str, products) -> tuple[str, dict[str, str]]:
    response = client.post(ORDERS, body(products), format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 202, response.content
    order_id = response.json()["id"]
    request_id = response["X-Request-ID"]
    return order_id, {order_id: "{order}", key: "{key}", request_id: "{request}"}


def test_the_one_statement_placement_writes_what_the_orm_path_writes(monkeypatch):
    customer = UserFactory()
    client = bearer_client(customer)
    products = [
        ProductFactory(price=Decimal("3.10")),
        ProductFactory(name="Cup «fine»", price=Decimal("5.00")),
    ]
    place(client, "k-first", products)  # the statement's SQL is compiled once, then reused
    one_statement_order, one_statement_variable = place(client, "k-one-statement", products)
    monkeypatch.setattr(idempotency, "one_statement_inserts", lambda using: False)
    orm_order, orm_variable = place(client, "k-orm", products)

    for model in (StoredEvent, OutboxMessage, OrderSummary, SagaInstance, IdempotencyRecord):
        written = rows_of(model, one_statement_order, one_statement_variable)
        assert len(written) == 1, model
        assert written == rows_of(model, orm_order, orm_variable), model.__name__

    for order_id in (one_statement_order, orm_order):
        event = StoredEvent.objects.get(aggregate_id=order_id)
        summary = OrderSummary.objects.get(pk=order_id)
        assert summary.placed_at == summary.updated_at == event.recorded_at
        saga = SagaInstance.objects.get(pk=order_id)
        timeout = timedelta(seconds=settings.ORDER_SAGA_TIMEOUT_SECONDS)
        assert saga.deadline - saga.created_at == timeout
        record = IdempotencyRecord.objects.get(
            user_id=customer.pk, response_body__contains=order_id
        )
        ttl = timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)
        assert record.expires_at - record.created_at == ttl
        assert json.loads(record.response_body) == client.get(f"{ORDERS}/{order_id}").json()


def test_a_key_in_flight_writes_nothing_and_answers_409():
    customer = UserFactory()
    client = bearer_client(customer)
    product = ProductFactory()
    first = client.post(ORDERS, body([product]), format="json", HTTP_IDEMPOTENCY_KEY="k-first")
    assert first.status_code == 202
    # A request with the key is running (it claimed the key the usual way).
    record = IdempotencyRecord.objects.get(user_id=customer.pk)
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        key="k-running", state=IdempotencyRecord.State.IN_FLIGHT, response_body=""
    )
    counts = [m.objects.count() for m in (StoredEvent, OutboxMessage, OrderSummary, SagaInstance)]

    response = client.post(ORDERS, body([product]), format="json", HTTP_IDEMPOTENCY_KEY="k-running")

    assert response.status_code == 409
    assert response.json()["type"] == "/problems/idempotency-key-in-flight"
    assert [
        m.objects.count() for m in (StoredEvent, OutboxMessage, OrderSummary, SagaInstance)
    ] == counts


def test_a_retry_that_outlived_its_record_gets_the_same_order():
    """The order's id comes from the key: with the record gone (expired, purged), the one
    statement fails on the event's version and the ORM path answers with the order."""
    customer = UserFactory()
    client = bearer_client(customer)
    product = ProductFactory()
    first = client.post(ORDERS, body([product]), format="json", HTTP_IDEMPOTENCY_KEY="k-old")
    IdempotencyRecord.objects.all().delete()

    again = client.post(ORDERS, body([product]), format="json", HTTP_IDEMPOTENCY_KEY="k-old")

    assert again.status_code == 202
    assert again.json() == first.json()
    assert StoredEvent.objects.count() == SagaInstance.objects.count() == 1
    assert IdempotencyRecord.objects.get().state == IdempotencyRecord.State.COMPLETED


def test_orders_placed_while_a_drain_kick_waits_send_no_more_messages():
    """The saga engine claims due sagas in batches: a POST sends a drain kick only when
    none is queued and not started yet, never a message of its own."""
    client = bearer_client(UserFactory())
    product = ProductFactory()
    caches["default"].delete(DRAIN_KICK_PENDING_KEY)  # no kick queued: the first POST sends one
    before = {queue: queued_messages(queue) for queue in ("sagas", "events", "default")}

    for n in range(5):
        response = client.post(
            ORDERS, body([product]), format="json", HTTP_IDEMPOTENCY_KEY=f"k-{n}"
        )
        assert response.status_code == 202

    after = {queue: queued_messages(queue) for queue in before}
    assert after["sagas"] == before["sagas"] + 1
    assert after["default"] == before["default"]
    # An event with consumers kicks the relay the same way: at most once.
    assert after["events"] - before["events"] <= 1

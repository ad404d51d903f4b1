"""Customer e-mail is an inbox consumer of the order's events: one message per event,
with the order's lines and total, a Message-ID derived from the event id, and the
reason for a cancellation in words."""

from decimal import Decimal

import pytest
from django.core import mail

from apps.core.messaging.inbox import EventEnvelope, consume_event
from apps.core.messaging.outbox import relay_batch
from apps.core.models import OutboxMessage
from apps.orders import services
from apps.orders.handlers import email_customers
from tests.catalog.factories import ProductFactory
from tests.orders.conftest import confirm, place_order
from tests.support.outbox import published
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db

CONSUMER = "orders.email_customer"


def envelope(message) -> EventEnvelope:
    return EventEnvelope(
        id=message.id, type=message.event_type, payload=message.payload, headers=message.headers
    )


def test_a_confirmed_order_gets_one_mail_with_its_lines_and_total_however_often_relayed():
    customer = UserFactory(email="ada@example.com", full_name="Ada")
    kettle = ProductFactory(name="Copper kettle", sku="KET-1", price=Decimal("24.50"))
    order_id = str(place_order(customer, products=[kettle], quantity=2).pk)
    confirm(order_id)
    (confirmed,) = published("OrderConfirmed", order_id=order_id)

    assert consume_event(envelope(confirmed), consumer=CONSUMER) is True
    assert consume_event(envelope(confirmed), consumer=CONSUMER) is False  # relayed again

    (message,) = mail.outbox
    assert message.to == ["ada@example.com"]
    assert message.extra_headers["Message-ID"] == f"<{confirmed.id}@mercato.example>"
    assert order_id[:8].upper() in message.subject
    assert "2 x Copper kettle (KET-1)  49.00 EUR" in message.body
    assert "Total: 49.00 EUR" in message.body


def test_an_out_of_stock_cancellation_says_which_products_were_short():
    customer = UserFactory(email="bob@example.com")
    lamp = ProductFactory(name="Brass lamp")
    order_id = str(place_order(customer, products=[lamp], quantity=3).pk)
    services.order_cancel(
        order_id=order_id,
        reason="out_of_stock",
        details={"products": [{"product_id": lamp.pk, "available": 1}]},
    )
    (cancelled,) = published("OrderCancelled", order_id=order_id)

    consume_event(envelope(cancelled), consumer=CONSUMER)

    (message,) = mail.outbox
    assert "was cancelled" in message.subject
    assert "Some of the products were out of stock." in message.body
    assert "- Brass lamp: 1 available" in message.body


def test_a_deactivated_customer_gets_no_mail():
    customer = UserFactory()
    order_id = str(place_order(customer).pk)
    confirm(order_id)
    customer.is_active = False
    customer.save()
    (confirmed,) = published("OrderConfirmed", order_id=order_id)
    assert consume_event(envelope(confirmed), consumer=CONSUMER) is True
    assert mail.outbox == []


def confirmed_orders(customers) -> list[OutboxMessage]:
    events = []
    for customer in customers:
        order_id = str(place_order(customer).pk)
        confirm(order_id)
        events += published("OrderConfirmed", order_id=order_id)
    return events


def test_a_batch_reads_its_orders_and_customers_once_and_sends_one_mail_per_event(
    django_assert_num_queries,
):
    ada, bob = UserFactory(email="ada@example.com"), UserFactory(email="bob@example.com")
    events = confirmed_orders([ada, bob, ada])

    envelopes = [envelope(e) for e in events]
    with django_assert_num_queries(2), email_customers(envelopes) as handle:
        for event in envelopes:
            handle(event)

    recipients = [m.to for m in mail.outbox]
    assert recipients == [["ada@example.com"], ["bob@example.com"], ["ada@example.com"]]
    assert [m.extra_headers["Message-ID"] for m in mail.outbox] == [
        f"<{e.id}@mercato.example>" for e in events
    ]
    assert [m.body for m in mail.outbox] == [body_sent_alone(e) for e in events]


def body_sent_alone(event: OutboxMessage) -> str:
    """The body of the mail for `event` when a task handles it on its own."""
    before = len(mail.outbox)
    assert consume_event(envelope(event), consumer=CONSUMER) is True
    return mail.outbox.pop(before).body


def test_the_relay_mails_the_orders_of_its_claim_once_however_often_relayed():
    events = confirmed_orders([UserFactory(), UserFactory()])

    assert set(relay_batch(limit=100)) >= {e.id for e in events}
    OutboxMessage.objects.filter(pk__in=[e.id for e in events]).update(published_at=None)
    assert relay_batch(limit=100) == [e.id for e in events]

    assert sorted(m.extra_headers["Message-ID"] for m in mail.outbox) == sorted(
        f"<{e.id}@mercato.example>" for e in events
    )

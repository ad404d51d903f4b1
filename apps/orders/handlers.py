"""The orders context's reactions to events (each idempotent through the inbox).

- Money: the payments context's `PaymentCaptured` and `PaymentRefunded` are recorded on
  the order whatever moved the money (the placement saga, a cancellation, staff, the
  API, a provider webhook, reconciliation). Recording is idempotent per payment and
  per refund id as well, so a fact that arrives twice, or in another order, counts once.
- Customer e-mail: one message per confirmed, cancelled, shipped and refunded order,
  with a Message-ID derived from the event id (apps.orders.emails). Handled in the
  relay (a few milliseconds a message), a claim's events as one batch.
"""

import contextlib
from collections.abc import Iterator
from decimal import Decimal

import structlog

from apps.core.errors import NotFound
from apps.core.messaging.inbox import EventEnvelope, Handler, event_handler
from apps.core.messaging.provenance import Provenance
from apps.orders import emails, services

logger = structlog.get_logger(__name__)


# The placement saga runs this one in the transaction that settles its own charge.
RECORD_PAYMENT_CAPTURED = "orders.record_payment_captured"


@event_handler("PaymentCaptured", consumer=RECORD_PAYMENT_CAPTURED)
def record_payment_captured(event: EventEnvelope) -> None:
    data = event.payload
    try:
        services.order_record_payment_captured(
            order_id=data["order_id"],
            payment_id=data["payment_id"],
            amount=Decimal(data["amount"]),
            provenance=Provenance.of_event(event),
        )
    except NotFound:
        logger.warning("payment_of_unknown_order", order_id=data["order_id"])


@event_handler("PaymentRefunded", consumer="orders.record_refund")
def record_refund(event: EventEnvelope) -> None:
    data = event.payload
    try:
        services.order_record_refund(
            order_id=data["order_id"],
            payment_id=data["payment_id"],
            refund_id=data["refund_id"],
            amount=Decimal(data["amount"]),
            captured=Decimal(data["payment_amount"]),
            provenance=Provenance.of_event(event),
        )
    except NotFound:
        logger.warning("refund_of_unknown_order", order_id=data["order_id"])


EMAIL_CUSTOMER = "orders.email_customer"


@contextlib.contextmanager
def email_customers(events: list[EventEnvelope]) -> Iterator[Handler]:
    """In the relay: the batch's orders and customers read once, one backend connection."""
    with emails.order_email_batch(order_ids=[e.payload["order_id"] for e in events]) as batch:
        yield lambda event: email_customer(event, batch=batch)


@event_handler("OrderConfirmed", consumer=EMAIL_CUSTOMER, in_relay=True, batch=email_customers)
@event_handler("OrderCancelled", consumer=EMAIL_CUSTOMER, in_relay=True, batch=email_customers)
@event_handler("OrderShipped", consumer=EMAIL_CUSTOMER, in_relay=True, batch=email_customers)
@event_handler("OrderRefunded", consumer=EMAIL_CUSTOMER, in_relay=True, batch=email_customers)
@event_handler(
    "OrderPartiallyRefunded", consumer=EMAIL_CUSTOMER, in_relay=True, batch=email_customers
)
def email_customer(event: EventEnvelope, batch: emails.OrderEmailBatch | None = None) -> None:
    if batch is None:
        emails.order_email_send(event_id=event.id, event_type=event.type, data=event.payload)
    else:
        batch.send(event_id=event.id, event_type=event.type, data=event.payload)

"""Customer e-mail about an order: confirmed, cancelled, shipped, refunded.

Sent by the `orders.email_customer` event consumer through Django's e-mail backend
(files under var/mail for `make run` and tests, SMTP in production). Each message's
Message-ID is derived from the event id: the inbox sends one message per event, and a
receiver can drop the rare resend after a crash between sending and committing.

The relay hands the consumer a batch of events at once (`order_email_batch`): their
orders and customers are read in one query each, and the messages go through one
connection to the backend, each sent on its own (one that fails does not resend the
others).
"""

import contextlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID

import structlog
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.template.backends.django import Template
from django.template.loader import get_template

from apps.orders import selectors
from apps.orders.models import OrderSummary
from apps.users import selectors as users_selectors

logger = structlog.get_logger(__name__)

# event type -> (template, subject)
MESSAGES = {
    "OrderConfirmed": ("order_confirmed", "Your order {ref} is confirmed"),
    "OrderCancelled": ("order_cancelled", "Your order {ref} was cancelled"),
    "OrderShipped": ("order_shipped", "Your order {ref} is on its way"),
    "OrderRefunded": ("order_refunded", "Your order {ref} was refunded"),
    "OrderPartiallyRefunded": ("order_refunded", "Part of your order {ref} was refunded"),
}
CANCELLATION_REASONS = {
    "customer_request": "You cancelled the order.",
    "staff_request": "Our staff cancelled the order.",
    "out_of_stock": "Some of the products were out of stock.",
    "payment_declined": "The payment was declined.",
    "payment_unavailable": "We could not reach the payment provider in time.",
    "reservation_expired": "The products could not be held long enough to complete it.",
    "timed_out": "It could not be completed in time.",
}


def message_id(event_id: UUID) -> str:
    return f"<{event_id}@{settings.EMAIL_MESSAGE_ID_DOMAIN}>"


def order_email_send(*, event_id: UUID, event_type: str, data: dict[str, Any]) -> bool:
    """Send the customer the message for this order event; False if there is nobody to
    send it to (the account was deactivated)."""
    with order_email_batch(order_ids=[data["order_id"]]) as batch:
        return batch.send(event_id=event_id, event_type=event_type, data=data)


@contextlib.contextmanager
def order_email_batch(*, order_ids: list[str]) -> Iterator["OrderEmailBatch"]:
    """Messages about these orders: read together, sent through one backend connection,
    closed at the end."""
    batch = OrderEmailBatch(order_ids=order_ids, connection=get_connection())
    try:
        yield batch
    finally:
        batch.close()


class OrderEmailBatch:
    def __init__(self, *, order_ids: list[str], connection: BaseEmailBackend) -> None:
        self._summaries = selectors.order_summaries(order_ids=list(dict.fromkeys(order_ids)))
        self._user_ids = {summary.user_id for summary in self._summaries.values()}
        self._contacts = users_selectors.user_contacts(user_ids=sorted(self._user_ids))
        self._templates: dict[str, Template] = {}
        self._connection = connection
        self._opened = False

    def send(self, *, event_id: UUID, event_type: str, data: dict[str, Any]) -> bool:
        """`order_email_send` for an event of the batch's orders."""
        template, subject = MESSAGES[event_type]
        summary = self._summary(data["order_id"])
        contact = self._contact(summary.user_id)
        if contact is None:
            logger.info("order_email_no_recipient", order_id=data["order_id"])
            return False
        email, full_name = contact
        reference = str(summary.id)[:8].upper()
        context = {
            "name": full_name or email,
            "reference": reference,
            "order": summary,
            "currency": summary.currency,
            "event": data,
            "refund_amount": Decimal(data["amount"]) if "amount" in data else None,
            "cancellation": _cancellation_in_words(data, summary.items),
        }
        message = EmailMessage(
            subject=subject.format(ref=reference),
            body=self._template(template).render(context),
            to=[email],
            headers={"Message-ID": message_id(event_id)},
        )
        # Opened once for the batch (send_messages would open and close it per message).
        self._opened = self._connection.open() or self._opened
        self._connection.send_messages([message])
        return True

    def close(self) -> None:
        """Close the backend connection; a failure to is logged, not raised: every message
        sent was accepted already."""
        if not self._opened:
            return
        try:
            self._connection.close()
        except Exception:
            logger.warning("order_email_connection_close_failed", exc_info=True)

    def _summary(self, order_id: str) -> OrderSummary:
        summary = self._summaries.get(order_id)
        # Not projected yet: folded from the event store (or NotFound).
        return summary if summary is not None else selectors.order_summary(order_id=order_id)

    def _contact(self, user_id: int) -> tuple[str, str] | None:
        if user_id in self._user_ids:
            return self._contacts.get(user_id)
        return users_selectors.user_contact(user_id=user_id)

    def _template(self, name: str) -> Template:
        if name not in self._templates:
            self._templates[name] = get_template(f"emails/orders/{name}.txt")
        return self._templates[name]


def _cancellation_in_words(data: dict[str, Any], items: list[dict[str, Any]]) -> list[str]:
    if "reason" not in data:
        return []
    reason = data["reason"]
    lines = [CANCELLATION_REASONS.get(reason, f"Reason: {reason.replace('_', ' ')}.")]
    if data.get("note"):
        lines.append(f"Note: {data['note']}")
    names = {item["product_id"]: item["name"] for item in items}
    for short in data.get("details", {}).get("products", []):
        name = names.get(short["product_id"], f"product {short['product_id']}")
        if "available" in short:
            lines.append(f"- {name}: {short['available']} available")
        else:
            lines.append(f"- {name}: no longer for sale")
    return lines

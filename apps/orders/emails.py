"""Customer e-mail about an order: confirmed, cancelled, shipped, refunded.

Sent by the `orders.email_customer` event consumer through Django's e-mail backend
(files under var/mail for `make run` and tests, SMTP in production). Each message's
Message-ID is derived from the event id: the inbox sends one message per event, and a
receiver can drop the rare resend after a crash between sending and committing.
"""

from decimal import Decimal
from typing import Any
from uuid import UUID

import structlog
from django.conf import settings
from django.core.mail import EmailMessage
from django.template.loader import render_to_string

from apps.orders import selectors
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
    template, subject = MESSAGES[event_type]
    summary = selectors.order_summary(order_id=data["order_id"])
    contact = users_selectors.user_contact(user_id=summary.user_id)
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
        body=render_to_string(f"emails/orders/{template}.txt", context),
        to=[email],
        headers={"Message-ID": message_id(event_id)},
    )
    message.send()
    logger.info("order_email_sent", order_id=data["order_id"], event_type=event_type)
    return True


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

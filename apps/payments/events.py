"""Events of the payments context: its published contract (see docs/events.md).

Published in the transaction that settles the payment or refund, whatever settled it
(the provider's answer to a saga, a staff action, the API, a provider webhook or
reconciliation). Amounts are decimal strings with their currency; ids are strings.
"""

from dataclasses import dataclass

from apps.core.messaging.event_registry import published_event

CONTEXT = "payments"


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class PaymentCaptured:
    """The provider captured the charge for an order."""

    payment_id: str
    order_id: str
    user_id: int
    amount: str
    currency: str
    provider_charge_id: str


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class PaymentFailed:
    """The charge for an order failed: declined, or never reached the provider."""

    payment_id: str
    order_id: str
    user_id: int
    amount: str
    currency: str
    failure_code: str
    failure_message: str


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class PaymentRefunded:
    """Money went back to the customer: `amount` by this refund, `amount_refunded` in all;
    `full` when nothing of the payment is left to refund."""

    payment_id: str
    order_id: str
    user_id: int
    refund_id: str
    amount: str
    currency: str
    amount_refunded: str
    payment_amount: str
    full: bool
    reason: str


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class RefundFailed:
    """The provider refused a refund, or never got it; nothing was paid back."""

    payment_id: str
    order_id: str
    refund_id: str
    amount: str
    currency: str
    failure_code: str


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class PaymentVoided:
    """An order was given up while its charge's outcome was unknown: whatever the provider
    reports later is refunded in full."""

    payment_id: str
    order_id: str
    reason: str

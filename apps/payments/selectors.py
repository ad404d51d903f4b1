"""Payments context queries; the API's list and detail may be served by a replica."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Prefetch, Q, QuerySet, Sum

from apps.core.data.routing import replica_safe
from apps.core.errors import NotFound
from apps.payments.gateway import get_provider
from apps.payments.models import Payment, Refund


@replica_safe
def payment_list(*, user_id: int | None, order_id: str | None = None) -> QuerySet[Payment]:
    """Payments of one user (`user_id`), or of everyone when `user_id` is None (staff)."""
    payments = Payment.objects.prefetch_related(
        Prefetch("refunds", queryset=Refund.objects.order_by("id"))
    )
    if user_id is not None:
        payments = payments.filter(user_id=user_id)
    if order_id is not None:
        payments = payments.filter(order_id=order_id)
    return payments


@replica_safe
def payment_get(*, payment_id: int, user_id: int | None) -> Payment:
    try:
        return payment_list(user_id=user_id).get(pk=payment_id)
    except Payment.DoesNotExist as exc:
        raise NotFound("No such payment.") from exc


def provider_breaker_state() -> str:
    """The provider circuit breaker's state as every process sees it (closed, open,
    half-open)."""
    return get_provider().breaker_state()


def provider_readiness() -> str:
    """Raise when order confirmation cannot reach the provider now: its breaker is open,
    or it does not answer a health request."""
    provider = get_provider()
    if provider.rejects_calls():
        raise RuntimeError(f"circuit breaker {provider.breaker_state()}")
    provider.probe()
    return f"breaker {provider.breaker_state()}"


# --- Integrity --------------------------------------------------------------------------

CAPTURED_STATUSES = (
    Payment.Status.SUCCEEDED,
    Payment.Status.PARTIALLY_REFUNDED,
    Payment.Status.REFUNDED,
)


@dataclass(frozen=True)
class CapturedPayment:
    payment_id: int
    order_id: str
    amount: Decimal
    currency: str


def captured_payments_by_order(*, order_ids: list[str]) -> dict[str, list[CapturedPayment]]:
    """The charges that succeeded (refunded later or not) for each of the given orders."""
    found: dict[str, list[CapturedPayment]] = {}
    rows = Payment.objects.filter(order_id__in=order_ids, status__in=CAPTURED_STATUSES)
    for pk, order_id, amount, currency in rows.values_list("pk", "order_id", "amount", "currency"):
        found.setdefault(order_id, []).append(CapturedPayment(pk, order_id, amount, currency))
    return found


def refund_overrun_report() -> list[str]:
    """Payments whose succeeded refunds exceed the charge, or disagree with the payment's
    refunded amount, one readable line each (empty when none)."""
    rows = Payment.objects.annotate(
        refunded=Sum("refunds__amount", filter=Q(refunds__status=Refund.Status.SUCCEEDED))
    ).values_list("pk", "order_id", "amount", "amount_refunded", "refunded")
    problems = []
    for pk, order_id, amount, amount_refunded, refunded in rows:
        refunded = refunded or Decimal("0")
        if refunded > amount:
            problems.append(
                f"payment {pk} (order {order_id}): refunds {refunded} exceed the charge {amount}"
            )
        if refunded != amount_refunded:
            problems.append(
                f"payment {pk} (order {order_id}): succeeded refunds total {refunded} but "
                f"amount_refunded is {amount_refunded}"
            )
    return problems


def refunded_amounts_by_order(*, changed_before: datetime) -> dict[str, Decimal]:
    """Order id -> amount refunded of its payment, for payments refunded at least in part
    and last changed before `changed_before` (later ones may still be on their way)."""
    return dict(
        Payment.objects.filter(amount_refunded__gt=0, updated_at__lt=changed_before).values_list(
            "order_id", "amount_refunded"
        )
    )

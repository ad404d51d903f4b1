"""Payments context queries (routed to a replica where the router allows)."""

from django.db.models import Prefetch, QuerySet

from apps.core.errors import NotFound
from apps.payments.gateway import get_provider
from apps.payments.models import Payment, Refund


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


def payment_get(*, payment_id: int, user_id: int | None) -> Payment:
    try:
        return payment_list(user_id=user_id).get(pk=payment_id)
    except Payment.DoesNotExist as exc:
        raise NotFound("No such payment.") from exc


def provider_breaker_state() -> str:
    """The provider circuit breaker's state as every process sees it (closed, open,
    half-open)."""
    return get_provider().breaker_state()

"""Payments context commands: charges, refunds, provider webhooks and reconciliation.

Provider calls happen outside database transactions: a payment or refund row is first
committed as pending (with the idempotency key sent to the provider), then settled under
a row lock. Whoever settles first (the synchronous response, a webhook, the
reconciliation task) wins; the others find it settled and change nothing.
"""

import json
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from django.conf import settings
from django.db import IntegrityError, router, transaction
from django.db.models import Sum
from django.utils import timezone

from apps.core.data.atomic_inserts import one_statement_inserts
from apps.core.data.prepared import prepared_cursor
from apps.core.errors import Conflict, InvalidState, NotFound, ValidationFailed
from apps.core.messaging.outbox import publish
from apps.payments import events
from apps.payments.errors import (
    InvalidWebhook,
    PaymentDeclined,
    PaymentProviderUnavailable,
    RefundExceedsCaptured,
)
from apps.payments.gateway import (
    PaymentProvider,
    ProviderCharge,
    ProviderRefund,
    ProviderRejected,
    ProviderUnavailable,
    WebhookVerificationFailed,
    get_provider,
    webhook_provider,
)
from apps.payments.models import Payment, PaymentEvent, Refund

logger = structlog.get_logger(__name__)

MAX_AMOUNT = Decimal("9999999999.99")
# The failure code of a charge or refund the provider says it never received.
NOT_SUBMITTED = "not_submitted"


@dataclass(frozen=True)
class PaymentResult:
    payment_id: int
    status: str
    amount: Decimal
    currency: str
    provider_charge_id: str
    failure_code: str


@dataclass(frozen=True)
class RefundResult:
    refund_id: int
    payment_id: int
    status: str
    amount: Decimal
    currency: str
    provider_refund_id: str
    payment_status: str
    amount_refunded: Decimal


# -- charges -----------------------------------------------------------------------------


def payment_charge_for_order(
    *, order_id: str, user_id: int, amount: Decimal, currency: str, token: str
) -> PaymentResult:
    """Charge the order once. A second call returns the first payment's outcome (a decline
    raises PaymentDeclined again); a payment left pending is resumed with its key.
    While the provider's circuit is open every call raises PaymentProviderUnavailable."""
    _validate_charge(order_id=order_id, amount=amount, currency=currency, token=token)
    provider = get_provider()
    if provider.rejects_calls():
        # Open circuit: fail fast (one Redis read), touch neither the provider nor the
        # database. The error is transient; a retry after the cool-down gets the outcome.
        raise PaymentProviderUnavailable("The payment provider is unavailable; retry later.")
    payment = _payment_of_order(
        order_id=order_id, user_id=user_id, amount=amount, currency=currency, provider=provider
    )
    if payment.amount != amount or payment.currency != currency:
        raise Conflict(
            f"Order {order_id} was already charged {payment.amount} {payment.currency}.",
            extra={"payment_id": payment.pk},
        )
    if payment.status == Payment.Status.PENDING:
        try:
            charge = provider.charge(
                idempotency_key=payment.idempotency_key,
                amount=payment.amount,
                currency=payment.currency,
                token=token,
                reference=order_id,
            )
        except ProviderUnavailable as exc:
            logger.warning("payment_provider_unavailable", payment_id=payment.pk, error=str(exc))
            raise PaymentProviderUnavailable(
                "The payment provider is unavailable; retry later."
            ) from exc
        except ProviderRejected as exc:
            payment, _ = _settle_charge(
                payment_id=payment.pk, failure=(exc.code, str(exc)), source="provider-response"
            )
        else:
            payment, _ = _settle_charge(
                payment_id=payment.pk, charge=charge, source="provider-response"
            )
    return _payment_result(payment)


def payment_void_for_order(*, order_id: str, reason: str) -> RefundResult | None:
    """Undo whatever was charged for the order (a saga's compensation). Idempotent.

    Nothing charged or a failed charge: None. A pending charge (its outcome unknown, the
    classic timed-out-but-charged case) is first settled from the provider by its key.
    A captured one is refunded in full, once (the refund is keyed per payment).
    """
    payment = Payment.objects.filter(order_id=order_id).first()
    if payment is None:
        return None
    if payment.status == Payment.Status.PENDING:
        try:
            charge = get_provider().find_charge(idempotency_key=payment.idempotency_key)
        except ProviderUnavailable:
            # The outcome is unknowable now; the order need not wait for it. Whoever
            # learns it (reconciliation, a webhook) refunds a capture (_void_if_requested).
            _request_void(payment, reason=reason)
            return None
        failure = None if charge else (NOT_SUBMITTED, "The provider never got this charge.")
        payment, _ = _settle_charge(
            payment_id=payment.pk, charge=charge, failure=failure, source="compensation"
        )
    if payment.status in (Payment.Status.FAILED, Payment.Status.REFUNDED):
        return None
    return payment_refund(payment_id=payment.pk, reason=reason)


def _request_void(payment: Payment, *, reason: str) -> None:
    with transaction.atomic():
        updated = Payment.objects.filter(pk=payment.pk, void_requested_at__isnull=True).update(
            void_requested_at=timezone.now()
        )
        if updated:
            _log(payment, "payment.void_requested", "compensation", {"reason": reason})
            publish(
                events.PaymentVoided(
                    payment_id=str(payment.pk), order_id=payment.order_id, reason=reason
                ),
                aggregate_type="payment",
                aggregate_id=str(payment.pk),
            )


def _void_if_requested(payment: Payment) -> bool:
    """Refund a charge whose order was given up before its outcome was known; False when
    there is nothing to refund or the provider is away (reconciliation tries again)."""
    if payment.void_requested_at is None or payment.status not in (
        Payment.Status.SUCCEEDED,
        Payment.Status.PARTIALLY_REFUNDED,
    ):
        return False
    try:
        payment_refund(payment_id=payment.pk, reason="order not placed (late capture)")
    except PaymentProviderUnavailable:
        logger.warning("late_capture_refund_deferred", payment_id=payment.pk)
        return False
    return True


def _validate_charge(*, order_id: str, amount: Decimal, currency: str, token: str) -> None:
    errors: dict[str, list[str]] = {}
    if not order_id or len(order_id) > 64:
        errors["order_id"] = ["Give an order id of 1 to 64 characters."]
    if not _valid_amount(amount):
        errors["amount"] = ["Give a positive decimal amount with at most 2 decimal places."]
    if currency not in settings.SUPPORTED_CURRENCIES:
        errors["currency"] = [f"Use one of {', '.join(settings.SUPPORTED_CURRENCIES)}."]
    if not token:
        errors["token"] = ["A card token is required."]
    if errors:
        raise ValidationFailed(errors)


def _valid_amount(amount: object) -> bool:
    return (
        isinstance(amount, Decimal)
        and amount.is_finite()
        and Decimal("0") < amount <= MAX_AMOUNT
        and isinstance(exponent := amount.as_tuple().exponent, int)  # finite: always int
        and exponent >= -2
    )


def _payment_of_order(
    *, order_id: str, user_id: int, amount: Decimal, currency: str, provider: PaymentProvider
) -> Payment:
    """The order's payment, created pending with its log line if it has none yet: one
    statement on PostgreSQL."""
    alias = router.db_for_write(Payment)
    if not one_statement_inserts(alias):
        payment = Payment.objects.filter(order_id=order_id).first()
        return payment or _payment_create(
            order_id=order_id, user_id=user_id, amount=amount, currency=currency, provider=provider
        )
    now = timezone.now()
    params = {
        "order_id": order_id,
        "user_id": user_id,
        "amount": amount,
        "currency": currency,
        "pending": Payment.Status.PENDING.value,
        "provider": provider.name,
        "key": _new_idempotency_key(),
        "log": json.dumps({"amount": str(amount), "currency": currency}),
        "now": now,
    }
    found = _payments(_CREATE_SQL, params, alias)
    # None: created concurrently, after this statement's snapshot (its insert waited).
    return found[0] if found else Payment.objects.using(alias).get(order_id=order_id)


# The new payment and its log line, unless the order has a payment: then that one (as
# this statement's snapshot sees it).
_CREATE_SQL = """
WITH created AS (
    INSERT INTO payments_payment (order_id, user_id, amount, currency, amount_refunded, status,
        provider, provider_charge_id, idempotency_key, failure_code, failure_message,
        created_at, updated_at)
    VALUES (%(order_id)s, %(user_id)s, %(amount)s, %(currency)s, 0, %(pending)s,
        %(provider)s, '', %(key)s, '', '', %(now)s, %(now)s)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING *
),
logged AS (
    INSERT INTO payments_paymentevent (payment_id, kind, source, data, created_at)
    SELECT id, 'payment.created', 'api', %(log)s::jsonb, %(now)s FROM created
)
SELECT * FROM created
UNION ALL SELECT * FROM payments_payment WHERE order_id = %(order_id)s
"""


def _payments(sql: str, params: dict[str, Any], alias: str) -> list[Payment]:
    """The payments rows `sql` returns (`SELECT *` of the table), run as a prepared
    statement: every charge runs both statements above."""
    with prepared_cursor(alias) as cursor:
        cursor.execute(sql, params)
        columns = [column.name for column in cursor.description]
        rows = cursor.fetchall()
    fields = Payment._meta.concrete_fields
    names = [field.attname for field in fields]
    payments = []
    for row in rows:
        by_column = dict(zip(columns, row, strict=True))
        payments.append(Payment.from_db(alias, names, [by_column[f.column] for f in fields]))
    return payments


def _new_idempotency_key() -> str:
    # Our own key, not the order id: unique even if order ids are ever reused.
    return f"pay_{uuid.uuid4().hex}"


def _payment_create(
    *, order_id: str, user_id: int, amount: Decimal, currency: str, provider: PaymentProvider
) -> Payment:
    try:
        with transaction.atomic():
            payment = Payment.objects.create(
                order_id=order_id,
                user_id=user_id,
                amount=amount,
                currency=currency,
                provider=provider.name,
                idempotency_key=_new_idempotency_key(),
            )
            _log(payment, "payment.created", "api", {"amount": str(amount), "currency": currency})
            return payment
    except IntegrityError:
        # A concurrent call for the same order won the unique order_id.
        return Payment.objects.get(order_id=order_id)


def _settle_charge(
    *,
    payment_id: int,
    source: str,
    charge: ProviderCharge | None = None,
    failure: tuple[str, str] | None = None,
    provider_event_id: str | None = None,
) -> tuple[Payment, str]:
    """Apply a charge outcome to a pending payment, once. Returns (payment, what happened):
    'settled', 'already-settled' or 'duplicate' (this provider event was seen before)."""
    outcome = _charge_outcome(charge, failure)
    log = f"payment.{outcome['status']}"
    log_data = {k: outcome[k] for k in ("provider_charge_id", "failure_code")}
    alias = router.db_for_write(Payment)
    with transaction.atomic():
        if provider_event_id is None and one_statement_inserts(alias):
            now = timezone.now()
            params = {
                **outcome,
                "id": payment_id,
                "pending": Payment.Status.PENDING.value,
                "kind": log,
                "source": source,
                "log": json.dumps(log_data),
                "now": now,
            }
            settled = _payments(_SETTLE_SQL, params, alias)
            if not settled:
                return Payment.objects.using(alias).get(pk=payment_id), "already-settled"
            payment = settled[0]
        else:
            payment = Payment.objects.select_for_update().get(pk=payment_id)
            if provider_event_id is not None and not _record_provider_event(
                payment, provider_event_id, charge
            ):
                return payment, "duplicate"
            if payment.status != Payment.Status.PENDING:
                return payment, "already-settled"
            for name, value in outcome.items():
                setattr(payment, name, value)
            payment.save(update_fields=[*outcome, "updated_at"])
            _log(payment, log, source, log_data)
        _publish_charge_outcome(payment)
        return payment, "settled"


# The pending payment settled and its log line, in one statement; no row when it was not
# pending (settled by whoever came first: the update waits for their lock).
_SETTLE_SQL = """
WITH settled AS (
    UPDATE payments_payment SET status = %(status)s, provider_charge_id = %(provider_charge_id)s,
        failure_code = %(failure_code)s, failure_message = %(failure_message)s,
        updated_at = %(now)s
    WHERE id = %(id)s AND status = %(pending)s
    RETURNING *
),
logged AS (
    INSERT INTO payments_paymentevent (payment_id, kind, source, data, created_at)
    SELECT id, %(kind)s, %(source)s, %(log)s::jsonb, %(now)s FROM settled
)
SELECT * FROM settled
"""


def _charge_outcome(
    charge: ProviderCharge | None, failure: tuple[str, str] | None
) -> dict[str, str]:
    """The fields a pending payment takes from the provider's answer (or the failure)."""
    if charge is not None and charge.succeeded:
        return {
            "status": Payment.Status.SUCCEEDED.value,
            "provider_charge_id": charge.id,
            "failure_code": "",
            "failure_message": "",
        }
    if charge is not None:
        failure = (charge.decline_code, charge.decline_message)
    code, message = failure or ("unknown", "")
    return {
        "status": Payment.Status.FAILED.value,
        "provider_charge_id": charge.id if charge is not None else "",
        "failure_code": code,
        "failure_message": message[:255],
    }


def _publish_charge_outcome(payment: Payment) -> None:
    common: dict[str, Any] = {
        "payment_id": str(payment.pk),
        "order_id": payment.order_id,
        "user_id": payment.user_id,
        "amount": str(payment.amount),
        "currency": payment.currency,
    }
    event: events.PaymentCaptured | events.PaymentFailed
    if payment.status == Payment.Status.SUCCEEDED:
        event = events.PaymentCaptured(**common, provider_charge_id=payment.provider_charge_id)
    else:
        event = events.PaymentFailed(
            **common,
            failure_code=payment.failure_code,
            failure_message=payment.failure_message,
        )
    publish(event, aggregate_type="payment", aggregate_id=str(payment.pk))


def _payment_result(payment: Payment) -> PaymentResult:
    if payment.status == Payment.Status.FAILED:
        raise PaymentDeclined(
            payment.failure_message or "The payment was declined.",
            decline_code=payment.failure_code,
            payment_id=payment.pk,
        )
    return PaymentResult(
        payment_id=payment.pk,
        status=str(payment.status),
        amount=payment.amount,
        currency=payment.currency,
        provider_charge_id=payment.provider_charge_id,
        failure_code=payment.failure_code,
    )


# -- refunds -----------------------------------------------------------------------------


def payment_refund(
    *,
    payment_id: int,
    amount: Decimal | None = None,
    reason: str,
    idempotency_key: str | None = None,
) -> RefundResult:
    """Refund `amount` (default: all that is left) of a captured payment.

    The same key twice refunds once and returns the first refund; a caller's key counts
    per payment (the same key on another payment is another refund). Without a key, a
    full refund is keyed per payment (repeatable), a partial one gets a fresh key.
    """
    if not reason or not reason.strip() or len(reason) > 200:
        raise ValidationFailed({"reason": ["Give a reason of 1 to 200 characters."]})
    if amount is not None and not _valid_amount(amount):
        raise ValidationFailed(
            {"amount": ["Give a positive decimal amount with at most 2 decimal places."]}
        )
    if idempotency_key is None:
        idempotency_key = (
            f"refund:{payment_id}:remaining" if amount is None else f"refund:{uuid.uuid4().hex}"
        )
    else:
        idempotency_key = f"refund:{payment_id}:key:{idempotency_key}"
    if len(idempotency_key) > 255:
        raise ValidationFailed({"idempotency_key": ["At most 255 characters."]})

    refund = _refund_reserve(
        payment_id=payment_id, amount=amount, reason=reason, idempotency_key=idempotency_key
    )
    if refund.status == Refund.Status.PENDING:
        payment = refund.payment
        try:
            provider_refund = get_provider().refund(
                idempotency_key=refund.idempotency_key,
                charge_id=payment.provider_charge_id,
                amount=refund.amount,
                reason=refund.reason,
            )
        except ProviderUnavailable as exc:
            # The refund stays pending: the same key resumes it, reconciliation settles it.
            raise PaymentProviderUnavailable(
                "The payment provider is unavailable; retry with the same key."
            ) from exc
        except ProviderRejected as exc:
            refund, _ = _settle_refund(
                refund_id=refund.pk, failure_code=exc.code, source="provider-response"
            )
            error = RefundExceedsCaptured if exc.code == "amount_exceeds_charge" else InvalidState
            raise error(f"The provider refused the refund: {exc}") from exc
        refund, _ = _settle_refund(
            refund_id=refund.pk, provider_refund=provider_refund, source="provider-response"
        )
    return _refund_result(refund)


@transaction.atomic
def _refund_reserve(
    *, payment_id: int, amount: Decimal | None, reason: str, idempotency_key: str
) -> Refund:
    """Lock the payment and record a pending refund that fits in what is left."""
    try:
        payment = Payment.objects.select_for_update().get(pk=payment_id)
    except Payment.DoesNotExist as exc:
        raise NotFound("No such payment.") from exc
    existing = Refund.objects.select_for_update().filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        if existing.payment_id != payment.pk or (amount is not None and existing.amount != amount):
            raise Conflict("This idempotency key was used for a different refund.")
        existing.payment = payment
        if not (
            existing.status == Refund.Status.FAILED
            and existing.failure_code == NOT_SUBMITTED
            and amount is None
        ):
            return existing
    if payment.status not in (Payment.Status.SUCCEEDED, Payment.Status.PARTIALLY_REFUNDED):
        raise InvalidState(f"A {payment.get_status_display().lower()} payment cannot be refunded.")
    # Pending refunds count as spent, so two concurrent refunds cannot overshoot.
    pending = payment.refunds.filter(status=Refund.Status.PENDING).aggregate(total=Sum("amount"))
    refundable = payment.amount - payment.amount_refunded - (pending["total"] or Decimal("0"))
    refund_amount = refundable if amount is None else amount
    if refund_amount <= 0 or refund_amount > refundable:
        raise RefundExceedsCaptured(
            f"At most {refundable} {payment.currency} can be refunded.",
            extra={"refundable": str(refundable)},
        )
    if existing is not None:
        # A refund of "the rest" the provider never received moved no money: submit it
        # again under its key (the provider has never seen that key).
        existing.status, existing.failure_code, existing.amount = (
            Refund.Status.PENDING,
            "",
            refund_amount,
        )
        existing.save(update_fields=["status", "failure_code", "amount", "updated_at"])
        _log(payment, "refund.resubmitted", "api", {"refund_id": existing.pk})
        return existing
    refund = Refund.objects.create(
        payment=payment,
        amount=refund_amount,
        currency=payment.currency,
        reason=reason,
        idempotency_key=idempotency_key,
    )
    _log(payment, "refund.requested", "api", {"refund_id": refund.pk, "amount": str(refund_amount)})
    return refund


def _settle_refund(
    *,
    refund_id: int,
    source: str,
    provider_refund: ProviderRefund | None = None,
    failure_code: str = "",
    provider_event_id: str | None = None,
) -> tuple[Refund, str]:
    with transaction.atomic():
        payment_pk = Refund.objects.values_list("payment_id", flat=True).get(pk=refund_id)
        # Lock order payment -> refund, as in _refund_reserve.
        payment = Payment.objects.select_for_update().get(pk=payment_pk)
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        refund.payment = payment
        if provider_event_id is not None and not _record_provider_event(
            payment, provider_event_id, provider_refund
        ):
            return refund, "duplicate"
        if refund.status != Refund.Status.PENDING:
            return refund, "already-settled"
        if provider_refund is not None:
            refund.status = Refund.Status.SUCCEEDED
            refund.provider_refund_id = provider_refund.id
            payment.amount_refunded += refund.amount
            payment.status = (
                Payment.Status.REFUNDED
                if payment.amount_refunded == payment.amount
                else Payment.Status.PARTIALLY_REFUNDED
            )
            payment.save(update_fields=["amount_refunded", "status", "updated_at"])
        else:
            refund.status = Refund.Status.FAILED
            refund.failure_code = failure_code[:64]
        refund.save(update_fields=["status", "provider_refund_id", "failure_code", "updated_at"])
        _log(
            payment,
            f"refund.{refund.status}",
            source,
            {"refund_id": refund.pk, "amount": str(refund.amount), "failure_code": failure_code},
        )
        _publish_refund_outcome(refund, payment)
        return refund, "settled"


def _publish_refund_outcome(refund: Refund, payment: Payment) -> None:
    event: events.PaymentRefunded | events.RefundFailed
    if refund.status == Refund.Status.SUCCEEDED:
        event = events.PaymentRefunded(
            payment_id=str(payment.pk),
            order_id=payment.order_id,
            user_id=payment.user_id,
            refund_id=str(refund.pk),
            amount=str(refund.amount),
            currency=refund.currency,
            amount_refunded=str(payment.amount_refunded),
            payment_amount=str(payment.amount),
            full=payment.status == Payment.Status.REFUNDED,
            reason=refund.reason,
        )
    else:
        event = events.RefundFailed(
            payment_id=str(payment.pk),
            order_id=payment.order_id,
            refund_id=str(refund.pk),
            amount=str(refund.amount),
            currency=refund.currency,
            failure_code=refund.failure_code,
        )
    publish(event, aggregate_type="payment", aggregate_id=str(payment.pk))


def _refund_result(refund: Refund) -> RefundResult:
    return RefundResult(
        refund_id=refund.pk,
        payment_id=refund.payment_id,
        status=str(refund.status),
        amount=refund.amount,
        currency=refund.currency,
        provider_refund_id=refund.provider_refund_id,
        payment_status=str(refund.payment.status),
        amount_refunded=refund.payment.amount_refunded,
    )


# -- webhooks ----------------------------------------------------------------------------


def webhook_handle(*, body: bytes, headers: Mapping[str, str]) -> str:
    """Verify and apply a provider webhook; returns what happened to it:
    'settled', 'already-settled', 'duplicate' or 'ignored' (not about our payments)."""
    provider = webhook_provider()
    try:
        event = provider.verify_webhook(body=body, headers=headers)
    except WebhookVerificationFailed as exc:
        raise InvalidWebhook(f"Webhook refused: {exc}.") from exc
    try:
        if event.type in ("charge.succeeded", "charge.failed"):
            return _webhook_charge(event.id, ProviderCharge.from_json(event.data))
        if event.type == "refund.succeeded":
            return _webhook_refund(event.id, ProviderRefund.from_json(event.data))
    except (KeyError, TypeError, ArithmeticError) as exc:
        raise InvalidWebhook("The event's data is malformed.") from exc
    return "ignored"


def _webhook_charge(event_id: str, charge: ProviderCharge) -> str:
    alias = router.db_for_write(Payment)
    payment_pk: int | None
    if one_statement_inserts(alias):
        payment_pk, outcome = _webhook_charge_of_settled(alias, event_id, charge)
        if outcome != "pending":
            return outcome
    else:
        payment_pk = (
            Payment.objects.filter(idempotency_key=charge.idempotency_key)
            .values_list("pk", flat=True)
            .first()
        )
    if payment_pk is None:
        return "ignored"
    payment, outcome = _settle_charge(
        payment_id=payment_pk, charge=charge, source="webhook", provider_event_id=event_id
    )
    if outcome == "settled":
        _void_if_requested(payment)
    return outcome


def _webhook_charge_of_settled(
    alias: str, event_id: str, charge: ProviderCharge
) -> tuple[int | None, str]:
    """The payment the webhook is about and, when it is settled already (the usual case:
    the provider answered the charge call first), the webhook recorded, in one statement.
    Returns its pk (None: not ours) and 'already-settled', 'duplicate' or 'pending' (then
    nothing is written: the locking path records and settles it).

    A webhook often arrives while the charge's own settlement is under way (the provider
    sends it as it answers the call): seen pending, the statement runs once more with the
    row locked, which waits for that settlement and then sees it."""
    params: dict[str, str | datetime] = {
        "key": charge.idempotency_key,
        "pending": Payment.Status.PENDING.value,
        "event_id": event_id,
        "data": json.dumps({"object_id": charge.id}),
        "now": timezone.now(),
    }
    for statement in (_WEBHOOK_OF_SETTLED_SQL, _WEBHOOK_OF_SETTLED_LOCKED_SQL):
        with prepared_cursor(alias) as cursor:
            cursor.execute(statement, params)
            row = cursor.fetchone()
        if row is None:
            return None, "ignored"
        payment_pk, status, recorded = row
        if status != Payment.Status.PENDING:
            return payment_pk, "already-settled" if recorded else "duplicate"
    return payment_pk, "pending"


# A settled payment never becomes pending again, so no lock is needed to record its
# webhook; the provider event id's unique index makes the record once-only.
_WEBHOOK_OF_SETTLED_SQL = """
WITH payment AS (
    SELECT id, status FROM payments_payment WHERE idempotency_key = %(key)s
),
recorded AS (
    INSERT INTO payments_paymentevent (payment_id, kind, source, data, provider_event_id,
        created_at)
    SELECT id, 'webhook.received', 'webhook', %(data)s::jsonb, %(event_id)s, %(now)s
    FROM payment WHERE status <> %(pending)s
    ON CONFLICT (provider_event_id) DO NOTHING
    RETURNING id
)
SELECT id, status, EXISTS (SELECT 1 FROM recorded) FROM payment
"""
# The same, once the row's lock is free: a settlement in progress commits first, and the
# locked row is its latest version (READ COMMITTED re-reads a row it waited for).
_WEBHOOK_OF_SETTLED_LOCKED_SQL = _WEBHOOK_OF_SETTLED_SQL.replace(
    "WHERE idempotency_key = %(key)s", "WHERE idempotency_key = %(key)s FOR UPDATE"
)


def _webhook_refund(event_id: str, provider_refund: ProviderRefund) -> str:
    refund_pk = (
        Refund.objects.filter(idempotency_key=provider_refund.idempotency_key)
        .values_list("pk", flat=True)
        .first()
    )
    if refund_pk is None:
        return "ignored"
    _, outcome = _settle_refund(
        refund_id=refund_pk,
        provider_refund=provider_refund,
        source="webhook",
        provider_event_id=event_id,
    )
    return outcome


def _record_provider_event(payment: Payment, provider_event_id: str, obj: object) -> bool:
    """Store the provider event id once; False if it was stored before."""
    try:
        with transaction.atomic():
            PaymentEvent.objects.create(
                payment=payment,
                kind="webhook.received",
                source="webhook",
                provider_event_id=provider_event_id,
                data={"object_id": getattr(obj, "id", "")},
            )
    except IntegrityError:
        return False
    return True


# -- reconciliation ----------------------------------------------------------------------


def payments_reconcile_pending(
    *, older_than_seconds: float | None = None, limit: int = 100
) -> dict[str, int]:
    """Settle payments and refunds left pending (a crash between the provider call and our
    write) by looking each up at the provider by its idempotency key. One the provider
    never received is failed as 'not_submitted'."""
    if older_than_seconds is None:
        older_than_seconds = settings.PAYMENT_RECONCILE_AFTER_SECONDS
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    payments = list(
        Payment.objects.filter(status=Payment.Status.PENDING, updated_at__lt=cutoff)
        .order_by("id")
        .values_list("pk", "idempotency_key")[:limit]
    )
    # Captures of given-up orders whose refund was deferred (the provider was away).
    unvoided = list(
        Payment.objects.filter(
            void_requested_at__isnull=False,
            status__in=[Payment.Status.SUCCEEDED, Payment.Status.PARTIALLY_REFUNDED],
        ).order_by("id")[:limit]
    )
    refunds = list(
        Refund.objects.filter(status=Refund.Status.PENDING, updated_at__lt=cutoff)
        .order_by("id")
        .values_list("pk", "idempotency_key")[:limit]
    )
    provider = get_provider()
    counts: Counter[str] = Counter()
    try:
        for payment_pk, key in payments:
            charge = provider.find_charge(idempotency_key=key)
            failure = None if charge else (NOT_SUBMITTED, "The provider never got this charge.")
            payment, outcome = _settle_charge(
                payment_id=payment_pk, charge=charge, failure=failure, source="reconciliation"
            )
            counts[f"payments_{outcome}"] += 1
            if outcome == "settled":
                _void_if_requested(payment)
        for refund_pk, key in refunds:
            provider_refund = provider.find_refund(idempotency_key=key)
            _, outcome = _settle_refund(
                refund_id=refund_pk,
                provider_refund=provider_refund,
                failure_code="" if provider_refund else NOT_SUBMITTED,
                source="reconciliation",
            )
            counts[f"refunds_{outcome}"] += 1
        for payment in unvoided:
            refunded = _void_if_requested(payment)
            counts["late_captures_refunded" if refunded else "late_captures_deferred"] += 1
    except ProviderUnavailable:
        # The next run picks up what is left.
        logger.warning("payments_reconciliation_deferred", done=dict(counts))
        counts["deferred"] += 1
    return dict(counts)


def _log(payment: Payment, kind: str, source: str, data: dict[str, Any]) -> None:
    PaymentEvent.objects.create(payment=payment, kind=kind, source=source, data=data)

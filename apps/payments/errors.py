"""Payments business errors."""

from apps.core.errors import DomainError, InvalidState


class PaymentDeclined(DomainError):
    status = 402
    problem_type = "payment-declined"
    title = "Payment declined"

    def __init__(self, detail: str | None = None, *, decline_code: str, payment_id: int) -> None:
        super().__init__(detail, extra={"decline_code": decline_code, "payment_id": payment_id})
        self.decline_code = decline_code
        self.payment_id = payment_id


class PaymentProviderUnavailable(DomainError):
    """Transient: the provider did not answer in the retry budget, or the circuit is open."""

    status = 503
    problem_type = "payment-provider-unavailable"
    title = "Payment provider unavailable"


class RefundExceedsCaptured(InvalidState):
    problem_type = "refund-exceeds-captured"
    title = "Refund exceeds the captured amount"


class InvalidWebhook(DomainError):
    problem_type = "invalid-webhook"
    title = "Invalid webhook"

"""The payment provider gateway: the interface the services use, and the sandbox PSP's
implementation over HTTP with timeouts, jittered retries and a shared circuit breaker.
"""

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeVar

import httpx
import tenacity
from django.conf import settings
from django.core.signals import setting_changed

from apps.core.resilience import (
    CircuitBreakerError,
    SharedCircuitBreaker,
    jittered_retry,
    shared_circuit_breaker,
)
from apps.payments import metrics

T = TypeVar("T")

SIGNATURE_HEADER = "Sandbox-Signature"


class ProviderError(Exception):
    """Base of the gateway's errors (internal to the payments context)."""


class ProviderTransientError(ProviderError):
    """Worth retrying: transport error, timeout, 5xx or 429.

    `outcome_unknown` says the request may have been processed (a read timeout), so the
    next attempt first looks the operation up by its idempotency key.
    """

    def __init__(self, message: str, *, outcome_unknown: bool) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class ProviderUnavailable(ProviderError):
    """No answer within the retry budget, or the circuit is open (`circuit_open`)."""

    def __init__(self, message: str, *, circuit_open: bool = False) -> None:
        super().__init__(message)
        self.circuit_open = circuit_open


class ProviderRejected(ProviderError):
    """The provider refused the request (4xx other than 429); not retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class WebhookVerificationFailed(ProviderError):
    pass


@dataclass(frozen=True)
class ProviderCharge:
    id: str
    idempotency_key: str
    status: str  # "succeeded" or "declined"
    amount: Decimal
    currency: str
    decline_code: str = ""
    decline_message: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_json(cls, data: Mapping) -> "ProviderCharge":
        return cls(
            id=data["id"],
            idempotency_key=data["idempotency_key"],
            status=data["status"],
            amount=Decimal(data["amount"]),
            currency=data["currency"],
            decline_code=data.get("decline_code", ""),
            decline_message=data.get("decline_message", ""),
        )


@dataclass(frozen=True)
class ProviderRefund:
    id: str
    idempotency_key: str
    charge_id: str
    amount: Decimal
    status: str

    @classmethod
    def from_json(cls, data: Mapping) -> "ProviderRefund":
        return cls(
            id=data["id"],
            idempotency_key=data["idempotency_key"],
            charge_id=data["charge_id"],
            amount=Decimal(data["amount"]),
            status=data["status"],
        )


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    data: Mapping


class PaymentProvider(Protocol):
    name: str

    def charge(
        self, *, idempotency_key: str, amount: Decimal, currency: str, token: str, reference: str
    ) -> ProviderCharge: ...

    def refund(
        self, *, idempotency_key: str, charge_id: str, amount: Decimal, reason: str
    ) -> ProviderRefund: ...

    def find_charge(self, *, idempotency_key: str) -> ProviderCharge | None: ...

    def find_refund(self, *, idempotency_key: str) -> ProviderRefund | None: ...

    def verify_webhook(self, *, body: bytes, headers: Mapping[str, str]) -> WebhookEvent: ...

    def rejects_calls(self) -> bool: ...

    def breaker_state(self) -> str: ...

    def probe(self) -> None: ...


def verify_signature(
    *, secret: str, body: bytes, header: str, tolerance_seconds: int, now: float | None = None
) -> None:
    """Check a `t=<unix>,v1=<hex hmac-sha256 of "t.body">` header; raise if bad or stale."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
        signature = parts["v1"]
    except (KeyError, ValueError) as exc:
        raise WebhookVerificationFailed("malformed signature header") from exc
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        raise WebhookVerificationFailed("stale signature timestamp")
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise WebhookVerificationFailed("signature mismatch")


class SandboxProvider:
    """The sandbox PSP over HTTP. Every attempt goes through the shared breaker."""

    name = "sandbox"

    def __init__(
        self,
        *,
        base_url: str,
        connect_timeout: float,
        read_timeout: float,
        webhook_secret: str,
        webhook_tolerance_seconds: int,
        breaker: SharedCircuitBreaker,
        retry: Callable[[str], tenacity.Retrying],
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            headers={"User-Agent": "mercato-payments"},
        )
        self._webhook_secret = webhook_secret
        self._webhook_tolerance = webhook_tolerance_seconds
        self.breaker = breaker
        self._retry = retry

    # -- the interface -------------------------------------------------------------------

    def charge(
        self, *, idempotency_key: str, amount: Decimal, currency: str, token: str, reference: str
    ) -> ProviderCharge:
        body = {"amount": str(amount), "currency": currency, "token": token, "reference": reference}

        def attempt(after_unknown_outcome: bool) -> ProviderCharge:
            if after_unknown_outcome:
                # The last attempt may have charged: find it rather than risk a second charge.
                found = self._find("/v1/charges", idempotency_key)
                if found is not None:
                    return ProviderCharge.from_json(found)
            response = self._send(
                "POST", "/v1/charges", json=body, headers={"Idempotency-Key": idempotency_key}
            )
            if response.status_code in (200, 201, 402):
                return ProviderCharge.from_json(response.json())
            raise self._rejection(response)

        return self._call("charge", attempt)

    def refund(
        self, *, idempotency_key: str, charge_id: str, amount: Decimal, reason: str
    ) -> ProviderRefund:
        body = {"charge_id": charge_id, "amount": str(amount), "reason": reason}

        def attempt(after_unknown_outcome: bool) -> ProviderRefund:
            if after_unknown_outcome:
                found = self._find("/v1/refunds", idempotency_key)
                if found is not None:
                    return ProviderRefund.from_json(found)
            response = self._send(
                "POST", "/v1/refunds", json=body, headers={"Idempotency-Key": idempotency_key}
            )
            if response.status_code in (200, 201):
                return ProviderRefund.from_json(response.json())
            raise self._rejection(response)

        return self._call("refund", attempt)

    def find_charge(self, *, idempotency_key: str) -> ProviderCharge | None:
        found = self._call("find_charge", lambda _: self._find("/v1/charges", idempotency_key))
        return ProviderCharge.from_json(found) if found is not None else None

    def find_refund(self, *, idempotency_key: str) -> ProviderRefund | None:
        found = self._call("find_refund", lambda _: self._find("/v1/refunds", idempotency_key))
        return ProviderRefund.from_json(found) if found is not None else None

    def verify_webhook(self, *, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        verify_signature(
            secret=self._webhook_secret,
            body=body,
            header=headers.get(SIGNATURE_HEADER, ""),
            tolerance_seconds=self._webhook_tolerance,
        )
        try:
            payload = json.loads(body)
            return WebhookEvent(id=payload["id"], type=payload["type"], data=payload["data"])
        except (ValueError, KeyError, TypeError) as exc:
            raise WebhookVerificationFailed("signed body is not an event") from exc

    def rejects_calls(self) -> bool:
        return self.breaker.rejects_calls()

    def breaker_state(self) -> str:
        return self.breaker.current_state

    def probe(self) -> None:
        """One health request, outside the breaker and the retries (a readiness probe
        must neither trip the breaker nor wait out a retry budget)."""
        try:
            response = self._http.get("/v1/health")
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise ProviderUnavailable(f"health answered HTTP {response.status_code}")

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, operation: str, attempt: Callable[[bool], T]) -> T:
        """One logical call: retried on transient errors, each attempt through the breaker."""
        outcome_unknown = False

        def guarded_attempt() -> T:
            nonlocal outcome_unknown
            try:
                return self.breaker.call(attempt, outcome_unknown)
            except ProviderTransientError as exc:
                outcome_unknown = outcome_unknown or exc.outcome_unknown
                raise

        started = time.perf_counter()
        outcome = "success"
        try:
            return self._retry(operation)(guarded_attempt)
        except CircuitBreakerError as exc:
            outcome = "circuit_open"
            raise ProviderUnavailable(f"{operation}: circuit open", circuit_open=True) from exc
        except ProviderTransientError as exc:
            outcome = "unavailable"
            raise ProviderUnavailable(f"{operation}: {exc}") from exc
        except ProviderRejected:
            outcome = "rejected"
            raise
        finally:
            labels = {"provider": self.name, "operation": operation}
            metrics.provider_calls.labels(outcome=outcome, **labels).inc()
            metrics.provider_call_seconds.labels(**labels).observe(time.perf_counter() - started)

    def _find(self, path: str, idempotency_key: str) -> dict | None:
        response = self._send("GET", path, params={"idempotency_key": idempotency_key})
        if response.status_code == 404:
            return None
        if response.status_code == 200:
            return response.json()
        raise self._rejection(response)

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ProviderTransientError(f"connect: {exc!r}", outcome_unknown=False) from exc
        except httpx.TransportError as exc:
            # Sent, but no answer read: the provider may have acted on it.
            raise ProviderTransientError(f"transport: {exc!r}", outcome_unknown=True) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise ProviderTransientError(
                # A 5xx may come after the provider acted; a 429 comes before.
                f"HTTP {response.status_code}",
                outcome_unknown=response.status_code >= 500,
            )
        return response

    @staticmethod
    def _rejection(response: httpx.Response) -> ProviderRejected:
        try:
            error = response.json()["error"]
            return ProviderRejected(error["code"], error["message"])
        except (ValueError, KeyError, TypeError):
            return ProviderRejected(f"http_{response.status_code}", response.text[:200])


_providers: dict[tuple, SandboxProvider] = {}
_providers_lock = threading.Lock()


def get_provider() -> PaymentProvider:
    """The configured provider, built from settings once per process (and per settings)."""
    key = (
        settings.PAYMENT_PROVIDER,
        settings.PAYMENT_PROVIDER_URL,
        settings.PAYMENT_CONNECT_TIMEOUT_SECONDS,
        settings.PAYMENT_READ_TIMEOUT_SECONDS,
        settings.PAYMENT_WEBHOOK_SECRET,
        settings.PAYMENT_WEBHOOK_TOLERANCE_SECONDS,
        settings.PAYMENT_RETRY_ATTEMPTS,
        settings.PAYMENT_RETRY_BACKOFF_SECONDS,
        settings.PAYMENT_RETRY_MAX_BACKOFF_SECONDS,
        settings.PAYMENT_RETRY_TOTAL_SECONDS,
        settings.PAYMENT_BREAKER_FAIL_MAX,
        settings.PAYMENT_BREAKER_RESET_SECONDS,
        settings.CIRCUIT_BREAKER_NAMESPACE,
        settings.REDIS_URL,
    )
    if settings.PAYMENT_PROVIDER != "sandbox":
        raise LookupError(f"unknown payment provider {settings.PAYMENT_PROVIDER!r}")
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            provider = _build_sandbox_provider()
            _providers[key] = provider
    provider.breaker = _breaker()  # re-fetched: a Redis outage at start is not permanent
    return provider


def webhook_provider() -> PaymentProvider:
    """`get_provider()`'s provider, asked for again only when settings change: a webhook is
    verified with the provider's secret, not through its breaker, which `get_provider()`
    fetches again at every call (with the ~20 settings it reads, as much as the
    signature check and the event's parsing together)."""
    global _webhook_provider
    provider = _webhook_provider
    if provider is None:
        provider = _webhook_provider = get_provider()
    return provider


_webhook_provider: PaymentProvider | None = None


def _forget_webhook_provider(**kwargs) -> None:
    global _webhook_provider
    _webhook_provider = None


setting_changed.connect(_forget_webhook_provider)


def _breaker() -> SharedCircuitBreaker:
    return shared_circuit_breaker(
        f"payments.{SandboxProvider.name}",
        fail_max=settings.PAYMENT_BREAKER_FAIL_MAX,
        reset_timeout=settings.PAYMENT_BREAKER_RESET_SECONDS,
        # A refusal is an answer from a healthy provider, not a failure of it.
        exclude=[ProviderRejected],
        listeners=[metrics.BreakerStateMetric()],
    )


def _build_sandbox_provider() -> SandboxProvider:
    def retry(operation: str) -> tenacity.Retrying:
        retries = metrics.provider_retries.labels(
            provider=SandboxProvider.name, operation=operation
        )
        return jittered_retry(
            retry_on=(ProviderTransientError,),
            attempts=settings.PAYMENT_RETRY_ATTEMPTS,
            backoff_seconds=settings.PAYMENT_RETRY_BACKOFF_SECONDS,
            max_backoff_seconds=settings.PAYMENT_RETRY_MAX_BACKOFF_SECONDS,
            total_seconds=settings.PAYMENT_RETRY_TOTAL_SECONDS,
            before_sleep=lambda _state: retries.inc(),
        )

    return SandboxProvider(
        base_url=settings.PAYMENT_PROVIDER_URL,
        connect_timeout=settings.PAYMENT_CONNECT_TIMEOUT_SECONDS,
        read_timeout=settings.PAYMENT_READ_TIMEOUT_SECONDS,
        webhook_secret=settings.PAYMENT_WEBHOOK_SECRET,
        webhook_tolerance_seconds=settings.PAYMENT_WEBHOOK_TOLERANCE_SECONDS,
        breaker=_breaker(),
        retry=retry,
    )

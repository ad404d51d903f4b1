"""Rate limiting: a middleware with per-scope policies, atomic in Redis.

The algorithm is GCRA (a leaky bucket kept as one timestamp per key): a key's "theoretical
arrival time" advances by period/limit per request, and a request is refused while it
would run more than one period ahead of now. One Lua script reads and writes the key, so
concurrent requests cannot both take the last unit (DRF's throttles read, then write).

Scopes (settings.RATE_LIMITS, each `{"limit": n, "period": seconds}`):

- `auth`: POST to the token and register endpoints, per client IP and per email in the
  body (two keys, both must pass).
- `orders`: POST /api/v1/orders, per user.
- `default`: every other request, per user when a valid bearer token or session names
  one, else per client IP.

Health, readiness and metrics are exempt, and so are the payment provider's webhooks:
they authenticate by their signature (checked before anything is read or written), not as
a client, and one provider address sends every payment's events; limiting them would
delay settlements, not slow an abuser. The client IP is REMOTE_ADDR, or the address
TRUSTED_PROXY_COUNT hops from the right of X-Forwarded-For when proxies are trusted.

When Redis fails, a request is let through (logged and counted), except in the auth
scope, which falls back to a per-process limiter: guessing passwords must stay slow. The
embedded mode (no REDIS_URL) uses the per-process limiter for everything.
"""

import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass

import structlog
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from redis.exceptions import RedisError

from apps.core import metrics
from apps.core.api.problems import PROBLEM_CONTENT_TYPE, problem_body
from apps.core.middleware import client_ip, client_user_id
from apps.core.redis_clients import redis_client

logger = structlog.get_logger(__name__)

AUTH_PATHS = ("/api/v1/auth/token", "/api/v1/auth/register")
ORDERS_PATH = "/api/v1/orders"
EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics")
SIGNED_WEBHOOK_PATH_PREFIX = "/api/v1/payments/webhooks/"

# KEYS[1]: the bucket; ARGV: emission interval and period, in microseconds.
# Returns {allowed, remaining, retry_after_us, reset_us}. Redis's own clock is the
# only clock, so web processes with skewed clocks share one bucket correctly.
_GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((period - (new_tat - now)) / interval), 0, new_tat - now}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until a refused request would pass
    reset: float  # seconds until the bucket is empty again


@dataclass(frozen=True)
class Policy:
    scope: str
    limit: int
    period: float

    @property
    def interval_us(self) -> int:
        return max(1, round(self.period * 1_000_000 / self.limit))

    @property
    def period_us(self) -> int:
        return round(self.period * 1_000_000)


def policy(scope: str) -> Policy:
    config = settings.RATE_LIMITS[scope]
    return Policy(scope=scope, limit=int(config["limit"]), period=float(config["period"]))


def _decision(policy: Policy, raw: list) -> Decision:
    allowed, remaining, retry_after_us, reset_us = (int(v) for v in raw)
    return Decision(
        allowed=bool(allowed),
        limit=policy.limit,
        remaining=max(0, remaining),
        retry_after=retry_after_us / 1_000_000,
        reset=reset_us / 1_000_000,
    )


class LocalLimiter:
    """The same GCRA in this process's memory: the embedded mode, and the auth scope's
    fallback while Redis is down (each process then allows its own `limit`)."""

    def __init__(self) -> None:
        self._tats: dict[str, int] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, policy: Policy) -> Decision:
        now = time.monotonic_ns() // 1000
        with self._lock:
            tat = max(self._tats.get(key, now), now)
            new_tat = tat + policy.interval_us
            allow_at = new_tat - policy.period_us
            if now < allow_at:
                return _decision(policy, [0, 0, allow_at - now, tat - now])
            self._tats[key] = new_tat
            if len(self._tats) > 100_000:  # forget buckets that emptied long ago
                self._tats = {k: v for k, v in self._tats.items() if v > now}
            remaining = (policy.period_us - (new_tat - now)) // policy.interval_us
            return _decision(policy, [1, remaining, 0, new_tat - now])

    def clear(self) -> None:
        with self._lock:
            self._tats.clear()


local_limiter = LocalLimiter()


_gcra = None


def redis_hit(key: str, policy: Policy) -> Decision:
    global _gcra
    client = redis_client(settings.REDIS_URL)
    if _gcra is None:
        # EVALSHA, loading the script again when a (restarted) Redis does not know it.
        _gcra = client.register_script(_GCRA_SCRIPT)
    raw = _gcra(keys=[key], args=[policy.interval_us, policy.period_us], client=client)
    return _decision(policy, raw)


def hit(key: str, policy: Policy) -> Decision:
    """Count one request against `key`; raise RedisError when Redis cannot answer."""
    if not settings.REDIS_URL:
        return local_limiter.hit(key, policy)
    return redis_hit(key, policy)


def _email_in_body(request) -> str | None:
    if request.content_type != "application/json":
        return None
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, RecursionError, RequestDataTooBig):
        return None  # the view (its parser, or the body size limit) answers it
    email = body.get("email") if isinstance(body, dict) else None
    return email.strip().lower() if isinstance(email, str) and email.strip() else None


def _digest(value: str) -> str:
    # No e-mail addresses in Redis keys.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def request_buckets(request) -> tuple[str, list[str]] | None:
    """(scope, bucket keys) of a request, or None when it is exempt."""
    path = request.path_info.rstrip("/") or "/"
    if path in EXEMPT_PATHS or path.startswith(SIGNED_WEBHOOK_PATH_PREFIX):
        return None
    prefix = settings.RATE_LIMIT_KEY_PREFIX
    if request.method == "POST" and path in AUTH_PATHS:
        keys = [f"{prefix}:auth:ip:{client_ip(request)}"]
        email = _email_in_body(request)
        if email:
            keys.append(f"{prefix}:auth:email:{_digest(email)}")
        return "auth", keys
    user_id = client_user_id(request)
    client = f"user:{user_id}" if user_id is not None else f"ip:{client_ip(request)}"
    if request.method == "POST" and path == ORDERS_PATH and user_id is not None:
        return "orders", [f"{prefix}:orders:{client}"]
    return "default", [f"{prefix}:default:{client}"]


def check(scope: str, keys: list[str]) -> Decision | None:
    """The most restrictive decision over `keys`; None when Redis failed open."""
    limits = policy(scope)
    decisions = []
    for key in keys:
        try:
            decisions.append(hit(key, limits))
        except RedisError:
            metrics.ratelimit_backend_errors.labels(scope=scope).inc()
            if scope != "auth":
                logger.warning("ratelimit_failed_open", scope=scope, exc_info=True)
                return None
            logger.warning("ratelimit_local_fallback", scope=scope, exc_info=True)
            decisions.append(local_limiter.hit(key, limits))
    refused = [d for d in decisions if not d.allowed]
    if refused:
        return max(refused, key=lambda d: d.retry_after)
    return min(decisions, key=lambda d: d.remaining)


def _headers(decision: Decision) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset)),
    }


class RateLimitMiddleware:
    """Refuse a request over its scope's limit with a 429 problem (see the module doc)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not settings.RATE_LIMIT_ENABLED:
            return self.get_response(request)
        buckets = request_buckets(request)
        if buckets is None:
            return self.get_response(request)
        scope, keys = buckets
        decision = check(scope, keys)
        if decision is None:
            return self.get_response(request)
        if not decision.allowed:
            metrics.ratelimited_requests.labels(scope=scope).inc()
            return self._refuse(request, decision)
        response = self.get_response(request)
        for header, value in _headers(decision).items():
            response[header] = value
        return response

    @staticmethod
    def _refuse(request, decision: Decision) -> JsonResponse:
        retry_after = max(1, math.ceil(decision.retry_after))
        body = problem_body(
            status=429,
            problem_type="rate-limited",
            title="Too many requests",
            detail=f"Rate limit exceeded; retry in {retry_after} s.",
            request=request,
        )
        response = JsonResponse(body, status=429, content_type=PROBLEM_CONTENT_TYPE)
        response["Retry-After"] = str(retry_after)
        for header, value in _headers(decision).items():
            response[header] = value
        return response

"""Rate limiting: per-scope policies, counted in Redis.

The algorithm is GCRA (a leaky bucket kept as one timestamp per key): a key's "theoretical
arrival time" advances by period/limit per request, and a request is refused while it
would run more than one period ahead of now. One Lua script reads and writes the key, so
concurrent requests cannot both take the last unit (DRF's throttles read, then write).

Scopes (settings.RATE_LIMITS, each `{"limit": n, "period": seconds}`):

- `auth`: POST to the token and register endpoints, per client IP and per email in the
  body (two keys, both must pass). Exact: one Redis round trip per key and request.
- `orders`: POST /api/v1/orders, per user. Exact, as `auth`.
- `default`: every other request, per user when a valid bearer token names one, else per
  client IP. Approximate, without a Redis round trip per request: a process takes a
  lease of `lease` units at once (RATE_LIMIT_DEFAULT_LEASE_FRACTION of the limit; the
  Lua script charges them to the bucket) and spends it locally; it asks Redis again when
  the lease is spent. Every admitted request was charged in Redis, so with P processes a
  client is admitted at most `lease - 1` more per process than the exact limiter would
  (units leased before a window and spent in it), and refused at most P x (lease - 1)
  too early (units leased by other processes, not spent yet). A refusal is remembered
  locally until its Retry-After: an abusive client costs no round trip either.

Health, readiness and metrics are exempt, and so are the payment provider's webhooks:
they authenticate by their signature (checked before anything is read or written), not as
a client, and one provider address sends every payment's events; limiting them would
delay settlements, not slow an abuser. The client IP is REMOTE_ADDR, or the address
TRUSTED_PROXY_COUNT hops from the right of X-Forwarded-For when proxies are trusted.

When Redis fails, a request is let through (logged and counted), except in the auth
scope, which falls back to a per-process limiter: guessing passwords must stay slow. The
embedded mode (no REDIS_URL) uses the per-process limiter for everything.
"""

import functools
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.signals import setting_changed
from django.http import HttpRequest, JsonResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from apps.core.data.redis_clients import own_connection, redis_client
from apps.core.http.api.problems import PROBLEM_CONTENT_TYPE, problem_body
from apps.core.http.clients import client_ip, client_user_id
from apps.core.observability import metrics

logger = structlog.get_logger(__name__)

AUTH_PATHS = ("/api/v1/auth/token", "/api/v1/auth/register")
ORDERS_PATH = "/api/v1/orders"
EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics")
SIGNED_WEBHOOK_PATH_PREFIX = "/api/v1/payments/webhooks/"

# KEYS[1]: the bucket; ARGV: emission interval and period in microseconds, and the
# units wanted (1, or a lease). Grants as many as the bucket holds, up to that many.
# Returns {granted, remaining, retry_after_us, reset_us}. Redis's own clock is the only
# clock, so web processes with skewed clocks share one bucket correctly.
_GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local free = math.floor((now + period - tat) / interval)
if free < 1 then
  return {0, 0, tat + interval - period - now, tat - now}
end
local granted = math.min(free, wanted)
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {granted, free - granted, 0, new_tat - now}
"""


class Decision(NamedTuple):
    # A tuple: one is built per request, and a frozen dataclass sets each field through
    # object.__setattr__.
    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until a refused request would pass
    reset: float  # seconds until the bucket is empty again


# Decision((allowed, limit, remaining, retry_after, reset)) without the keyword-argument
# __new__ NamedTuple generates (a fifth of a leased request's instructions).
_new_decision = functools.partial(tuple.__new__, Decision)


@dataclass(frozen=True)
class Policy:
    scope: str
    limit: int
    period: float
    lease: int = 1  # units taken from Redis at once (1: exact)

    @property
    def interval_us(self) -> int:
        return max(1, round(self.period * 1_000_000 / self.limit))

    @property
    def period_us(self) -> int:
        return round(self.period * 1_000_000)


APPROXIMATE_SCOPES = ("default",)


def policy(scope: str) -> Policy:
    return limiter_settings().policies[scope]


def _policy(scope: str) -> Policy:
    config = settings.RATE_LIMITS[scope]
    limit = int(config["limit"])
    lease = 1
    if scope in APPROXIMATE_SCOPES:
        lease = max(1, int(limit * settings.RATE_LIMIT_DEFAULT_LEASE_FRACTION))
    return Policy(scope=scope, limit=limit, period=float(config["period"]), lease=lease)


def _decision(policy: Policy, raw: list[Any]) -> Decision:
    allowed, remaining, retry_after_us, reset_us = (int(v) for v in raw)
    allowed = min(allowed, 1)
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


_GCRA_SHA = hashlib.sha1(_GCRA_SCRIPT.encode()).hexdigest()  # noqa: S324  # Redis's script id


def redis_take(key: str, policy: Policy, wanted: int) -> list[int]:
    """[granted, remaining, retry_after_us, reset_us] of taking up to `wanted` units."""
    connection = own_connection(redis_client(settings.REDIS_URL))
    loaded = reconnected = False
    while True:
        try:
            connection.send_command(
                "EVALSHA", _GCRA_SHA, 1, key, policy.interval_us, policy.period_us, wanted
            )
            return [int(v) for v in connection.read_response()]
        except NoScriptError:  # a restarted Redis: load the script, once
            if loaded:
                raise
            connection.send_command("SCRIPT", "LOAD", _GCRA_SCRIPT)
            connection.read_response()
            loaded = True
        except RedisConnectionError:
            # It disconnected itself: the server had closed it (a restart, an idle
            # timeout) and took nothing. A second failure is an outage.
            if reconnected:
                raise
            reconnected = True


def redis_hit(key: str, policy: Policy) -> Decision:
    return _decision(policy, redis_take(key, policy, 1))


@dataclass
class _Lease:
    units: int  # leased, not spent yet
    remaining: int  # what the bucket held beyond the lease when it was taken
    reset_at: float  # monotonic seconds when the bucket is empty again, as of the lease
    refused_until: float = 0.0  # Redis refused: refuse locally until then


class LeasedLimiter:
    """The approximate scopes: units leased from the Redis bucket, spent in process."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._leases: dict[tuple[Any, ...], _Lease] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, policy: Policy) -> Decision:
        now = time.monotonic()
        slot = (key, policy.limit, policy.period)
        with self._lock:
            lease = self._leases.get(slot)
            if lease is not None:
                if lease.units > 0:  # the usual case: _allowed, inlined
                    lease.units -= 1
                    remaining = lease.remaining + lease.units
                    reset = lease.reset_at - now
                    return _new_decision((True, policy.limit, remaining, 0.0, max(0.0, reset)))
                if now < lease.refused_until:
                    return self._refused(policy, lease.refused_until - now)
        granted, remaining, retry_after_us, reset_us = redis_take(key, policy, policy.lease)
        with self._lock:
            if len(self._leases) >= self.MAX_KEYS:
                self._leases.clear()  # leased units forgotten: refuses early, never late
            # Another thread may have leased meanwhile: its units are kept.
            earlier = self._leases.get(slot)
            units = earlier.units if earlier is not None else 0
            if not granted:
                if earlier is not None and earlier.units:
                    # Refused by Redis, but units came back meanwhile: spend one.
                    earlier.units -= 1
                    return self._allowed(policy, earlier, now)
                retry_after = retry_after_us / 1_000_000
                self._leases[slot] = _Lease(0, 0, now + reset_us / 1_000_000, now + retry_after)
                return self._refused(policy, retry_after, reset_us / 1_000_000)
            lease = _Lease(units + granted - 1, remaining, now + reset_us / 1_000_000)
            self._leases[slot] = lease
            return self._allowed(policy, lease, now)

    @staticmethod
    def _allowed(policy: Policy, lease: _Lease, now: float) -> Decision:
        remaining = lease.remaining + lease.units
        return _new_decision((True, policy.limit, remaining, 0.0, max(0.0, lease.reset_at - now)))

    @staticmethod
    def _refused(policy: Policy, retry_after: float, reset: float | None = None) -> Decision:
        return Decision(
            allowed=False,
            limit=policy.limit,
            remaining=0,
            retry_after=retry_after,
            reset=retry_after if reset is None else reset,
        )

    def clear(self) -> None:
        with self._lock:
            self._leases.clear()


leased_limiter = LeasedLimiter()


@functools.cache
def limiter_settings() -> "LimiterSettings":
    return LimiterSettings()


class LimiterSettings:
    """What every request reads, read once (and again after a setting changes)."""

    def __init__(self) -> None:
        self.enabled = settings.RATE_LIMIT_ENABLED
        self.key_prefix = settings.RATE_LIMIT_KEY_PREFIX
        self.redis = bool(settings.REDIS_URL)
        self.policies = {scope: _policy(scope) for scope in settings.RATE_LIMITS}


def _forget_limiter_settings(**kwargs: object) -> None:
    limiter_settings.cache_clear()


setting_changed.connect(_forget_limiter_settings)


def hit(key: str, policy: Policy) -> Decision:
    """Count one request against `key`; raise RedisError when Redis cannot answer."""
    if not limiter_settings().redis:
        return local_limiter.hit(key, policy)
    if policy.lease > 1:
        return leased_limiter.hit(key, policy)
    return redis_hit(key, policy)


def _email_in_body(request: HttpRequest) -> str | None:
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


def _exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(SIGNED_WEBHOOK_PATH_PREFIX)


def _client(request: HttpRequest, user_id: int | str | None, ip: str | None) -> str:
    """The client part of a bucket key: the token's user, else the address."""
    return f"user:{user_id}" if user_id is not None else f"ip:{ip or client_ip(request)}"


def request_buckets(request: HttpRequest, *, ip: str | None = None) -> tuple[str, list[str]] | None:
    """(scope, bucket keys) of a request, or None when it is exempt; `ip`: the client's
    address when the caller has it already (client_ip)."""
    path = request.path_info.rstrip("/") or "/"
    if _exempt(path):
        return None
    prefix = limiter_settings().key_prefix
    if request.method == "POST" and path in AUTH_PATHS:
        keys = [f"{prefix}:auth:ip:{ip or client_ip(request)}"]
        email = _email_in_body(request)
        if email:
            keys.append(f"{prefix}:auth:email:{_digest(email)}")
        return "auth", keys
    user_id = client_user_id(request)
    client = _client(request, user_id, ip)
    if request.method == "POST" and path == ORDERS_PATH and user_id is not None:
        return "orders", [f"{prefix}:orders:{client}"]
    return "default", [f"{prefix}:default:{client}"]


def _hit_one(scope: str, key: str, limits: Policy) -> Decision | None:
    """One bucket's decision; None when Redis failed open."""
    try:
        return hit(key, limits)
    except RedisError:
        metrics.ratelimit_backend_errors.labels(scope=scope).inc()
        logger.warning("ratelimit_failed_open", scope=scope, exc_info=True)
        return None


def check(scope: str, keys: list[str]) -> Decision | None:
    """The most restrictive decision over `keys`; None when Redis failed open."""
    limits = policy(scope)
    if len(keys) == 1 and scope != "auth":  # the usual case, without the lists below
        return _hit_one(scope, keys[0], limits)
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


def request_decision(request: HttpRequest, *, ip: str | None = None) -> Decision | None:
    """The limiter's decision on a request; None when it is not limited (disabled,
    exempt, or Redis failed open). Counts a refusal."""
    config = limiter_settings()
    if not config.enabled:
        return None
    path = request.path_info.rstrip("/") or "/"
    if _exempt(path):
        return None
    if request.method == "POST" and (path in AUTH_PATHS or path == ORDERS_PATH):
        scope, keys = request_buckets(request, ip=ip)  # type: ignore[misc]  # not exempt
        decision = check(scope, keys)
    else:
        # The default scope, as request_buckets and check give it, without their lists:
        # every request but a few POSTs takes this path.
        scope = "default"
        client = _client(request, client_user_id(request), ip)
        decision = _hit_one(scope, f"{config.key_prefix}:default:{client}", config.policies[scope])
    if decision is not None and not decision.allowed:
        metrics.ratelimited_requests.labels(scope=scope).inc()
    return decision


def put_header_items(store: dict[str, tuple[str, str]], decision: Decision) -> None:
    """The RateLimit-* headers, stored as ResponseHeaders stores them (lowercased name ->
    (name, value)) into a response's `headers._store`: digits only, so they need none
    of HttpResponse.__setitem__'s encoding checks."""
    store["ratelimit-limit"] = ("RateLimit-Limit", str(decision.limit))
    store["ratelimit-remaining"] = ("RateLimit-Remaining", str(decision.remaining))
    store["ratelimit-reset"] = ("RateLimit-Reset", str(math.ceil(decision.reset)))


def refusal(request: HttpRequest, decision: Decision) -> JsonResponse:
    """The 429 problem of a refused request, with Retry-After and the RateLimit headers."""
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
    put_header_items(response.headers._store, decision)
    return response

"""Resilience helpers: a circuit breaker whose state is shared between processes
(pybreaker; through Redis, or through the cache in embedded mode), bounded retries of
remote calls (tenacity), and the one backoff delay every retry in the system uses
(remote calls, event handlers, webhook deliveries, saga steps).
"""

import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pybreaker
import redis
import structlog
import tenacity
from django.conf import settings
from django.core.cache import cache

from apps.core.data.redis_clients import redis_client

logger = structlog.get_logger(__name__)

STATE_CLOSED = pybreaker.STATE_CLOSED
STATE_OPEN = pybreaker.STATE_OPEN
STATE_HALF_OPEN = pybreaker.STATE_HALF_OPEN
CircuitBreakerError = pybreaker.CircuitBreakerError
CircuitBreakerListener = pybreaker.CircuitBreakerListener


class PreciseRedisStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage with `opened_at` in microseconds.

    pybreaker stores whole seconds, so a cool-down of N seconds would last anywhere
    between N-1 and N; that breaks short cool-downs (and our tests of them).
    """

    # Only move forward: two processes opening at once keep the later time.
    _SET_IF_GREATER = """
    local current = redis.call('GET', KEYS[1])
    if not current or tonumber(ARGV[1]) > tonumber(current) then
        redis.call('SET', KEYS[1], ARGV[1])
    end
    """

    # How long the state the fast-fail check read stands in for the read pybreaker makes
    # before the guarded call that follows it in the same thread.
    SNAPSHOT_SECONDS = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._snapshot = threading.local()

    def state_and_opened_at(self) -> tuple[str, datetime | None]:
        """Both in one round trip (the fast-fail check runs before every call), with the
        failure counter. Kept for the guarded call that follows in this thread: it reads
        no state again, and its success writes nothing when there was no failure to
        reset. A charge then costs one round trip instead of three."""
        try:
            state, opened_at, failures = self._redis.mget(
                self._namespace("state"), self._namespace("opened_at"),
                self._namespace("fail_counter"),
            )  # fmt: skip
        except redis.RedisError:
            logger.warning("circuit_breaker_redis_error", exc_info=True)
            return STATE_CLOSED, None
        if isinstance(state, bytes):
            state = state.decode()
        # A missing state is left to pybreaker's read, which re-initialises it.
        self._snapshot.value = (time.monotonic(), state, int(failures or 0)) if state else None
        return (
            state or STATE_CLOSED,
            datetime.fromtimestamp(float(opened_at), UTC) if opened_at else None,
        )

    def _fresh_snapshot(self) -> tuple[float, str, int] | None:
        snapshot: tuple[float, str, int] | None = getattr(self._snapshot, "value", None)
        if snapshot is None or time.monotonic() - snapshot[0] > self.SNAPSHOT_SECONDS:
            return None
        return snapshot

    def _forget_snapshot(self) -> None:
        self._snapshot.value = None

    @property
    def state(self) -> str:
        snapshot = self._fresh_snapshot()
        return snapshot[1] if snapshot else super().state

    @state.setter
    def state(self, state: str) -> None:
        self._forget_snapshot()
        pybreaker.CircuitRedisStorage.state.fset(self, state)  # type: ignore[attr-defined]

    def increment_counter(self) -> None:
        self._forget_snapshot()  # the call failed: what it read is out of date
        super().increment_counter()

    def reset_counter(self) -> None:
        snapshot = self._fresh_snapshot()
        self._forget_snapshot()  # one call's outcome per check
        if snapshot is not None and snapshot[2] == 0:
            return  # no failure counted when the check read it: nothing to reset
        super().reset_counter()

    @property
    def opened_at(self) -> datetime | None:
        try:
            value = self._redis.get(self._namespace("opened_at"))
        except redis.RedisError:
            logger.warning("circuit_breaker_redis_error", exc_info=True)
            return None
        return datetime.fromtimestamp(float(value), UTC) if value else None

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        try:
            self._redis.eval(
                self._SET_IF_GREATER, 1, self._namespace("opened_at"), f"{now.timestamp():.6f}"
            )
        except redis.RedisError:
            logger.warning("circuit_breaker_redis_error", exc_info=True)


class CircuitCacheStorage(pybreaker.CircuitBreakerStorage):
    """Breaker state in Django's cache: `make run`'s embedded mode has no Redis, and its
    file cache is what the web process and the workers share.

    The file cache has no atomic increment: two processes failing at the same instant
    may count one failure; the breaker then opens one call later.
    """

    def __init__(self, state: str, namespace: str) -> None:
        super().__init__("cache")
        self._namespace = namespace
        self._default_state = state

    def _key(self, name: str) -> str:
        return f"{self._namespace}:{name}"

    def _increment(self, name: str) -> None:
        # Not cache.incr: it stores the result with the default timeout (5 minutes).
        key = self._key(name)
        cache.set(key, cache.get(key, 0) + 1, timeout=None)

    def state_and_opened_at(self) -> tuple[str, datetime | None]:
        values = cache.get_many([self._key("state"), self._key("opened_at")])
        opened_at = values.get(self._key("opened_at"))
        return (
            values.get(self._key("state"), self._default_state),
            datetime.fromtimestamp(opened_at, UTC) if opened_at is not None else None,
        )

    @property
    def state(self) -> str:
        return str(cache.get(self._key("state"), self._default_state))

    @state.setter
    def state(self, state: str) -> None:
        cache.set(self._key("state"), state, timeout=None)

    def increment_counter(self) -> None:
        self._increment("fail_counter")

    def reset_counter(self) -> None:
        cache.set(self._key("fail_counter"), 0, timeout=None)

    def increment_success_counter(self) -> None:
        self._increment("success_counter")

    def reset_success_counter(self) -> None:
        cache.set(self._key("success_counter"), 0, timeout=None)

    @property
    def counter(self) -> int:
        return int(cache.get(self._key("fail_counter"), 0))

    @property
    def success_counter(self) -> int:
        return int(cache.get(self._key("success_counter"), 0))

    @property
    def opened_at(self) -> datetime | None:
        return self.state_and_opened_at()[1]

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        # Only move forward: two processes opening at once keep the later time.
        current = cache.get(self._key("opened_at"))
        if current is None or now.timestamp() > current:
            cache.set(self._key("opened_at"), now.timestamp(), timeout=None)


class SharedCircuitBreaker(pybreaker.CircuitBreaker):
    """pybreaker's breaker without its process-wide lock around the guarded call.

    pybreaker holds one lock for the whole call, so in a threaded web process every
    call would queue behind the one in flight (up to its read timeout). State changes
    still take that lock; the state itself lives in the storage (Redis).
    """

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.state.call(func, *args, **kwargs)

    def rejects_calls(self) -> bool:
        """Open and still cooling down: a call would fail at once without being made."""
        storage = self._state_storage
        if isinstance(storage, PreciseRedisStorage | CircuitCacheStorage):
            state, opened_at = storage.state_and_opened_at()
        else:
            state, opened_at = storage.state, storage.opened_at
        return (
            state == STATE_OPEN
            and opened_at is not None
            and datetime.now(UTC) < opened_at + timedelta(seconds=self.reset_timeout)
        )


_breakers: dict[tuple[Any, ...], SharedCircuitBreaker] = {}
_breakers_lock = threading.Lock()


def shared_circuit_breaker(
    name: str,
    *,
    fail_max: int,
    reset_timeout: float,
    exclude: Iterable[type[BaseException]] = (),
    listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
) -> SharedCircuitBreaker:
    """The breaker `name`, its state under CIRCUIT_BREAKER_NAMESPACE in Redis, or in the
    cache without REDIS_URL (`make run`'s embedded mode).

    Every process that asks for the same name agrees on the state.
    """
    namespace = f"{settings.CIRCUIT_BREAKER_NAMESPACE}:{name}"
    key = (settings.REDIS_URL, namespace, fail_max, reset_timeout)
    with _breakers_lock:
        breaker = _breakers.get(key)
        if breaker is not None:
            return breaker
        storage: pybreaker.CircuitBreakerStorage
        cacheable = True
        if settings.REDIS_URL:
            try:
                storage = PreciseRedisStorage(
                    STATE_CLOSED, redis_client(settings.REDIS_URL), namespace=namespace
                )
            except redis.RedisError:
                # Degrade to a per-process breaker; try Redis again on the next call.
                logger.warning("circuit_breaker_redis_unavailable", breaker=name, exc_info=True)
                storage, cacheable = pybreaker.CircuitMemoryStorage(STATE_CLOSED), False
        else:
            storage = CircuitCacheStorage(STATE_CLOSED, namespace)
        breaker = SharedCircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            exclude=list(exclude),
            listeners=list(listeners),
            state_storage=storage,
            name=name,
        )
        if cacheable:
            _breakers[key] = breaker
        return breaker


def backoff_delay(retries: int, *, base_seconds: float, max_seconds: float) -> float:
    """Seconds to wait before the retry that follows `retries` earlier ones (0 for the
    first): exponential, capped at `max_seconds`, with full jitter (uniform from 0 to
    that bound), so that callers failing together do not retry together."""
    return random.uniform(0, min(max_seconds, base_seconds * 2**retries))


def jittered_retry(
    *,
    retry_on: tuple[type[BaseException], ...],
    attempts: int,
    backoff_seconds: float,
    max_backoff_seconds: float,
    total_seconds: float,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """Exponential backoff with full jitter, bounded in attempts and in total time.

    Only `retry_on` exceptions are retried; anything else (a decline, an open
    circuit) propagates at once. The last error is re-raised when the budget is spent.
    """
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_after_delay(total_seconds),
        wait=lambda state: backoff_delay(
            state.attempt_number - 1, base_seconds=backoff_seconds, max_seconds=max_backoff_seconds
        ),
        retry=tenacity.retry_if_exception_type(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )

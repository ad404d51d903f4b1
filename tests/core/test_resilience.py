"""apps.core.resilience: the shared breaker (Redis, or the cache in embedded mode) and the
bounded jittered retry."""

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pybreaker
import pytest

from apps.core.resilience import (
    CircuitCacheStorage,
    PreciseRedisStorage,
    backoff_delay,
    jittered_retry,
    shared_circuit_breaker,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("retries", "bound"),
    [(0, 0.5), (1, 1.0), (3, 4.0), (4, 5.0), (40, 5.0)],  # 0.5 * 2**retries, capped at 5
)
def test_backoff_delay_is_full_jitter_under_the_capped_exponential(retries, bound):
    delays = [backoff_delay(retries, base_seconds=0.5, max_seconds=5.0) for _ in range(400)]
    assert all(0 <= delay <= bound for delay in delays)
    # Full jitter: spread over the whole range, not bunched at the bound.
    assert min(delays) < bound / 10
    assert max(delays) > bound * 0.9


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


@pytest.fixture
def redis_namespace(settings):
    assert settings.REDIS_URL, "needs Redis: run through scripts/testenv.py"
    settings.CIRCUIT_BREAKER_NAMESPACE = f"test-breaker:{uuid.uuid4().hex}"
    return settings


def failing_call(attempts: list) -> None:
    attempts.append(time.monotonic())
    raise Transient


def test_retry_stops_after_the_attempt_budget():
    attempts: list[float] = []
    retry = jittered_retry(
        retry_on=(Transient,),
        attempts=4,
        backoff_seconds=0.001,
        max_backoff_seconds=0.002,
        total_seconds=10,
    )
    with pytest.raises(Transient):
        retry(failing_call, attempts)
    assert len(attempts) == 4


def test_retry_stops_after_the_time_budget():
    attempts: list[float] = []
    retry = jittered_retry(
        retry_on=(Transient,),
        attempts=1000,
        backoff_seconds=0.05,
        max_backoff_seconds=0.05,
        total_seconds=0.2,
    )
    started = time.monotonic()
    with pytest.raises(Transient):
        retry(failing_call, attempts)
    assert time.monotonic() - started < 1.0
    assert 1 < len(attempts) < 1000


def test_retry_never_repeats_other_errors():
    calls = []

    def permanent() -> None:
        calls.append(1)
        raise Permanent

    retry = jittered_retry(
        retry_on=(Transient,),
        attempts=5,
        backoff_seconds=0.001,
        max_backoff_seconds=0.001,
        total_seconds=5,
    )
    with pytest.raises(Permanent):
        retry(permanent)
    assert calls == [1]


def test_opened_at_keeps_sub_second_precision_and_only_moves_forward(redis_namespace):
    breaker = shared_circuit_breaker("precision", fail_max=1, reset_timeout=1)
    storage = breaker._state_storage
    assert isinstance(storage, PreciseRedisStorage)
    later = datetime(2030, 1, 1, 12, 0, 0, 750_000, tzinfo=UTC)

    storage.opened_at = later
    storage.opened_at = later - timedelta(milliseconds=500)

    assert storage.opened_at == later


def redis_commands(names=("get", "mget", "set", "incr", "eval", "evalsha")) -> int:
    from django.conf import settings

    from apps.core.data.redis_clients import redis_client

    stats = redis_client(settings.REDIS_URL).info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names)


def test_a_checked_successful_call_costs_one_redis_round_trip(redis_namespace):
    breaker = shared_circuit_breaker("round-trips", fail_max=3, reset_timeout=60)
    breaker.call(lambda: "warm")  # pybreaker initialises its keys once
    before = redis_commands()

    assert not breaker.rejects_calls()
    assert breaker.call(lambda: "ok") == "ok"

    assert redis_commands() - before == 1  # the check's MGET; no GET of the state, no SET


def test_a_success_still_resets_failures_counted_before_the_check(redis_namespace):
    breaker = shared_circuit_breaker("reset", fail_max=3, reset_timeout=60)
    # Another process's breaker with the same name: its failures count here too.
    other = shared_circuit_breaker("reset", fail_max=3, reset_timeout=61)
    for _ in range(2):
        with pytest.raises(Transient):
            other.call(failing_call, [])
    assert breaker._state_storage.counter == 2

    assert not breaker.rejects_calls()
    breaker.call(lambda: "ok")
    assert breaker._state_storage.counter == 0

    # And a circuit the other process opened is open here at the next check.
    for _ in range(3):
        with pytest.raises((Transient, pybreaker.CircuitBreakerError)):
            other.call(failing_call, [])
    assert breaker.rejects_calls()
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: "not made")


def test_a_slow_call_does_not_hold_up_other_calls_in_the_process(redis_namespace):
    breaker = shared_circuit_breaker("concurrency", fail_max=5, reset_timeout=1)
    slow_started, release = threading.Event(), threading.Event()

    def slow() -> None:
        slow_started.set()
        release.wait(5)

    thread = threading.Thread(target=breaker.call, args=(slow,))
    thread.start()
    try:
        assert slow_started.wait(5)
        started = time.monotonic()
        assert breaker.call(lambda: "fast") == "fast"
        assert time.monotonic() - started < 0.5
    finally:
        release.set()
        thread.join(5)


# What another process of `make run` (a Celery worker) does: fail calls through the breaker.
OPEN_THE_BREAKER = """
import django
django.setup()
from apps.core.resilience import shared_circuit_breaker
breaker = shared_circuit_breaker("embedded", fail_max=2, reset_timeout=60)
for _ in range(2):
    try:
        breaker.call(lambda: 1 / 0)
    except Exception:
        pass
assert breaker.current_state == "open", breaker.current_state
"""


@pytest.mark.embedded
def test_without_redis_a_breaker_another_process_opened_is_open_here(settings):
    assert not settings.REDIS_URL
    settings.CIRCUIT_BREAKER_NAMESPACE = f"test-breaker:{uuid.uuid4().hex}"
    breaker = shared_circuit_breaker("embedded", fail_max=2, reset_timeout=60)
    assert breaker.current_state == "closed"

    subprocess.run(
        [sys.executable, "-c", OPEN_THE_BREAKER],
        cwd=ROOT,
        env=os.environ
        | {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "CIRCUIT_BREAKER_NAMESPACE": settings.CIRCUIT_BREAKER_NAMESPACE,
        },
        check=True,
        timeout=60,
    )

    assert breaker.current_state == "open"
    assert breaker.rejects_calls()
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(lambda: "not made")


@pytest.mark.embedded
def test_without_redis_opened_at_only_moves_forward(settings):
    settings.CIRCUIT_BREAKER_NAMESPACE = f"test-breaker:{uuid.uuid4().hex}"
    storage = shared_circuit_breaker("forward", fail_max=1, reset_timeout=1)._state_storage
    assert isinstance(storage, CircuitCacheStorage)
    later = datetime(2030, 1, 1, 12, 0, 0, 750_000, tzinfo=UTC)

    storage.opened_at = later
    storage.opened_at = later - timedelta(milliseconds=500)

    assert storage.opened_at == later

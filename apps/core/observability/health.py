"""Readiness checks of the dependencies, each timed and isolated from the others."""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import connections

from apps.core.data.replicas import PRIMARY, replica_health

BROKER_TIMEOUT_SECONDS = 1.0

# Checks of optional dependencies that live in a context (apps.core imports none):
# name -> check, registered from the context's AppConfig.ready().
_optional_checks: dict[str, Callable[[], str]] = {}


def register_readiness_check(name: str, check: Callable[[], str]) -> None:
    """Add a non-critical check: when it raises, /readyz says `degraded`, still 200."""
    _optional_checks[name] = check


@dataclass
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    critical: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ok" if self.ok else "down",
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.detail:
            body["detail"] = self.detail
        return body


def _timed(name: str, critical: bool, check: Callable[[], str]) -> CheckResult:
    started = time.perf_counter()
    try:
        detail = check()
        ok = True
    except Exception as exc:  # a readiness probe reports failures, it never raises them
        detail, ok = f"{type(exc).__name__}: {exc}".strip()[:300], False
    return CheckResult(name, ok, (time.perf_counter() - started) * 1000, critical, detail)


def _check_primary() -> str:
    with connections[PRIMARY].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return ""


def _check_replica(alias: str) -> Callable[[], str]:
    def check() -> str:
        lag = replica_health.measure(alias)
        if lag > settings.REPLICA_MAX_LAG_SECONDS:
            raise RuntimeError(f"lagging {lag:.2f}s (max {settings.REPLICA_MAX_LAG_SECONDS}s)")
        return f"lag {lag:.3f}s"

    return check


def _check_cache() -> str:
    key = f"readyz:{uuid.uuid4().hex}"
    cache.set(key, "1", timeout=5)
    if cache.get(key) != "1":
        raise RuntimeError("value written was not read back")
    cache.delete(key)
    return ""


def _check_broker() -> str:
    with current_app.connection_for_write(connect_timeout=BROKER_TIMEOUT_SECONDS) as connection:
        connection.ensure_connection(max_retries=0, timeout=int(BROKER_TIMEOUT_SECONDS))
    return ""


def run_readiness_checks() -> list[CheckResult]:
    results = [_timed("database:default", True, _check_primary)]
    for alias in settings.DATABASE_REPLICAS:
        result = _timed(f"database:{alias}", False, _check_replica(alias))
        if not result.ok:
            replica_health.mark_down(alias)
            connections[alias].close()
        results.append(result)
    results.append(_timed("cache", False, _check_cache))
    results.append(_timed("broker", False, _check_broker))
    results += [_timed(name, False, check) for name, check in _optional_checks.items()]
    return results

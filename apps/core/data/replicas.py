"""Primary/replica routing.

Writes, migrations, anything inside a transaction and every read not declared
replica-safe (`apps.core.data.routing.replica_safe`) go to the primary. Declared reads go to
a healthy replica, round robin per request (one replica per request keeps its reads
monotonic), unless `apps.core.data.routing` says this read must see the primary. A replica
that is unreachable or lags more than REPLICA_MAX_LAG_SECONDS is skipped; each process
re-checks it every REPLICA_CHECK_INTERVAL_SECONDS. A read that fails on a replica for a
connection reason (it stopped or restarted under a request) runs again on the primary.
"""

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import structlog
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model

from apps.core.data.routing import REPLICA_SAFE_HINT, current_scope, must_read_primary, record_write

logger = structlog.get_logger(__name__)

PRIMARY = "default"
SECOND_SAMPLE_DELAY_SECONDS = 0.02

# `<=`, not `=`: after a replica restart the receive position restarts at the start of a
# WAL segment, behind what was already replayed from disk; nothing is pending then.
_LAG_SQL = """
SELECT pg_is_in_recovery(),
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn(),
       pg_last_wal_replay_lsn() >= %s::pg_lsn,
       EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
"""


class ReplicaHealth:
    """Per-process view of each replica: usable or not, re-measured periodically."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked_at: dict[str, float] = {}
        self._healthy: dict[str, bool] = {}
        # (when, receive LSN) of the previous measurement, to tell progress from lag.
        self._received: dict[str, tuple[float, str]] = {}
        self.lag_seconds: dict[str, float | None] = {}

    def is_healthy(self, alias: str) -> bool:
        now = time.monotonic()
        checked_at = self._checked_at.get(alias)
        if checked_at is None or now - checked_at >= settings.REPLICA_CHECK_INTERVAL_SECONDS:
            self._refresh(alias, now)
        return self._healthy.get(alias, False)

    def mark_down(self, alias: str) -> None:
        with self._lock:
            self._healthy[alias] = False
            self._checked_at[alias] = time.monotonic()
            self.lag_seconds[alias] = None

    def _refresh(self, alias: str, now: float) -> None:
        with self._lock:
            # Another thread may have measured while we waited.
            checked_at = self._checked_at.get(alias)
            if (
                checked_at is not None
                and now - checked_at < settings.REPLICA_CHECK_INTERVAL_SECONDS
            ):
                return
            self._checked_at[alias] = now
        try:
            self.measure(alias)
        except DatabaseError as exc:
            logger.warning("replica_unavailable", alias=alias, error=str(exc).strip())
            self.mark_down(alias)

    def measure(self, alias: str) -> float:
        first_sample = alias not in self._received
        lag = self._measure_once(alias)
        if first_sample and lag > settings.REPLICA_MAX_LAG_SECONDS:
            # No earlier sample to tell a replaying tail from real lag: take one more.
            time.sleep(SECOND_SAMPLE_DELAY_SECONDS)
            lag = self._measure_once(alias)
        if lag > settings.REPLICA_MAX_LAG_SECONDS:
            logger.warning("replica_lagging", alias=alias, lag_seconds=round(lag, 3))
        return lag

    def _measure_once(self, alias: str) -> float:
        """Measure the replica's lag now, record whether it is usable, and return the lag.

        Caught up (everything received is replayed) means 0. Otherwise the lag is the age
        of the last replayed transaction, except when the replica has replayed all it had
        received at the previous measurement: then it is keeping up, and behind by at most
        the time since. That avoids calling an idle replica, replaying a tail of
        non-transactional WAL, hours behind.
        """
        previous = self._received.get(alias)
        with without_primary_fallback(), connections[alias].cursor() as cursor:
            cursor.execute(_LAG_SQL, [previous[1] if previous else "0/0"])
            in_recovery, received, caught_up, replayed_previous, staleness = cursor.fetchone()
        now = time.monotonic()
        if not in_recovery or caught_up:
            lag = 0.0
        elif previous is not None and replayed_previous:
            lag = min(float(staleness or 0), now - previous[0])
        else:
            lag = float(staleness or 0)
        healthy = lag <= settings.REPLICA_MAX_LAG_SECONDS
        with self._lock:
            if received:
                self._received[alias] = (now, received)
            self._healthy[alias] = healthy
            self._checked_at[alias] = now
            self.lag_seconds[alias] = lag
        return lag


replica_health = ReplicaHealth()
_round_robin = itertools.count()


def _connection_usable(alias: str) -> bool:
    """Open (or re-validate) the replica connection before routing a read to it.

    A replica that went away since the last periodic check would otherwise fail the
    request; this costs one `SELECT 1` per request and replica, as Django's own
    CONN_HEALTH_CHECKS does.
    """
    scope = current_scope()
    if scope is not None and alias in scope.verified_aliases:
        return True
    connection = connections[alias]
    try:
        if connection.connection is not None and not connection.is_usable():
            connection.close()
        connection.ensure_connection()
    except DatabaseError as exc:
        logger.warning("replica_unavailable", alias=alias, error=str(exc).strip())
        replica_health.mark_down(alias)
        connection.close()
        return False
    if scope is not None:
        scope.verified_aliases.add(alias)
    return True


def choose_read_database(*, declared: bool = False) -> str:
    replicas = settings.DATABASE_REPLICAS
    if not replicas or connections[PRIMARY].in_atomic_block or must_read_primary(declared=declared):
        return PRIMARY
    scope = current_scope()
    if scope is not None and scope.replica_alias is not None:
        return scope.replica_alias
    start = next(_round_robin)
    for offset in range(len(replicas)):
        alias = replicas[(start + offset) % len(replicas)]
        if replica_health.is_healthy(alias) and _connection_usable(alias):
            if scope is not None:
                scope.replica_alias = alias
            return alias
    return PRIMARY


_fallback_disabled: ContextVar[bool] = ContextVar("mercato_replica_fallback_off", default=False)


@contextlib.contextmanager
def without_primary_fallback() -> Iterator[None]:
    """Queries in the block must be answered by the replica itself or fail (measuring
    a replica, asking it about its own state)."""
    token = _fallback_disabled.set(True)
    try:
        yield
    finally:
        _fallback_disabled.reset(token)


def _lost_connection(exc: Exception) -> bool:
    """The server went away (shutdown, crash, network), as opposed to a query error."""
    if isinstance(exc, InterfaceError):  # the connection was already closed
        return True
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    # None: psycopg lost the connection itself; 08: connection exception;
    # 57P: admin/crash shutdown, cannot connect now.
    return sqlstate is None or sqlstate.startswith(("08", "57P"))


def replica_read_fallback(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Execute wrapper of every replica connection: a read that fails because the replica
    went away marks it down (for REPLICA_CHECK_INTERVAL_SECONDS), closes the broken
    connection (the next request reconnects) and runs once more on the primary. The
    caller reads the rows from its own cursor, which now holds the primary's."""
    try:
        return execute(sql, params, many, context)
    except (OperationalError, InterfaceError) as exc:
        replica = context["connection"]
        if _fallback_disabled.get() or replica.in_atomic_block or not _lost_connection(exc):
            raise
        alias = replica.alias
        logger.warning("replica_read_failed", alias=alias, error=str(exc).strip())
        replica_health.mark_down(alias)
        scope = current_scope()
        if scope is not None:  # the rest of the request reads the primary
            scope.verified_aliases.discard(alias)
            if scope.replica_alias == alias:
                scope.replica_alias = None
        replica.close()
        primary = connections[PRIMARY].cursor()
        result = primary.executemany(sql, params) if many else primary.execute(sql, params)
        context["cursor"].cursor = primary.cursor
        return result


def install_replica_read_fallback(
    sender: object, connection: BaseDatabaseWrapper, **kwargs: Any
) -> None:
    """`connection_created` receiver: wraps each replica connection's queries once."""
    if (
        connection.alias in settings.DATABASE_REPLICAS
        and replica_read_fallback not in connection.execute_wrappers
    ):
        connection.execute_wrappers.append(replica_read_fallback)


class ReplicaRouter:
    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        return choose_read_database(declared=hints.get(REPLICA_SAFE_HINT, False))

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        record_write()
        return PRIMARY

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool:
        # Every alias holds the same data (replicas are physical copies).
        return True

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool:
        return db == PRIMARY

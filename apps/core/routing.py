"""Read-routing state: which reads must see the primary.

The database router (config.db_router) asks `must_read_primary()` before sending a
read to a replica. A read goes to the primary when:
- the current task or block asked for it (`primary_reads()`; Celery tasks by default),
- this request already wrote (its own later reads must see the write),
- the client wrote within READ_YOUR_WRITES_SECONDS (read-your-writes pinning, keyed by
  user id so it works for token clients as well as sessions).
"""

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import structlog
from django.conf import settings
from django.core.cache import cache

logger = structlog.get_logger(__name__)

PIN_KEY = "rw-pin:user:{user_id}"


@dataclass
class RoutingScope:
    """Routing facts of one request or task."""

    user_id: int | str | None = None
    wrote: bool = False
    force_primary: bool = False
    pinned: bool | None = None  # looked up lazily, once per scope
    replica_alias: str | None = None  # one replica per scope: reads stay monotonic
    verified_aliases: set[str] = field(default_factory=set)


_scope: ContextVar[RoutingScope | None] = ContextVar("mercato_routing_scope", default=None)


def current_scope() -> RoutingScope | None:
    return _scope.get()


@contextlib.contextmanager
def routing_scope(
    *, user_id: int | str | None = None, force_primary: bool = False
) -> Iterator[RoutingScope]:
    scope = RoutingScope(user_id=user_id, force_primary=force_primary)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


@contextlib.contextmanager
def primary_reads() -> Iterator[None]:
    """Send every read in the block to the primary (for reads that must be fresh)."""
    scope = _scope.get()
    if scope is None:
        with routing_scope(force_primary=True):
            yield
        return
    previous = scope.force_primary
    scope.force_primary = True
    try:
        yield
    finally:
        scope.force_primary = previous


def record_write() -> None:
    scope = _scope.get()
    if scope is not None:
        scope.wrote = True


def pin_user_to_primary(user_id: int | str) -> None:
    """Make this user's reads go to the primary for READ_YOUR_WRITES_SECONDS."""
    try:
        cache.set(PIN_KEY.format(user_id=user_id), 1, timeout=settings.READ_YOUR_WRITES_SECONDS)
    except Exception:  # a cache outage must not fail the write that already committed
        logger.warning("read_pin_store_failed", user_id=user_id, exc_info=True)


def must_read_primary() -> bool:
    scope = _scope.get()
    if scope is None:
        return False
    if scope.force_primary or scope.wrote:
        return True
    if scope.user_id is None:
        return False
    if scope.pinned is None:
        try:
            scope.pinned = bool(cache.get(PIN_KEY.format(user_id=scope.user_id)))
        except Exception:
            # Unknown pin state: the primary is the read that cannot be stale.
            logger.warning("read_pin_lookup_failed", exc_info=True)
            scope.pinned = True
    return scope.pinned

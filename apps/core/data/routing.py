"""Read-routing state: which reads may be served by a replica.

The primary serves every read unless the code declares it replica-safe: a selector
decorated with `replica_safe` (lists, details, search, popular) tolerates a little lag,
and only its reads may go to a replica. The database router (apps.core.data.replicas) asks
`must_read_primary()`; even a declared read goes to the primary when:
- the current task did not opt in (Celery tasks read the primary),
- this request already wrote (its own later reads must see the write),
- the client wrote within READ_YOUR_WRITES_SECONDS (read-your-writes pinning, keyed by
  user id so it works for token clients as well as sessions).
A forgotten declaration costs scale, never a stale read.
"""

import functools
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import structlog
from django.conf import settings
from django.core.cache import cache
from django.db.models import QuerySet

logger = structlog.get_logger(__name__)

PIN_KEY = "rw-pin:user:{user_id}"
REPLICA_SAFE_HINT = "replica_safe"

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class RoutingScope:
    """Routing facts of one request or task."""

    user_id: int | str | None = None
    wrote: bool = False
    force_primary: bool = False
    pinned: bool | None = None  # looked up lazily, once per scope
    replica_alias: str | None = None  # one replica per scope: reads stay monotonic
    verified_aliases: set[str] = field(default_factory=set)
    pin_stored: bool = False  # the client's pin was stored after its last write (pin_due)


_scope: ContextVar[RoutingScope | None] = ContextVar("mercato_routing_scope", default=None)
_replica_safe: ContextVar[bool] = ContextVar("mercato_replica_safe", default=False)


def current_scope() -> RoutingScope | None:
    return _scope.get()


class routing_scope:  # lowercase: used as the function it replaced
    """The routing scope of a request or task while the `with` block runs. A class, not
    a generator: every request opens one."""

    __slots__ = ("_token", "scope")

    def __init__(self, *, user_id: int | str | None = None, force_primary: bool = False):
        self.scope = RoutingScope(user_id=user_id, force_primary=force_primary)

    def __enter__(self) -> RoutingScope:
        self._token = _scope.set(self.scope)
        return self.scope

    def __exit__(self, *exc_info: object) -> None:
        _scope.reset(self._token)


def replica_safe(selector: Callable[P, R]) -> Callable[P, R]:
    """Declare a selector's reads safe to serve from a replica (they tolerate a little lag).

    Reads while it runs are declared, and so is a QuerySet it returns: the router gets a
    `replica_safe` hint whenever the caller evaluates it later (paginated, rendered), and
    routes it then, with the pin, lag guard and health of that moment. Other reads the
    caller makes with its rows (a lazy relation) are undeclared and read the primary.
    """

    @functools.wraps(selector)
    def declared(*args: P.args, **kwargs: P.kwargs) -> R:
        token = _replica_safe.set(True)
        try:
            result = selector(*args, **kwargs)
        finally:
            _replica_safe.reset(token)
        if isinstance(result, QuerySet):
            # Hints travel with every clone of the QuerySet (filtered, ordered, sliced).
            result._add_hints(**{REPLICA_SAFE_HINT: True})  # type: ignore[attr-defined]
        return result

    return declared


def record_write() -> None:
    scope = _scope.get()
    if scope is not None:
        scope.wrote = True
        scope.pin_stored = False


def pin_due() -> tuple[str, int] | None:
    """The read pin (cache key, seconds) the current scope's writes call for and that was
    not stored since its last write, or None. Whoever stores it (with other work, in one
    round trip: apps.core.data.caching) says so with `pin_stored()`, and the request's end
    does not store it again."""
    scope = _scope.get()
    if scope is None or not scope.wrote or scope.user_id is None or scope.pin_stored:
        return None
    return PIN_KEY.format(user_id=scope.user_id), settings.READ_YOUR_WRITES_SECONDS


def pin_stored() -> None:
    scope = _scope.get()
    if scope is not None:
        scope.pin_stored = True


def pin_user_to_primary(user_id: int | str) -> None:
    """Make this user's reads go to the primary for READ_YOUR_WRITES_SECONDS."""
    try:
        cache.set(PIN_KEY.format(user_id=user_id), 1, timeout=settings.READ_YOUR_WRITES_SECONDS)
    except Exception:  # a cache outage must not fail the write that already committed
        logger.warning("read_pin_store_failed", user_id=user_id, exc_info=True)


def must_read_primary(*, declared: bool = False) -> bool:
    """Whether this read must use the primary; `declared`: the query itself is marked
    replica-safe (see `replica_safe`), besides any read while a declared selector runs."""
    if not (declared or _replica_safe.get()):
        return True
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

"""Two-level cache-aside: a bounded in-process LRU in front of the shared cache (Redis).

Consistency: every key has a version token in the shared cache; data is stored under
(key, version) and the LRU keeps the version it was filled with. Invalidation replaces
the token, so every process's next read misses, and a reader that loaded stale data
before the bump can only write it under the dead version.

Single flight: on a miss, one caller (across threads and processes) takes a short lock
in the shared cache and loads; the others poll for its result for a bounded time.

Pushed invalidation: on Redis, each process keeps the version tokens it read and a
dedicated RESP3 connection with `CLIENT TRACKING ON BCAST PREFIX <version keys>`, so Redis
pushes every change of a token and the hot path reads no token from Redis. A known token
is trusted only while that connection is alive and answered a PING within
`TRACKING_STALE_AFTER` seconds: a change is seen by every process within milliseconds, and
within `TRACKING_STALE_AFTER` if the connection goes silent. Otherwise (connection lost,
another cache backend) the token is read per request as before.

Degradation: every shared-cache call is guarded. When the shared cache fails, reads go
straight to the loader (the database) for `outage_backoff` seconds, without touching the
LRU either, because its freshness cannot be checked without the version tokens.
"""

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from typing import Any

import redis
import structlog
from cachetools import TTLCache
from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django_redis.client import DefaultClient  # type: ignore[import-untyped]

from apps.core.data.redis_clients import own_connection
from apps.core.data.routing import pin_due, pin_stored

logger = structlog.get_logger(__name__)

_MISSING = object()
# The tracking connection PINGs this often when idle; a known version token is trusted
# only if a PING sent at most TRACKING_STALE_AFTER seconds ago was answered.
TRACKING_PING_INTERVAL = 0.25
TRACKING_STALE_AFTER = 1.0
TRACKING_RECONNECT_DELAY = 0.5
TRACKING_CLIENT_NAME = "mercato-cache-tracking"


class VersionTracker:
    """A thread holding one tracking connection: forgets tokens Redis says changed.

    `on_invalidate(keys)` gets the changed Redis keys, or None for "all" (a flush, or the
    connection was lost or re-established: pushes may have been missed).
    """

    def __init__(self, url: str, prefix: str, on_invalidate: Callable[[list[Any] | None], None]):
        self.url = url
        self.prefix = prefix
        self.on_invalidate = on_invalidate
        self._answered_ping_sent_at = float("-inf")
        self._connected = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-version-tracker", daemon=True)
        self._thread.start()

    def trusted(self) -> bool:
        return (
            self._connected
            and time.monotonic() - self._answered_ping_sent_at < TRACKING_STALE_AFTER
        )

    def stop(self) -> None:
        self._stopped.set()
        self._connected = False

    def _run(self) -> None:
        while not self._stopped.is_set():
            pool = redis.ConnectionPool.from_url(
                self.url, protocol=3, socket_timeout=TRACKING_STALE_AFTER,
                socket_connect_timeout=0.5,
            )  # fmt: skip
            try:
                self._track(pool.get_connection())
            except Exception as exc:
                if not self._stopped.is_set():
                    logger.warning("cache_tracking_lost", prefix=self.prefix, error=repr(exc))
            finally:
                self._connected = False
                self.on_invalidate(None)
                pool.disconnect()
            self._stopped.wait(TRACKING_RECONNECT_DELAY)

    def _track(self, connection: Any) -> None:  # redis-py's Connection (private parser API)
        connection._parser.set_invalidation_push_handler(self._pushed)
        # Named, so operators (and tests) can find it in CLIENT LIST.
        connection.send_command("CLIENT", "SETNAME", TRACKING_CLIENT_NAME)
        connection.read_response()
        connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self.prefix)
        connection.read_response()
        # Tokens read before tracking began may have changed unseen.
        self.on_invalidate(None)
        self._answered_ping_sent_at = time.monotonic()
        self._connected = True
        while not self._stopped.is_set():
            if connection.can_read(timeout=TRACKING_PING_INTERVAL):
                connection.read_response(push_request=True)
            if time.monotonic() - self._answered_ping_sent_at < TRACKING_PING_INTERVAL:
                continue
            sent_at = time.monotonic()
            connection.send_command("PING")
            # Every push for a change Redis ran before this PING is handled before PONG.
            connection.read_response()
            self._answered_ping_sent_at = sent_at

    def _pushed(self, message: list[Any]) -> list[Any]:
        keys = message[1]
        self.on_invalidate(None if keys is None else [key.decode() for key in keys])
        return message


class SharedCacheDown(Exception):
    """The shared cache failed (or recently failed): callers fall back to the source."""


class TwoLevelCache:
    def __init__(
        self,
        *,
        namespace: str,
        local_maxsize: int = 2048,
        local_ttl: float = 30.0,
        shared_ttl: int = 300,
        lock_ttl: float = 5.0,
        wait_for_fill: float = 2.0,
        outage_backoff: float = 2.0,
        alias: str = "default",
        data_format: int = 1,
    ) -> None:
        self.namespace = namespace
        # Part of the data keys (not the version keys): a release that changes what it
        # stores bumps it, and shares invalidations with processes still on the old one.
        self.data_format = data_format
        self.shared_ttl = shared_ttl
        self.lock_ttl = lock_ttl
        self.wait_for_fill = wait_for_fill
        self.outage_backoff = outage_backoff
        self.alias = alias
        self._local_maxsize = local_maxsize
        self._local_ttl = local_ttl
        self._lock = threading.Lock()
        self._local: TTLCache[Hashable, Any] = TTLCache(maxsize=local_maxsize, ttl=local_ttl)
        self._down_until = 0.0
        # Version tokens read from Redis, trusted while the tracker vouches for them.
        self._known: TTLCache[str, Any] = TTLCache(maxsize=local_maxsize, ttl=local_ttl)
        # Bumped on every invalidation: a token read from Redis is remembered only if no
        # invalidation arrived while it was being read.
        self._sequence = 0
        self._tracker: VersionTracker | None = None
        self._tracked_config: dict[str, Any] | None = None
        self._tracked_prefix = ""
        os.register_at_fork(after_in_child=self._forget_tracker)

    # -- public ---------------------------------------------------------------------

    def get_or_load(self, key: Hashable, loader: Callable[[], Any]) -> Any:
        try:
            version = self._version(key)
        except SharedCacheDown:
            return loader()
        with self._lock:
            entry = self._local.get(key)
        if entry is not None and entry[0] == version:
            return entry[1]
        try:
            value = self._shared_get(self._data_key(key, version))
            if value is _MISSING:
                value = self._fill_once(key, version, loader)
        except SharedCacheDown:
            return loader()
        with self._lock:
            self._local[key] = (version, value)
        return value

    def invalidate(self, *keys: Hashable) -> None:
        """Make every process miss these keys on its next read."""
        if not keys:
            return
        with self._lock:
            for key in keys:
                self._local.pop(key, None)
        try:
            self._shared_call(
                "set_many", {self._version_key(key): uuid.uuid4().hex for key in keys}, None
            )
        except SharedCacheDown:
            # Bounded staleness: stored data expires after `shared_ttl` anyway.
            logger.warning("cache_invalidation_failed", namespace=self.namespace, keys=keys)
        # This process knows now; Redis's push may arrive later (after the next request).
        with self._lock:
            self._sequence += 1
            for key in keys:
                self._known.pop(str(key), None)

    def invalidate_on_commit(self, *keys: Hashable) -> None:
        # Before the commit a concurrent reader could reload and cache the old row.
        transaction.on_commit(lambda: self.invalidate(*keys))

    def clear_local(self) -> None:
        with self._lock:
            self._local = TTLCache(maxsize=self._local_maxsize, ttl=self._local_ttl)
            self._known.clear()
            self._sequence += 1
            self._down_until = 0.0

    def tracking(self) -> bool:
        """True while pushed invalidations spare the per-request version read."""
        tracker = self._tracking()
        return tracker is not None and tracker.trusted()

    # -- pushed invalidation ----------------------------------------------------------

    def _tracking(self) -> "VersionTracker | None":
        config = settings.CACHES.get(self.alias)
        if config is not self._tracked_config:
            self._retrack(config)
        return self._tracker

    def _retrack(self, config: dict[str, Any] | None) -> None:
        with self._lock:
            if self._tracker is not None:
                self._tracker.stop()
            self._tracker = None
            self._tracked_config = config
            self._known.clear()
            self._sequence += 1
            location = (config or {}).get("LOCATION")
            if "redis" not in (config or {}).get("BACKEND", "").lower() or not isinstance(
                location, str
            ):
                return  # another backend: the token is read per request
            self._tracked_prefix = caches[self.alias].make_key(self._version_key(""))
            self._tracker = VersionTracker(location, self._tracked_prefix, self._forget_versions)

    def _forget_tracker(self) -> None:
        # A forked child has no tracker thread: it starts its own on first use.
        self._tracker = None
        self._tracked_config = None
        self._lock = threading.Lock()
        self._known.clear()

    def _forget_versions(self, redis_keys: list[str] | None) -> None:
        with self._lock:
            self._sequence += 1
            if redis_keys is None:
                self._known.clear()
                return
            start = len(self._tracked_prefix)
            for redis_key in redis_keys:
                self._known.pop(redis_key[start:], None)

    # -- internals ------------------------------------------------------------------

    def _version_key(self, key: Hashable) -> str:
        return f"{self.namespace}:ver:{key}"

    def _data_key(self, key: Hashable, version: str) -> str:
        return f"{self.namespace}:data:{self.data_format}:{key}:{version}"

    def _shared_call(self, method: str, *args: Any) -> Any:
        if time.monotonic() < self._down_until:
            raise SharedCacheDown
        try:
            return getattr(caches[self.alias], method)(*args)
        except Exception as exc:
            self._down_until = time.monotonic() + self.outage_backoff
            logger.warning("shared_cache_unavailable", namespace=self.namespace, error=repr(exc))
            raise SharedCacheDown from exc

    def _shared_get(self, key: str) -> Any:
        return self._shared_call("get", key, _MISSING)

    def _version(self, key: Hashable) -> str:
        tracker = self._tracking()
        if tracker is None or not tracker.trusted():
            return self._read_version(key)
        name = str(key)
        with self._lock:
            version = self._known.get(name)
            sequence = self._sequence
        if version is not None:
            return str(version)
        version = self._read_version(key)
        with self._lock:
            if self._sequence == sequence and tracker.trusted():
                self._known[name] = version
        return str(version)

    def _read_version(self, key: Hashable) -> str:
        version_key = self._version_key(key)
        version = self._shared_get(version_key)
        if version is _MISSING:
            # A fresh token, never a reused one: an evicted version must not revive
            # data stored under an older token.
            self._shared_call("add", version_key, uuid.uuid4().hex, None)
            version = self._shared_get(version_key)
            if version is _MISSING:
                raise SharedCacheDown
        return str(version)

    def _fill_once(self, key: Hashable, version: str, loader: Callable[[], Any]) -> Any:
        data_key = self._data_key(key, version)
        lock_key = f"{data_key}:lock"
        if self._shared_call("add", lock_key, 1, self.lock_ttl):
            try:
                # A filler may have stored it and let go of the lock since our miss.
                value = self._shared_get(data_key)
                if value is not _MISSING:
                    return value
                value = loader()
                with contextlib.suppress(SharedCacheDown):
                    self._shared_call("set", data_key, value, self.shared_ttl)
            finally:
                with contextlib.suppress(SharedCacheDown):
                    self._shared_call("delete", lock_key)
            return value
        deadline = time.monotonic() + self.wait_for_fill
        while time.monotonic() < deadline:
            time.sleep(0.02)
            value = self._shared_get(data_key)
            if value is not _MISSING:
                return value
        # The filler is slow or died: load ourselves rather than fail.
        return loader()


def send_unless_pending(
    mark: str, *, timeout: float, send: Callable[[], None], log_as: str
) -> None:
    """Send a wake-up message unless one is queued already and has not started (`mark` is
    set in the default cache until its receiver calls `clear_pending`, or `timeout` runs
    out in case the message is lost). Best effort: a periodic sweep is the guarantee."""
    try:
        if not _marked_pending(mark, timeout):
            return
    except Exception:  # no cache to coalesce with: send anyway
        logger.warning(f"{log_as}_mark_failed", exc_info=True)
    try:
        send()
    except Exception:  # the caller committed already; the sweep picks its work up
        logger.warning(f"{log_as}_failed", exc_info=True)
        clear_pending(mark, log_as=log_as)  # the next commit tries again


def _marked_pending(mark: str, timeout: float) -> bool:
    """Set `mark` unless it is set; whether it was. A request that wrote (a commit kicks
    a worker) also needs its client's read pin (apps.core.data.routing): on Redis, both
    are stored in one round trip."""
    cache = caches["default"]
    pin = pin_due()
    client = getattr(cache, "client", None)
    if pin is None or type(client) is not DefaultClient or timeout <= 0 or pin[1] <= 0:
        return bool(cache.add(mark, 1, timeout=timeout))
    pin_key, pin_seconds = pin
    # As django-redis's add() and set() write them: an int is stored as its digits. Both
    # commands go out together on this thread's own connection (one round trip, without
    # redis-py's pipeline and per-command layers).
    commands = (
        ("SET", client.make_key(mark), 1, "NX", "PX", int(timeout * 1000)),
        ("SET", client.make_key(pin_key), 1, "PX", int(pin_seconds * 1000)),
    )
    connection = own_connection(client.get_client(write=True))
    try:
        added = _sent_together(connection, commands)[0]
    except redis.ConnectionError:
        # The server had closed the connection (a restart, an idle timeout): once more on
        # a new one. The first attempt may have stored the mark before its reply was
        # lost, so the caller sends its message either way (one message too many at most).
        _sent_together(connection, commands)
        added = True
    pin_stored()
    return bool(added)


def _sent_together(connection: Any, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """The replies to `commands`, sent in one write on `connection`."""
    connection.send_packed_command(connection.pack_commands(commands))
    try:
        return [connection.read_response() for _ in commands]
    except BaseException:
        connection.disconnect()  # replies left unread would answer the next commands
        raise


def clear_pending(mark: str, *, log_as: str) -> None:
    """Called by the receiver before it works: a send from now on is not coalesced."""
    try:
        caches["default"].delete(mark)
    except Exception:  # it expires on its own
        logger.warning(f"{log_as}_mark_failed", exc_info=True)

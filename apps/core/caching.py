"""Two-level cache-aside: a bounded in-process LRU in front of the shared cache (Redis).

Consistency: every key has a version token in the shared cache; data is stored under
(key, version) and the LRU keeps the version it was filled with. Invalidation replaces
the token, so every process's next read misses, and a reader that loaded stale data
before the bump can only write it under the dead version.

Single flight: on a miss, one caller (across threads and processes) takes a short lock
in the shared cache and loads; the others poll for its result for a bounded time.

Degradation: every shared-cache call is guarded. When the shared cache fails, reads go
straight to the loader (the database) for `outage_backoff` seconds, without touching the
LRU either, because its freshness cannot be checked without the version tokens.
"""

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from typing import Any

import structlog
from cachetools import TTLCache
from django.core.cache import caches
from django.db import transaction

logger = structlog.get_logger(__name__)

_MISSING = object()


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
    ) -> None:
        self.namespace = namespace
        self.shared_ttl = shared_ttl
        self.lock_ttl = lock_ttl
        self.wait_for_fill = wait_for_fill
        self.outage_backoff = outage_backoff
        self.alias = alias
        self._local_maxsize = local_maxsize
        self._local_ttl = local_ttl
        self._lock = threading.Lock()
        self._local: TTLCache = TTLCache(maxsize=local_maxsize, ttl=local_ttl)
        self._down_until = 0.0

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

    def invalidate_on_commit(self, *keys: Hashable) -> None:
        # Before the commit a concurrent reader could reload and cache the old row.
        transaction.on_commit(lambda: self.invalidate(*keys))

    def clear_local(self) -> None:
        with self._lock:
            self._local = TTLCache(maxsize=self._local_maxsize, ttl=self._local_ttl)
            self._down_until = 0.0

    # -- internals ------------------------------------------------------------------

    def _version_key(self, key: Hashable) -> str:
        return f"{self.namespace}:ver:{key}"

    def _data_key(self, key: Hashable, version: str) -> str:
        return f"{self.namespace}:data:{key}:{version}"

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
        version_key = self._version_key(key)
        version = self._shared_get(version_key)
        if version is _MISSING:
            # A fresh token, never a reused one: an evicted version must not revive
            # data stored under an older token.
            self._shared_call("add", version_key, uuid.uuid4().hex, None)
            version = self._shared_get(version_key)
            if version is _MISSING:
                raise SharedCacheDown
        return version

    def _fill_once(self, key: Hashable, version: str, loader: Callable[[], Any]) -> Any:
        data_key = self._data_key(key, version)
        lock_key = f"{data_key}:lock"
        if self._shared_call("add", lock_key, 1, self.lock_ttl):
            try:
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

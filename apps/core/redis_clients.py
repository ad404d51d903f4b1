"""One Redis client per URL and process, for the parts that talk to Redis directly.

The rate limiter and the circuit breakers do not go through the cache: they must keep
working whatever backend CACHES names (a dummy cache in a benchmark, a file cache).
"""

import threading

import redis

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def redis_client(url: str) -> redis.Redis:
    """The process's client of `url` (thread-safe: redis-py pools its connections)."""
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                # Short timeouts: a dead Redis must not stall the request or call it serves.
                client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
                _clients[url] = client
    return client

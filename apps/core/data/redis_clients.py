"""One Redis client per URL and process, for the parts that talk to Redis directly.

The rate limiter and the circuit breakers do not go through the cache: they must keep
working whatever backend CACHES names (a dummy cache in a benchmark, a file cache).
"""

import functools

import redis


@functools.cache
def redis_client(url: str) -> redis.Redis:
    """The process's client of `url` (redis-py pools its connections across threads)."""
    # Short timeouts: a dead Redis must not stall the request or call it serves.
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
